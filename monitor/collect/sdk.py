"""HTTP client an inference server uses to log inferences and radiologist overrides.

Usage from an inference server::

    from monitor.collect.sdk import MonitorClient
    monitor = MonitorClient("http://monitor:8000", token=os.environ["MONITOR_TOKEN"])
    scores, embedding = model(image)  # the model's own forward pass
    monitor.log_inference({"model": "cxr-triage", "model_version": "1.4.0", "prediction":
                           {"scores": scores}, "embedding": embedding}, dicom=dataset)

``log_inference`` and ``log_override`` only put the event on an in-memory buffer and
return; one daemon thread sends it. Nothing on the caller's thread touches the network.

Choices a user should know:

- Bounded buffer, oldest dropped. When ``max_buffer`` events are queued (the server is
  down or slow), each new event pushes out the oldest queued one, counted in
  ``stats["dropped"]`` and logged as a warning (at most one warning per 10 s). The
  inference path never waits, and after an outage the events kept are the recent ones,
  which describe the state the detectors are watching now.
- Batches of up to ``batch_size`` events, sent when that many are queued, when
  ``flush_interval_s`` has passed since the first queued one, or on ``flush``/``close``.
  Bodies are JSON lists POSTed to ``/v1/inferences`` and ``/v1/overrides``.
- Retries on connection errors, timeouts, 408, 429 and 5xx: exponential backoff with
  jitter (``backoff_delay``), or the server's ``Retry-After``, at most ``max_retries``
  times; after that the batch is given up (``stats["failed"]``, logged as an error).
  Retries re-send the same ``event_id`` values; the server stores each event once and
  reports repeats as ``duplicates``, so a retry after a lost answer adds nothing twice.
- 400, 413 and 422: the server rejects a whole batch when one item is invalid. The client
  logs the server's message, counts the batch in ``stats["rejected"]`` and re-sends its
  items one at a time, so the valid events still arrive; an item rejected on its own is
  counted in ``stats["rejected_events"]`` and logged with its ``event_id``. Other 4xx
  answers (401, 403, 404, ...) would reject every item alike, so the batch is rejected
  whole without re-sending.
- Log messages name event IDs and the server's messages, never an event's content, so
  no patient ID or study UID reaches the logs.
- ``close`` flushes and stops the thread; it is registered with ``atexit`` (waiting at
  most ``exit_timeout_s``), so a normal process exit sends what is buffered.
- Embeddings given as numpy arrays (or torch tensors) travel in the compact form: base64 of
  little-endian float32 bytes (``encode_embedding``; the server side is
  ``decode_embedding``). Lists are sent as JSON lists.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import httpx
import numpy as np
from pydicom.dataset import Dataset

from monitor.collect.dicom import event_parts_from_dicom, load_header
from monitor.errors import ConfigError, ValidationError
from monitor.schema import encode_embedding

logger = logging.getLogger(__name__)

INFERENCES_PATH = "/v1/inferences"
OVERRIDES_PATH = "/v1/overrides"
_RETRY_STATUSES = frozenset({408, 429})  # and every 5xx
_ISOLATE_STATUSES = frozenset({400, 413, 422})
_DROP_WARNING_INTERVAL_S = 10.0
_STAT_KEYS = (
    "queued",  # events accepted by log_*
    "sent",  # events the server answered 2xx for
    "accepted",  # ... of which new to the server
    "duplicates",  # ... of which it already had (a retry after a lost answer)
    "dropped",  # pushed out of a full buffer
    "rejected",  # batches answered with a non-retryable 4xx
    "rejected_events",  # events the server refused
    "failed",  # events given up after max_retries
    "unsent",  # events still buffered when the client closed, or logged after close
    "retries",  # retry attempts
    "batches",  # successful POSTs
)


def backoff_delay(attempt: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait before retry ``attempt + 1`` (``attempt`` counts from 0).

    Drawn uniformly in ``[d/2, d]`` with ``d = min(max_s, base_s * 2**attempt)``: the fixed
    half keeps the exponential growth, the random half spreads out the retries of many
    clients that failed at the same moment, so they do not return together.
    """
    ceiling = min(max_s, base_s * 2.0 ** min(attempt, 62))
    return rng.uniform(ceiling / 2.0, ceiling)


@dataclass
class _Queued:
    path: str
    event_id: str
    event: dict[str, Any]
    body: bytes | None = None  # the event's JSON, made once on the sender thread


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    status: int | None = None  # the HTTP status of the last answer, None without one
    message: str = ""
    payload: Any = None
    stopped: bool = False  # the client was closed while retrying


