"""The pseudonymisation keys: fingerprints recorded and checked, the key file's mode, and a
rotation that keeps events linking across it, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select

from monitor.collect.ingest import store_inferences, store_overrides
from monitor.config import Settings
from monitor.errors import ConfigError
from monitor.privacy import Pseudonymiser
from monitor.runtime import Runtime
from monitor.schema import INFERENCES, OVERRIDES
from monitor.store.db import make_engine, upgrade
from monitor.store.keys import (
    fingerprint,
    finish_rotation,
    key_state,
    read_keys,
    readiness_problem,
    start_rotation,
)
from monitor.store.models import AuditEntry, Inference, Override, PseudonymKey
from tests.conftest import TEST_SECRET, make_settings
from tests.factories import inference_event, override_event

OTHER_SECRET = "another-key-0123456789abcdef0123456789abcdef"


def file_settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings whose keys come from files, as `monitor init` makes them."""
    key_file = tmp_path / "keys" / "secret.key"
    key_file.parent.mkdir(mode=0o700, exist_ok=True)
    if not key_file.exists():
        key_file.write_text(TEST_SECRET)
        key_file.chmod(0o600)
    return make_settings(database_url, tmp_path, secret_key=None, secret_key_file=key_file,
                         previous_secret_key_file=tmp_path / "keys" / "secret.key.previous")


def opened(settings: Settings) -> Runtime:
    upgrade(make_engine(settings.database_url))
    return Runtime.open(settings)


def ingest(runtime: Runtime, *events: dict[str, Any]) -> None:
    store_inferences(runtime, INFERENCES.from_python(list(events)))


def rows(runtime: Runtime, table: Any) -> dict[str, Any]:
    with runtime.engine.connect() as connection:
        return {row.event_id: row for row in connection.execute(select(table))}


def test_fingerprint_is_keyed_and_names_the_key() -> None:
    key = TEST_SECRET.encode()
    assert fingerprint(key) == fingerprint(key) != fingerprint(OTHER_SECRET.encode())
    assert len(fingerprint(key)) == 64
    assert fingerprint(key) != hashlib.sha256(key).hexdigest()  # not a plain hash of the key
    assert TEST_SECRET not in fingerprint(key)


def test_a_different_key_is_refused_with_what_to_do(database_url: str, tmp_path: Path) -> None:
    runtime = opened(make_settings(database_url, tmp_path))  # records the key's fingerprint
    with runtime.engine.connect() as connection:
        assert key_state(connection).current == fingerprint(TEST_SECRET.encode())
    runtime.close()
    with pytest.raises(ConfigError) as refused:
        Runtime.open(make_settings(database_url, tmp_path, secret_key=OTHER_SECRET))
    message = str(refused.value)
    assert "differs from the one this database was created with" in message
    assert "backup" in message and "monitor rotate-key" in message
    assert OTHER_SECRET not in message and TEST_SECRET not in message


