"""Schema management on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, text, update
from sqlalchemy.exc import DatabaseError

from monitor.errors import SchemaVersionError
from monitor.runtime import Runtime
from monitor.store.db import current_revision, head_revision, make_engine, upgrade, verify_schema
from monitor.store.models import AuditEntry, Base


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
