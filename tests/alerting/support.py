"""Test helpers for alerting and the registry: a real HTTP receiver and a real SMTP server on
loopback, and stored check runs with chosen results."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml
from aiosmtpd.controller import Controller

from monitor import registry
from monitor.checks.baselines import create_baseline
from monitor.collect.ingest import store_inferences
from monitor.runtime import Runtime
from monitor.schema import INFERENCES
from monitor.store.db import session_scope
from monitor.store.results import insert_baseline, store_check_run
from tests.conftest import require_server
from tests.factories import inference_event
from tests.servers import free_port, stop_process

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
MODEL = "cxr-triage"
T0 = datetime(2026, 10, 1, tzinfo=UTC)
WAIT_S = 20.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class HttpReceiver:
    """A JSON receiver. ``fail_next`` answers that many requests with ``fail_status``."""

    url: str
    port: int
    requests: list[Received] = field(default_factory=list)
    fail_next: int = 0
    fail_status: int = 500
    condition: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, predicate: Callable[[list[Received]], bool], *,
                 timeout_s: float = WAIT_S) -> list[Received]:
        """Block until ``predicate(requests)`` holds (bounded); returns the requests."""
        deadline = time.monotonic() + timeout_s
        with self.condition:
            while not predicate(self.requests):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout_s}s; received "
                                         f"{[r.body for r in self.requests]}")
                self.condition.wait(left)
            return list(self.requests)


@contextmanager
def http_receiver(port: int | None = None) -> Iterator[HttpReceiver]:
    """A threaded HTTP server on loopback that records every POSTed JSON body."""
    port = port or free_port()
    receiver = HttpReceiver(url=f"http://127.0.0.1:{port}", port=port)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            with receiver.condition:
                if receiver.fail_next > 0:
                    receiver.fail_next -= 1
                    status = receiver.fail_status
                else:
                    status = 200
                    receiver.requests.append(Received(
                        self.path, {k.lower(): v for k, v in self.headers.items()},
                        json.loads(raw) if raw else None))
                    receiver.condition.notify_all()
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Mailbox:
    port: int
    messages: list[Any] = field(default_factory=list)
    condition: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        with self.condition:
            self.messages.append(envelope)
            self.condition.notify_all()
        return "250 OK"

    def wait_for(self, count: int, *, timeout_s: float = WAIT_S) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        with self.condition:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {count} mail(s)")
                self.condition.wait(left)
            return list(self.messages)


@contextmanager
def smtp_server() -> Iterator[Mailbox]:
    """A real SMTP server (aiosmtpd) on a free loopback port."""
    mailbox = Mailbox(port=free_port())
    controller = Controller(mailbox, hostname="127.0.0.1", port=mailbox.port)
    controller.start()
    try:
        yield mailbox
    finally:
        controller.stop()


def write_config(tmp_path: Path, data: dict[str, Any], name: str = "rules.yml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def add_version(runtime: Runtime, version: str, *, model: str = MODEL, baseline: bool = True,
                actor: str = "setup") -> int:
    """Register a version (and an empty baseline); returns its id."""
    with session_scope(runtime.sessions) as session:
        info = registry.register_version(session, model=model, version=version, actor=actor)
        if baseline:
            insert_baseline(session, model_version_id=info.id, created_at=T0, created_by=actor,
                            window_start=T0, window_end=T0 + timedelta(days=7),
                            summary={}, member_ids=[])
        return info.id


def result(detector: str, feature: str, *, p_value: float | None, drift: bool | None = None,
           family: str | None = None, status: str | None = None,
           current: float | None = None, statistic: float = 0.1) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if family:
        details["family"] = family
    if status:
        details["status"] = status
    if current is not None:
        details["current"] = {"value": current}
    return {
        "detector": detector, "feature": feature, "statistic": statistic, "p_value": p_value,
        "threshold": 0.05,
        "drift": bool(drift if drift is not None else (p_value is not None and p_value < 0.05)),
        "n_reference": 500, "n_current": 200, "details": details,
    }


PAGE_AT, WARNING_AT = 4.5, 3.6


def sequential(stream: str, family: str, level: str, *, since: str = "2026-10-11",
               daily_p: float = 1e-5, statistic: float | None = None,
               direction: str | None = None) -> dict[str, Any]:
    """A ``SequentialEvidence`` row of one stream (``"MMDDrift/embedding"``) at ``level``
    (quiet, warning, page), as the grid checks store it."""
    detector, _, feature = stream.partition("/")
    if statistic is None:
        statistic = {"page": PAGE_AT + 1.0, "warning": WARNING_AT + 0.2}.get(level, 0.5)
    details: dict[str, Any] = {
        "family": "sequential", "of_family": family, "level": level, "warning_at": WARNING_AT,
        "page_at": PAGE_AT, "days": 2, "since": since, "daily_p": daily_p, "z": 4.0,
        "rho": 0.2, "reference": "weekday", "detector": detector, "feature": feature}
    if direction is not None:
        details["direction"] = direction
    return {"detector": "SequentialEvidence", "feature": stream, "statistic": statistic,
            "p_value": None, "threshold": PAGE_AT, "drift": level == "page",
            "n_reference": 500, "n_current": 200, "details": details}


def rank(field: str, value: str, n_current: int, contribution: float, *,
         share_current: float = 0.1, n_reference: int = 0) -> dict[str, Any]:
    """One entry of an attribution ranking."""
    return {"field": field, "value": value, "n_reference": n_reference, "n_current": n_current,
            "share_reference": 0.0, "share_current": share_current, "own_drift": contribution,
            "contribution": contribution, "explained_share": 0.5, "basis": "embedding"}


def attribution(*ranking: dict[str, Any], basis: str = "embedding") -> dict[str, Any]:
    """An ``Attribution`` row holding ``ranking`` (largest contribution first)."""
    top = ranking[0]
    return {"detector": "Attribution", "feature": basis, "statistic": top["contribution"],
            "p_value": None, "threshold": 0.0, "drift": False, "n_reference": 500,
            "n_current": 200, "details": {"family": "attribution", "basis": basis,
                                          "top": f"{top['field']}={top['value']}",
                                          "ranking": list(ranking)}}


def store_run(runtime: Runtime, version_id: int, *, day: float,
              results: list[dict[str, Any]], health_score: float | None = 0.9,
              label: str = "1d", status: str = "ok") -> int:
    """Store a check run of the window [T0 + day, T0 + day + 1 day); returns its id."""
    start = T0 + timedelta(days=day)
    with session_scope(runtime.sessions) as session:
        run_id, _ = store_check_run(session, run={
            "model_version_id": version_id, "window_kind": "time", "window_label": label,
            "window_start": start, "window_end": start + timedelta(days=1),
            "started_at": datetime.now(UTC), "finished_at": datetime.now(UTC),
            "status": status, "n_studies": 200, "health_score": health_score,
            "health_status": None,
        }, results=results)
        return run_id


@contextmanager
def running_alertmanager(config: dict[str, Any], tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager (Debian's ``prometheus-alertmanager``) on a free loopback port,
    clustering off, with ``config``; yields its URL once ready."""
    binary = shutil.which("prometheus-alertmanager") or ALERTMANAGER
    require_server(Path(binary).exists(), f"Alertmanager ({ALERTMANAGER})")
    port = free_port()
    config_file = tmp_path / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_file = tmp_path / "alertmanager.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config_file}", f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise AssertionError("Alertmanager exited: " + log_file.read_text())
                try:
                    if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("Alertmanager not ready after 30 s")
                time.sleep(0.1)
            yield url
        finally:
            stop_process(process, timeout_s=10)


