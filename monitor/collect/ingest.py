"""The write path: validated events -> pseudonymised rows, one transaction per batch.

A batch is all or nothing: it is validated whole (``monitor.schema.INFERENCES``), checked
against the registered embedding length, and committed before the caller acknowledges it.
``event_id`` is unique per model: a duplicate (twice in one batch, or a retry of a stored
batch) is stored once, while another model's event with the same id is an event of its own.
``store_inferences`` and ``store_overrides`` are what the API and the in-process collector
call. Inferences are prepared (rows built) before the batch takes its turn at the writer, then
inserted and committed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from monitor_client.dicom import age_band, normalise_manufacturer
from monitor_client.events import SCANNER_FIELDS, InferenceEvent, OverrideEvent, embedding_dim
from sqlalchemy.orm import Session

from monitor.errors import BatchValidationError
from monitor.privacy import Pseudonymiser
from monitor.store import ingest as store
from monitor.store.db import session_scope
from monitor.store.ingest import INFERENCE_COLUMNS, EventKey

if TYPE_CHECKING:
    from monitor.runtime import Runtime

AGE_CAP_YEARS = 90  # ages above 89 are identifying (HIPAA safe harbour): stored as 90


@dataclass(frozen=True)
class IngestResult:
    """``accepted``: distinct events of the batch now stored (a retry gets the same number);
    ``new``: stored by this call; ``duplicates``: items already stored or repeated."""

    accepted: int
    new: int
    duplicates: int


def _unique_by_key(events: Sequence[Any], keys: Sequence[EventKey]) -> list[tuple[int, Any]]:
    """(index, event) of each (model, event_id)'s first occurrence in the batch."""
    seen: set[EventKey] = set()
    unique = []
    for index, (event, key) in enumerate(zip(events, keys, strict=True)):
        if key not in seen:
            seen.add(key)
            unique.append((index, event))
    return unique


def _check_embedding_lengths(
    session: Session, unique: list[tuple[int, InferenceEvent]]
) -> tuple[dict[tuple[str, str], int], dict[int, tuple[int, int]]]:
    """Resolve every (model, version) of the batch to its id and enforce one embedding length
    each: the first accepted length registers it, a different length later is rejected.
    Returns the ids, and the lengths this batch registers: version id -> (length, index of
    the first event that has it)."""
    ids: dict[tuple[str, str], int] = {}
    lengths: dict[tuple[str, str], int | None] = {}
    registers: dict[int, tuple[int, int]] = {}
    problems = []
    for index, event in unique:
        key = (event["model"], event["model_version"])
        if key not in ids:
            ids[key], lengths[key] = store.version_id(session, *key)
        dim = embedding_dim(event)
        if dim is None:
            continue
        if lengths[key] is None:
            lengths[key] = dim  # registered by the first accepted embedding
            registers[ids[key]] = (dim, index)
        elif dim != lengths[key]:
            problems.append({
                "index": index,
                "field": "embedding",
                "message": f"embedding length {dim} does not match {key[0]} {key[1]} "
                f"(expects {lengths[key]})",
            })
    if problems:
        raise BatchValidationError(problems)
    return ids, registers


def _register_lengths(session: Session, registers: dict[int, tuple[int, int]]) -> None:
    """Fill in the embedding lengths a batch registers, in its write transaction. Only a NULL
    length is filled: if a concurrent batch registered another length first, this batch is
    rejected as if it had arrived second."""
    if not registers:
        return
    stored = store.register_embedding_lengths(
        session, {version_id: length for version_id, (length, _) in registers.items()})
    problems = [{"index": index, "field": "embedding",
                 "message": f"embedding length {length} does not match the length "
                 f"{stored[version_id]} registered meanwhile"}
                for version_id, (length, index) in registers.items()
                if stored[version_id] != length]
    if problems:
        raise BatchValidationError(problems)


