"""HTTP client an inference server uses to log inferences and radiologist overrides.

Usage from an inference server::

    from monitor_client import MonitorClient
    monitor = MonitorClient("http://monitor:8000", token=os.environ["MONITOR_TOKEN"])
    scores, embedding = model(image)  # the model's own forward pass
    monitor.log_inference({"model": "cxr-triage", "model_version": "1.4.0", "prediction":
                           {"scores": scores}, "embedding": embedding}, dicom=dataset)

``log_inference`` and ``log_override`` only put the event on an in-memory buffer and
return; one daemon thread sends it. Nothing on the caller's thread touches the network.

Choices a user should know:

- Bounded buffer, oldest dropped. When ``max_buffer`` events are queued (the server is
  down or slow), each new event pushes out the oldest queued one, counted in
  ``stats["dropped"]`` and logged as a warning (at most one warning per 10 s, and a last
  one with the total when drops stop or the client closes). The inference path never
  waits, and after an outage the events kept are the recent ones, which describe the state
  the detectors are watching now.
- Batches of up to ``batch_size`` events, sent when that many are queued, when
  ``flush_interval_s`` has passed since the first queued one, or on ``flush``/``close``.
  Bodies are JSON lists POSTed to ``/v1/inferences`` and ``/v1/overrides``.
- Outages (connection errors, timeouts, 408, 429, 503) are retried with exponential
  backoff and jitter (``backoff_delay``), or after the server's ``Retry-After``, for as long
  as the outage lasts: the batch is never split or given up while the client is open, and
  new events wait in the bounded buffer. A warning is logged once an outage has lasted
  ``max_retries`` attempts. Retries re-send the same ``event_id`` values; the server stores
  each event once and reports repeats as ``duplicates``, so a retry after a lost answer adds
  nothing twice.
- Other 5xx answers (500, 502, 504, ...) are retried ``max_retries`` times. If the batch
  still fails while the server answers (``GET /readyz``, or ``/healthz`` where there is no
  ``/readyz``), some event in it triggers a server error: the batch is bisected, halves are
  sent on their own (recursively, without waiting between them), so the good events are
  stored and the bad one is isolated in about ``2 * log2(batch_size)`` requests. A lone
  event that still fails after its own ``max_retries`` retries is dead-lettered. If the
  server does not answer the probe, it is treated as an outage: nothing is split.
- 400, 413 and 422: the server rejects a whole batch when one item is invalid (or the body
  is too large). The client logs the server's message and counts the batch in
  ``stats["rejected"]``. Where the answer names the invalid items (``{"detail": [{"index":
  i, ...}]}``), each of them is re-sent alone and the rest as one batch; otherwise the batch
  is bisected the same way as above (k invalid events in a batch of n cost about
  ``2 * k * log2(n)`` requests). Either way the valid events still arrive, and an item
  rejected on its own is counted in ``stats["rejected_events"]`` and dead-lettered. Other 4xx
  answers (401, 403, 404, ...) would reject every item alike, so the batch is dead-lettered
  whole without re-sending (fix the token or URL, then replay). An event that cannot be
  written as JSON (NaN, an unknown type) never leaves the client: it is rejected and
  dead-lettered as well as it can be written (``NaN`` literals, ``repr`` of odd values).
- Dead letters: events that cannot be stored go to ``dead_letter_path`` (JSON lines, one
  record per event: ``event_id``, ``endpoint``, ``status``, ``reason``,
  ``dead_lettered_at`` and the ``event`` as sent), created with mode 0600 in a 0700
  directory, opened for each append so that a purged file is simply created again. The
  default is ``.monitor/dead-letter.jsonl`` under the working directory at construction;
  ``None`` turns the file off. The file holds at most ``dead_letter_max_bytes``; further
  dead letters are dropped, counted in ``stats["dead_letter_dropped"]`` and logged as a
  warning. Events still buffered when ``close`` gives up waiting (an outage at shutdown)
  are dead-lettered too, so that they can be replayed (``replay_dead_letters``). The file
  holds raw identifiers (study UIDs, patient IDs: only the server pseudonymises): protect
  it and purge it once replayed.
- Log messages name event IDs and the server's messages, never an event's content, so
  no patient ID or study UID reaches the logs.
- ``close`` flushes (waiting at most ``exit_timeout_s`` unless told otherwise) and stops
  the thread; it is registered with ``atexit``, so a normal process exit sends what is
  buffered.
- Embeddings given as numpy arrays (or torch tensors) travel in the compact form: base64 of
  little-endian float32 bytes (``monitor_client.codec``). Lists are sent as JSON lists.
- A DICOM header (``dicom=``) needs pydicom (the ``[dicom]`` extra); only the allow-listed
  tags of ``monitor_client.dicom`` are read.

Every queued event ends in exactly one of ``sent``, ``rejected_events``, ``failed``,
``unsent`` and ``dropped``; ``dead_lettered`` and ``dead_letter_dropped`` say where the
rejected and unsent ones went.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import stat
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

import httpx

from monitor_client.codec import encode_embedding
from monitor_client.errors import ConfigError, ValidationError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

_UTC = timezone.utc

logger = logging.getLogger(__name__)

INFERENCES_PATH = "/v1/inferences"
OVERRIDES_PATH = "/v1/overrides"
PROBE_PATHS = ("/readyz", "/healthz")  # the first the server has; 404 moves to the next
DEFAULT_DEAD_LETTER_PATH = Path(".monitor") / "dead-letter.jsonl"
DEFAULT_DEAD_LETTER_MAX_BYTES = 64 * 1024 * 1024
_OUTAGE_STATUSES = frozenset({408, 429, 503})  # the server is away or busy: wait, never split
_ISOLATE_STATUSES = frozenset({400, 413, 422})  # some item is invalid: bisect
_MAX_NAMED_ROUNDS = 16  # re-sends guided by the items a 4xx names, before bisecting instead
_DROP_WARNING_INTERVAL_S = 10.0
_LOGGED_IDS = 10  # event ids named in one log line
_STAT_KEYS = (
    "queued",  # events accepted by log_*
    "sent",  # events the server answered 2xx for
    "accepted",  # ... as the server counted them
    "duplicates",  # ... of which it already had (a retry after a lost answer)
    "dropped",  # pushed out of a full buffer
    "rejected",  # batches answered with a non-retryable 4xx
    "rejected_events",  # events the server refused, or that failed with 5xx on their own
    "failed",  # events lost to an unexpected error in the client
    "unsent",  # events still buffered when the client closed, or logged after close
    "retries",  # retry attempts
    "batches",  # successful POSTs
    "bisected",  # batches split in halves to isolate an event that triggers a 5xx
    "dead_lettered",  # events written to the dead-letter file
    "dead_letter_dropped",  # events to dead-letter that the file had no room for (or is off)
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
    kind: Literal["ok", "rejected", "server_error", "stopped"]
    status: int | None = None  # the HTTP status of the last answer, None without one
    message: str = ""
    payload: Any = None


class DeadLetterFile:
    """Append-only JSON lines of events that could not be stored, bounded in size.

    Opened for each append (``O_APPEND``, ``O_NOFOLLOW``, mode 0600) rather than held open,
    so that a file purged or moved aside for replay is created again instead of written to
    an unlinked inode. Its directory is created 0700.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int) -> None:
        self.path = Path(path).absolute()
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def append(self, lines: list[bytes]) -> int:
        """Append whole lines while they fit; returns how many were written."""
        with self._lock:
            self._make_directory()
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(self.path, flags, 0o600)
            try:
                info = os.fstat(fd)
                if stat.S_IMODE(info.st_mode) & 0o077:
                    os.fchmod(fd, 0o600)
                    logger.warning("dead-letter file %s was readable by others; now 0600",
                                   self.path)
                size, fitting = info.st_size, []
                for line in lines:
                    if size + len(line) > self.max_bytes:
                        break
                    fitting.append(line)
                    size += len(line)
                if fitting:
                    os.write(fd, b"".join(fitting))
                return len(fitting)
            finally:
                os.close(fd)

    def _make_directory(self) -> None:
        directory = self.path.parent
        if directory.is_dir():
            return
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)


