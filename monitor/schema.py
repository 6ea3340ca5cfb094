"""Parsing whole batches of events against the contract (``monitor_client.events``, one
definition for the client and the service).

``INFERENCES`` and ``OVERRIDES`` parse whole batches, from Python objects or from the JSON
bytes of a request. A JSON body is parsed by jiter, which refuses a key repeated in any
object (parsers disagree on which of two values counts), then validated like Python input:
one contract for both. Embeddings become float32 bytes (little-endian) here; timestamps UTC,
within the plausible range (``TimestampBounds``).
"""

from __future__ import annotations

import binascii
import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import jiter
import numpy as np
import pybase64
from monitor_client.dicom import event_parts_from_dicom
from monitor_client.errors import ValidationError as MonitorValidationError
from monitor_client.events import (
    CONTROLS,
    KEY_PATTERN,
    MAX_EMBEDDING_DIM,
    MAX_TAGS_BYTES,
    OUT_OF_RANGE,
    PATTERN_MESSAGES,
    SCANNER_FIELDS,
    TEXT_PATTERN,
    InferenceEvent,
    OverrideEvent,
    Patient,
    Scanner,
    StudyUid,
    as_utc,
    long_string_values_problem,
)
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from monitor.errors import BatchValidationError, clip

if TYPE_CHECKING:
    from monitor.config import Settings

Problem = dict[str, Any]  # {"index": item or None, "field": dotted path, "message": text}


# --- timestamps --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TimestampBounds:
    """The plausible range of event timestamps: not before ``earliest``, and not more than
    ``max_future`` after the server's clock when the batch is checked. An event far in the
    future would otherwise become a version's newest and blind its scheduled checks."""

    earliest: datetime
    max_future: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> TimestampBounds:
        return cls(as_utc(settings.timestamp_earliest),
                   timedelta(seconds=settings.timestamp_max_future_s))

    @classmethod
    @functools.cache
    def default(cls) -> TimestampBounds:
        """The settings' defaults (MONITOR_TIMESTAMP_EARLIEST, MONITOR_TIMESTAMP_MAX_FUTURE_S)."""
        from monitor.config import Settings

        return cls.from_settings(Settings.model_construct())

    def problem(self, moment: datetime, now: datetime) -> str | None:
        if moment < self.earliest:
            return (f"is before {self.earliest.isoformat()}, the earliest plausible timestamp "
                    "(MONITOR_TIMESTAMP_EARLIEST)")
        if moment > now + self.max_future:
            return (f"is more than {self.max_future.total_seconds():.0f} s ahead of the "
                    "server's clock (MONITOR_TIMESTAMP_MAX_FUTURE_S)")
        return None


def _timestamp_problems(moments: list[tuple[int, datetime]], bounds: TimestampBounds
                        ) -> list[Problem]:
    """Problems of the (index, UTC timestamp) pairs outside the bounds."""
    now = datetime.now(UTC)
    earliest, latest = bounds.earliest, now + bounds.max_future
    return [{"index": index, "field": "timestamp", "message": bounds.problem(moment, now)}
            for index, moment in moments if not earliest <= moment <= latest]


# --- embeddings ------------------------------------------------------------------------------

def _embedding_size_problem(nbytes: int) -> str | None:
    if nbytes % 4:
        return f"base64 decodes to {nbytes} bytes, not a whole number of float32"
    if nbytes == 0:
        return "is empty"
    if nbytes > 4 * MAX_EMBEDDING_DIM:
        return f"has {nbytes // 4} values, more than {MAX_EMBEDDING_DIM}"
    return None


def _first_non_finite(vector: np.ndarray) -> int | None:
    # a float64 sum of float32 values cannot overflow: it is finite exactly when all are
    if math.isfinite(vector.sum(dtype=np.float64)):
        return None
    return int(np.flatnonzero(~np.isfinite(vector))[0])


def _float32_bytes(values: list[Any]) -> bytes:
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: rejected as such
        array = np.asarray(values, dtype="<f4")
    if array.ndim != 1:
        raise ValueError("must be a flat list of numbers")
    return array.tobytes()


