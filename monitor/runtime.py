"""What a running process holds: settings, the database engine and sessions, the
pseudonymiser. Built once at start-up and passed down."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from monitor.config import Settings, load_settings, read_secret_key
from monitor.privacy import Pseudonymiser
from monitor.store.db import make_engine, session_factory, verify_schema


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    pseudonymiser: Pseudonymiser

    @classmethod
    def open(cls, settings: Settings | None = None, *, verify: bool = True) -> Runtime:
        """Connect, and refuse a database whose schema is not at head (``verify``)."""
        settings = settings or load_settings()
        engine = make_engine(settings.database_url)
        if verify:
            verify_schema(engine)
        return cls(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine),
            pseudonymiser=Pseudonymiser(read_secret_key(settings)),
        )

    def close(self) -> None:
        self.engine.dispose()
