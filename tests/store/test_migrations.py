"""Revision 0002 on a database that holds data at 0001, on SQLite and PostgreSQL: rows kept,
``event_id`` unique per model afterwards, and the way back."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from monitor.store.db import alembic_config, current_revision, make_engine

T = "2026-11-01 08:00:00.000000"
MODELS = {1: "cxr-triage", 2: "fracture-detect"}


def _insert_inference(engine: Engine, event_id: str, version_id: int) -> None:
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO inference (event_id, model_version_id, model, ts, received_at, "
            "study_key, scores) VALUES (:event_id, :version_id, :model, :t, :t, :study, "
            "'{\"p\": 0.5}')"),
            {"event_id": event_id, "version_id": version_id, "model": MODELS[version_id],
             "t": T, "study": f"s-{event_id}"})


def _insert_override(engine: Engine, event_id: str, model: str) -> None:
    with engine.begin() as connection:
        connection.execute(text(
            'INSERT INTO "override" (event_id, model, study_key, ts, received_at, '
            "radiologist_positive) VALUES (:event_id, :model, 's-1', :t, :t, true)"),
            {"event_id": event_id, "model": model, "t": T})


def _rows(engine: Engine) -> dict[str, list[Any]]:
    with engine.connect() as connection:
        return {
            "inference": sorted(connection.execute(text(
                "SELECT model, event_id, study_key FROM inference")).all()),
            "override": sorted(connection.execute(text(
                'SELECT model, event_id FROM "override"')).all()),
        }


def _populated_at_0001(database_url: str) -> Engine:
    engine = make_engine(database_url)
    command.upgrade(alembic_config(engine), "0001")
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO model_version (id, model, version, status, created_at, updated_at) "
            "VALUES (1, 'cxr-triage', '1.4.0', 'production', :t, :t), "
            "(2, 'fracture-detect', '2.0.0', 'candidate', :t, :t)"), {"t": T})
    for event_id in ("e-1", "e-2", "e-3"):
        _insert_inference(engine, event_id, 1)
    _insert_override(engine, "r-1", "cxr-triage")
    _insert_override(engine, "r-2", "cxr-triage")
    return engine


def _refused(insert: Any, *args: Any) -> None:
    with pytest.raises(IntegrityError):
        insert(*args)


def test_0002_keeps_the_rows_and_makes_event_ids_unique_per_model(database_url: str) -> None:
    engine = _populated_at_0001(database_url)
    before = _rows(engine)
    _refused(_insert_inference, engine, "e-1", 2)  # at 0001: unique across all models
    _refused(_insert_override, engine, "r-1", "fracture-detect")

    command.upgrade(alembic_config(engine), "0002")
    assert current_revision(engine) == "0002"
    assert _rows(engine) == before
    columns = {column["name"] for column in inspect(engine).get_columns("inference")}
    assert {"study_key_next", "patient_key_next"} <= columns
    _insert_inference(engine, "e-1", 2)  # another model's event with the same id
    _insert_override(engine, "r-1", "fracture-detect")
    _refused(_insert_inference, engine, "e-1", 1)  # still unique within a model
    _refused(_insert_override, engine, "r-1", "cxr-triage")
    assert len(_rows(engine)["inference"]) == 4 and len(_rows(engine)["override"]) == 3
    engine.dispose()


def test_0002_downgrades_to_0001_with_its_rows(database_url: str) -> None:
    engine = _populated_at_0001(database_url)
    before = _rows(engine)
    config = alembic_config(engine)
    command.upgrade(config, "0002")
    command.downgrade(config, "0001")
    assert current_revision(engine) == "0001"
    assert _rows(engine) == before
    tables = set(inspect(engine).get_table_names())
    assert not {"api_token", "pseudonym_key"} & tables
    columns = {column["name"] for column in inspect(engine).get_columns("inference")}
    assert "study_key_next" not in columns
    _refused(_insert_inference, engine, "e-1", 2)  # unique across models again
    command.upgrade(config, "head")  # and up again, past 0002
    assert _rows(engine) == before
    engine.dispose()