class MonitorClient:
    """Buffered, batching, retrying sender of inference and override events."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        batch_size: int = 500,
        flush_interval_s: float = 2.0,
        max_buffer: int = 100_000,
        timeout_s: float = 10.0,
        max_retries: int = 8,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        exit_timeout_s: float = 30.0,
        http_client: httpx.Client | None = None,
        seed: int | None = None,
    ) -> None:
        _check_options(
            base_url=base_url,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
            max_buffer=max_buffer,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            exit_timeout_s=exit_timeout_s,
        )
        self.base_url = base_url.rstrip("/")
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.exit_timeout_s = exit_timeout_s
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client(timeout=timeout_s)
        self._rng = random.Random(seed)

        self._cond = threading.Condition()
        self._queue: deque[_Queued] = deque()
        self._in_flight = 0
        self._flush_requests = 0
        self._stopping = False
        self._closed = False
        self._abort = threading.Event()  # set when close gives up waiting: stop retrying
        self._stats = dict.fromkeys(_STAT_KEYS, 0)
        self._last_drop_warning = -_DROP_WARNING_INTERVAL_S
        self._thread = threading.Thread(target=self._run, name="monitor-sdk-sender", daemon=True)
        self._thread.start()
        atexit.register(self._close_at_exit)

    # --- caller side: never blocks on the network ------------------------------------------

    def log_inference(
        self,
        event: Mapping[str, Any],
        *,
        dicom: Dataset | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        site: str | Mapping[str, str] | None = None,
    ) -> None:
        """Queue an inference event and return.

        ``dicom`` (a pydicom Dataset, a DICOM JSON dict, or a file path, which is then read
        on the caller's thread; a Dataset under the event's ``"dicom"`` key works too)
        fills ``scanner``, ``patient`` and ``study_uid`` through ``monitor.collect.dicom``;
        fields the event already gives win. A numpy or torch
        ``embedding`` is sent base64-encoded. Raises ``ValidationError`` for a malformed
        event or header, before anything is queued.
        """
        prepared = _prepare(event)
        if dicom is None and isinstance(prepared.get("dicom"), Dataset):
            dicom = prepared.pop("dicom")
        if dicom is not None:
            _fill_from_dicom(prepared, dicom, site=site)
        embedding = prepared.get("embedding")
        if embedding is not None and not isinstance(embedding, list | str):
            prepared["embedding"] = (
                list(embedding) if isinstance(embedding, tuple) else encode_embedding(embedding)
            )
        self._enqueue(INFERENCES_PATH, prepared)

    def log_override(self, event: Mapping[str, Any]) -> None:
        """Queue a radiologist override (read) event and return."""
        self._enqueue(OVERRIDES_PATH, _prepare(event))

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything queued so far has been dealt with (sent, rejected or given
        up); False if ``timeout_s`` passed first. ``stats`` tells which."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            self._flush_requests += 1
            self._cond.notify_all()
            try:
                while self._queue or self._in_flight:
                    if not self._thread.is_alive():
                        return False
                    if deadline is None:
                        self._cond.wait(1.0)  # re-check the thread now and then
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._flush_requests -= 1

    def close(self, timeout_s: float | None = None) -> None:
        """Flush (waiting at most ``timeout_s``), then stop the sender thread. Events still
        buffered after that are counted in ``stats["unsent"]`` and logged."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self._close_at_exit)
        drained = self.flush(timeout_s)
        if not drained:
            self._abort.set()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(None if drained else self.timeout_s + 1.0)
        with self._cond:  # a batch still in flight is counted by the sender when it ends
            unsent = len(self._queue)
            self._queue.clear()
            self._stats["unsent"] += unsent
        if unsent:
            logger.warning("monitor client closed with %d events unsent", unsent)
        if self._owns_http and not self._thread.is_alive():
            self._http.close()

    def __enter__(self) -> MonitorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the counters (see ``_STAT_KEYS`` for their meaning)."""
        with self._cond:
            return dict(self._stats)

    @property
    def pending(self) -> int:
        """Events queued or being sent."""
        with self._cond:
            return len(self._queue) + self._in_flight

    def _close_at_exit(self) -> None:
        self.close(timeout_s=self.exit_timeout_s)

    def _enqueue(self, path: str, event: dict[str, Any]) -> None:
        item = _Queued(path=path, event_id=str(event["event_id"]), event=event)
        warn_dropped = closed = False
        with self._cond:
            if self._closed:
                self._stats["unsent"] += 1
                closed = True
            else:
                if len(self._queue) >= self.max_buffer:
                    self._queue.popleft()
                    self._stats["dropped"] += 1
                    now = time.monotonic()
                    if now - self._last_drop_warning >= _DROP_WARNING_INTERVAL_S:
                        self._last_drop_warning = now
                        warn_dropped = True
                self._queue.append(item)
                self._stats["queued"] += 1
                if len(self._queue) == 1 or len(self._queue) >= self.batch_size:
                    self._cond.notify_all()
            dropped = self._stats["dropped"]
        if closed:
            logger.warning("monitor client is closed; event %s not sent", item.event_id)
        if warn_dropped:
            logger.warning(
                "monitor buffer full (%d events): dropping the oldest; %d dropped so far",
                self.max_buffer,
                dropped,
            )

    # --- sender thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._send_batch(batch)
            except Exception:  # the thread must outlive a bug in one batch
                logger.exception("monitor client failed to send %d events", len(batch))
                self._count("failed", len(batch))
            finally:
                with self._cond:
                    self._in_flight = 0
                    self._cond.notify_all()

    def _next_batch(self) -> list[_Queued] | None:
        with self._cond:
            deadline: float | None = None
            while True:
                if self._abort.is_set():
                    return None
                queued = len(self._queue)
                if queued == 0:
                    if self._stopping:
                        return None
                    deadline = None
                    self._cond.wait()
                    continue
                if queued >= self.batch_size or self._flush_requests or self._stopping:
                    break
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.flush_interval_s
                if now >= deadline:
                    break
                self._cond.wait(deadline - now)
            count = min(queued, self.batch_size)
            batch = [self._queue.popleft() for _ in range(count)]
            self._in_flight = count
            return batch

    def _send_batch(self, batch: list[_Queued]) -> None:
        for path in (INFERENCES_PATH, OVERRIDES_PATH):
            items = [item for item in batch if item.path == path and self._serialise(item)]
            if items:
                self._deliver(path, items, isolate=True)

    def _serialise(self, item: _Queued) -> bool:
        if item.body is None:
            try:
                text = json.dumps(
                    item.event, default=_json_default, separators=(",", ":"), allow_nan=False
                )
            except (TypeError, ValueError) as error:
                logger.error("event %s cannot be sent as JSON: %s", item.event_id, error)
                self._count("rejected_events", 1)
                return False
            item.body = text.encode("utf-8")
        return True

    def _deliver(self, path: str, items: list[_Queued], *, isolate: bool) -> None:
        outcome = self._post(path, items)
        if outcome.ok:
            self._record_success(outcome.payload, len(items))
            return
        if outcome.stopped:
            self._count("unsent", len(items))
            return
        if outcome.status is None:
            logger.error(
                "giving up on %d events to %s (%s); first event %s",
                len(items),
                path,
                outcome.message,
                items[0].event_id,
            )
            self._count("failed", len(items))
            return
        if len(items) > 1:
            self._count("rejected", 1)
        if isolate and len(items) > 1 and outcome.status in _ISOLATE_STATUSES:
            logger.warning(
                "server rejected a batch of %d events to %s (%d: %s); re-sending one by one",
                len(items),
                path,
                outcome.status,
                outcome.message,
            )
            for item in items:
                self._deliver(path, [item], isolate=False)
            return
        logger.error(
            "server rejected %d events to %s (%d: %s); event ids %s",
            len(items),
            path,
            outcome.status,
            outcome.message,
            ", ".join(item.event_id for item in items[:10]) + (" ..." if len(items) > 10 else ""),
        )
        self._count("rejected_events", len(items))

    def _post(self, path: str, items: list[_Queued]) -> _Outcome:
        body = b"[" + b",".join(item.body or b"null" for item in items) + b"]"
        url = self.base_url + path
        attempt = 0
        while True:
            if self._abort.is_set():
                return _Outcome(ok=False, stopped=True, message="client closed")
            retry_after: float | None = None
            try:
                response = self._http.post(url, content=body, headers=self._headers)
            except httpx.TransportError as error:  # connect, read, protocol errors, timeouts
                message = f"{type(error).__name__}: {error}"
            else:
                if response.is_success:
                    return _Outcome(ok=True, status=response.status_code, payload=_json(response))
                message = f"{response.status_code}: {_server_message(response)}"
                if response.status_code not in _RETRY_STATUSES and response.status_code < 500:
                    return _Outcome(
                        ok=False, status=response.status_code, message=_server_message(response)
                    )
                retry_after = _retry_after_s(response)
            if attempt >= self.max_retries:
                return _Outcome(ok=False, message=f"{attempt + 1} attempts, last {message}")
            delay = retry_after
            if delay is None:
                delay = backoff_delay(
                    attempt, base_s=self.backoff_base_s, max_s=self.backoff_max_s, rng=self._rng
                )
            delay = min(delay, self.backoff_max_s)
            self._count("retries", 1)
            logger.info(
                "POST %s failed (%s); retry %d in %.2f s", path, message, attempt + 1, delay
            )
            if self._abort.wait(delay):
                return _Outcome(ok=False, stopped=True, message="client closed")
            attempt += 1

    def _record_success(self, payload: Any, count: int) -> None:
        with self._cond:
            self._stats["sent"] += count
            self._stats["batches"] += 1
            if isinstance(payload, Mapping):
                for key in ("accepted", "duplicates"):
                    value = payload.get(key)
                    if isinstance(value, int) and not isinstance(value, bool):
                        self._stats[key] += value

    def _count(self, key: str, n: int) -> None:
        with self._cond:
            self._stats[key] += n


def _check_options(**options: Any) -> None:
    base_url = options.pop("base_url")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"base_url {base_url!r} must start with http:// or https://")
    for name in ("batch_size", "max_buffer"):
        if options[name] < 1:
            raise ConfigError(f"{name} {options[name]!r} must be at least 1")
    for name in ("flush_interval_s", "timeout_s", "exit_timeout_s"):
        if not options[name] > 0:
            raise ConfigError(f"{name} {options[name]!r} must be positive")
    for name in ("max_retries", "backoff_base_s", "backoff_max_s"):
        if not options[name] >= 0:
            raise ConfigError(f"{name} {options[name]!r} must not be negative")


def _prepare(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the event with ``event_id`` and ``timestamp`` filled in."""
    if not isinstance(event, Mapping):
        raise ValidationError(f"event must be a dict, got {type(event).__name__}", field="event")
    prepared = dict(event)
    if prepared.get("event_id") is None:
        prepared["event_id"] = str(uuid.uuid4())
    else:
        prepared["event_id"] = str(prepared["event_id"])
    timestamp = prepared.get("timestamp")
    if timestamp is None:
        prepared["timestamp"] = _utc_iso(datetime.now(UTC))
    elif isinstance(timestamp, datetime):
        if timestamp.tzinfo is None or timestamp.utcoffset() is None:
            raise ValidationError(
                f"timestamp {timestamp.isoformat()} has no time zone", field="timestamp"
            )
        prepared["timestamp"] = _utc_iso(timestamp)
    return prepared