def read_dead_letters(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a dead-letter file, skipping (and logging) lines that are not records."""
    records = []
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if (
                not isinstance(record, dict)
                or record.get("endpoint") not in (INFERENCES_PATH, OVERRIDES_PATH)
                or not isinstance(record.get("event"), dict)
            ):
                logger.warning("dead-letter file %s line %d is not a dead letter; skipped",
                               path, number)
                continue
            records.append(record)
    return records


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
        dead_letter_path: str | os.PathLike[str] | None = DEFAULT_DEAD_LETTER_PATH,
        dead_letter_max_bytes: int = DEFAULT_DEAD_LETTER_MAX_BYTES,
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
            dead_letter_max_bytes=dead_letter_max_bytes,
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
        self.dead_letters = (
            None if dead_letter_path is None
            else DeadLetterFile(dead_letter_path, dead_letter_max_bytes)
        )
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._headers = {"Content-Type": "application/json", **self._auth}
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
        self._drops_reported = 0
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
        fills ``scanner``, ``patient`` and ``study_uid`` through ``monitor_client.dicom``;
        fields the event already gives win. A numpy or torch
        ``embedding`` is sent base64-encoded. Raises ``ValidationError`` for a malformed
        event or header, before anything is queued.
        """
        prepared = _prepare(event)
        if dicom is None and _is_dataset(prepared.get("dicom")):
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

    def replay_dead_letters(self, path: str | os.PathLike[str]) -> int:
        """Queue again every event of a dead-letter file (each to the endpoint it was meant
        for, with its own ``event_id``, so events the server has meanwhile stored count as
        duplicates); returns how many were queued.

        Move the file aside first: this client's own ``dead_letter_path`` is refused, since
        events that fail again are appended there. Delete the moved file once ``flush``
        returns and ``stats`` shows what happened to them.
        """
        source = Path(path).absolute()
        if self.dead_letters is not None and source == self.dead_letters.path:
            raise ConfigError(
                f"cannot replay {source}: it is this client's dead_letter_path; move it aside"
            )
        records = read_dead_letters(source)
        for record in records:
            event = dict(record["event"])
            event["event_id"] = str(event.get("event_id") or record.get("event_id"))
            self._enqueue(record["endpoint"], event)
        return len(records)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything queued so far has been dealt with (sent, rejected or given
        up); False if ``timeout_s`` passed first. ``stats`` tells which. During an outage the
        events wait for the server, so only a timeout ends the wait."""
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
        """Flush, waiting at most ``timeout_s`` (``exit_timeout_s`` when None: an outage must
        not hold a shutting-down process for good), then stop the sender thread. Events still
        buffered after that are counted in ``stats["unsent"]``, logged and dead-lettered."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self._close_at_exit)
        drained = self.flush(self.exit_timeout_s if timeout_s is None else timeout_s)
        if not drained:
            self._abort.set()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(None if drained else self.timeout_s + 1.0)
        with self._cond:  # a batch still in flight is counted by the sender when it ends
            left = list(self._queue)
            self._queue.clear()
        if left:
            logger.warning("monitor client closed with %d events unsent", len(left))
            for path in (INFERENCES_PATH, OVERRIDES_PATH):
                items = [item for item in left if item.path == path and self._serialise(item)]
                if items:
                    self._give_up_unsent(path, items)
        self._report_drops(force=True)
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
        closed = dropped = False
        with self._cond:
            if self._closed:
                self._stats["unsent"] += 1
                closed = True
            else:
                if len(self._queue) >= self.max_buffer:
                    self._queue.popleft()
                    self._stats["dropped"] += 1
                    dropped = True
                self._queue.append(item)
                self._stats["queued"] += 1
                if len(self._queue) == 1 or len(self._queue) >= self.batch_size:
                    self._cond.notify_all()
        if closed:
            logger.warning("monitor client is closed; event %s not sent", _loggable(item.event_id))
        if dropped:
            self._report_drops(force=False)

    def _report_drops(self, *, force: bool) -> None:
        """Warn about events dropped from a full buffer since the last warning: at most once
        per interval while drops go on, and once more (``force``) so that the last ones are
        never only counted."""
        with self._cond:
            dropped = self._stats["dropped"]
            if dropped == self._drops_reported:
                return
            now = time.monotonic()
            if not force and now - self._last_drop_warning < _DROP_WARNING_INTERVAL_S:
                return
            new, self._drops_reported, self._last_drop_warning = (
                dropped - self._drops_reported, dropped, now
            )
        logger.warning(
            "monitor buffer full (%d events): dropped the oldest %d; %d dropped so far",
            self.max_buffer,
            new,
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
            self._report_drops(force=False)

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
                self._deliver(path, items, retries=self.max_retries)

    def _serialise(self, item: _Queued) -> bool:
        if item.body is None:
            try:
                text = json.dumps(
                    item.event, default=_json_default, separators=(",", ":"), allow_nan=False
                )
            except (TypeError, ValueError) as error:
                logger.error("event %s cannot be sent as JSON: %s", _loggable(item.event_id), error)
                self._count("rejected_events", 1)
                item.body = _lenient_json(item.event)
                self._dead_letter(item.path, [item], None, f"cannot be sent as JSON: {error}")
                return False
            item.body = text.encode("utf-8")
        return True

    def _deliver(
        self, path: str, items: list[_Queued], *, retries: int, depth: int = 0
    ) -> None:
        """Send ``items`` as one batch, allowing ``retries`` retries for server errors, and
        deal with the answer: store, bisect, or dead-letter. ``depth``: how many splits led to
        this part of a batch (the first split is logged at WARNING, deeper ones at INFO)."""
        while True:
            outcome = self._post(path, items, retries=retries)
            if outcome.kind == "ok":
                self._record_success(outcome.payload, len(items))
                return
            if outcome.kind == "stopped":
                self._give_up_unsent(path, items)
                return
            if outcome.kind == "rejected":
                self._reject(path, items, outcome, depth=depth)
                return
            if self._server_answers():
                break
            logger.warning(
                "POST %s keeps failing (%s) and the server does not answer %s; "
                "%d events wait, retrying in %.0f s",
                path, outcome.message, " or ".join(PROBE_PATHS), len(items), self.backoff_max_s,
            )
            if self._abort.wait(self.backoff_max_s):
                self._give_up_unsent(path, items)
                return
        if len(items) == 1:  # a lone event always had its max_retries retries
            logger.error("server fails on event %s to %s (%s) while answering other requests",
                         _loggable(items[0].event_id), path, outcome.message)
            self._count("rejected_events", 1)
            self._dead_letter(path, items, outcome.status, f"server error: {outcome.message}")
            return
        self._bisect(
            path, items, depth=depth,
            why=f"keeps failing ({outcome.message}) while the server answers",
        )

    def _bisect(self, path: str, items: list[_Queued], *, depth: int, why: str) -> None:
        """Send each half on its own. Halves of more than one event get no retries for
        server errors: an error on a half splits it again, so a poisoned batch of n costs
        about 2 log2(n) requests, and a good half that met a passing error is only split
        further, never lost (a lone event gets its retries)."""
        self._count("bisected", 1)
        logger.log(
            logging.INFO if depth else logging.WARNING,
            "batch of %d events to %s %s; bisecting to isolate the events that cause it",
            len(items), path, why,
        )
        middle = len(items) // 2
        for half in (items[:middle], items[middle:]):
            retries = self.max_retries if len(half) == 1 else 0
            self._deliver(path, half, retries=retries, depth=depth + 1)

    def _resend_named_apart(
        self, path: str, items: list[_Queued], named: list[int], *, depth: int, why: str
    ) -> None:
        """The server named the invalid items: re-send each of them alone (an item may be
        invalid only beside the others, so none is dead-lettered on the batch's word) and
        the others as one batch, which costs ``2 + len(named)`` requests."""
        logger.log(
            logging.INFO if depth else logging.WARNING,
            "batch of %d events to %s %s; re-sending the %d it names alone, the rest together",
            len(items), path, why, len(named),
        )
        for index in named:
            self._deliver(path, [items[index]], retries=self.max_retries, depth=depth + 1)
        chosen = set(named)
        rest = [item for index, item in enumerate(items) if index not in chosen]
        retries = self.max_retries if len(rest) == 1 else 0
        self._deliver(path, rest, retries=retries, depth=depth + 1)

    def _reject(
        self, path: str, items: list[_Queued], outcome: _Outcome, *, depth: int
    ) -> None:
        if len(items) > 1:
            self._count("rejected", 1)
        if len(items) > 1 and outcome.status in _ISOLATE_STATUSES:
            why = f"was rejected ({outcome.status}: {outcome.message})"
            # a server naming one item at a time would nest a round per item: past a few
            # rounds, bisect (its depth is log2 of the batch size)
            named = _named_items(outcome.payload, len(items)) if depth < _MAX_NAMED_ROUNDS else []
            if named:
                self._resend_named_apart(path, items, named, depth=depth, why=why)
            else:
                self._bisect(path, items, depth=depth, why=why)
            return
        logger.error(
            "server rejected %d events to %s (%d: %s); event ids %s",
            len(items), path, outcome.status, outcome.message, _ids(items),
        )
        self._count("rejected_events", len(items))
        self._dead_letter(path, items, outcome.status, outcome.message)

    def _give_up_unsent(self, path: str, items: list[_Queued]) -> None:
        self._count("unsent", len(items))
        self._dead_letter(path, items, None, "not sent before the client closed")

    def _dead_letter(
        self, path: str, items: list[_Queued], status: int | None, reason: str
    ) -> None:
        """Write the events to the dead-letter file, count them, and log their event ids."""
        written = 0
        if self.dead_letters is not None:
            at = _utc_iso(datetime.now(_UTC))
            lines = [_dead_letter_line(item, path, status, reason, at) for item in items]
            try:
                written = self.dead_letters.append(lines)
            except OSError as error:
                logger.error("cannot write the dead-letter file %s: %s",
                             self.dead_letters.path, error)
        dropped = len(items) - written
        with self._cond:
            self._stats["dead_lettered"] += written
            self._stats["dead_letter_dropped"] += dropped
        if self.dead_letters is None:
            where = "no dead-letter file is configured"
        else:
            where = (f"the dead-letter file {self.dead_letters.path} is full or unwritable "
                     f"(limit {self.dead_letters.max_bytes} bytes)")
            if written:
                logger.warning("dead-lettered %d events to %s in %s; event ids %s",
                               written, path, self.dead_letters.path, _ids(items[:written]))
        if dropped:
            logger.warning("%s: %d events to %s dropped; event ids %s",
                           where, dropped, path, _ids(items[written:]))

    def _server_answers(self) -> bool:
        """Whether the server answers its readiness (or liveness) probe: a batch that keeps
        failing against a server that answers holds an event that triggers the failure."""
        for probe in PROBE_PATHS:
            try:
                response = self._http.get(self.base_url + probe, headers=self._auth)
            except httpx.TransportError:
                return False
            if response.status_code != 404:
                return response.is_success
        return False

    def _post(self, path: str, items: list[_Queued], *, retries: int) -> _Outcome:
        """POST the batch until it is answered with 2xx or 4xx, the server errors exceed
        ``retries``, or the client closes. Outages are waited out, whatever ``retries``."""
        body = b"[" + b",".join(item.body or b"null" for item in items) + b"]"
        url = self.base_url + path
        attempt = server_errors = outage_attempts = 0
        while True:
            if self._abort.is_set():
                return _Outcome(kind="stopped", message="client closed")
            retry_after: float | None = None
            status: int | None = None
            try:
                response = self._http.post(url, content=body, headers=self._headers)
            except httpx.TransportError as error:  # connect, read, protocol errors, timeouts
                message = f"{type(error).__name__}: {error}"
            else:
                status = response.status_code
                if response.is_success:
                    return _Outcome(kind="ok", status=status, payload=_json(response))
                message = f"{status}: {_server_message(response)}"
                if status < 500 and status not in _OUTAGE_STATUSES:
                    return _Outcome(
                        kind="rejected", status=status, message=_server_message(response),
                        payload=_json(response),
                    )
                retry_after = _retry_after_s(response)
            if status is None or status in _OUTAGE_STATUSES:
                outage_attempts += 1
                if outage_attempts == self.max_retries + 1:
                    logger.warning(
                        "monitor server unavailable for %d attempts (%s); %d events wait, "
                        "and new ones wait in the buffer (%d at most)",
                        outage_attempts, message, len(items), self.max_buffer,
                    )
            else:
                server_errors += 1
                if server_errors > retries:
                    return _Outcome(kind="server_error", status=status, message=message)
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
                return _Outcome(kind="stopped", message="client closed")
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


def _ids(items: Iterable[_Queued]) -> str:
    ids = [_loggable(item.event_id) for item in items]
    shown = ", ".join(ids[:_LOGGED_IDS])
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > _LOGGED_IDS else "")


def _named_items(payload: Any, count: int) -> list[int]:
    """The item indices a 4xx answer names (FastAPI-style ``{"detail": [{"index": i, ...}]}``),
    if every entry names one and some items are left over; otherwise nothing."""
    detail = payload.get("detail") if isinstance(payload, Mapping) else None
    if not isinstance(detail, list) or not detail:
        return []
    indices = set()
    for entry in detail:
        index = entry.get("index") if isinstance(entry, Mapping) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
            return []
        indices.add(index)
    return sorted(indices) if len(indices) < count else []


def _loggable(text: str, limit: int = 128) -> str:
    """Text fit for a log line: control characters escaped (no forged lines), and at most
    ``limit`` characters of it (128: the server's limit for an event id)."""
    text = text if text.isprintable() else ascii(text)[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


def _dead_letter_line(
    item: _Queued, path: str, status: int | None, reason: str, at: str
) -> bytes:
    """One JSON line; the event goes in as the exact bytes that were sent."""
    head = json.dumps(
        {"event_id": item.event_id, "endpoint": path, "status": status,
         "reason": reason[:1000], "dead_lettered_at": at},
        separators=(",", ":"),
    )
    return head[:-1].encode() + b',"event":' + (item.body or b"null") + b"}\n"


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
    for name in ("max_retries", "backoff_base_s", "backoff_max_s", "dead_letter_max_bytes"):
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
        prepared["timestamp"] = _utc_iso(datetime.now(_UTC))
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
    try:
        from monitor_client.dicom import event_parts_from_dicom, load_header
    except ImportError as exc:
        raise ConfigError("reading a DICOM header needs pydicom: pip install "
                          "'imaging-monitor-client[dicom]'") from exc
    header = dicom if isinstance(dicom, Mapping) or _is_dataset(dicom) else load_header(dicom)
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


def _is_dataset(value: object) -> TypeGuard[Dataset]:
    """A pydicom Dataset (pydicom is imported only where the caller has used it)."""
    pydicom = sys.modules.get("pydicom")
    return pydicom is not None and isinstance(value, pydicom.Dataset)


def _utc_iso(moment: datetime) -> str:
    return moment.astimezone(_UTC).isoformat().replace("+00:00", "Z")


def _json_default(value: Any) -> Any:
    if type(value).__module__ == "numpy":  # numpy scalars and arrays, without importing numpy
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


def _lenient_json(event: dict[str, Any]) -> bytes:
    """The event as well as JSON can hold it, for the dead-letter file: NaN as ``NaN``,
    values of unknown types as their ``repr``."""

    def default(value: Any) -> Any:
        try:
            return _json_default(value)
        except TypeError:
            return repr(value)

    try:
        return json.dumps(event, default=default, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError):  # e.g. a circular reference
        return b"null"


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
    return _loggable(message, 1000)


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:  # the HTTP-date form: use our own backoff instead
        return None
