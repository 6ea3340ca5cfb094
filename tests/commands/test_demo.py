"""`monitor demo`: each episode announced once; with ``--no-serve`` every daily check runs
before it returns; otherwise the API and the dashboard are served as soon as the baselines
exist and the checks fill in behind them (in order, alerts at each window's end), stop on
Ctrl-C, and are counted on the dashboard from the database."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from monitor.cli import main
from monitor.commands import demo
from monitor.config import Settings
from monitor.runtime import Runtime
from monitor.simulate import simulate_deployment
from monitor.store.dashboard import grid_progress
from monitor.store.db import session_scope
from tests.conftest import make_settings
from tests.servers import free_port

STUDIES = 2_100  # 70 a day over the 30 simulated days: baselines hold, loading is quick
QUIETED = ("monitor.checks", "monitor.alerting", "monitor.checks.baselines")


@pytest.fixture(autouse=True)
def _restore_log_levels() -> Iterator[None]:
    """`monitor demo` quiets the check loggers for its progress bar; give them back."""
    levels = {name: logging.getLogger(name).level for name in QUIETED}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MONITOR_DATABASE_URL", f"sqlite:///{tmp_path / 'demo.db'}")
    monkeypatch.setenv("MONITOR_SECRET_KEY_FILE", str(tmp_path / "key"))
    monkeypatch.setenv("MONITOR_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("MONITOR_CHECK_INTERVAL_S", "0")
    return tmp_path


class FakeChecks:
    """Stands in for ``run_check``: records each call, stores nothing; ``on_call(n)`` runs
    before the n-th check returns."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, datetime, tuple[Any, ...]]] = []  # version, start, hooks
        self.on_call: dict[int, Any] = {}

    def __call__(self, runtime: Runtime, *, model: str, version: str, start: datetime,
                 end: datetime, hooks: Any) -> SimpleNamespace:
        self.calls.append((version, start, tuple(hooks)))
        if len(self.calls) in self.on_call:
            self.on_call[len(self.calls)]()
        return SimpleNamespace(health=None, escalated=[], day=start.date())


def expected_grid(settings: Settings) -> list[tuple[str, datetime]]:
    """(version, day start) of every demo grid window, in the order the demo checks them."""
    deployment = simulate_deployment(seed=0, n_studies=STUDIES)
    runtime = Runtime.open(settings)
    try:
        return [(version, window.start) for version, window
                in demo.plan_daily_checks(runtime, deployment).todo]
    finally:
        runtime.close()


def test_each_episode_is_announced_once(sqlite_url: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    runtime, deployment = demo.build_demo(make_settings(sqlite_url, tmp_path), seed=0,
                                          n_studies=STUDIES, steps=())
    runtime.close()
    captured = capsys.readouterr()
    shown = captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records)
    assert len(deployment.episodes) == 4
    for episode in deployment.episodes:
        assert shown.count(f"episode {episode.name} starts") == 1, episode.name


