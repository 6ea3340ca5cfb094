"""`monitor dashboard`: the Streamlit quality dashboard (``dashboards/app.py``), headless on
loopback, with the same ``MONITOR_*`` settings as the service."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from monitor.config import load_settings
from monitor.errors import ConfigError

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"


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


def cmd_dashboard(args: argparse.Namespace) -> int:
    settings = load_settings()  # fail here, naming the variable, rather than in the browser
    if not APP.is_file():
        raise ConfigError(f"the dashboard app {APP} is missing (run from a source checkout)")
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
                           "container)")
    dashboard.set_defaults(func=cmd_dashboard)