# --- a small deployment of real studies with a software update --------------------------------

NORTH = {"manufacturer": "GE Healthcare", "model": "Optima XR240amx", "station": "XR-NORTH-1",
         "site": "north", "software_version": "DM_Platform 5.2"}
SOUTH = {"manufacturer": "SIEMENS", "model": "Ysio Max", "station": "XR-SOUTH-1",
         "site": "south", "software_version": "VF10E"}
UPDATED = {**SOUTH, "software_version": "VF12B"}


def add_studies(runtime: Runtime, scanner: dict[str, str], days: range, per_day: int) -> None:
    events = [inference_event(
        timestamp=(T0 + timedelta(days=day, hours=8, minutes=7 * i)).isoformat(),
        scanner={**inference_event()["scanner"], **scanner})
        for day in days for i in range(per_day)]
    assert store_inferences(runtime, INFERENCES.from_python(events)).new == len(events)


def deploy_update(runtime: Runtime) -> None:
    """Studies of 1.4.0 from the factory: 8 a day at north for 20 days, 5 a day at south on
    VF10E until day 9 and on VF12B from day 10; a baseline from days 0-6."""
    add_studies(runtime, NORTH, range(0, 20), 8)
    add_studies(runtime, SOUTH, range(0, 10), 5)
    add_studies(runtime, UPDATED, range(10, 20), 5)
    create_baseline(runtime, model=MODEL, version="1.4.0", start=T0,
                    end=T0 + timedelta(days=7), created_by="setup")


# An attribution entry naming the updated station.
STATION = {"field": "station", "value": "XR-SOUTH-1", "n_current": 5, "contribution": 0.5}