# Inference columns read straight from the event's scanner part: column -> scanner key.
_SCANNER_COLUMNS: Final = {
    "scanner_model": "model", "station": "station", "site": "site", "modality": "modality",
    "body_part": "body_part", "view": "view", "kvp": "kvp", "exposure_mas": "exposure_mas",
    "pixel_spacing_mm": "pixel_spacing_mm", "photometric": "photometric",
    "software_version": "software_version",
}


def _identity(value: Any) -> Any:
    return value


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _scanner_tags(scanner: Mapping[str, Any]) -> dict[str, Any] | None:
    """The scanner keys beyond the contract's, kept as the row's tags."""
    extra = scanner.keys() - SCANNER_FIELDS
    return {key: scanner[key] for key in extra} if extra else None


def _next_keys(events: Sequence[InferenceEvent], patients: Sequence[Mapping[str, Any]],
               pseudonymiser: Pseudonymiser) -> dict[str, list[Any]]:
    """The new key's pseudonyms during a key rotation (``monitor.privacy``), else NULLs."""
    if not pseudonymiser.rotating:
        return {"study_key_next": [None] * len(events), "patient_key_next": [None] * len(events)}
    return {
        "study_key_next": [pseudonymiser.study_next(event["study_uid"]) for event in events],
        "patient_key_next": [pseudonymiser.patient_next(patient.get("id"))
                             for patient in patients],
    }


def _inference_rows(
    events: Sequence[InferenceEvent], version_ids: Sequence[int], pseudonymiser: Pseudonymiser,
    received_at: Any, encode_time: Callable[[datetime], Any] = _identity,
) -> list[tuple[Any, ...]]:
    """The inference rows of validated events, in ``INFERENCE_COLUMNS`` order, as the database
    driver takes them: JSON as text, datetimes through ``encode_time`` (``_sqlite_text`` for
    SQLite; psycopg takes them as they are). Built a column at a time: on the ingestion hot
    path a list comprehension per column costs a quarter less than a function call per
    event."""
    n = len(events)
    patients = [event.get("patient") or {} for event in events]
    scanners = [event.get("scanner") or {} for event in events]
    predictions = [event["prediction"] for event in events]
    scores = [prediction["scores"] for prediction in predictions]
    first_scores = [next(iter(score.values())) for score in scores]
    thresholds = [prediction.get("threshold") for prediction in predictions]
    explicit_positives = [prediction.get("positive") for prediction in predictions]
    ages = [patient.get("age_years") for patient in patients]
    manufacturers = [scanner.get("manufacturer") for scanner in scanners]
    columns: dict[str, list[Any]] = {
        "event_id": [event["event_id"] for event in events],
        "model_version_id": list(version_ids),
        "model": [event["model"] for event in events],
        "ts": [encode_time(event["timestamp"]) for event in events],
        "received_at": [received_at] * n,
        "study_key": [pseudonymiser.study(event["study_uid"]) for event in events],
        "patient_key": [pseudonymiser.patient(patient.get("id")) for patient in patients],
        "sex": [patient.get("sex") for patient in patients],
        "age_years": [None if age is None else float(min(age, AGE_CAP_YEARS)) for age in ages],
        "age_band": [age_band(age) for age in ages],
        "manufacturer": manufacturers,
        "vendor": [scanner.get("vendor") or normalise_manufacturer(manufacturer)
                   for scanner, manufacturer in zip(scanners, manufacturers, strict=True)],
        **{column: [scanner.get(key) for scanner in scanners]
           for column, key in _SCANNER_COLUMNS.items()},
        "tags": [_json_text(_scanner_tags(scanner)) for scanner in scanners],
        "scores": [_json_text(score) for score in scores],
        "score": first_scores,
        # an explicit positive wins; else the first score against the threshold, if given
        "positive": [explicit if explicit is not None or threshold is None else first >= threshold
                     for explicit, threshold, first
                     in zip(explicit_positives, thresholds, first_scores, strict=True)],
        "threshold": thresholds,
        "latency_ms": [event.get("latency_ms") for event in events],
        **_next_keys(events, patients, pseudonymiser),
        "embedding": [event.get("embedding") for event in events],
    }
    return list(zip(*(columns[name] for name in INFERENCE_COLUMNS), strict=True))


