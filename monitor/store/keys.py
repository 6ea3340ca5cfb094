"""The pseudonymisation keys: reading them, their fingerprints in the database, rotation.

Every pseudonym in the database was made with one key; another key would make new pseudonyms
that join nothing. So the database records a *fingerprint* of its key (table
``pseudonym_key``) and the service refuses to start with a key whose fingerprint differs. The
fingerprint is an HMAC of a fixed label under the key: it identifies the key without being a
plain hash of it, so it cannot be used to test guessed keys faster than the pseudonyms can.

A rotation (``monitor rotate-key``) makes a new key current and keeps the old one as
``previous``: for the transition, events get both pseudonyms (``monitor.privacy``), and
``finish_rotation`` moves the new ones into place and retires the old key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update

from monitor.config import Settings
from monitor.errors import ConfigError
from monitor.privacy import Pseudonymiser
from monitor.store.models import AuditEntry, Inference, Override, PseudonymKey

log = logging.getLogger(__name__)

FINGERPRINT_LABEL = b"monitor-key-fingerprint"
MIN_KEY_LENGTH = 32
FINISH_BATCH_ROWS = 5_000


def fingerprint(key: bytes) -> str:
    """HMAC-SHA256 of a fixed label under ``key``, hex: names a key, reveals nothing of it."""
    return hmac.new(key, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()


def short(fingerprint_hex: str | None) -> str:
    """The first 16 hex digits, enough to tell keys apart in a message."""
    return "none" if fingerprint_hex is None else fingerprint_hex[:16]


@dataclass(frozen=True)
class Keys:
    """The configured keys: ``previous`` during a rotation."""

    current: bytes
    previous: bytes | None = None
    from_environment: bool = False

    @property
    def current_fingerprint(self) -> str:
        return fingerprint(self.current)

    @property
    def previous_fingerprint(self) -> str | None:
        return None if self.previous is None else fingerprint(self.previous)

    def without_previous(self) -> Keys:
        return Keys(self.current, None, self.from_environment)

    def pseudonymiser(self) -> Pseudonymiser:
        return Pseudonymiser(self.current, self.previous)


def read_key_file(path: Path) -> bytes:
    """A key file's key, refusing a file that the group or others may read or write."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the key file {path} is accessible to other users (mode {stat.S_IMODE(mode):04o}): "
            f"run `chmod 600 {path}` and check who may have read it")
    return path.read_bytes().strip()


def _checked(key: bytes, name: str) -> bytes:
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(f"the {name} must be at least {MIN_KEY_LENGTH} characters long")
    return key


def read_keys(settings: Settings) -> Keys:
    """The current key (MONITOR_SECRET_KEY or the key file) and, where one is configured, the
    previous key of a rotation (MONITOR_PREVIOUS_SECRET_KEY or its file)."""
    from_environment = settings.secret_key is not None
    if settings.secret_key is not None:
        current = settings.secret_key.get_secret_value().encode()
    elif settings.secret_key_file.exists():
        current = read_key_file(settings.secret_key_file)
    else:
        raise ConfigError(
            "no pseudonymisation key: set MONITOR_SECRET_KEY or run `monitor init` "
            f"to create {settings.secret_key_file}")
    previous = None
    if settings.previous_secret_key is not None:
        previous = settings.previous_secret_key.get_secret_value().encode()
    elif settings.previous_secret_key_file.exists():
        previous = read_key_file(settings.previous_secret_key_file)
    return Keys(_checked(current, "pseudonymisation key"),
                None if previous is None else _checked(previous, "previous pseudonymisation key"),
                from_environment)


@dataclass(frozen=True)
class KeyState:
    """What the database records: the current key, the previous one during a rotation, and
    the retired ones."""

    current: str | None
    previous: str | None
    retired: frozenset[str]


def key_state(connection: Connection) -> KeyState:
    rows = connection.execute(select(PseudonymKey.fingerprint, PseudonymKey.state)).all()
    by_state: dict[str, list[str]] = {}
    for found, state in rows:
        by_state.setdefault(state, []).append(found)
    return KeyState(current=next(iter(by_state.get("current", [])), None),
                    previous=next(iter(by_state.get("previous", [])), None),
                    retired=frozenset(by_state.get("retired", [])))


