"""The write path's SQL: model versions created on first sight, embedding lengths
registered, inference and override rows inserted once per (model, event_id).

``monitor.collect.ingest`` validates a batch and builds its rows; this module puts them in
the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from monitor.store.db import IN_CHUNK
from monitor.store.models import Inference, ModelVersion, Override

# The inference table's columns in the order the write path's rows give them.
INFERENCE_COLUMNS: Final = (
    "event_id", "model_version_id", "model", "ts", "received_at", "study_key", "patient_key",
    "sex", "age_years", "age_band", "manufacturer", "vendor", "scanner_model", "station", "site",
    "modality", "body_part", "view", "kvp", "exposure_mas", "pixel_spacing_mm", "photometric",
    "software_version", "tags", "scores", "score", "positive", "threshold", "latency_ms",
    "study_key_next", "patient_key_next", "embedding",
)

EventKey = tuple[str, str]  # (model, event_id): what makes an event unique


def stores_time_as_text(session: Session) -> bool:
    """SQLite keeps datetimes as text (``sqlite_text``); PostgreSQL takes them as they are."""
    return session.get_bind().dialect.name == "sqlite"


def sqlite_text(moment: datetime) -> str:
    """How SQLAlchemy's DateTime stores a (UTC) datetime on SQLite: "2026-11-23 18:30:00.000000"."""
    return moment.astimezone(UTC).isoformat(" ", "microseconds")[:26]


def insert_inference_rows(session: Session, rows: list[tuple[Any, ...]]) -> int:
    """The hot path: rows already in the driver's form (``INFERENCE_COLUMNS`` order) go to the
    driver's executemany. SQLAlchemy's per-value bind processing doubled the cost of a batch
    (benchmarks/ingest.py). ON CONFLICT DO NOTHING skips event_ids already stored; returns the
    rows inserted."""
    connection = session.connection()
    placeholder = "?" if connection.dialect.name == "sqlite" else "%s"  # psycopg: %s
    sql = (f"INSERT INTO {Inference.__tablename__} ({', '.join(INFERENCE_COLUMNS)}) "
           f"VALUES ({', '.join([placeholder] * len(INFERENCE_COLUMNS))}) "
           "ON CONFLICT (model, event_id) DO NOTHING")
    return int(connection.exec_driver_sql(sql, rows).rowcount)


def insert_override_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT (model, event_id) DO NOTHING, so a concurrent retry cannot fail
    the batch."""
    if rows:
        session.execute(_insert_skipping_conflicts(session, Override,
                                                   index_elements=["model", "event_id"]), rows)


def existing_override_keys(session: Session, keys: Sequence[EventKey]) -> set[EventKey]:
    """The (model, event_id) pairs among ``keys`` already stored as reads."""
    by_model: dict[str, list[str]] = {}
    for model, event_id in keys:
        by_model.setdefault(model, []).append(event_id)
    found: set[EventKey] = set()
    for model, event_ids in by_model.items():
        for start in range(0, len(event_ids), IN_CHUNK):
            chunk = event_ids[start : start + IN_CHUNK]
            query = select(Override.event_id).where(Override.model == model,
                                                    Override.event_id.in_(chunk))
            found.update((model, event_id) for event_id in session.scalars(query))
    return found


def version_id(session: Session, model: str, version: str) -> tuple[int, int | None]:
    """(id, registered embedding length) of a model version, created (status ``candidate``)
    on first sight."""
    query = select(ModelVersion.id, ModelVersion.embedding_dim).where(
        ModelVersion.model == model, ModelVersion.version == version)
    found = session.execute(query).first()
    if found is None:
        now = datetime.now(UTC)
        values = {"model": model, "version": version, "status": "candidate",
                  "created_at": now, "updated_at": now}
        # a concurrent writer may create it first
        session.execute(_insert_skipping_conflicts(session, ModelVersion).values(**values))
        found = session.execute(query).one()
    return found.id, found.embedding_dim


def register_embedding_lengths(session: Session, lengths: dict[int, int]) -> dict[int, int | None]:
    """Fill in the embedding length of each version id that has none yet, and return the
    lengths now stored: where a concurrent batch registered another length first, the stored
    one differs from the one asked for."""
    for version, length in lengths.items():
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.id == version, ModelVersion.embedding_dim.is_(None))
            .values(embedding_dim=length)
        )
    query = select(ModelVersion.id, ModelVersion.embedding_dim).where(
        ModelVersion.id.in_(list(lengths)))
    return {version: length for version, length in session.execute(query)}


def _insert_skipping_conflicts(session: Session, table: Any, **conflict: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING in the session's dialect (a plain INSERT elsewhere)."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        return sqlite_insert(table).on_conflict_do_nothing(**conflict)
    if dialect == "postgresql":
        return pg_insert(table).on_conflict_do_nothing(**conflict)
    return insert(table)
