"""The SDK never loses good events for a bad one.

Against the real API (uvicorn on loopback, SQLite and PostgreSQL): a batch of 500 poisoned
with one event of a bad-input class stores the 499 good ones; the bad one is either refused
(4xx, or a server error isolated by bisection) and dead-lettered with its reason, or, where
the server still accepts that class, stored. Around the bisection, unit tests with a fake
transport count the requests and check that an outage is waited out, never split.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from monitor_client.client import INFERENCES_PATH, MonitorClient
from sqlalchemy import select

from monitor.api import create_app
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.models import Inference
from tests.factories import inference_event
from tests.servers import running_app

MAX_RETRIES = 2
FAST = {"backoff_base_s": 0.001, "backoff_max_s": 0.01, "seed": 0}


def _scanner(**fields: Any) -> dict[str, Any]:
    return {**inference_event()["scanner"], **fields}


# Each class changes one part of an otherwise valid event.
BAD_INPUT: dict[str, dict[str, Any]] = {
    "embedding_length": {"embedding": [0.25] * 8},  # the version expects 16
    "embedding_not_base64": {"embedding": "not base64!"},
    "nan_score": {"prediction": {"scores": {"pneumothorax": float("nan")}}},
    "infinite_extra_key": {"scanner": _scanner(contrast=float("inf"))},
    "score_out_of_range": {"prediction": {"scores": {"pneumothorax": 7.0}}},
    "boolean_score": {"prediction": {"scores": {"pneumothorax": True}}},
    "boolean_kvp": {"scanner": _scanner(kvp=True)},
    "timestamp_before_1990": {"timestamp": "1900-01-01T00:00:00Z"},
    "timestamp_offset_overflows_low": {"timestamp": "0001-01-01T00:00:00+14:00"},
    "timestamp_offset_overflows_high": {"timestamp": "9999-12-31T23:59:59-14:00"},
    "timestamp_as_number": {"timestamp": 1_764_000_000},
    "control_character_in_event_id": {"event_id": "poison\x07\nid"},
    "nul_in_event_id": {"event_id": "poison\x00id"},
    "nul_in_site": {"scanner": _scanner(site="north\x00")},
    "zero_width_in_study_uid": {"study_uid": "1.2.840\u200b.1"},
    "event_id_too_long": {"event_id": "e" * 200},
    "oversize_site": {"scanner": _scanner(site="x" * 5_000)},
    "oversize_extra_key": {"scanner": _scanner(notes="x" * 200_000)},
    "integer_beyond_64_bits": {"scanner": _scanner(series=2**70)},
    "unknown_field": {"colour": "red"},
    "missing_prediction": {"prediction": None},
}


def _stored_event_ids(runtime: Runtime) -> set[str]:
    with session_scope(runtime.sessions) as session:
        return set(session.scalars(select(Inference.event_id)))


def _dead_letters(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _poisoned_batch(classes: list[str], size: int = 500) -> tuple[list[dict], dict[str, str]]:
    """``size`` events with one bad event per class spread through them; returns the events
    and, per class, the bad event's id."""
    events = [inference_event(event_id=f"good-{i}") for i in range(size - len(classes))]
    bad_ids = {}
    for number, name in enumerate(classes):
        bad = inference_event(**{"event_id": f"bad-{name}", **BAD_INPUT[name]})
        bad_ids[name] = bad["event_id"]
        events.insert((number * 137 + 311) % (len(events) + 1), bad)
    return events, bad_ids


def _send_poisoned(
    runtime: Runtime, dead_letter_path: Path, classes: list[str]
) -> tuple[MonitorClient, list[dict], dict[str, str]]:
    events, bad_ids = _poisoned_batch(classes)
    with running_app(create_app(runtime)) as url:
        client = MonitorClient(url, batch_size=500, flush_interval_s=60, max_retries=MAX_RETRIES,
                               dead_letter_path=dead_letter_path, **FAST)
        try:
            client.log_inference(inference_event(event_id="registers-the-version"))
            assert client.flush(timeout_s=60)
            for event in events:
                client.log_inference(event)
            assert client.flush(timeout_s=300)
        finally:
            client.close()
    return client, events, bad_ids


