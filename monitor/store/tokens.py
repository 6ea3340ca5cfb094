"""API tokens in the ``api_token`` table: created, imported, revoked, verified.

A token is ``mtk_`` followed by 32 random bytes (URL-safe base64). The database keeps only its
SHA-256 digest and its first ``PREFIX_LENGTH`` characters: the prefix finds the candidate rows
through an index, and the digests are compared in constant time. A slow password hash is
neither needed (there is nothing to guess in 256 random bits) nor affordable per request.

Roles: ``ingest`` (write events only), ``read`` (every read, /metrics, reports), ``operator``
(read, plus baselines, versions, checks, alerts, rollback decisions) and ``admin`` (everything,
tokens included). A stored role may combine roles with a comma: tokens imported from the old
``MONITOR_API_TOKENS`` that were not operators get ``ingest,read``, what they could do before.

Open mode. While the table holds no token at all (a fresh database: the demo, a first start)
the API accepts every request as ``anonymous``. Once any token has been created the API always
asks for one: revoking every token locks it rather than opening it again.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from monitor.errors import ConfigError, ConflictError, NotFoundError, ValidationError
from monitor.store.audit import SYSTEM_ACTOR, record_audit
from monitor.store.db import session_scope
from monitor.store.models import ApiToken

if TYPE_CHECKING:
    from monitor.config import Settings

log = logging.getLogger(__name__)

ROLES = ("ingest", "read", "operator", "admin")
# What each role may do: admin everything, operator also reads, ingest only ingests.
GRANTS: dict[str, frozenset[str]] = {
    "ingest": frozenset({"ingest"}),
    "read": frozenset({"read"}),
    "operator": frozenset({"operator", "read"}),
    "admin": frozenset(ROLES),
}
LEGACY_ROLE = "ingest,read"  # MONITOR_API_TOKENS names that were not MONITOR_OPERATORS
TOKEN_PREFIX = "mtk_"
PREFIX_LENGTH = 12
MIN_TOKEN_LENGTH = 32
MAX_TOKEN_LENGTH = 512
MAX_ROLE_LENGTH = 16  # api_token.role
BOOTSTRAP_ADMIN_NAME = "admin"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name (the audit log's actor) and what it may do."""

    name: str
    roles: frozenset[str]

    def may(self, role: str) -> bool:
        return role in self.roles


ANONYMOUS = Principal("anonymous", frozenset(ROLES))


@dataclass(frozen=True)
class TokenInfo:
    """A token's row without its digest."""

    name: str
    role: str
    prefix: str
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "prefix": self.prefix,
                "created_at": self.created_at, "created_by": self.created_by,
                "revoked_at": self.revoked_at, "active": self.revoked_at is None}


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(row.name, row.role, row.prefix, row.created_at, row.created_by,
                     row.revoked_at)


def grants(role: str) -> frozenset[str]:
    """Everything a stored role (``"read"``, ``"ingest,read"``) may do."""
    allowed: set[str] = set()
    for part in role.split(","):
        allowed |= GRANTS.get(part, frozenset())
    return frozenset(allowed)


def parse_role(text: str) -> str:
    """A role, or roles joined by commas, checked and in canonical order."""
    parts = [p.strip() for p in text.split(",")]
    unknown = [p for p in parts if p not in ROLES]
    if not parts or unknown:
        raise ValidationError(f"role must be one of {', '.join(ROLES)} (or several joined by "
                              f"commas); got {text[:32]!r}", field="role")
    role = ",".join(r for r in ROLES if r in parts)
    if len(role) > MAX_ROLE_LENGTH:
        raise ValidationError(f"role {role!r} is longer than {MAX_ROLE_LENGTH} characters",
                              field="role")
    return role


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValidationError(
            "name must be 1 to 64 characters: letters, digits and . _ @ -, starting with a "
            f"letter or digit; got {name[:64]!r}", field="name")
    return name


