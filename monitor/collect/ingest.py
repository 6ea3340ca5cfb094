"""The write path: validated events -> pseudonymised rows, one transaction per batch.

A batch is all or nothing: it is validated whole (``monitor.schema.parse_batch``), checked
against the registered embedding length, and committed before the caller acknowledges it. A
duplicate ``event_id`` (twice in one batch, or a retry of a stored batch) is stored once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from monitor.collect.dicom import age_band, normalise_manufacturer
from monitor.errors import BatchValidationError
from monitor.privacy import Pseudonymiser
from monitor.schema import InferenceEvent, OverrideEvent
from monitor.store.models import Inference, ModelVersion, Override

AGE_CAP_YEARS = 90  # ages above 89 are identifying (HIPAA safe harbour): stored as 90
_IN_CHUNK = 900  # bound on bound parameters in one IN (...) list


@dataclass(frozen=True)
class IngestResult:
    """``accepted``: distinct events of the batch now stored (a retry gets the same number);
    ``new``: stored by this call; ``duplicates``: items already stored or repeated."""

    accepted: int
    new: int
    duplicates: int


def _sqlite_text(moment: datetime) -> str:
    """How SQLAlchemy's DateTime stores a (UTC) datetime on SQLite."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _insert_sqlite_inferences(session: Session, rows: list[dict[str, Any]]) -> int:
    """The hot path on SQLite: the driver's executemany with values converted as SQLAlchemy's
    types would (datetimes as text, JSON as text; sqlite3 stores bools as 0/1 itself).
    SQLAlchemy's per-value bind processing doubled the cost of a batch (benchmarks/ingest.py).
    ON CONFLICT DO NOTHING skips event_ids already stored; returns the rows inserted."""
    columns = list(rows[0])
    received_at = _sqlite_text(rows[0]["received_at"])  # one value for the whole batch
    values = []
    for row in rows:
        row = {**row, "ts": _sqlite_text(row["ts"]), "received_at": received_at,
               "scores": json.dumps(row["scores"]),
               "tags": None if row["tags"] is None else json.dumps(row["tags"])}
        values.append(tuple(row[c] for c in columns))
    sql = (f"INSERT INTO {Inference.__tablename__} ({', '.join(columns)}) "
           f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT (event_id) DO NOTHING")
    return int(session.connection().exec_driver_sql(sql, values).rowcount)


def _insert_ignoring_duplicates(session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT (event_id) DO NOTHING, so a concurrent retry cannot fail the
    batch."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        stmt = sqlite_insert(table).on_conflict_do_nothing(index_elements=["event_id"])
    elif dialect == "postgresql":
        stmt = pg_insert(table).on_conflict_do_nothing(index_elements=["event_id"])
    else:
        stmt = insert(table)
    session.execute(stmt, rows)


def _existing_event_ids(session: Session, column: Any, event_ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(event_ids), _IN_CHUNK):
        chunk = event_ids[start : start + _IN_CHUNK]
        found.update(session.scalars(select(column).where(column.in_(chunk))))
    return found


def _unique_by_event_id(events: Sequence[Any]) -> list[tuple[int, Any]]:
    seen: set[str] = set()
    unique = []
    for index, event in enumerate(events):
        if event.event_id not in seen:
            seen.add(event.event_id)
            unique.append((index, event))
    return unique


def resolve_model_version(session: Session, model: str, version: str) -> ModelVersion:
    """The model version row, created (status ``candidate``) on first sight."""
    row = session.scalar(
        select(ModelVersion).where(ModelVersion.model == model, ModelVersion.version == version)
    )
    if row is not None:
        return row
    now = datetime.now(UTC)
    dialect = session.get_bind().dialect.name
    values = {"model": model, "version": version, "status": "candidate",
              "created_at": now, "updated_at": now}
    if dialect in ("sqlite", "postgresql"):
        make = sqlite_insert if dialect == "sqlite" else pg_insert
        session.execute(make(ModelVersion).values(**values).on_conflict_do_nothing())
    else:
        session.add(ModelVersion(**values))
        session.flush()
    return session.scalars(
        select(ModelVersion).where(ModelVersion.model == model, ModelVersion.version == version)
    ).one()


def _check_embedding_lengths(
    session: Session, unique: list[tuple[int, InferenceEvent]]
) -> dict[tuple[str, str], ModelVersion]:
    """Resolve every (model, version) of the batch and enforce one embedding length each:
    the first accepted length registers it, a different length later is rejected."""
    versions: dict[tuple[str, str], ModelVersion] = {}
    problems = []
    for index, event in unique:
        key = (event.model, event.model_version)
        if key not in versions:
            versions[key] = resolve_model_version(session, *key)
        row = versions[key]
        dim = event.embedding_dim
        if dim is None:
            continue
        if row.embedding_dim is None:
            row.embedding_dim = dim  # registered by the first accepted embedding
        elif dim != row.embedding_dim:
            problems.append({
                "index": index,
                "field": "embedding",
                "message": f"embedding length {dim} does not match {event.model} "
                f"{event.model_version} (expects {row.embedding_dim})",
            })
    if problems:
        raise BatchValidationError(problems)
    for row in versions.values():
        # only a NULL length is filled in; a concurrent writer that registered first wins
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.id == row.id, ModelVersion.embedding_dim.is_(None))
            .values(embedding_dim=row.embedding_dim)
            .execution_options(synchronize_session=False)
        )
    return versions


