"""Engine, sessions and schema management (Alembic) for SQLite and PostgreSQL."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Select,
    create_engine,
    event,
    inspect,
    literal,
    select,
    text,
)
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import Update

from monitor.errors import SchemaVersionError

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)
# Any SELECT, whatever its columns: filters that add WHERE clauses keep the query's type.
SelectT = TypeVar("SelectT", bound="Select[*tuple[Any, ...]]")
# SQLite's default limit is 999 bound parameters: an IN (...) list holds at most this many.
IN_CHUNK = 900


def make_engine(url: str, *, checkpoint_in_background: bool = False, **kwargs: Any) -> Engine:
    """An engine with the pragmas the service relies on: on SQLite, WAL (readers do not block
    the writer), foreign keys on and a busy timeout instead of 'database is locked'. With
    ``checkpoint_in_background`` commits leave the WAL checkpoint to a ``WalCheckpointer``.

    Database errors never carry row values: SQLAlchemy leaves the statement's parameters out
    (``hide_parameters``), and PostgreSQL's DETAIL line ("Failing row contains (...)", "Key
    (...)=(...)") is dropped from the message (``_without_row_values``)."""
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            if checkpoint_in_background:
                cursor.execute("PRAGMA wal_autocheckpoint=0")
            cursor.close()

        return engine
    engine = create_engine(url, pool_pre_ping=True, **kwargs)
    event.listen(engine, "handle_error", _without_row_values)
    return engine


def _without_row_values(context: ExceptionContext) -> None:
    """Cut a PostgreSQL error down to its primary message (and hint), in the driver's
    exception and in SQLAlchemy's, before anything logs them."""
    original = context.original_exception
    diagnostic = getattr(original, "diag", None)
    primary = getattr(diagnostic, "message_primary", None)
    if not primary or getattr(diagnostic, "message_detail", None) is None:
        return
    original.args = (primary,)
    wrapped = context.sqlalchemy_exception
    if wrapped is not None:
        kind = type(original)
        wrapped.args = (f"({kind.__module__}.{kind.__name__}) {primary}",)


class WalCheckpointer:
    """SQLite's WAL checkpoint in a background thread rather than inside a commit.

    In WAL mode a commit appends the changed pages to the write-ahead log; once the log holds
    1,000 pages, SQLite copies it into the database file inside that same commit (the
    autocheckpoint). For a 1,000-event ingestion batch that copy was a third of the request.
    With an engine made with ``checkpoint_in_background``, this thread checkpoints after each
    batch (``after_write``) and at least every ``interval_s``, so the answer does not wait for
    the copy. Batch writes hold ``writing()``, which a checkpoint also holds, so the two never
    overlap: a checkpoint copies the whole log, and the next batch restarts it instead of
    letting it grow. PASSIVE checkpoints never wait for readers. Durability is that of
    synchronous=NORMAL either way: a committed batch is in the log.
    """

    def __init__(self, engine: Engine, interval_s: float = 1.0):
        self._engine = engine
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._lock:
            yield

    def after_write(self) -> None:
        self._wanted.set()

    def checkpoint(self) -> None:
        with self._lock, self._engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wanted.wait(self._interval_s)
            self._wanted.clear()
            try:
                self.checkpoint()
            except Exception:  # a failed checkpoint is retried at the next batch or second
                log.exception("WAL checkpoint failed")

    def close(self) -> None:
        self._stopping.set()
        self._wanted.set()
        self._thread.join(timeout=30)
        self.checkpoint()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """Commit on success, roll back on any error: a unit of work is all or nothing."""
    session = sessions()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


@functools.cache  # the migration scripts do not change while the process runs
def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config(create_engine("sqlite://")))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def current_revision_of(connection: Connection) -> str | None:
    """The revision recorded in ``alembic_version`` (read directly: quiet and cheap enough
    for a readiness probe)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Create or upgrade the schema to head. Returns (revision before, revision after)."""
    before = current_revision(engine)
    command.upgrade(alembic_config(engine), "head")
    return before, head_revision()


def unreadable_table(connection: Connection) -> str | None:
    """The first of the service's tables that a cheap SELECT cannot read, or ``None``."""
    from monitor.store.models import Base

    for table in Base.metadata.sorted_tables:
        try:
            connection.execute(select(literal(1)).select_from(table).limit(1)).all()
        except DBAPIError:  # the first failure ends the check (and, on PostgreSQL, the
            return table.name  # transaction): the caller rolls back
    return None


def verify_schema(engine: Engine) -> None:
    """Refuse a database that is not at the revision this code expects."""
    found, expected = current_revision(engine), head_revision()
    if found != expected:
        raise SchemaVersionError(
            f"database schema is at revision {found or 'none'}, this code expects {expected}: "
            "run `monitor init` to create or upgrade it"
        )


def updated_rows(session: Session, statement: Update) -> int:
    """How many rows an UPDATE changed. A conditional UPDATE claims a row: 0 means another
    process changed it first."""
    return int(cast("CursorResult[Any]", session.execute(statement)).rowcount)