def _check_nothing_good_lost(
    runtime: Runtime, client: MonitorClient, dead_letter_path: Path, events: list[dict],
    bad_ids: dict[str, str],
) -> None:
    stored = _stored_event_ids(runtime)
    good = {event["event_id"] for event in events} - set(bad_ids.values())
    assert good <= stored  # every good event arrived
    letters = {letter["event_id"]: letter for letter in _dead_letters(dead_letter_path)}
    for name, bad_id in bad_ids.items():
        if bad_id in letters:  # refused, or isolated by bisection: never stored
            letter = letters[bad_id]
            assert bad_id not in stored, name
            assert letter["endpoint"] == INFERENCES_PATH
            assert letter["reason"], name
            assert letter["status"] is None or 400 <= letter["status"] < 600, name
            assert letter["event"]["event_id"] == bad_id
        else:  # the server (still) takes this class as valid
            assert bad_id in stored, f"{name}: neither stored nor dead-lettered"
    stats = client.stats
    assert set(letters) <= set(bad_ids.values())  # no good event was dead-lettered
    assert stats["dead_lettered"] == len(letters) == stats["rejected_events"]
    assert (stats["failed"], stats["dropped"], stats["unsent"]) == (0, 0, 0)
    assert stats["sent"] + stats["rejected_events"] == len(events) + 1


@pytest.mark.parametrize("bad_class", sorted(BAD_INPUT))
def test_one_bad_event_never_costs_the_499_good_ones(
    runtime: Runtime, tmp_path: Path, bad_class: str
) -> None:
    dead_letter_path = tmp_path / "client" / "dead-letter.jsonl"
    client, events, bad_ids = _send_poisoned(runtime, dead_letter_path, [bad_class])
    assert len(events) == 500
    _check_nothing_good_lost(runtime, client, dead_letter_path, events, bad_ids)


def test_every_bad_class_in_one_batch(runtime: Runtime, tmp_path: Path) -> None:
    dead_letter_path = tmp_path / "client" / "dead-letter.jsonl"
    client, events, bad_ids = _send_poisoned(runtime, dead_letter_path, sorted(BAD_INPUT))
    _check_nothing_good_lost(runtime, client, dead_letter_path, events, bad_ids)
    letters = _dead_letters(dead_letter_path)
    # refused today whatever the rest of the input contract says
    refused = {"embedding_length", "nan_score", "infinite_extra_key", "score_out_of_range",
               "timestamp_offset_overflows_low", "timestamp_offset_overflows_high",
               "event_id_too_long", "oversize_site", "unknown_field", "missing_prediction"}
    assert {bad_ids[name] for name in refused} <= {letter["event_id"] for letter in letters}


# --- the bisection, against a fake transport --------------------------------------------------


@dataclass
class FakeServer:
    """Answers POSTs by the rule given, and the readiness probe as told; records requests."""

    answer: Callable[[list[dict[str, Any]]], int]  # events -> HTTP status (or 0: refuse)
    ready: Callable[[], int] = lambda: 200  # status of GET /readyz (0: refuse the connection)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    posts: list[list[str]] = field(default_factory=list)
    probes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            if request.method == "GET":
                self.probes += 1
                status = self.ready()
                if status == 0:
                    raise httpx.ConnectError("connection refused", request=request)
                return httpx.Response(status, json={"status": "?"})
            events = json.loads(request.content)
            self.posts.append([event["event_id"] for event in events])
            status = self.answer(events)
            if status == 0:
                raise httpx.ConnectError("connection refused", request=request)
            if status != 200:
                return httpx.Response(status, json={"detail": "internal error"})
            new = [event for event in events if event["event_id"] not in self.stored]
            self.stored.update((event["event_id"], event) for event in new)
            return httpx.Response(200, json={"accepted": len(events), "new": len(new),
                                             "duplicates": len(events) - len(new)})