def _inference_row(
    event: InferenceEvent, version_id: int, pseudonymiser: Pseudonymiser, received_at: datetime
) -> dict[str, Any]:
    scanner = event.scanner
    patient = event.patient
    age = None if patient is None or patient.age_years is None else patient.age_years
    scores = event.prediction.scores
    first_score = next(iter(scores.values()))
    threshold = event.prediction.threshold
    positive = event.prediction.positive
    if positive is None and threshold is not None:
        positive = first_score >= threshold
    manufacturer = scanner.manufacturer if scanner else None
    return {
        "event_id": event.event_id,
        "model_version_id": version_id,
        "model": event.model,
        "ts": event.timestamp,
        "received_at": received_at,
        "study_key": pseudonymiser.study(event.study_uid),
        "patient_key": pseudonymiser.patient(patient.id) if patient else None,
        "sex": patient.sex if patient else None,
        "age_years": None if age is None else float(min(age, AGE_CAP_YEARS)),
        "age_band": age_band(age),
        "manufacturer": manufacturer,
        "vendor": (scanner.vendor if scanner and scanner.vendor
                   else normalise_manufacturer(manufacturer)),
        "scanner_model": scanner.model if scanner else None,
        "station": scanner.station if scanner else None,
        "site": scanner.site if scanner else None,
        "modality": scanner.modality if scanner else None,
        "body_part": scanner.body_part if scanner else None,
        "view": scanner.view if scanner else None,
        "kvp": scanner.kvp if scanner else None,
        "exposure_mas": scanner.exposure_mas if scanner else None,
        "pixel_spacing_mm": scanner.pixel_spacing_mm if scanner else None,
        "photometric": scanner.photometric if scanner else None,
        "software_version": scanner.software_version if scanner else None,
        "tags": (scanner.tags or None) if scanner else None,
        "scores": scores,
        "score": first_score,
        "positive": positive,
        "threshold": threshold,
        "latency_ms": event.latency_ms,
        "embedding": event.embedding,
    }


def write_inferences(
    session: Session, events: Sequence[InferenceEvent], pseudonymiser: Pseudonymiser
) -> IngestResult:
    """Store a validated batch in the caller's transaction (the caller commits)."""
    unique = _unique_by_event_id(events)
    versions = _check_embedding_lengths(session, unique)
    received_at = datetime.now(UTC)
    if session.get_bind().dialect.name == "sqlite":  # the insert itself counts what is new
        rows = [_inference_row(event, versions[(event.model, event.model_version)].id,
                               pseudonymiser, received_at) for _, event in unique]
        new = _insert_sqlite_inferences(session, rows)
        return IngestResult(accepted=len(unique), new=new, duplicates=len(events) - new)
    existing = _existing_event_ids(session, Inference.event_id, [e.event_id for _, e in unique])
    rows = [
        _inference_row(event, versions[(event.model, event.model_version)].id,
                       pseudonymiser, received_at)
        for _, event in unique
        if event.event_id not in existing
    ]
    _insert_ignoring_duplicates(session, Inference, rows)
    return IngestResult(accepted=len(unique), new=len(rows), duplicates=len(events) - len(rows))


def write_overrides(
    session: Session, events: Sequence[OverrideEvent], pseudonymiser: Pseudonymiser
) -> IngestResult:
    """Store radiologist reads. A read whose inference has not arrived (or whose model is not
    known yet) is kept as it is: reads join inferences by (model, study) at query time."""
    unique = _unique_by_event_id(events)
    existing = _existing_event_ids(session, Override.event_id, [e.event_id for _, e in unique])
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
        }
        for _, event in unique
        if event.event_id not in existing
    ]
    _insert_ignoring_duplicates(session, Override, rows)
    return IngestResult(accepted=len(unique), new=len(rows), duplicates=len(events) - len(rows))
