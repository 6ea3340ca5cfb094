"""`monitor token create | revoke | list | import`: the API's bearer tokens.

A created token is printed once and stored only as a digest. Every change is audited with the
OS user (or ``--actor``) as the actor; the token itself is never written anywhere."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from monitor.config import load_settings
from monitor.errors import ConfigError
from monitor.store import tokens
from monitor.store.db import make_engine, session_factory, session_scope, verify_schema


def _sessions() -> sessionmaker[Session]:
    engine = make_engine(load_settings().database_url)
    verify_schema(engine)
    return session_factory(engine)


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return f"uid:{os.getuid()}"


def _actor(args: argparse.Namespace) -> str:
    actor = (args.actor or os_user()).strip()
    if not actor or len(actor) > 128 or not actor.isprintable():
        raise ConfigError("--actor must be 1 to 128 printable characters")
    return actor


def cmd_create(args: argparse.Namespace) -> int:
    with session_scope(_sessions()) as session:
        token, info = tokens.create_token(session, name=args.name, role=args.role,
                                          actor=_actor(args))
    print(f"created token {info.name!r} with role {info.role!r}. It is shown this once and "
          "stored only as a digest:", file=sys.stderr)
    print(token)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Store a token that exists elsewhere (a secret file): idempotent for the same value."""
    try:
        token = Path(args.file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {args.file}: "
                          f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    role = tokens.parse_role(args.role)
    with session_scope(_sessions()) as session:
        stored = tokens.import_token(session, name=args.name, role=role, token=token,
                                     actor=_actor(args))
    if not stored:
        print(f"token {args.name!r} ({role}) is already in the store")
        return 0
    print(f"imported token {args.name!r} with role {role!r} from {args.file}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with session_scope(_sessions()) as session:
        info = tokens.revoke_token(session, name=args.name, actor=_actor(args))
    print(f"revoked token {info.name!r} ({info.role}); running servers refuse it within a "
          "few seconds")
    return 0


def cmd_list(_args: argparse.Namespace) -> int:
    with session_scope(_sessions()) as session:
        found = tokens.list_tokens(session)
    if not found:
        print("no tokens: the API is open (loopback only); create one with "
              "`monitor token create --name NAME --role admin`")
        return 0
    rows = [("NAME", "ROLE", "PREFIX", "CREATED", "CREATED BY", "REVOKED")]
    for info in found:
        rows.append((info.name, info.role, info.prefix + "…",
                     info.created_at.strftime("%Y-%m-%d %H:%M"), info.created_by or "",
                     info.revoked_at.strftime("%Y-%m-%d %H:%M") if info.revoked_at else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    token = sub.add_parser("token", help="create, revoke and list API tokens")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    roles = f"{', '.join(tokens.ROLES)} (several joined by commas)"

    create = actions.add_parser("create", help="create a token and print it once")
    create.add_argument("--name", required=True, help="unique; the actor in the audit log")
    create.add_argument("--role", required=True, help=roles)
    create.add_argument("--actor", default=None, help="who creates it (default: the OS user)")
    create.set_defaults(func=cmd_create)

    revoke = actions.add_parser("revoke", help="revoke a token")
    revoke.add_argument("--name", required=True, help="the token's name (`monitor token list`)")
    revoke.add_argument("--actor", default=None, help="who revokes it (default: the OS user)")
    revoke.set_defaults(func=cmd_revoke)

    listing = actions.add_parser("list", help="names, roles, prefixes, created, revoked")
    listing.set_defaults(func=cmd_list)

    imported = actions.add_parser("import", help="store a token read from a file (a Docker "
                                  "secret); nothing happens if it is already stored")
    imported.add_argument("--name", required=True, help="unique; the actor in the audit log")
    imported.add_argument("--role", required=True, help=roles)
    imported.add_argument("--file", required=True, help="a file holding the token")
    imported.add_argument("--actor", default=None, help="who imports it (default: the OS user)")
    imported.set_defaults(func=cmd_import)
