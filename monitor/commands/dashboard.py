"""`monitor dashboard`: the Streamlit quality dashboard (``dashboards/app.py``), headless on
loopback, with the same ``MONITOR_*`` settings as the service.

The dashboard reads the database directly. Once the token store holds a token it asks every
visitor for a read token (``dashboards.guard``); while it holds none (the demo) anyone who
reaches it can read and act, so a non-loopback ``--address`` is then refused unless
``--insecure-open`` (or ``MONITOR_INSECURE_OPEN``) says it is a lab, which is said loudly."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import dashboards
from monitor.config import Settings, load_settings
from monitor.errors import ConfigError

# The Streamlit app ships in the wheel as the ``dashboards`` package, beside ``monitor``.
APP = Path(dashboards.__file__).resolve().parent / "app.py"


def streamlit_command(*, app: Path, address: str, port: int) -> list[str]:
    """The ``streamlit run`` command line: headless, no usage statistics, no file watcher,
    the toolbar without developer options."""
    return [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.headless", "true",
        "--server.address", address,
        "--server.port", str(port),
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
        "--theme.base", "light",
    ]


def token_store_is_empty(settings: Settings) -> bool:
    """Whether the database's token store holds no token (the dashboard is then open)."""
    from monitor.store.db import make_engine, session_factory, session_scope
    from monitor.store.tokens import any_token

    engine = make_engine(settings.database_url)
    try:
        with session_scope(session_factory(engine)) as session:
            return not any_token(session)
    finally:
        engine.dispose()


def check_address(address: str, settings: Settings, *, insecure_open: bool) -> None:
    """Refuse a non-loopback address while the dashboard would be open, unless told."""
    from monitor.server import is_loopback

    if is_loopback(address) or not token_store_is_empty(settings):
        return
    if not insecure_open:
        raise ConfigError(
            f"refusing to serve the dashboard on {address} with no token in the database "
            "(anyone could read it and approve rollbacks): create tokens with `monitor token "
            "create --name NAME --role read|operator`, use --address 127.0.0.1, or pass "
            "--insecure-open for a lab")
    print(f"INSECURE: the dashboard on {address} has NO LOGIN (--insecure-open / "
          "MONITOR_INSECURE_OPEN): anyone who reaches it can read and act", file=sys.stderr,
          flush=True)


def cmd_dashboard(args: argparse.Namespace) -> int:
    settings = load_settings()  # fail here, naming the variable, rather than in the browser
    check_address(args.address, settings,
                  insecure_open=bool(args.insecure_open or settings.insecure_open))
    port = args.port or settings.dashboard_port
    command = streamlit_command(app=APP, address=args.address, port=port)
    print(f"dashboard on http://{args.address}:{port} (database "
          f"{settings.database_url.split('@')[-1]}); Ctrl-C stops it", flush=True)
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        return 130


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dashboard = sub.add_parser("dashboard", help="run the Streamlit quality dashboard")
    dashboard.add_argument("--port", type=int, default=None,
                           help="default MONITOR_DASHBOARD_PORT or 8501")
    dashboard.add_argument("--address", default="127.0.0.1",
                           help="interface to listen on (default 127.0.0.1; 0.0.0.0 in a "
                           "container, with tokens in the database)")
    dashboard.add_argument("--insecure-open", action="store_true",
                           help="allow a non-loopback --address while the token store is "
                           "empty, so the dashboard has no login (a lab only)")
    dashboard.set_defaults(func=cmd_dashboard)
