"""What a running process holds: settings, the database engine and sessions, the
pseudonymiser. Built once at start-up and passed down.

Opening a runtime also restricts the files the process creates to its user (umask 077: the
database, its WAL, reports and logs hold pseudonymised health data) and checks the
pseudonymisation keys against the fingerprints the database records (``monitor.store.keys``).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from monitor.config import Settings, load_settings
from monitor.privacy import Pseudonymiser
from monitor.store.db import (
    WalCheckpointer,
    make_engine,
    session_factory,
    session_scope,
    verify_schema,
)
from monitor.store.keys import Keys, read_keys, verify_keys

log = logging.getLogger(__name__)
PRIVATE_UMASK = 0o077  # files 0600, directories 0700


def restrict_new_files() -> None:
    """Files and directories this process creates from now on are its user's alone."""
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)


def tighten_sqlite_files(database: str) -> None:
    """An SQLite database (and its -wal, -shm) created before files were kept private is
    made 0600; SQLite gives a new -wal and -shm the database file's mode."""
    for path in (Path(database), Path(database + "-wal"), Path(database + "-shm")):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                path.chmod(mode & 0o700)
                log.warning("%s was accessible to other users (mode %04o): now %04o", path,
                            mode, mode & 0o700)
        except FileNotFoundError:
            continue
        except PermissionError:  # not ours to change: say so, but a read-only user may run
            log.warning("%s is accessible to other users and cannot be changed", path)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    pseudonymiser: Pseudonymiser
    checkpointer: WalCheckpointer | None = None  # see ``open``
    keys: Keys | None = None  # the keys in use (``/readyz`` compares them with the database's)

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
        checkpoints after each batch, and ``close`` stops it. With ``verify`` the keys must
        match the database's fingerprints too (``ConfigError`` saying what to do if not)."""
        restrict_new_files()
        settings = settings or load_settings()
        keys = read_keys(settings)
        url = make_url(settings.database_url)
        on_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
        if on_file:
            tighten_sqlite_files(str(url.database))
        background_checkpoint &= on_file
        engine = make_engine(settings.database_url,
                             checkpoint_in_background=background_checkpoint)
        try:
            if verify:
                verify_schema(engine)
                keys = verify_keys(engine, keys)
        except BaseException:
            engine.dispose()
            raise
        return cls(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine),
            pseudonymiser=keys.pseudonymiser(),
            checkpointer=WalCheckpointer(engine) if background_checkpoint else None,
            keys=keys,
        )

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
        self.engine.dispose()
