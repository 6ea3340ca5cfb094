"""Schema management on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, text, update
from sqlalchemy.exc import DatabaseError

from monitor.collect.ingest import store_inferences
from monitor.errors import SchemaVersionError
from monitor.runtime import Runtime
from monitor.schema import INFERENCES
from monitor.store.db import current_revision, head_revision, make_engine, upgrade, verify_schema
from monitor.store.models import AuditEntry, Base, Inference
from tests.conftest import make_settings
from tests.factories import inference_event


def test_migrations_match_the_models(runtime: Runtime) -> None:
    with runtime.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    assert current_revision(runtime.engine) == head_revision()


def test_service_refuses_a_database_not_at_head(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(SchemaVersionError, match="monitor init"):
        verify_schema(engine)
    assert upgrade(engine) == (None, head_revision())
    assert upgrade(engine) == (head_revision(), head_revision())  # idempotent
    verify_schema(engine)


def test_audit_log_is_append_only(runtime: Runtime) -> None:
    with runtime.engine.begin() as connection:
        connection.execute(insert(AuditEntry).values(ts=datetime.now(UTC), actor="a",
                                                     action="promote"))
    for statement in (update(AuditEntry).values(actor="b"), AuditEntry.__table__.delete()):
        with pytest.raises(DatabaseError, match="append-only"), runtime.engine.begin() as c:
            c.execute(statement)


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_background_checkpoint_copies_the_wal_into_the_database_file(tmp_path) -> None:
    """With the autocheckpoint off, new pages reach the database file only through the
    checkpointer thread: the file grows shortly after a batch, without another write."""
    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    runtime = Runtime.open(make_settings(url, tmp_path), verify=False,
                           background_checkpoint=True)
    upgrade(runtime.engine)
    try:
        with runtime.engine.connect() as connection:
            assert connection.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 0
        runtime.checkpointer.checkpoint()
        before = (tmp_path / "monitor.db").stat().st_size
        events = [inference_event(embedding=[0.5] * 512) for _ in range(200)]
        assert store_inferences(runtime, INFERENCES.from_python(events)).new == 200
        deadline = time.monotonic() + 10
        while (tmp_path / "monitor.db").stat().st_size == before:
            assert time.monotonic() < deadline, "the WAL was never checkpointed"
            time.sleep(0.05)
    finally:
        runtime.close()
    assert not runtime.checkpointer._thread.is_alive()


def test_background_checkpoint_is_for_sqlite_files_only(tmp_path) -> None:
    for url in ("sqlite://", "postgresql+psycopg://nobody@127.0.0.1:1/none"):
        settings = make_settings(url, tmp_path)
        runtime = Runtime.open(settings, verify=False, background_checkpoint=True)
        assert runtime.checkpointer is None
        runtime.close()


def test_a_failing_insert_shows_no_row_values(runtime: Runtime,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """Neither SQLAlchemy's parameters nor PostgreSQL's "Failing row contains (...)" reach
    the exception or a log line."""
    secret = "SITE-SECRET-4711"
    values = {"event_id": "e1", "model_version_id": 1, "model": "m", "ts": datetime.now(UTC),
              "received_at": datetime.now(UTC), "study_key": None, "site": secret,
              "scores": {"x": 0.5}}
    with pytest.raises(DatabaseError) as failed, runtime.engine.begin() as connection:
        connection.execute(insert(Inference).values(**values))
    logging.getLogger("test").exception("insert failed", exc_info=failed.value)
    chain = [failed.value, failed.value.__cause__]
    assert all(secret not in str(exc) for exc in chain)
    assert "hidden" in str(failed.value) and secret not in caplog.text