def key_problem(state: KeyState, keys: Keys) -> str | None:
    """Why ``keys`` cannot be used with a database in ``state`` (a message saying what to do),
    or ``None``."""
    current = keys.current_fingerprint
    if state.current is not None and current != state.current:
        if state.previous is None and keys.previous_fingerprint == state.current:
            return (f"a new pseudonymisation key ({short(current)}) is configured with this "
                    "database's key as the previous one: run `monitor rotate-key` to start "
                    "the rotation")
        if current in state.retired or current == state.previous:
            return (f"the pseudonymisation key ({short(current)}) was replaced by a key "
                    f"rotation; this database's key has fingerprint {short(state.current)}: "
                    "restore the current key file from your backup")
        return (f"the pseudonymisation key ({short(current)}) differs from the one this "
                f"database was created with ({short(state.current)}): with it, pseudonyms "
                "would change and joins break. Restore that key from your backup (`monitor key "
                "fingerprint` shows a key's fingerprint); to change keys, run `monitor "
                "rotate-key` with the database's key in place")
    if state.previous is not None:
        if keys.previous is None:
            return (f"a key rotation is in progress: the previous key ({short(state.previous)}) "
                    "is needed too, in MONITOR_PREVIOUS_SECRET_KEY or "
                    "MONITOR_PREVIOUS_SECRET_KEY_FILE; or finish the rotation with "
                    "`monitor rotate-key --finish`")
        if keys.previous_fingerprint != state.previous:
            return (f"the previous key ({short(keys.previous_fingerprint)}) is not the one of "
                    f"the rotation in progress ({short(state.previous)}): restore it from "
                    "your backup")
    return None


def _has_events(connection: Connection) -> bool:
    return any(connection.execute(select(table.id).limit(1)).first() is not None
               for table in (Inference, Override))


def _record_current(connection: Connection, key_fingerprint: str) -> None:
    connection.execute(insert(PseudonymKey).values(
        fingerprint=key_fingerprint, state="current", created_at=datetime.now(UTC)))


def verify_keys(engine: Engine, keys: Keys) -> Keys:
    """Check the keys against the database's fingerprints; raises ``ConfigError`` saying what
    to do on a mismatch. A database without a fingerprint (created before they were kept, or
    never opened) records the current key's. Returns the keys to use: a previous key
    configured when no rotation is in progress is left out (with a warning)."""
    with engine.begin() as connection:
        state = key_state(connection)
        if state.current is None:
            if _has_events(connection):
                log.info("recorded the pseudonymisation key's fingerprint %s for this "
                         "database's existing pseudonyms", short(keys.current_fingerprint))
            _record_current(connection, keys.current_fingerprint)
            state = KeyState(keys.current_fingerprint, None, state.retired)
    problem = key_problem(state, keys)
    if problem is not None:
        raise ConfigError(problem)
    if keys.previous is not None and state.previous is None:
        log.warning("a previous pseudonymisation key (%s) is configured but no key rotation is "
                    "in progress: it is not used; remove it", short(keys.previous_fingerprint))
        return keys.without_previous()
    return keys


def readiness_problem(connection: Connection, keys: Keys) -> str | None:
    """Why a process holding ``keys`` should not take events now: the database's key
    fingerprints differ from its own (another key, or a rotation started or finished since
    it started)."""
    state = key_state(connection)
    if state.current is None:
        return "no pseudonymisation key fingerprint recorded"
    if (keys.current_fingerprint, keys.previous_fingerprint) == (state.current, state.previous):
        return None
    return "the pseudonymisation keys differ from the database's (restart after a key rotation)"


# --- rotation ---------------------------------------------------------------------------------


