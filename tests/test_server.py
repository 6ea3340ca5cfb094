"""`monitor serve` binds beyond loopback only with tokens in the database, or with an explicit
--insecure-open that is logged loudly. Real processes, as an operator runs them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from monitor import server
from monitor.config import Settings
from monitor.errors import ConfigError
from monitor.runtime import Runtime
from monitor.server import check_bind, is_loopback
from monitor.store.db import session_scope
from monitor.store.tokens import create_token
from tests.conftest import TEST_SECRET, open_runtime
from tests.servers import free_port, stop_process


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost",
                                  "LOCALHOST"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.1", "example.org",
                                  "", "monitor"])
def test_other_addresses_may_be_reachable(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match="--insecure-open"):
        check_bind(host, api_open=True, insecure_open=False)
    check_bind(host, api_open=False, insecure_open=False)  # tokens: fine


def test_insecure_open_is_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    check_bind("0.0.0.0", api_open=True, insecure_open=True)
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "NO AUTHENTICATION" in record.getMessage()


def test_an_open_api_on_loopback_says_so(caplog: pytest.LogCaptureFixture) -> None:
    check_bind("127.0.0.1", api_open=True, insecure_open=False)
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "monitor token create" in record.getMessage()
    caplog.clear()
    check_bind("127.0.0.1", api_open=False, insecure_open=False)
    assert not caplog.records


def _environment(database_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "DO_NOT_TRACK": "1", "MONITOR_DATABASE_URL": database_url,
            "MONITOR_SECRET_KEY": TEST_SECRET, "MONITOR_CHECK_INTERVAL_S": "0", **extra}


def _serve(tmp_path: Path, environment: dict[str, str], *args: str
           ) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "monitor.cli", "serve", *args],
                            cwd=tmp_path, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _wait_healthy(port: int, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the server did not start")


def test_serve_refuses_an_open_api_on_all_interfaces(sqlite_url: str, tmp_path: Path) -> None:
    open_runtime(sqlite_url, tmp_path).close()
    process = _serve(tmp_path, _environment(sqlite_url, MONITOR_HOST="0.0.0.0"),
                     "--port", str(free_port()))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2
    errors = [line for line in stderr.decode().splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in stderr.decode()
    assert errors[0].startswith("monitor serve: error: refusing to serve 0.0.0.0 with no API "
                                "token in the database")


def test_serve_on_all_interfaces_with_a_token_or_insecure_open(sqlite_url: str,
                                                               tmp_path: Path) -> None:
    runtime = open_runtime(sqlite_url, tmp_path)
    port = free_port()
    process = _serve(tmp_path, _environment(sqlite_url), "--host", "0.0.0.0", "--port",
                     str(port), "--insecure-open")
    try:
        _wait_healthy(port, process)
    finally:
        stop_process(process)
    assert process.stderr is not None
    assert "WARNING" in (warned := process.stderr.read().decode())
    assert "NO AUTHENTICATION" in warned

    with session_scope(runtime.sessions) as session:
        create_token(session, name="root", role="admin", actor="test")
    runtime.close()
    process = _serve(tmp_path, _environment(sqlite_url), "--host", "0.0.0.0", "--port",
                     str(port))
    try:
        _wait_healthy(port, process)
    finally:
        stop_process(process)
    assert process.stderr is not None
    assert "NO AUTHENTICATION" not in process.stderr.read().decode()


# --- the back-fill beside the API (`monitor demo`'s daily checks) -----------------------------


class _Recorder:
    """Stands in for the scheduler and the delivery loop: records what happened, in order."""

    def __init__(self, events: list[str], name: str) -> None:
        self.events, self.name = events, name

    def start(self) -> None:
        self.events.append(f"{self.name} start")

    def stop(self, *args: object) -> None:
        self.events.append(f"{self.name} stop")


def _migrated(sqlite_url: str, tmp_path: Path) -> Settings:
    runtime = open_runtime(sqlite_url, tmp_path)
    runtime.close()
    return runtime.settings


def _fake_serving(monkeypatch: pytest.MonkeyPatch, events: list[str],
                  while_serving: Callable[[], object]) -> None:
    monkeypatch.setattr(server, "CheckScheduler",
                        lambda runtime, hooks: _Recorder(events, "scheduler"))
    monkeypatch.setattr(server, "DeliveryLoop",
                        lambda runtime, interval_s: _Recorder(events, "delivery"))

    def run(app: FastAPI, **kwargs: object) -> None:
        async def serving() -> None:  # the app's lifespan starts and stops the background
            async with app.router.lifespan_context(app):
                events.append("serving")
                while_serving()
                events.append("interrupted")

        asyncio.run(serving())

    monkeypatch.setattr(uvicorn, "run", run)


def test_the_scheduler_starts_once_the_backfill_is_done(
        sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _migrated(sqlite_url, tmp_path)
    events: list[str] = []

    def backfill(runtime: Runtime, stop: threading.Event) -> None:
        assert runtime.settings.database_url == sqlite_url
        events.append("backfill")

    def serving() -> None:  # until the scheduler has started (as the back-fill returns)
        deadline = time.monotonic() + 10
        while "scheduler start" not in events and time.monotonic() < deadline:
            time.sleep(0.01)

    _fake_serving(monkeypatch, events, serving)
    server.serve(settings, host="127.0.0.1", port=free_port(), backfill=backfill)
    assert events.index("scheduler start") > events.index("backfill")
    assert events[-2:] == ["scheduler stop", "delivery stop"]
    events.clear()
    server.serve(settings, host="127.0.0.1", port=free_port())  # no back-fill: at once
    assert events[:3] == ["scheduler start", "delivery start", "serving"]


def test_stopping_the_server_stops_the_backfill_before_the_scheduler_starts(
        sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _migrated(sqlite_url, tmp_path)
    events: list[str] = []
    working = threading.Event()

    def backfill(runtime: Runtime, stop: threading.Event) -> None:
        working.set()
        while not stop.wait(0.05):  # checks, one after another, until asked to stop
            pass
        time.sleep(0.3)  # the check in progress finishes
        events.append("backfill stopped")

    _fake_serving(monkeypatch, events, lambda: working.wait(10))
    server.serve(settings, host="127.0.0.1", port=free_port(), backfill=backfill)
    assert "scheduler start" not in events
    assert events[events.index("interrupted"):] == [
        "interrupted", "backfill stopped", "scheduler stop", "delivery stop"]


def test_a_failing_backfill_is_logged_and_the_scheduler_takes_over(
        sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runtime = open_runtime(sqlite_url, tmp_path)
    started = threading.Event()

    def backfill(runtime: Runtime, stop: threading.Event) -> None:
        raise RuntimeError("disk full")

    thread = server.BackfillThread(backfill, runtime, then=started.set)
    thread.start()
    assert started.wait(10)
    thread.stop()
    runtime.close()
    assert any("back-filled checks failed" in r.getMessage() and r.exc_info
               for r in caplog.records)