@dataclass(frozen=True)
class PreparedInferences:
    """A validated batch as rows, ready to insert (``prepare_inferences``)."""

    rows: list[tuple[Any, ...]]  # in INFERENCE_COLUMNS order, encoded for the session's database
    batch_size: int  # items in the batch, repeats included
    registers: dict[int, tuple[int, int]]  # embedding lengths to register (_register_lengths)


def prepare_inferences(
    session: Session, events: Sequence[InferenceEvent], pseudonymiser: Pseudonymiser
) -> PreparedInferences:
    """Drop repeats, resolve model versions, check embedding lengths and build the rows. It
    only reads, except that a model version seen for the first time is created."""
    indexed = _unique_by_key(events, [(event["model"], event["event_id"]) for event in events])
    ids, registers = _check_embedding_lengths(session, indexed)
    unique = [event for _, event in indexed]
    version_ids = [ids[(event["model"], event["model_version"])] for event in unique]
    received_at = datetime.now(UTC)
    if store.stores_time_as_text(session):
        rows = _inference_rows(unique, version_ids, pseudonymiser,
                               store.sqlite_text(received_at), store.sqlite_text)
    else:
        rows = _inference_rows(unique, version_ids, pseudonymiser, received_at)
    return PreparedInferences(rows=rows, batch_size=len(events), registers=registers)


def insert_inferences(session: Session, prepared: PreparedInferences) -> IngestResult:
    """Insert prepared rows in the caller's transaction (the caller commits); events already
    stored are skipped."""
    _register_lengths(session, prepared.registers)
    new = store.insert_inference_rows(session, prepared.rows)  # it counts what is new
    return IngestResult(accepted=len(prepared.rows), new=new,
                        duplicates=prepared.batch_size - new)


def store_inferences(runtime: Runtime, events: Sequence[InferenceEvent]) -> IngestResult:
    """Store a validated batch and commit it. The rows are built before the batch takes its
    turn at the writer (``Runtime.batch_session``), so building them overlaps the previous
    batch's WAL checkpoint."""
    with session_scope(runtime.sessions) as session:
        prepared = prepare_inferences(session, events, runtime.pseudonymiser)
    with runtime.batch_session() as session:
        return insert_inferences(session, prepared)


def store_overrides(runtime: Runtime, events: Sequence[OverrideEvent]) -> IngestResult:
    """Store a validated batch of radiologist reads and commit it."""
    with runtime.batch_session() as session:
        return write_overrides(session, events, runtime.pseudonymiser)


def write_overrides(
    session: Session, events: Sequence[OverrideEvent], pseudonymiser: Pseudonymiser
) -> IngestResult:
    """Store radiologist reads. A read whose inference has not arrived (or whose model is not
    known yet) is kept as it is: reads join inferences by (model, study) at query time."""
    unique = _unique_by_key(events, [(event.model, event.event_id) for event in events])
    existing = store.existing_override_keys(session, [(e.model, e.event_id) for _, e in unique])
    received_at = datetime.now(UTC)
    rows = [
        {
            "event_id": event.event_id,
            "model": event.model,
            "model_version": event.model_version,
            "study_key": pseudonymiser.study(event.study_uid),
            "ts": event.timestamp,
            "received_at": received_at,
            "radiologist_positive": event.radiologist_positive,
            "finding": event.finding,
            "agrees_with_model": event.agrees_with_model,
            "reader_key": pseudonymiser.reader(event.reader),
            "study_key_next": pseudonymiser.study_next(event.study_uid),
            "reader_key_next": pseudonymiser.reader_next(event.reader),
        }
        for _, event in unique
        if (event.model, event.event_id) not in existing
    ]
    store.insert_override_rows(session, rows)
    return IngestResult(accepted=len(unique), new=len(rows), duplicates=len(events) - len(rows))
