"""The `monitor` command. Each stage adds its subcommands (``monitor/commands``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError

from monitor.config import load_settings
from monitor.errors import MonitorError
from monitor.runtime import restrict_new_files

COMMAND_MODULES = ("core", "demo", "checks", "versions", "alerts", "dashboard", "tokens")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monitor",
        description="Post-deployment monitoring for medical-imaging AI models. Settings come "
        "from MONITOR_* environment variables (see the README).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"monitor.commands.{name}").add_commands(sub)
    return parser


def database_error_line(exc: DatabaseError) -> str:
    """One line for a database that cannot be used: where it is (password masked) and the
    driver's first line, without the statement or its values."""
    try:
        url = make_url(load_settings().database_url)
        where = url.render_as_string(hide_password=True)
        password = url.password
    except (MonitorError, ArgumentError):
        where, password = "MONITOR_DATABASE_URL", None
    reason = next((line.strip() for line in str(exc.orig).splitlines() if line.strip()),
                  type(exc.orig).__name__)
    if password:
        reason = reason.replace(str(password), "***")
    return f"cannot use the database {where}: {reason}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("DO_NOT_TRACK", "1")  # evidently's usage telemetry
    restrict_new_files()  # the database, reports, logs and keys are this user's alone
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except MonitorError as exc:
        print(f"monitor {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except DatabaseError as exc:  # unreachable, corrupt, or not the schema we expect
        print(f"monitor {args.command}: error: {database_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