def _prepare_inferences(data: list[Any], *, in_place: bool = False
                        ) -> tuple[list[Any], list[Problem]]:
    """Before validation: base64 embeddings -> bytes, and software versions given as a list of
    strings -> one string, joined by '/'. A caller's items are copied where changed, never
    changed; a batch parsed from JSON here (``in_place``) is changed in place."""
    prepared, problems = [], []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            prepared.append(item)
            continue
        changes: dict[str, Any] = {}
        embedding = item.get("embedding")
        if isinstance(embedding, str):
            try:
                changes["embedding"] = pybase64.b64decode(embedding, validate=True)
            except (binascii.Error, ValueError):
                problems.append({"index": index, "field": "embedding",
                                 "message": "is not valid base64"})
                changes["embedding"] = None
        scanner = item.get("scanner")
        versions = scanner.get("software_version") if isinstance(scanner, dict) else None
        if (isinstance(scanner, dict) and isinstance(versions, list)
                and all(isinstance(v, str) for v in versions)):
            changes["scanner"] = {**scanner, "software_version": "/".join(versions)}
        if changes and in_place:
            item.update(changes)
        elif changes:
            item = {**item, **changes}
        prepared.append(item)
    return prepared, problems


# --- batches -------------------------------------------------------------------------------

_SCANNER = TypeAdapter(Scanner)
_PATIENT = TypeAdapter(Patient)
_STUDY_UID = TypeAdapter(StudyUid)


def _fold_in_dicom(index: int, event: InferenceEvent) -> list[Problem]:
    """Fill scanner, patient and study_uid from the event's DICOM header; explicit fields win.
    The header itself is never kept. What the header gives is held to the same contract as
    explicit fields; problems name the field it would have filled."""
    try:
        parts = event_parts_from_dicom(event.pop("dicom", None) or {})
    except MonitorValidationError as exc:
        return [{"index": index, "field": "dicom", "message": f"dicom: {exc}"}]
    explicit_scanner = {k: v for k, v in (event.get("scanner") or {}).items() if v is not None}
    explicit_patient = {k: v for k, v in (event.get("patient") or {}).items() if v is not None}
    scanner = {k: v for k, v in {**parts["scanner"], **explicit_scanner}.items() if v is not None}
    patient = {k: v for k, v in {**parts["patient"], **explicit_patient}.items()
               if k in Patient.__annotations__}
    problems: list[Problem] = []
    for field, adapter, value in (("scanner", _SCANNER, scanner), ("patient", _PATIENT, patient),
                                  ("study_uid", _STUDY_UID, event.get("study_uid")
                                   or parts.get("study_uid"))):
        if value is None:
            continue
        try:
            event[field] = adapter.validate_python(value)  # type: ignore[literal-required]
        except PydanticValidationError as exc:
            problems.extend({"index": index, "message": f"from the DICOM header: {p['message']}",
                             "field": field if p["field"] == "body" else f"{field}.{p['field']}"}
                            for p in _problems(exc, top=False))
    return problems


def _tags_problem(scanner: dict[str, Any], extra: set[str]) -> tuple[str, str] | None:
    """(field, message) for the first way the scanner's extra keys break the contract: names
    as ``KEY_PATTERN``, at most ``MAX_TAGS_BYTES`` of JSON in all, strings without control
    characters, numbers finite (a JSON value, so booleans and null too)."""
    for key in sorted(extra):
        if re.fullmatch(KEY_PATTERN, key) is None:
            return f"scanner.{clip(key)}", PATTERN_MESSAGES[KEY_PATTERN]
    size = len(json.dumps({key: scanner[key] for key in extra}, ensure_ascii=False).encode())
    if size > MAX_TAGS_BYTES:
        return "scanner", (f"extra keys take {size} bytes as JSON, more than "
                           f"{MAX_TAGS_BYTES} in all")
    for key in sorted(extra):
        problem = _json_value_problem(scanner[key])
        if problem is not None:
            return f"scanner.{key}", problem
    return None


_CONTROL_CHARACTER = re.compile(f"[{CONTROLS}]")


def _json_value_problem(value: Any, depth: int = 0) -> str | None:
    if isinstance(value, str):
        return PATTERN_MESSAGES[TEXT_PATTERN] if _CONTROL_CHARACTER.search(value) else None
    if isinstance(value, float):
        return None if math.isfinite(value) else "must be a finite number"
    if value is None or isinstance(value, bool | int):
        return None
    if depth >= 4:
        return "nests deeper than 4 levels"
    if isinstance(value, list):
        items = value
    elif isinstance(value, dict):
        if any(_CONTROL_CHARACTER.search(key) for key in value):
            return "keys " + PATTERN_MESSAGES[TEXT_PATTERN]
        items = list(value.values())
    else:
        return f"must be a JSON value, not {type(value).__name__}"
    return next((p for p in (_json_value_problem(v, depth + 1) for v in items) if p), None)