def _write_key_file(path: Path, key: bytes) -> None:
    """Write a key file (mode 0600) whole or not at all: a temporary file, then a rename."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _new_key_files(settings: Settings, keys: Keys) -> Keys:
    """Keep the current key as the previous key file and write a new current key file."""
    previous_path = settings.previous_secret_key_file
    if keys.previous is not None and keys.previous != keys.current:
        raise ConfigError(
            f"{previous_path} holds a key from an earlier rotation: move it to your offline "
            "backup (or delete it) first")
    if keys.previous is None:
        _write_key_file(previous_path, keys.current)
    _write_key_file(settings.secret_key_file, secrets.token_hex(32).encode())
    return read_keys(settings)


@dataclass(frozen=True)
class RotationStarted:
    current: str
    previous: str
    wrote_files: bool


def start_rotation(engine: Engine, settings: Settings, *, actor: str) -> RotationStarted:
    """Make a new key current and the present one previous. With key files, the new key is
    generated and the old one kept as ``previous_secret_key_file``; with keys from the
    environment, the operator has set MONITOR_SECRET_KEY to the new key and
    MONITOR_PREVIOUS_SECRET_KEY to the old one. Files first, then the database: a run cut
    short between the two is completed by running it again."""
    keys = read_keys(settings)
    with engine.begin() as connection:
        state = key_state(connection)
    if state.current is None:
        keys = verify_keys(engine, keys.without_previous())
        state = KeyState(keys.current_fingerprint, None, state.retired)
    if state.previous is not None:
        raise ConfigError(
            f"a key rotation is already in progress (previous key {short(state.previous)}): "
            "finish it with `monitor rotate-key --finish` first")
    wrote_files = False
    if keys.current_fingerprint == state.current:
        if keys.from_environment:
            raise ConfigError(
                "the keys come from the environment: set MONITOR_PREVIOUS_SECRET_KEY to the "
                "present key and MONITOR_SECRET_KEY to a new one of at least 32 characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`), then run "
                "`monitor rotate-key` again")
        keys = _new_key_files(settings, keys)
        wrote_files = True
    elif keys.previous_fingerprint != state.current:
        raise ConfigError(key_problem(state, keys) or "the keys do not match this database")
    assert keys.previous_fingerprint is not None
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(update(PseudonymKey)
                           .where(PseudonymKey.fingerprint == keys.previous_fingerprint)
                           .values(state="previous"))
        connection.execute(insert(PseudonymKey).values(
            fingerprint=keys.current_fingerprint, state="current", created_at=now))
        _audit(connection, actor, "key_rotation_start", now,
               {"current_fingerprint": keys.current_fingerprint,
                "previous_fingerprint": keys.previous_fingerprint})
    return RotationStarted(keys.current_fingerprint, keys.previous_fingerprint, wrote_files)


@dataclass(frozen=True)
class RotationFinished:
    retired: str | None  # the previous key's fingerprint; None when no rotation was in progress
    inferences: int  # rows whose pseudonyms moved into place
    overrides: int


def finish_rotation(engine: Engine, settings: Settings, *, actor: str,
                    batch_rows: int = FINISH_BATCH_ROWS) -> RotationFinished:
    """Move the new key's pseudonyms into place (in batches of ``batch_rows``, each its own
    transaction, walking the primary key) and retire the previous key. Only the current key
    is needed. Running it again moves anything a writer still on the old keys stored since."""
    keys = read_keys(settings).without_previous()
    with engine.begin() as connection:
        state = key_state(connection)
    problem = key_problem(KeyState(state.current, None, state.retired), keys)
    if problem is not None:
        raise ConfigError(problem)
    inferences = _move_next_keys(engine, Inference, ("study_key", "patient_key"), batch_rows)
    overrides = _move_next_keys(engine, Override, ("study_key", "reader_key"), batch_rows)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        if state.previous is not None:
            connection.execute(update(PseudonymKey)
                               .where(PseudonymKey.fingerprint == state.previous)
                               .values(state="retired", retired_at=now))
        if state.previous is not None or inferences or overrides:
            _audit(connection, actor, "key_rotation_finish", now,
                   {"current_fingerprint": state.current,
                    "retired_fingerprint": state.previous,
                    "inferences_moved": inferences, "overrides_moved": overrides})
    return RotationFinished(state.previous, inferences, overrides)


def _move_next_keys(engine: Engine, table: Any, columns: tuple[str, ...], batch_rows: int
                    ) -> int:
    """SET key = key_next, key_next = NULL for the rows with a next key, a batch of ids at a
    time."""
    marker = getattr(table, f"{columns[0]}_next")
    with engine.connect() as connection:
        low, high = connection.execute(
            select(func.min(table.id), func.max(table.id)).where(marker.is_not(None))).one()
    if low is None:
        return 0
    values = {column: getattr(table, f"{column}_next") for column in columns}
    values.update({f"{column}_next": None for column in columns})
    moved = 0
    for start in range(low, high + 1, batch_rows):
        with engine.begin() as connection:
            moved += connection.execute(
                update(table)
                .where(table.id >= start, table.id < start + batch_rows, marker.is_not(None))
                .values(values)
            ).rowcount
    return moved


def _audit(connection: Connection, actor: str, action: str, now: datetime,
           details: dict[str, Any]) -> None:
    connection.execute(insert(AuditEntry).values(ts=now, actor=actor, action=action,
                                                 details=details))