def test_a_database_with_events_but_no_fingerprint_records_it_once(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = opened(make_settings(sqlite_url, tmp_path))
    ingest(runtime, inference_event())
    with runtime.engine.begin() as connection:  # as if created before fingerprints were kept
        connection.execute(delete(PseudonymKey))
    runtime.close()
    with caplog.at_level(logging.INFO, logger="monitor.store.keys"):
        Runtime.open(make_settings(sqlite_url, tmp_path)).close()
    recorded = [r for r in caplog.records if "recorded the pseudonymisation key" in r.message]
    assert len(recorded) == 1 and recorded[0].levelno == logging.INFO
    with pytest.raises(ConfigError, match="differs"):
        Runtime.open(make_settings(sqlite_url, tmp_path, secret_key=OTHER_SECRET))


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    settings = file_settings(f"sqlite:///{tmp_path / 'm.db'}", tmp_path)
    assert read_keys(settings).current == TEST_SECRET.encode()
    for mode in (0o640, 0o604):
        settings.secret_key_file.chmod(mode)
        with pytest.raises(ConfigError, match=f"mode {mode:04o}.*chmod 600"):
            read_keys(settings)


def test_rotation_links_across_it_and_finishing_moves_the_new_pseudonyms(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = file_settings(database_url, tmp_path)
    before = opened(settings)
    old_study = inference_event(patient={"id": "P-1"})
    ingest(before, old_study)
    started = start_rotation(before.engine, settings, actor="alice")
    assert started.wrote_files and started.previous == fingerprint(TEST_SECRET.encode())
    assert settings.previous_secret_key_file.read_text() == TEST_SECRET
    new_key = settings.secret_key_file.read_bytes()
    assert new_key != TEST_SECRET.encode() and started.current == fingerprint(new_key)
    for path in (settings.secret_key_file, settings.previous_secret_key_file):
        assert path.stat().st_mode & 0o777 == 0o600
    with before.engine.connect() as connection:  # a process still on the old key: restart it
        assert readiness_problem(connection, before.keys) is not None
    before.close()

    during = Runtime.open(settings)  # both keys: stored pseudonyms stay the old key's
    assert during.pseudonymiser.rotating
    repeat = inference_event(patient={"id": "P-1"})
    ingest(during, repeat)
    store_overrides(during, OVERRIDES.from_python([override_event(old_study["study_uid"])]))
    inferences, overrides = rows(during, Inference), rows(during, Override)
    old_row, new_row = inferences[old_study["event_id"]], inferences[repeat["event_id"]]
    assert new_row.patient_key == old_row.patient_key  # repeat studies still link
    (read,) = overrides.values()
    assert read.study_key == old_row.study_key  # the read joins its inference
    new = Pseudonymiser(new_key)
    assert new_row.patient_key_next == new.patient("P-1")
    assert new_row.study_key_next == new.study(repeat["study_uid"])
    assert read.study_key_next == new.study(old_study["study_uid"])
    assert read.reader_key_next == new.reader("r17")
    assert old_row.study_key_next is None  # stored before: cannot be re-keyed
    during.close()

    with pytest.raises(ConfigError, match="rotation is in progress"):
        Runtime.open(settings.model_copy(update={
            "previous_secret_key_file": tmp_path / "absent"}))

    finished = finish_rotation(make_engine(settings.database_url), settings, actor="alice",
                               batch_rows=1)
    assert (finished.retired, finished.inferences, finished.overrides) == (
        started.previous, 1, 1)
    with caplog.at_level(logging.WARNING, logger="monitor.store.keys"):
        after = Runtime.open(settings)  # the previous key file is still there: ignored
    assert not after.pseudonymiser.rotating
    assert any("no key rotation is in progress" in r.message for r in caplog.records)
    inferences, overrides = rows(after, Inference), rows(after, Override)
    moved = inferences[repeat["event_id"]]
    assert (moved.patient_key, moved.patient_key_next) == (new.patient("P-1"), None)
    assert inferences[old_study["event_id"]].study_key == old_row.study_key
    assert next(iter(overrides.values())).reader_key == new.reader("r17")
    with after.engine.connect() as connection:
        states = {found: state for found, state in connection.execute(
            select(PseudonymKey.fingerprint, PseudonymKey.state))}
        audit = connection.execute(select(AuditEntry.actor, AuditEntry.action,
                                          AuditEntry.details)).all()
        assert readiness_problem(connection, after.keys) is None
    assert states == {started.previous: "retired", started.current: "current"}
    assert [(actor, action) for actor, action, _ in audit] == [
        ("alice", "key_rotation_start"), ("alice", "key_rotation_finish")]
    assert not any(secret in str(audit) for secret in (TEST_SECRET, new_key.decode()))
    after.close()

    with pytest.raises(ConfigError, match="replaced by a key rotation"):
        Runtime.open(make_settings(database_url, tmp_path))  # the old key as the current one


def test_rotation_with_keys_from_the_environment(sqlite_url: str, tmp_path: Path) -> None:
    settings = make_settings(sqlite_url, tmp_path)
    runtime = opened(settings)
    with pytest.raises(ConfigError, match="MONITOR_PREVIOUS_SECRET_KEY to the present key"):
        start_rotation(runtime.engine, settings, actor="ops")
    runtime.close()
    rotated = make_settings(sqlite_url, tmp_path, secret_key=OTHER_SECRET,
                            previous_secret_key=TEST_SECRET)
    with pytest.raises(ConfigError, match="run `monitor rotate-key` to start"):
        Runtime.open(rotated)
    started = start_rotation(make_engine(sqlite_url), rotated, actor="ops")
    assert not started.wrote_files and not settings.previous_secret_key_file.exists()
    with Runtime.open(rotated).engine.connect() as connection:
        assert key_state(connection).previous == fingerprint(TEST_SECRET.encode())


def test_a_rotation_cut_short_after_the_files_is_completed_by_running_it_again(
    sqlite_url: str, tmp_path: Path
) -> None:
    settings = file_settings(sqlite_url, tmp_path)
    opened(settings).close()
    settings.previous_secret_key_file.write_text(TEST_SECRET)  # the files, not the database
    settings.previous_secret_key_file.chmod(0o600)
    settings.secret_key_file.write_text(OTHER_SECRET)
    with pytest.raises(ConfigError, match="run `monitor rotate-key` to start"):
        Runtime.open(settings)
    started = start_rotation(make_engine(sqlite_url), settings, actor="ops")
    assert not started.wrote_files and started.current == fingerprint(OTHER_SECRET.encode())
    Runtime.open(settings).close()