def _finish_inferences(events: list[InferenceEvent], bounds: TimestampBounds) -> list[Problem]:
    """What validation leaves to one pass over the batch: UTC timestamps in the plausible
    range, the DICOM header, the required study UID, the scanner's extra keys, embeddings as
    float32 bytes with their sizes checked, and finiteness checked for the whole batch at
    once."""
    problems: list[Problem] = []
    embeddings: list[tuple[int, bytes]] = []
    moments: list[tuple[int, datetime]] = []
    for index, event in enumerate(events):
        try:
            event["timestamp"] = as_utc(event["timestamp"])
            moments.append((index, event["timestamp"]))
        except OverflowError:
            problems.append({"index": index, "field": "timestamp", "message": OUT_OF_RANGE})
        if event.get("dicom") is not None:
            dicom_problems = _fold_in_dicom(index, event)
            if dicom_problems:
                problems.extend(dicom_problems)
                continue
        event.pop("dicom", None)
        if not event.get("study_uid"):
            problems.append({"index": index, "field": "study_uid", "message":
                             "study_uid is required (directly or from the DICOM header)"})
        scanner = event.get("scanner")
        if scanner:
            problems.extend(_scanner_problems(index, scanner))
        raw = event.get("embedding")
        if raw is None:
            continue
        if isinstance(raw, list):
            raw = event["embedding"] = _float32_bytes(raw)
        size_problem = _embedding_size_problem(len(raw))
        if size_problem is None:
            embeddings.append((index, raw))
        else:
            problems.append({"index": index, "field": "embedding", "message": size_problem})
    problems.extend(_timestamp_problems(moments, bounds))
    joined = np.frombuffer(b"".join(raw for _, raw in embeddings), dtype="<f4")
    if _first_non_finite(joined) is not None:  # rare: find the items
        for index, raw in embeddings:
            bad = _first_non_finite(np.frombuffer(raw, dtype="<f4"))
            if bad is not None:
                problems.append({"index": index, "field": "embedding",
                                 "message": f"value {bad} is not finite"})
    return problems


def _scanner_problems(index: int, scanner: Scanner) -> list[Problem]:
    """What the scanner's types leave: each software version at most 64 characters, and the
    extra keys (``_tags_problem``)."""
    problems = []
    versions = scanner.get("software_version")
    problem = long_string_values_problem(versions) if versions else None
    if problem is not None:
        problems.append({"index": index, "field": "scanner.software_version",
                         "message": problem})
    if not SCANNER_FIELDS.issuperset(scanner):
        extra = scanner.keys() - SCANNER_FIELDS
        tags_problem = _tags_problem(dict(scanner), extra)
        if tags_problem is not None:
            problems.append({"index": index, "field": tags_problem[0],
                             "message": tags_problem[1]})
    return problems


def _finish_overrides(events: list[OverrideEvent], bounds: TimestampBounds) -> list[Problem]:
    return _timestamp_problems([(i, event.timestamp) for i, event in enumerate(events)], bounds)


def _field_path(loc: tuple[int | str, ...]) -> str:
    """A dotted path; a part taken from the input (an unexpected key) is clipped."""
    return ".".join(clip(part) if isinstance(part, str) else str(part) for part in loc) or "body"


# How pydantic names the members of the embedding union in an error's location, and a dict's
# key (the key itself comes before it).
_EMBEDDING_MEMBERS = ("bytes", "list[float]")
_NOT_A_FIELD = frozenset({*_EMBEDDING_MEMBERS, "[key]"})
_NOT_THIS_MEMBER = ("bytes_type", "list_type")  # the input is the other member's JSON type


def _message(error: Any) -> str:
    pattern = (error.get("ctx") or {}).get("pattern")
    if error["type"] == "string_pattern_mismatch" and pattern in PATTERN_MESSAGES:
        return PATTERN_MESSAGES[pattern]
    return str(error["msg"]).removeprefix("Value error, ")


def _problems(exc: PydanticValidationError, *, top: bool = True) -> list[Problem]:
    """Pydantic's errors as the API's problems: item index, dotted field path, message (never
    the input). Of the embedding union's two members, only the one matching the input's JSON
    type speaks. ``top``: the errors are a batch's (the first location part is the index)."""
    problems: list[Problem] = []
    embedding_errors: dict[Any, list[tuple[str, Problem]]] = {}
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(error["loc"])
        if top and not loc and error["type"] == "list_type":
            return [{"index": None, "field": "body", "message": "must be a JSON list of events"}]
        index = loc[0] if top and loc and isinstance(loc[0], int) else None
        rest = loc[1:] if top else loc
        field = _field_path(tuple(part for part in rest if part not in _NOT_A_FIELD))
        problem = {"index": index, "field": field, "message": _message(error)}
        if field.split(".", 1)[0] == "embedding":
            embedding_errors.setdefault(index, []).append((error["type"], problem))
        else:
            problems.append(problem)
    for index, found in embedding_errors.items():
        relevant = [problem for kind, problem in found if kind not in _NOT_THIS_MEMBER]
        problems.extend(relevant or [{"index": index, "field": "embedding", "message":
                                      "must be a list of floats or a base64 string of float32"}])
    return problems