def _fill_from_dicom(
    event: dict[str, Any],
    dicom: Dataset | Mapping[str, Any] | str | os.PathLike[str],
    *,
    site: str | Mapping[str, str] | None,
) -> None:
    header = dicom if isinstance(dicom, Dataset | Mapping) else load_header(dicom)
    parts = event_parts_from_dicom(header, site=site)
    for key in ("scanner", "patient"):
        given = event.get(key)
        if given is None:
            event[key] = parts[key]
        elif isinstance(given, Mapping):
            merged = dict(parts[key])
            merged.update({k: v for k, v in given.items() if v is not None})
            event[key] = merged
    if event.get("study_uid") is None:
        event["study_uid"] = parts["study_uid"]


def _utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TypeError(f"datetime {value.isoformat()} has no time zone")
        return _utc_iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _server_message(response: httpx.Response) -> str:
    """The server's error message, flattened: FastAPI's ``{"detail": ...}`` or the text."""
    payload = _json(response)
    detail = payload.get("detail") if isinstance(payload, Mapping) else None
    if isinstance(detail, list):
        parts = []
        for entry in detail:
            if isinstance(entry, Mapping):
                where = ", ".join(
                    f"{key} {entry[key]}" for key in ("index", "field", "loc") if key in entry
                )
                parts.append(f"{where}: {entry.get('message', entry.get('msg', ''))}")
            else:
                parts.append(str(entry))
        message = "; ".join(parts)
    elif detail is not None:
        message = str(detail)
    else:
        message = response.text
    return message[:1000]


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:  # the HTTP-date form: use our own backoff instead
        return None