def check_token_value(token: str, *, what: str = "token") -> None:
    """A token given from outside (imported): long enough to be unguessable, printable."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValidationError(f"{what} is {len(token)} characters long; tokens must have at "
                              f"least {MIN_TOKEN_LENGTH} (create one with `monitor token "
                              "create`)", field="token")
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii() or not token.isprintable() \
            or " " in token:
        raise ValidationError(f"{what} must be at most {MAX_TOKEN_LENGTH} printable ASCII "
                              "characters without spaces", field="token")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _row(session: Session, name: str) -> ApiToken | None:
    return session.scalar(select(ApiToken).where(ApiToken.name == name))


def _row_by_token(session: Session, token: str) -> ApiToken | None:
    digest = token_digest(token)
    for row in session.scalars(select(ApiToken).where(ApiToken.prefix == token[:PREFIX_LENGTH])):
        if hmac.compare_digest(row.digest, digest):
            return row
    return None


def add_token(session: Session, *, name: str, role: str, token: str, actor: str,
              action: str = "token-create", now: datetime | None = None) -> TokenInfo:
    """Store a token's digest under ``name`` (unique) and audit it. The token itself is
    neither stored nor logged."""
    check_name(name)
    role = parse_role(role)
    check_token_value(token)
    if _row(session, name) is not None:
        raise ConflictError(f"a token named {name!r} already exists (names are never reused; "
                            "revoked tokens keep theirs)")
    if _row_by_token(session, token) is not None:
        raise ConflictError(f"this token value is already stored under another name; "
                            f"{name!r} needs a token of its own")
    row = ApiToken(name=name, role=role, prefix=token[:PREFIX_LENGTH],
                   digest=token_digest(token), created_at=_now(now), created_by=actor[:128],
                   revoked_at=None)
    session.add(row)
    session.flush()
    record_audit(session, actor=actor, action=action, now=now,
                 details={"token": name, "role": role})
    return _info(row)


def import_token(session: Session, *, name: str, role: str, token: str, actor: str) -> bool:
    """Store a token that exists elsewhere (a secret file). Idempotent: True when stored now,
    False when the same token with the same role is already there. Another value or role
    under the name, or a revoked token of that name, is refused."""
    existing = _row(session, name)
    if existing is None:
        add_token(session, name=name, role=role, token=token, actor=actor,
                  action="token-import")
        return True
    if not hmac.compare_digest(existing.digest, token_digest(token)) or existing.role != role:
        raise ConflictError(f"a token named {name!r} exists with another value or role; "
                            "revoke it and import under a new name")
    if existing.revoked_at is not None:
        raise ConflictError(f"token {name!r} was revoked; import a new token under a new name")
    return False


def create_token(session: Session, *, name: str, role: str, actor: str,
                 now: datetime | None = None) -> tuple[str, TokenInfo]:
    """A new random token for ``name``: returns (the token, shown once; its row)."""
    token = new_token()
    return token, add_token(session, name=name, role=role, token=token, actor=actor, now=now)


def revoke_token(session: Session, *, name: str, actor: str,
                 now: datetime | None = None) -> TokenInfo:
    row = _row(session, name)
    if row is None:
        raise NotFoundError(f"no token named {name[:64]!r}")
    if row.revoked_at is not None:
        raise ConflictError(f"token {name!r} was already revoked at {row.revoked_at}")
    row.revoked_at = _now(now)
    session.flush()
    record_audit(session, actor=actor, action="token-revoke", now=now,
                 details={"token": name, "role": row.role})
    return _info(row)


def list_tokens(session: Session) -> list[TokenInfo]:
    return [_info(r) for r in session.scalars(select(ApiToken).order_by(ApiToken.created_at,
                                                                         ApiToken.id))]


def find_principal(session: Session, token: str) -> Principal | None:
    """The active token's principal, or None for an unknown or revoked token."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    row = _row_by_token(session, token)
    if row is None or row.revoked_at is not None:
        return None
    return Principal(row.name, grants(row.role))


def any_token(session: Session) -> bool:
    """Whether any token, active or revoked, was ever stored (see "open mode" above)."""
    return session.scalar(select(ApiToken.id).limit(1)) is not None