def _body_problem(message: str) -> BatchValidationError:
    return BatchValidationError([{"index": None, "field": "body", "message": message}])


class _DuplicateKeys(dict):  # type: ignore[type-arg]
    """A JSON object that had a key twice (found only to name where, once jiter refused it)."""

    duplicate: str


def _with_duplicates_marked(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            marked = _DuplicateKeys(pairs)
            marked.duplicate = key
            return marked
        seen.add(key)
    return dict(pairs)


def _duplicate_path(value: Any, path: tuple[int | str, ...] = ()) -> tuple[Any, ...] | None:
    if isinstance(value, _DuplicateKeys):
        return (*path, value.duplicate)
    children = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for key, child in children:
        found = _duplicate_path(child, (*path, key))
        if found is not None:
            return found
    return None


def _duplicate_key_problem(body: bytes, message: str) -> Problem:
    """A duplicate key, named by item and path: parsed again, slowly, only on this error."""
    try:
        path = _duplicate_path(json.loads(body, object_pairs_hook=_with_duplicates_marked))
    except (ValueError, RecursionError):
        path = None
    if not path:
        key = re.search(r'key "(.*)" at', message, re.DOTALL)
        return {"index": None, "field": "body",
                "message": f"duplicate key {clip(key.group(1)) if key else ''}".strip()}
    index = path[0] if isinstance(path[0], int) else None
    return {"index": index, "field": _field_path(path[1:] if index is not None else path),
            "message": "duplicate key: a JSON object may name each key once"}


@dataclass(frozen=True)
class BatchParser:
    """Parses a whole batch of one kind of event. Any bad item rejects the batch with every
    problem named by item index and field (``BatchValidationError``); so does an empty batch.
    ``finish`` does the checks that need the validated batch and the timestamp bounds
    (``TimestampBounds.default()`` unless given: a service passes its settings')."""

    adapter: TypeAdapter[list[Any]]
    finish: Callable[[list[Any], TimestampBounds], list[Problem]]
    prepare: Callable[..., tuple[list[Any], list[Problem]]] | None = None

    def from_python(self, data: Any, bounds: TimestampBounds | None = None) -> list[Any]:
        return self._validated(data, bounds, in_place=False)

    def from_json(self, body: bytes | bytearray, bounds: TimestampBounds | None = None
                  ) -> list[Any]:
        """Parsed by jiter, which refuses a key repeated in any object, then validated as
        Python objects: the same contract for JSON bodies and Python callers. NaN and
        Infinity are read, then rejected by validation with their field named."""
        body = bytes(body) if isinstance(body, bytearray) else body
        try:
            data = jiter.from_json(body, catch_duplicate_keys=True)
        except ValueError as exc:
            message = str(exc)
            if message.startswith("Detected duplicate key"):
                raise BatchValidationError([_duplicate_key_problem(body, message)]) from None
            raise _body_problem(f"malformed JSON: {message}") from None
        return self._validated(data, bounds, in_place=True)

    def _validated(self, data: Any, bounds: TimestampBounds | None, *, in_place: bool
                   ) -> list[Any]:
        if not isinstance(data, list):
            raise _body_problem("must be a JSON list of events")
        problems: list[Problem] = []
        if self.prepare is not None:
            data, problems = self.prepare(data, in_place=in_place)
        try:
            batch = self.adapter.validate_python(data)
        except PydanticValidationError as exc:
            raise BatchValidationError(problems + _problems(exc)) from None
        if not batch:
            raise _body_problem("batch is empty")
        problems = problems + self.finish(batch, bounds or TimestampBounds.default())
        if problems:
            raise BatchValidationError(problems)
        return batch


INFERENCES = BatchParser(TypeAdapter(list[InferenceEvent]), _finish_inferences,
                         _prepare_inferences)
OVERRIDES = BatchParser(TypeAdapter(list[OverrideEvent]), _finish_overrides)
