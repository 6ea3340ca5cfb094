"""MonitorClient against a small fake monitoring server (http.server on 127.0.0.1)."""

from __future__ import annotations

import json
import logging
import random
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from monitor_client.client import (
    INFERENCES_PATH,
    OVERRIDES_PATH,
    MonitorClient,
    backoff_delay,
)
from monitor_client.codec import decode_embedding
from monitor_client.dicom import load_header
from pydicom.data import get_testdata_file

from monitor.errors import ConfigError, ValidationError

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Received:
    path: str
    event_ids: list[str]
    status: int  # 0: connection dropped without an answer
    authorization: str | None
    body: bytes


@dataclass
class FakeMonitorServer:
    """Stores each event once by event_id; can be told to fail, drop or block."""

    url: str = ""
    fail_next: int = 0  # answer the next N requests with fail_status
    fail_status: int = 503
    retry_after: str | None = None
    drop_next: int = 0  # store the batch, then close the connection without answering
    required_token: str | None = None
    name_indices: bool = True  # a 422 names the invalid items' indices
    release: threading.Event = field(default_factory=threading.Event)  # cleared: requests wait
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)  # event_id -> event
    stored_path: dict[str, str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers["Content-Length"]))
        events = json.loads(body)
        self.release.wait(timeout=60)
        with self.lock:
            record = Received(
                path=handler.path,
                event_ids=[e.get("event_id") for e in events],
                status=200,
                authorization=handler.headers.get("Authorization"),
                body=body,
            )
            self.received.append(record)
            if self.fail_next > 0:
                self.fail_next -= 1
                record.status = self.fail_status
                headers = {"Retry-After": self.retry_after} if self.retry_after else {}
                return _answer(handler, self.fail_status, {"detail": "try later"}, headers)
            if self.required_token and record.authorization != f"Bearer {self.required_token}":
                record.status = 401
                return _answer(handler, 401, {"detail": "invalid token"})
            bad = [i for i, event in enumerate(events) if event.get("bad")]
            if bad:
                record.status = 422
                detail = [{"index": i, "field": "prediction", "message": "bad item"} for i in bad]
                if not self.name_indices:
                    detail = [{"field": "prediction", "message": "bad item"}]
                return _answer(handler, 422, {"detail": detail})
            accepted = duplicates = 0
            for event in events:
                if event["event_id"] in self.stored:
                    duplicates += 1
                else:
                    self.stored[event["event_id"]] = event
                    self.stored_path[event["event_id"]] = handler.path
                    accepted += 1
            if self.drop_next > 0:
                self.drop_next -= 1
                record.status = 0
                handler.close_connection = True
                return None
            return _answer(handler, 200, {"accepted": accepted, "duplicates": duplicates})

    def successful_receipts(self) -> Counter[str]:
        return Counter(i for r in self.received if r.status == 200 for i in r.event_ids)