@pytest.fixture
def fake_client(tmp_path: Path) -> Iterator[Callable[[FakeServer], MonitorClient]]:
    clients: list[MonitorClient] = []

    def make(server: FakeServer, **options: Any) -> MonitorClient:
        http = httpx.Client(transport=httpx.MockTransport(server.handle))
        options = {"batch_size": 10_000, "flush_interval_s": 60, "max_retries": MAX_RETRIES,
                   "dead_letter_path": tmp_path / "dead-letter.jsonl", "http_client": http,
                   **FAST, **options}
        client = MonitorClient("http://monitor.test", **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close(timeout_s=5)


def _log(client: MonitorClient, n: int) -> list[str]:
    ids = [f"e{i}" for i in range(n)]
    for event_id in ids:
        client.log_inference({"event_id": event_id, "model": "m", "study_uid": f"1.2.{event_id}"})
    return ids


def _fails_on(*poison: str) -> Callable[[list[dict[str, Any]]], int]:
    return lambda events: 500 if any(e["event_id"] in poison for e in events) else 200


@pytest.mark.parametrize(("n", "poison_at"), [(1, 0), (2, 1), (37, 0), (512, 300), (1000, 999)])
def test_bisection_isolates_a_poison_event_in_log_n_requests(
    fake_client, tmp_path: Path, n: int, poison_at: int, caplog
) -> None:
    server = FakeServer(answer=_fails_on(f"e{poison_at}"))
    client = fake_client(server)
    with caplog.at_level(logging.INFO, logger="monitor_client.client"):
        ids = _log(client, n)
        assert client.flush(timeout_s=60)
    assert set(server.stored) == set(ids) - {f"e{poison_at}"}
    # the whole batch and the lone event get their retries; each level of the split costs 2
    bound = 2 * (MAX_RETRIES + 1) + 2 * math.ceil(math.log2(n)) if n > 1 else MAX_RETRIES + 1
    assert len(server.posts) <= bound
    (letter,) = _dead_letters(tmp_path / "dead-letter.jsonl")
    assert (letter["event_id"], letter["status"]) == (f"e{poison_at}", 500)
    assert letter["reason"].startswith("server error")
    stats = client.stats
    assert (stats["sent"], stats["rejected_events"], stats["dead_lettered"]) == (n - 1, 1, 1)
    assert stats["failed"] == 0
    assert f"1.2.e{poison_at}" not in caplog.text  # event content is never logged
    if n > 1:
        assert "bisecting" in caplog.text


def test_two_poison_events_in_different_halves(fake_client, tmp_path: Path) -> None:
    server = FakeServer(answer=_fails_on("e3", "e90"))
    client = fake_client(server)
    ids = _log(client, 100)
    assert client.flush(timeout_s=60)
    assert set(server.stored) == set(ids) - {"e3", "e90"}
    letters = _dead_letters(tmp_path / "dead-letter.jsonl")
    assert sorted(letter["event_id"] for letter in letters) == ["e3", "e90"]


@pytest.mark.parametrize("probe", ["readyz", "healthz only"])
def test_bisects_when_the_probe_answers(fake_client, probe: str) -> None:
    # a server without /readyz answers 404 there; /healthz is asked next
    statuses = iter([404, 200] * 100) if probe == "healthz only" else iter([200] * 100)
    server = FakeServer(answer=_fails_on("e5"), ready=lambda: next(statuses))
    client = fake_client(server)
    _log(client, 16)
    assert client.flush(timeout_s=60)
    assert len(server.stored) == 15
    assert client.stats["bisected"] > 0


def test_outage_is_never_split_and_loses_nothing(fake_client, tmp_path: Path, caplog) -> None:
    answers = iter([0] * 6 + [503] * 6)  # connection refused, then 503, then up
    server = FakeServer(answer=lambda events: next(answers, 200))
    client = fake_client(server, batch_size=50)
    with caplog.at_level(logging.WARNING, logger="monitor_client.client"):
        ids = _log(client, 120)
        assert client.flush(timeout_s=60)
    assert set(server.stored) == set(ids)
    assert [len(p) for p in server.posts[:13]] == [50] * 13  # retried whole, never halved
    stats = client.stats
    assert (stats["bisected"], stats["dead_lettered"], stats["failed"]) == (0, 0, 0)
    assert (stats["sent"], stats["retries"]) == (120, 12)
    assert not (tmp_path / "dead-letter.jsonl").exists()
    assert "unavailable for 3 attempts" in caplog.text


def test_server_errors_while_the_server_is_not_ready_are_waited_out(
    fake_client, tmp_path: Path
) -> None:
    broken = {"posts": 0}

    def answer(events: list[dict[str, Any]]) -> int:  # 500 for everything, then recovered
        broken["posts"] += 1
        return 500 if broken["posts"] <= 3 * (MAX_RETRIES + 1) else 200

    server = FakeServer(answer=answer,
                        ready=lambda: 503 if broken["posts"] <= 3 * (MAX_RETRIES + 1) else 200)
    client = fake_client(server)
    ids = _log(client, 64)
    assert client.flush(timeout_s=60)
    assert set(server.stored) == set(ids)
    assert {len(p) for p in server.posts} == {64}  # not split: the server was not answering
    assert server.probes >= 3
    assert (client.stats["bisected"], client.stats["dead_lettered"]) == (0, 0)
    assert not (tmp_path / "dead-letter.jsonl").exists()


def test_an_item_named_in_a_batch_is_tried_alone_before_dead_lettering(
    fake_client, tmp_path: Path
) -> None:
    """A 422 that names items is taken as a hint, not a verdict: an item invalid only beside
    the others (here e1, refused in any batch larger than one) is stored when sent alone."""
    posts: list[list[str]] = []
    stored: set[str] = set()

    def handle(request: httpx.Request) -> httpx.Response:
        ids = [event["event_id"] for event in json.loads(request.content)]
        posts.append(ids)
        named = [{"index": i, "field": "x", "message": "bad"} for i, event_id in enumerate(ids)
                 if event_id == "e7" or (event_id == "e1" and len(ids) > 1)]
        if named:
            return httpx.Response(422, json={"detail": named})
        stored.update(ids)
        return httpx.Response(200, json={"accepted": len(ids)})

    client = fake_client(FakeServer(answer=lambda events: 200),
                         http_client=httpx.Client(transport=httpx.MockTransport(handle)))
    ids = _log(client, 40)
    assert client.flush(timeout_s=60)
    assert stored == set(ids) - {"e7"}
    assert posts[1:] == [["e1"], ["e7"], [i for i in ids if i not in ("e1", "e7")]]
    (letter,) = _dead_letters(tmp_path / "dead-letter.jsonl")
    assert (letter["event_id"], letter["status"]) == ("e7", 422)
    assert client.stats["bisected"] == 0


def test_a_server_naming_one_bad_item_at_a_time_is_bisected_past_a_few_rounds(
    fake_client, tmp_path: Path
) -> None:
    """Each answer names only the first invalid item: the named rounds are bounded, then the
    rest is bisected, so many bad events neither recurse without end nor cost the good ones."""
    stored: set[str] = set()

    def handle(request: httpx.Request) -> httpx.Response:
        ids = [event["event_id"] for event in json.loads(request.content)]
        bad = [i for i, event_id in enumerate(ids) if int(event_id[1:]) % 2]
        if bad:
            return httpx.Response(422, json={"detail": [{"index": bad[0], "message": "odd"}]})
        stored.update(ids)
        return httpx.Response(200, json={"accepted": len(ids)})

    client = fake_client(FakeServer(answer=lambda events: 200),
                         http_client=httpx.Client(transport=httpx.MockTransport(handle)))
    ids = _log(client, 2_000)
    assert client.flush(timeout_s=120)
    assert stored == {event_id for event_id in ids if int(event_id[1:]) % 2 == 0}
    assert client.stats["dead_lettered"] == 1_000
    assert client.stats["failed"] == 0
    assert len(_dead_letters(tmp_path / "dead-letter.jsonl")) == 1_000