class TokenVerifier:
    """Bearer-token checks for one process. Verified tokens are remembered for ``ttl_s``
    seconds, so a revocation by another process (the CLI, another replica) takes effect
    within that time; one through this verifier (``forget``) at once. Unknown tokens are
    not remembered. Once the database holds a token it never goes back to open mode, so
    that answer is remembered for good."""

    def __init__(self, sessions: sessionmaker[Session], *, ttl_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 1024):
        self._sessions = sessions
        self._ttl_s = ttl_s
        self._clock = clock
        self._max_entries = max_entries
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._closed = False
        self._lock = threading.Lock()

    def is_open(self) -> bool:
        """True while the database holds no token: every request is ``anonymous``."""
        if self._closed:
            return False
        with session_scope(self._sessions) as session:
            self._closed = any_token(session)
        return not self._closed

    def authenticate(self, token: str) -> Principal | None:
        key = token_digest(token)
        now = self._clock()
        with self._lock:
            cached = self._verified.get(key)
        if cached is not None and now - cached[1] < self._ttl_s:
            return cached[0]
        with session_scope(self._sessions) as session:
            principal = find_principal(session, token)
        with self._lock:
            if principal is None:
                self._verified.pop(key, None)
            else:
                if len(self._verified) >= self._max_entries:
                    self._verified.clear()
                self._verified[key] = (principal, now)
                self._closed = True
        return principal

    def forget(self) -> None:
        """Drop every remembered verification (after a revocation in this process)."""
        with self._lock:
            self._verified.clear()


def _import_one(sessions: sessionmaker[Session], *, name: str, role: str, token: str,
                what: str) -> bool:
    """Store one configured token unless its name or value is already there. True if
    stored. A name taken by another value is left as it is, with a warning."""
    try:
        with session_scope(sessions) as session:
            existing = _row(session, name)
            if existing is not None:
                if not hmac.compare_digest(existing.digest, token_digest(token)):
                    log.warning("%s: a token named %r is already in the token store with "
                                "another value; the configured one is ignored", what, name)
                return False
            if _row_by_token(session, token) is not None:
                log.warning("%s: the token of %r is already stored under another name; "
                            "not imported again", what, name)
                return False
            add_token(session, name=name, role=role, token=token, actor=SYSTEM_ACTOR,
                      action="token-import")
            return True
    except IntegrityError:  # another replica imported it at the same moment
        return False
    except (ValidationError, ConflictError) as exc:
        raise ConfigError(f"{what}: token {name!r}: {exc}") from None


def import_legacy_tokens(sessions: sessionmaker[Session], settings: Settings) -> int:
    """Import ``MONITOR_API_TOKENS`` (names in ``MONITOR_OPERATORS`` as operators, the others
    as ``ingest,read``) once; returns how many were new. Warns that the variable should go."""
    if not settings.api_tokens:
        return 0
    operators = set(settings.operators)
    imported = 0
    for name, secret in settings.api_tokens.items():
        role = "operator" if name in operators else LEGACY_ROLE
        imported += _import_one(sessions, name=name, role=role,
                                token=secret.get_secret_value(), what="MONITOR_API_TOKENS")
    log.warning(
        "MONITOR_API_TOKENS is deprecated: %d of its %d tokens imported into the token store "
        "now (the others were already there). Remove MONITOR_API_TOKENS and MONITOR_OPERATORS; "
        "manage tokens with `monitor token create/revoke/list`.",
        imported, len(settings.api_tokens))
    return imported


def bootstrap_admin(sessions: sessionmaker[Session], settings: Settings) -> bool:
    """Import ``MONITOR_BOOTSTRAP_ADMIN_TOKEN`` (or its ``_FILE``) as the admin token named
    ``admin`` when the store holds no active admin token. True if imported."""
    if settings.bootstrap_admin_token is None:
        return False
    with session_scope(sessions) as session:
        rows = session.scalars(select(ApiToken).where(ApiToken.revoked_at.is_(None))).all()
        if any("admin" in r.role.split(",") for r in rows):
            return False
    stored = _import_one(sessions, name=BOOTSTRAP_ADMIN_NAME, role="admin",
                         token=settings.bootstrap_admin_token.get_secret_value(),
                         what="MONITOR_BOOTSTRAP_ADMIN_TOKEN")
    if stored:
        log.info("bootstrap admin token imported as %r", BOOTSTRAP_ADMIN_NAME)
    else:
        log.warning("MONITOR_BOOTSTRAP_ADMIN_TOKEN not imported: the store has no active admin "
                    "token but already holds the name %r or this token (revoked?); create one "
                    "with `monitor token create --name NAME --role admin`",
                    BOOTSTRAP_ADMIN_NAME)
    return stored


def import_configured_tokens(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Start-up: the bootstrap admin token and the legacy ``MONITOR_API_TOKENS``."""
    bootstrap_admin(sessions, settings)
    import_legacy_tokens(sessions, settings)