def _answer(
    handler: BaseHTTPRequestHandler,
    status: int,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(data)


@pytest.fixture
def server() -> Iterator[FakeMonitorServer]:
    fake = FakeMonitorServer()
    fake.release.set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                fake.handle(self)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield fake
    fake.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def dead_letter_path(tmp_path: Path) -> Path:
    return tmp_path / "client" / "dead-letter.jsonl"


@pytest.fixture
def make_client(dead_letter_path: Path) -> Iterator[Callable[..., MonitorClient]]:
    clients: list[MonitorClient] = []

    def make(url: str, **options: Any) -> MonitorClient:
        options = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "seed": 0,
                   "dead_letter_path": dead_letter_path, **options}
        client = MonitorClient(url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close(timeout_s=5)


def _inference(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": "cxr-triage",
        "model_version": "1.4.0",
        "study_uid": f"1.2.3.{i}",
        "prediction": {"scores": {"pneumothorax": 0.5}, "positive": False, "threshold": 0.5},
        **extra,
    }


# --- batching and routing --------------------------------------------------------------------


def test_batches_routes_and_authenticates(server, make_client) -> None:
    client = make_client(server.url, token="s3cret", batch_size=10, flush_interval_s=60)
    for i in range(35):
        client.log_inference(_inference(i))
    for i in range(3):
        client.log_override({"model": "cxr-triage", "study_uid": f"1.2.3.{i}", "reader": "r1"})
    assert client.flush(timeout_s=30)

    inference_batches = [len(r.event_ids) for r in server.received if r.path == INFERENCES_PATH]
    assert inference_batches == [10, 10, 10, 5]
    override_batches = [len(r.event_ids) for r in server.received if r.path == OVERRIDES_PATH]
    assert override_batches == [3]
    assert {r.authorization for r in server.received} == {"Bearer s3cret"}
    assert Counter(server.stored_path.values()) == {INFERENCES_PATH: 35, OVERRIDES_PATH: 3}
    stats = client.stats
    assert (stats["queued"], stats["sent"], stats["accepted"], stats["duplicates"]) == (
        38, 38, 38, 0,
    )  # fmt: skip
    assert stats["batches"] == 5
    for event in server.stored.values():  # filled in by the client
        assert len(event["event_id"]) == 36
        assert datetime.fromisoformat(event["timestamp"]).tzinfo is not None


def test_flush_interval_sends_without_flush(server, make_client) -> None:
    client = make_client(server.url, batch_size=1000, flush_interval_s=0.05)
    client.log_inference(_inference(0))
    # Wait on the server, not on a clock: the worker must send on its own.
    for _ in range(200):
        with server.lock:
            if server.stored:
                break
        threading.Event().wait(0.05)
    assert len(server.stored) == 1
    assert client.flush(timeout_s=10)


def test_event_fields_kept_and_not_mutated(server, make_client) -> None:
    client = make_client(server.url, flush_interval_s=60)
    event = _inference(1, event_id="fixed-id", timestamp=datetime(2026, 11, 22, 11, 0, tzinfo=_CET))
    original = dict(event)
    client.log_inference(event)
    assert event == original
    assert client.flush(timeout_s=30)
    stored = server.stored["fixed-id"]
    assert stored["timestamp"] == "2026-11-22T10:00:00Z"
    assert stored["prediction"] == event["prediction"]


_CET = timezone(timedelta(hours=1))


def test_invalid_events_raise_on_the_callers_thread(server, make_client) -> None:
    client = make_client(server.url, flush_interval_s=60)
    with pytest.raises(ValidationError) as raised:
        client.log_inference(["not", "a", "dict"])  # type: ignore[arg-type]
    assert raised.value.field == "event"
    with pytest.raises(ValidationError) as raised:
        client.log_override({"timestamp": datetime(2026, 1, 1)})  # naive
    assert raised.value.field == "timestamp"
    with pytest.raises(ValidationError) as raised:
        client.log_inference(_inference(0, embedding=np.zeros((2, 4))))
    assert raised.value.field == "embedding"
    assert client.stats["queued"] == 0


def test_unserialisable_event_is_rejected_alone(
    server, make_client, dead_letter_path, caplog
) -> None:
    client = make_client(server.url, flush_interval_s=60)
    client.log_inference(_inference(0, event_id="ok-1"))
    client.log_inference(_inference(1, event_id="broken", extra=object()))
    client.log_inference(_inference(2, event_id="ok-2", score=np.float32(0.25)))
    with caplog.at_level(logging.ERROR, logger="monitor_client.client"):
        assert client.flush(timeout_s=30)
    assert set(server.stored) == {"ok-1", "ok-2"}
    assert server.stored["ok-2"]["score"] == 0.25
    assert client.stats["rejected_events"] == 1
    assert "broken" in caplog.text
    assert client.stats["dead_lettered"] == 1
    (record,) = [json.loads(line) for line in dead_letter_path.read_text().splitlines()]
    assert record["event_id"] == "broken" and record["status"] is None
    assert record["reason"].startswith("cannot be sent as JSON")
    assert record["event"]["extra"].startswith("<object object")


# --- retries and idempotency -----------------------------------------------------------------


@pytest.mark.parametrize(("status", "retry_after"), [(503, None), (429, "0"), (500, None)])
def test_retries_until_delivered_exactly_once(server, make_client, status, retry_after) -> None:
    server.fail_next, server.fail_status, server.retry_after = 3, status, retry_after
    client = make_client(server.url, batch_size=100, flush_interval_s=60, max_retries=5)
    for i in range(20):
        client.log_inference(_inference(i))
    assert client.flush(timeout_s=30)
    assert len(server.received) == 4  # 3 failures, then the same batch again
    assert all(r.event_ids == server.received[0].event_ids for r in server.received)
    receipts = server.successful_receipts()
    assert len(receipts) == 20
    assert set(receipts.values()) == {1}
    stats = client.stats
    assert (stats["retries"], stats["sent"], stats["failed"], stats["duplicates"]) == (3, 20, 0, 0)


def test_lost_answer_is_retried_with_the_same_event_ids(server, make_client) -> None:
    server.drop_next = 1  # the server stores the batch, but the answer never arrives
    client = make_client(server.url, flush_interval_s=60)
    for i in range(5):
        client.log_inference(_inference(i))
    assert client.flush(timeout_s=30)
    assert [r.status for r in server.received] == [0, 200]
    assert server.received[0].event_ids == server.received[1].event_ids
    assert len(server.stored) == 5
    stats = client.stats
    assert (stats["retries"], stats["accepted"], stats["duplicates"], stats["sent"]) == (1, 0, 5, 5)


def test_outage_is_waited_out_past_max_retries(server, make_client, caplog) -> None:
    server.fail_next = 12  # 503s, far more than max_retries
    client = make_client(server.url, flush_interval_s=60, max_retries=2)
    for i in range(4):
        client.log_inference(_inference(i))
    with caplog.at_level(logging.WARNING, logger="monitor_client.client"):
        assert client.flush(timeout_s=30)
    assert len(server.received) == 13
    assert all(len(r.event_ids) == 4 for r in server.received)  # never split
    assert len(server.stored) == 4
    stats = client.stats
    assert (stats["failed"], stats["retries"], stats["sent"], stats["bisected"]) == (0, 12, 4, 0)
    assert "unavailable for 3 attempts" in caplog.text


def test_close_during_an_outage_dead_letters_for_replay(
    server, make_client, dead_letter_path, caplog
) -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = make_client(f"http://127.0.0.1:{port}", batch_size=2, flush_interval_s=60)
    for i in range(5):
        down.log_inference(_inference(i, event_id=f"e{i}"))
    assert not down.flush(timeout_s=0.3)
    with caplog.at_level(logging.WARNING, logger="monitor_client.client"):
        down.close(timeout_s=0.1)
    stats = down.stats
    assert (stats["unsent"], stats["dead_lettered"], stats["failed"]) == (5, 5, 0)
    records = [json.loads(line) for line in dead_letter_path.read_text().splitlines()]
    assert sorted(r["event_id"] for r in records) == [f"e{i}" for i in range(5)]
    assert {r["status"] for r in records} == {None}
    assert all(r["reason"] == "not sent before the client closed" for r in records)
    assert "1.2.3." not in caplog.text

    moved = dead_letter_path.with_name("replay.jsonl")
    dead_letter_path.rename(moved)
    up = make_client(server.url, flush_interval_s=60)
    with pytest.raises(ConfigError, match="move it aside"):
        up.replay_dead_letters(dead_letter_path)
    assert up.replay_dead_letters(moved) == 5
    assert up.flush(timeout_s=30)
    assert set(server.stored) == {f"e{i}" for i in range(5)}
    assert server.stored["e3"]["study_uid"] == "1.2.3.3"
    assert not dead_letter_path.exists()


def test_backoff_grows_exponentially_with_jitter() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(30.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, base_s=0.5, max_s=30.0, rng=rng) for _ in range(200)]
        assert min(delays) >= ceiling / 2
        assert max(delays) <= ceiling
        assert len(set(delays)) > 100  # jittered, not one fixed value
    assert backoff_delay(10_000, base_s=0.5, max_s=30.0, rng=rng) <= 30.0