def test_no_serve_runs_every_check_in_order_before_returning(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checks = FakeChecks()
    monkeypatch.setattr(demo, "run_check", checks)
    monkeypatch.setattr(demo, "serve", lambda *a, **k: pytest.fail("--no-serve served"))
    monkeypatch.setattr(demo, "start_dashboard", lambda *a: pytest.fail("dashboard started"))
    assert main(["demo", "--studies", str(STUDIES), "--no-serve"]) == 0
    done = [(version, start) for version, start, _ in checks.calls]
    assert len(done) == 46 and done == sorted(done, key=lambda item: (item[1], item[0]))
    assert all(hooks == (demo._evaluate_alerts_at_window_end,) for *_, hooks in checks.calls)


def test_serving_starts_before_the_checks_which_fill_in_behind_and_stop_on_request(
        env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="monitor.demo")
    checks = FakeChecks()
    served: dict[str, Any] = {}
    dashboard = SimpleNamespace(terminate=lambda: served.setdefault("terminated", True),
                                wait=lambda timeout: 0)

    def fake_serve(settings: Settings, *, host: str, port: int, backfill: Any) -> None:
        served["checks before serving"] = len(checks.calls)
        served["settings"] = settings
        stop = threading.Event()
        checks.on_call[3] = stop.set  # Ctrl-C during the third check
        runtime = Runtime.open(settings)
        try:
            backfill(runtime, stop)
        finally:
            runtime.close()

    monkeypatch.setattr(demo, "run_check", checks)
    monkeypatch.setattr(demo, "serve", fake_serve)
    monkeypatch.setattr(demo, "start_dashboard", lambda settings: dashboard)
    assert main(["demo", "--studies", str(STUDIES)]) == 0
    assert served["checks before serving"] == 0 and served["terminated"]
    assert len(checks.calls) == 3  # the check in progress finished, no later one started
    grid = expected_grid(served["settings"])
    assert [(version, start) for version, start, _ in checks.calls] == grid[:3]
    messages = [r.getMessage() for r in caplog.records if r.name == "monitor.demo"]
    assert "daily checks: 1/46" in messages and "daily checks: 3/46" in messages
    assert any(m.startswith("daily checks stopped at 3/46") for m in messages)


def test_a_second_run_checks_only_the_days_left_and_the_dashboard_counts_them(
        sqlite_url: str, tmp_path: Path) -> None:
    runtime, deployment = demo.build_demo(make_settings(sqlite_url, tmp_path), seed=0,
                                          n_studies=STUDIES, steps=demo.SERVE_STEPS)
    try:
        plan = demo.plan_daily_checks(runtime, deployment)
        assert (plan.total, len(plan.todo)) == (46, 46)
        with session_scope(runtime.sessions) as session:
            progress = grid_progress(session, timezone="UTC")
        assert (progress.expected, progress.checked, progress.filling_in) == (46, 0, True)
        first_two = demo.DailyChecks(model=plan.model, total=2, todo=plan.todo[:2])
        assert demo.check_days(runtime, first_two, bar=False) == 2
        again = demo.plan_daily_checks(runtime, deployment)
        assert (again.total, again.done_before, again.todo) == (46, 2, plan.todo[2:])
        with session_scope(runtime.sessions) as session:
            progress = grid_progress(session, timezone="UTC", now=datetime.now(UTC))
        assert (progress.expected, progress.checked) == (46, 2)
    finally:
        runtime.close()


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except OSError:
        return 0


def test_ctrl_c_stops_the_checks_the_api_and_the_dashboard(tmp_path: Path) -> None:
    """A real `monitor demo`: served while the checks are still running; one SIGINT (what
    Ctrl-C sends the terminal's process group) ends all three, and the checks stop early."""
    api_port, dashboard_port = free_port(), free_port()
    environment = {**os.environ, "DO_NOT_TRACK": "1",
                   "MONITOR_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}",
                   "MONITOR_SECRET_KEY_FILE": str(tmp_path / "key"),
                   "MONITOR_REPORTS_DIR": str(tmp_path / "reports"),
                   "MONITOR_PORT": str(api_port), "MONITOR_DASHBOARD_PORT": str(dashboard_port)}
    log_file = tmp_path / "demo.log"
    with log_file.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "monitor.cli", "demo", "--studies",
                                    str(STUDIES)], cwd=tmp_path, env=environment, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if (_get(f"http://127.0.0.1:{api_port}/healthz") == 200
                    and _get(f"http://127.0.0.1:{dashboard_port}/") == 200
                    and "daily checks: 1/46" in log_file.read_text(errors="replace")):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the demo did not serve:\n" + log_file.read_text(errors="replace"))
        assert _get(f"http://127.0.0.1:{api_port}/") == 200
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = log_file.read_text(errors="replace")
    assert "Traceback" not in text, text
    assert "daily checks stopped at" in text and "all 46 done" not in text, text
    assert _get(f"http://127.0.0.1:{api_port}/healthz") == 0
    assert _get(f"http://127.0.0.1:{dashboard_port}/") == 0
