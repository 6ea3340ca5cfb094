"""What a running process holds: settings, the database engine and sessions, the
pseudonymiser. Built once at start-up and passed down."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from monitor.config import Settings, load_settings, read_secret_key
from monitor.privacy import Pseudonymiser
from monitor.store.db import (
    WalCheckpointer,
    make_engine,
    session_factory,
    session_scope,
    verify_schema,
)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    pseudonymiser: Pseudonymiser
    checkpointer: WalCheckpointer | None = None  # see ``open``

    @contextmanager
    def batch_session(self) -> Iterator[Session]:
        """A session for one ingestion batch, committed (or rolled back) at the end. On SQLite
        batches take turns, and the WAL checkpoint follows the commit in the background."""
        if self.checkpointer is None:
            with session_scope(self.sessions) as session:
                yield session
            return
        with self.checkpointer.writing(), session_scope(self.sessions) as session:
            yield session
        self.checkpointer.after_write()

    @classmethod
    def open(cls, settings: Settings | None = None, *, verify: bool = True,
             background_checkpoint: bool = False) -> Runtime:
        """Connect, and refuse a database whose schema is not at head (``verify``). A
        long-running writer (the server, the in-process collector) asks for
        ``background_checkpoint``: on an SQLite file, a ``WalCheckpointer`` thread then
        checkpoints after each batch, and ``close`` stops it."""
        settings = settings or load_settings()
        url = make_url(settings.database_url)
        on_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
        background_checkpoint &= on_file
        engine = make_engine(settings.database_url,
                             checkpoint_in_background=background_checkpoint)
        if verify:
            verify_schema(engine)
        return cls(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine),
            pseudonymiser=Pseudonymiser(read_secret_key(settings)),
            checkpointer=WalCheckpointer(engine) if background_checkpoint else None,
        )

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
        self.engine.dispose()