# --- rejection and isolation -----------------------------------------------------------------


@pytest.mark.parametrize("name_indices", [True, False])
def test_422_isolates_the_bad_item(
    server, make_client, dead_letter_path, caplog, name_indices
) -> None:
    server.name_indices = name_indices
    client = make_client(server.url, flush_interval_s=60)
    ids = [f"event-{i}" for i in range(5)]
    for i, event_id in enumerate(ids):
        client.log_inference(_inference(i, event_id=event_id, bad=(i == 2)))
    with caplog.at_level(logging.WARNING, logger="monitor_client.client"):
        assert client.flush(timeout_s=30)
    if name_indices:  # the named item alone, then the rest together
        expected = [ids, ids[2:3], ids[:2] + ids[3:]]
    else:  # bisected: [0 1 | 2 3 4] -> [0 1] stored, [2 | 3 4] -> [2] alone, [3 4] stored
        expected = [ids, ids[:2], ids[2:], ids[2:3], ids[3:]]
    assert [r.event_ids for r in server.received] == expected
    assert set(server.stored) == {"event-0", "event-1", "event-3", "event-4"}
    stats = client.stats
    rejected_batches = 1 if name_indices else 2
    assert (stats["rejected"], stats["rejected_events"], stats["sent"]) == (rejected_batches, 1, 4)
    assert stats["bisected"] == (0 if name_indices else 2)
    assert stats["retries"] == 0
    assert "bad item" in caplog.text  # the server's message
    assert "event-2" in caplog.text
    assert "1.2.3.2" not in caplog.text  # event content (the study UID) is never logged
    assert stats["dead_lettered"] == 1
    (record,) = [json.loads(line) for line in dead_letter_path.read_text().splitlines()]
    assert (record["event_id"], record["endpoint"], record["status"]) == (
        "event-2", INFERENCES_PATH, 422,
    )  # fmt: skip
    assert "bad item" in record["reason"]
    assert record["event"]["study_uid"] == "1.2.3.2"
    assert datetime.fromisoformat(record["dead_lettered_at"]).tzinfo is not None
    assert stat.S_IMODE(dead_letter_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(dead_letter_path.parent.stat().st_mode) == 0o700


def test_401_is_neither_retried_nor_split(server, make_client, dead_letter_path) -> None:
    server.required_token = "right"
    client = make_client(server.url, token="wrong", flush_interval_s=60)
    for i in range(4):
        client.log_inference(_inference(i))
    assert client.flush(timeout_s=30)
    assert len(server.received) == 1
    stats = client.stats
    assert (stats["rejected"], stats["rejected_events"], stats["retries"]) == (1, 4, 0)
    assert not server.stored
    assert stats["dead_lettered"] == 4  # replayable once the token is fixed
    statuses = {json.loads(line)["status"] for line in dead_letter_path.read_text().splitlines()}
    assert statuses == {401}


# --- the caller's thread ---------------------------------------------------------------------


def test_full_buffer_drops_the_oldest(server, make_client, caplog) -> None:
    client = make_client(server.url, max_buffer=10, batch_size=1000, flush_interval_s=60)
    with caplog.at_level(logging.WARNING, logger="monitor_client.client"):
        for i in range(25):
            client.log_inference(_inference(i, event_id=f"e{i}"))
    assert client.stats["dropped"] == 15
    assert client.pending == 10
    assert "dropped the oldest 1; 1 dropped so far" in caplog.text
    assert client.flush(timeout_s=30)
    assert set(server.stored) == {f"e{i}" for i in range(15, 25)}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monitor_client.client"):
        client.close()
    assert "dropped the oldest 14; 15 dropped so far" in caplog.text  # the rest, not silent


class _ThreadRecordingClient(httpx.Client):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threads: set[str] = set()

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        self.threads.add(threading.current_thread().name)
        return super().send(request, **kwargs)


def test_logging_never_waits_for_a_blocked_server(server, make_client) -> None:
    server.release.clear()  # every request hangs until released
    http = _ThreadRecordingClient(timeout=60)
    client = make_client(server.url, batch_size=5, flush_interval_s=60, http_client=http)
    for i in range(50):
        client.log_inference(_inference(i))  # returns although the server never answers
    assert client.stats["queued"] == 50
    assert not client.flush(timeout_s=0.2)  # the server is still holding the first batch
    server.release.set()
    assert client.flush(timeout_s=30)
    assert len(server.stored) == 50
    assert http.threads == {"monitor-sdk-sender"}
    assert threading.current_thread().name not in http.threads
    http.close()


# --- closing ---------------------------------------------------------------------------------


def test_close_flushes_and_stops(server, make_client) -> None:
    client = make_client(server.url, batch_size=1000, flush_interval_s=60)
    for i in range(3):
        client.log_inference(_inference(i))
    client.close()
    assert len(server.stored) == 3
    assert not client._thread.is_alive()
    client.log_inference(_inference(9))  # after close: counted, not sent, no exception
    assert client.stats["unsent"] == 1
    client.close()  # idempotent


def test_context_manager_flushes(server) -> None:
    with MonitorClient(server.url, batch_size=1000, flush_interval_s=60) as client:
        client.log_override({"model": "m", "study_uid": "1.2", "radiologist_positive": True})
    assert len(server.stored) == 1
    assert not client._thread.is_alive()


def test_close_with_timeout_counts_unsent(server, make_client) -> None:
    server.release.clear()
    client = make_client(server.url, batch_size=2, flush_interval_s=60, timeout_s=1.0)
    for i in range(6):
        client.log_inference(_inference(i))
    client.close(timeout_s=0.2)
    server.release.set()
    stats = client.stats
    # The in-flight batch times out and is given up; the rest stays unsent. Nothing is lost
    # silently: every event is counted once.
    assert not client._thread.is_alive()
    assert stats["sent"] + stats["failed"] + stats["unsent"] == 6
    assert stats["unsent"] >= 4


def test_process_exit_flushes(server) -> None:
    script = textwrap.dedent(
        f"""
        from monitor_client.client import MonitorClient
        client = MonitorClient({server.url!r}, batch_size=1000, flush_interval_s=600)
        client.log_inference({{"model": "m", "event_id": "at-exit-1"}})
        client.log_override({{"model": "m", "event_id": "at-exit-2"}})
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, timeout=120)
    assert set(server.stored) == {"at-exit-1", "at-exit-2"}


# --- payload encoding ------------------------------------------------------------------------


def test_numpy_embedding_round_trip(server, make_client) -> None:
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal(257).astype(">f8")  # big-endian float64 in
    client = make_client(server.url, flush_interval_s=60)
    client.log_inference(_inference(0, event_id="np", embedding=embedding))
    client.log_inference(_inference(1, event_id="list", embedding=[0.5, -1.0]))
    assert client.flush(timeout_s=30)
    sent = server.stored["np"]["embedding"]
    assert isinstance(sent, str)
    decoded = decode_embedding(sent)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, embedding.astype(np.float32))
    assert server.stored["list"]["embedding"] == [0.5, -1.0]


def test_dicom_dataset_fills_scanner_patient_and_study(server, make_client) -> None:
    dataset = load_header(get_testdata_file("CT_small.dcm"), only_allowed_tags=False)
    client = make_client(server.url, flush_interval_s=60)
    client.log_inference(_inference(0, event_id="ct", study_uid=None), dicom=dataset)
    client.log_inference(
        {"event_id": "ct-site", "scanner": {"site": "north"}, "dicom": dataset}, site="ignored"
    )
    assert client.flush(timeout_s=30)
    event = server.stored["ct"]
    assert event["scanner"]["vendor"] == "GE"
    assert event["scanner"]["kvp"] == 120.0
    assert event["patient"]["id"] == "1CT1"  # raw; the service pseudonymises it
    assert event["study_uid"] == dataset.StudyInstanceUID
    assert "dicom" not in server.stored["ct-site"]
    assert server.stored["ct-site"]["scanner"]["site"] == "north"  # the event's own field wins
    assert server.stored["ct-site"]["scanner"]["model"] == "RHAPSODE"
    for request in server.received:
        assert b"CompressedSamples" not in request.body  # PatientName never leaves the client


@pytest.mark.parametrize(
    "options",
    [
        {"batch_size": 0}, {"max_buffer": 0}, {"flush_interval_s": 0}, {"timeout_s": -1},
        {"max_retries": -1}, {"backoff_base_s": -0.1},
    ],
)  # fmt: skip
def test_bad_options_raise_config_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(options))):
        MonitorClient("http://127.0.0.1:1", **options)


def test_bad_base_url_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        MonitorClient("monitor:8000")


def test_timestamps_are_utc(dead_letter_path: Path) -> None:
    client = MonitorClient("http://127.0.0.1:1", flush_interval_s=60, max_retries=0,
                           dead_letter_path=dead_letter_path)
    try:
        client.log_override({"model": "m"})
        item = client._queue[0]
        stamp = datetime.fromisoformat(item.event["timestamp"])
        assert stamp.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=5)
    finally:
        client.close(timeout_s=0.1)


# --- the dead-letter file --------------------------------------------------------------------


def test_dead_letter_file_is_bounded_and_private(
    server, make_client, dead_letter_path, caplog
) -> None:
    dead_letter_path.parent.mkdir(mode=0o700)
    dead_letter_path.write_bytes(b"")
    dead_letter_path.chmod(0o644)  # left readable by others: tightened on the next write
    client = make_client(server.url, flush_interval_s=60, dead_letter_max_bytes=700)
    for i in range(5):
        client.log_inference(_inference(i, event_id=f"bad-{i}", bad=True))
    with caplog.at_level(logging.WARNING, logger="monitor_client.client"):
        assert client.flush(timeout_s=30)
    stats = client.stats
    lines = dead_letter_path.read_bytes().splitlines(keepends=True)
    assert 1 <= len(lines) < 5
    assert sum(map(len, lines)) <= 700
    assert (stats["dead_lettered"], stats["dead_letter_dropped"]) == (len(lines), 5 - len(lines))
    assert stats["rejected_events"] == 5
    assert "is full or unwritable" in caplog.text
    assert f"bad-{len(lines)}" in caplog.text  # the dropped ones are named by event id
    assert stat.S_IMODE(dead_letter_path.stat().st_mode) == 0o600


def test_dead_letters_off_are_counted_and_logged(server, make_client, caplog) -> None:
    client = make_client(server.url, flush_interval_s=60, dead_letter_path=None)
    client.log_inference(_inference(0, event_id="good"))
    client.log_inference(_inference(1, event_id="bad", bad=True))
    with caplog.at_level(logging.WARNING, logger="monitor_client.client"):
        assert client.flush(timeout_s=30)
    assert (client.stats["dead_lettered"], client.stats["dead_letter_dropped"]) == (0, 1)
    assert "no dead-letter file is configured: 1 events" in caplog.text
    assert set(server.stored) == {"good"}
