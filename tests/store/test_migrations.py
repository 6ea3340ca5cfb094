"""Migrations on databases that hold data, on SQLite and PostgreSQL: revision 0002 at 0001
(rows kept, ``event_id`` unique per model afterwards, and the way back), revision 0003 at
0002 (studies, baseline summaries and open alerts re-banded by age, and the way back) and
revision 0004 at 0003 (incidents: alerts, their notifications and the recommendations citing
them kept; one open incident per cause; and the way back)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from monitor_client.dicom import age_band
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from monitor.checks.baselines import load_reference
from monitor.store.db import (
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    session_scope,
)
from monitor.store.results import get_baseline
from tests.conftest import open_runtime

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


# --- 0003: age bands ------------------------------------------------------------------------

AGES = {"a-10": 10, "a-30": 30, "a-50": 50, "a-70": 70, "a-85": 85, "a-90": 90, "a-none": None}
BANDS_0002 = {"a-10": "0-17", "a-30": "18-39", "a-50": "40-64", "a-70": "65+", "a-85": "65+",
              "a-90": "65+", "a-none": None}
BANDS_0003 = {"a-10": "0-17", "a-30": "18-39", "a-50": "40-64", "a-70": "65-79",
              "a-85": "80+", "a-90": "80+", "a-none": None}
SUMMARY_0002 = {"categories": {"sex": {"F": 1.0},
                               "age_band": {"65+": 3 / 6, "0-17": 1 / 6, "18-39": 1 / 6,
                                            "40-64": 1 / 6}},
                "n_patients": 7}
SUMMARY_0003 = {"categories": {"sex": {"F": 1.0},
                               "age_band": {"80+": 2 / 6, "0-17": 1 / 6, "18-39": 1 / 6,
                                            "40-64": 1 / 6, "65-79": 1 / 6}},
                "n_patients": 7}


def _insert_alert(engine: Engine, key: str, state: str, feature: str) -> None:
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO alert (key, rule, model, model_version, severity, state, labels, "
            "consecutive, firing_windows, started_at, updated_at) VALUES (:key, "
            "'subgroup_gap', 'cxr-triage', '1.4.0', 'warning', :state, :labels, 3, 2, :t, :t)"),
            {"key": key, "state": state, "t": T,
             "labels": json.dumps({"detector": "SubgroupBias", "feature": feature})})


def _populated_at_0002(database_url: str) -> Engine:
    """Studies of every age band at 0002 (one of each, three aged 65 or over, one unknown),
    a baseline holding six of them, and alerts on the age band 65+ and others."""
    engine = _populated_at_0001(database_url)
    command.upgrade(alembic_config(engine), "0002")
    with engine.begin() as connection:
        for event_id, age in AGES.items():
            connection.execute(text(
                "INSERT INTO inference (event_id, model_version_id, model, ts, received_at, "
                "study_key, scores, age_years, age_band) VALUES (:event_id, 1, 'cxr-triage', "
                ":t, :t, :study, '{\"p\": 0.5}', :age, :band)"),
                {"event_id": event_id, "t": T, "study": f"s-{event_id}", "age": age,
                 "band": BANDS_0002[event_id]})
        connection.execute(text(
            "INSERT INTO baseline (id, model_version_id, created_at, n_studies, summary) "
            "VALUES (1, 1, :t, 7, :summary)"), {"t": T, "summary": json.dumps(SUMMARY_0002)})
        connection.execute(text(
            "INSERT INTO baseline_member (baseline_id, inference_id) SELECT 1, id "
            "FROM inference WHERE event_id LIKE 'a-%'"))
    _insert_alert(engine, "k-old", "firing", "age_band=65+:specificity")
    _insert_alert(engine, "k-pending", "pending", "age_band=65+:override_rate")
    _insert_alert(engine, "k-young", "firing", "age_band=0-17:specificity")
    _insert_alert(engine, "k-view", "firing", "view=AP:specificity")
    return engine


def _bands(engine: Engine) -> dict[str, str | None]:
    with engine.connect() as connection:
        return dict(connection.execute(text(
            "SELECT event_id, age_band FROM inference WHERE event_id LIKE 'a-%'")).all())


def _baseline_summary(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        summary = connection.execute(text("SELECT summary FROM baseline WHERE id = 1")).scalar()
    return json.loads(summary) if isinstance(summary, str) else summary


def _alert_states(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        return dict(connection.execute(text("SELECT key, state FROM alert")).all())


def test_0003_rebands_stored_studies_and_baseline_summaries(database_url: str) -> None:
    engine = _populated_at_0002(database_url)
    before = _rows(engine)
    command.upgrade(alembic_config(engine), "0003")
    assert current_revision(engine) == "0003"
    assert _bands(engine) == BANDS_0003
    assert _rows(engine) == before
    summary = _baseline_summary(engine)
    assert summary == SUMMARY_0003
    assert next(iter(summary["categories"]["age_band"])) == "80+"  # largest share first
    # alerts on a band no check can see again are resolved; the others are left alone
    assert _alert_states(engine) == {"k-old": "resolved", "k-pending": "resolved",
                                     "k-young": "firing", "k-view": "firing"}
    with engine.connect() as connection:
        resolved = connection.execute(text(
            "SELECT consecutive, firing_windows, resolved_at FROM alert WHERE key = 'k-old'"
        )).one()
    assert resolved[:2] == (0, 0) and resolved[2] is not None
    engine.dispose()


def test_0003_bands_match_the_code_and_a_baseline_checks_afterwards(
        database_url: str, tmp_path: Path) -> None:
    """The migration's edges are the code's, and the ages of stored studies need no cap to
    band (90 and over are 80+ either way); an upgraded baseline refits on the new bands."""
    engine = _populated_at_0002(database_url)
    command.upgrade(alembic_config(engine), "head")
    assert _bands(engine) == {key: age_band(age) for key, age in AGES.items()}
    engine.dispose()
    runtime = open_runtime(database_url, tmp_path)
    try:
        with session_scope(runtime.sessions) as session:
            reference = load_reference(session, get_baseline(session, 1), with_embeddings=False)
        assert sorted(reference.frame["age_band"].dropna()) == sorted(
            band for band in BANDS_0003.values() if band is not None)
    finally:
        runtime.close()


def test_0003_downgrades_to_0002_with_65_plus(database_url: str) -> None:
    engine = _populated_at_0002(database_url)
    config = alembic_config(engine)
    command.upgrade(config, "0003")
    _insert_alert(engine, "k-80", "firing", "age_band=80+:sensitivity")
    command.downgrade(config, "0002")
    assert current_revision(engine) == "0002"
    assert _bands(engine) == BANDS_0002
    assert _baseline_summary(engine) == SUMMARY_0002
    assert _alert_states(engine)["k-80"] == "resolved"
    command.upgrade(config, "head")  # and up again
    assert _bands(engine) == BANDS_0003
    engine.dispose()


# --- 0004: incidents ------------------------------------------------------------------------


def _insert_notification(engine: Engine, alert_id: int | None, incident_id: int | None = None
                         ) -> None:
    columns = "alert_id" + (", incident_id" if incident_id is not None else "")
    values = ":alert_id" + (", :incident_id" if incident_id is not None else "")
    with engine.begin() as connection:
        connection.execute(text(
            f"INSERT INTO notification ({columns}, channel, target, event, status, attempts, "
            f"created_at) VALUES ({values}, 'webhook', 'hook', 'firing', 'sent', 1, :t)"),
            {"alert_id": alert_id, "incident_id": incident_id, "t": T})


def _insert_incident(engine: Engine, state: str, cause_value: str = "XR-SOUTH-1") -> int:
    with engine.begin() as connection:
        return int(connection.execute(text(
            "INSERT INTO incident (model, model_version, cause_field, cause_value, cause_label, "
            "state, severity, opened_at, first_evidence_day, quiet_windows, evidence, "
            "updated_at) VALUES ('cxr-triage', '1.4.0', 'station', :value, :label, :state, "
            "'critical', :t, :day, 0, :evidence, :t) RETURNING id"),
            {"value": cause_value, "label": cause_value, "state": state, "t": T,
             "day": date(2026, 10, 11),
             "evidence": json.dumps([{"rule": "sequential-page", "level": "page"}])}).scalar())


def _populated_at_0003(database_url: str) -> Engine:
    """Alerts with notifications (sent per alert before incidents) and a rollback
    recommendation citing one, at 0003."""
    engine = _populated_at_0002(database_url)
    command.upgrade(alembic_config(engine), "0003")
    with engine.connect() as connection:
        alert_ids = connection.execute(text("SELECT id FROM alert ORDER BY id")).scalars().all()
    for alert_id in alert_ids[:2]:
        _insert_notification(engine, alert_id)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO rollback_recommendation (model, from_version, to_version, policy, "
            "alert_id, status, created_at, hook_attempts, alias) VALUES ('cxr-triage', "
            "'1.4.0', '1.3.0', 'perf', :alert_id, 'pending', :t, 0, 'production')"),
            {"alert_id": alert_ids[0], "t": T})
    return engine


def _notifications(engine: Engine) -> list[tuple[Any, ...]]:
    """Notifications and the rollback recommendations, with the alerts they cite."""
    with engine.connect() as connection:
        return sorted(tuple(row) for row in connection.execute(text(
            "SELECT alert_id, channel, event, status FROM notification UNION ALL "
            "SELECT alert_id, policy, from_version, status FROM rollback_recommendation"
        )).all())


def test_0004_adds_incidents_and_keeps_alerts_and_their_notifications(
        database_url: str) -> None:
    engine = _populated_at_0003(database_url)
    alerts, notifications = _alert_states(engine), _notifications(engine)
    command.upgrade(alembic_config(engine), "0004")
    assert current_revision(engine) == "0004" == head_revision()
    assert _alert_states(engine) == alerts and _notifications(engine) == notifications
    assert {"incident_id"} <= {c["name"] for c in inspect(engine).get_columns("alert")}
    columns = {c["name"]: c for c in inspect(engine).get_columns("notification")}
    assert columns["alert_id"]["nullable"] and "incident_id" in columns
    with engine.connect() as connection:
        assert connection.execute(text(
            "SELECT count(*) FROM alert WHERE incident_id IS NOT NULL")).scalar() == 0

    # one open incident per cause; a resolved one and another cause do not conflict
    first = _insert_incident(engine, "open")
    _refused(_insert_incident, engine, "open")
    _insert_incident(engine, "resolved")
    _insert_incident(engine, "accepted")
    _insert_incident(engine, "open", cause_value="XR-NORTH-2")
    _insert_notification(engine, None, incident_id=first)  # an incident's, no alert
    with engine.begin() as connection:
        connection.execute(text("UPDATE alert SET incident_id = :i"), {"i": first})
    _refused(_insert_notification, engine, None, 10_000)  # an incident that does not exist
    with engine.begin() as connection:
        connection.execute(text("UPDATE incident SET state = 'resolved' WHERE id = :i"),
                           {"i": first})
    _insert_incident(engine, "open")  # the cause may open again once its incident resolved
    engine.dispose()


def test_0004_downgrades_to_0003_with_the_alerts_notifications(database_url: str) -> None:
    engine = _populated_at_0003(database_url)
    alerts, notifications = _alert_states(engine), _notifications(engine)
    config = alembic_config(engine)
    command.upgrade(config, "0004")
    incident = _insert_incident(engine, "open")
    with engine.begin() as connection:
        connection.execute(text("UPDATE alert SET incident_id = :i"), {"i": incident})
    _insert_notification(engine, None, incident_id=incident)
    command.downgrade(config, "0003")
    assert current_revision(engine) == "0003"
    assert "incident" not in inspect(engine).get_table_names()
    assert "incident_id" not in {c["name"] for c in inspect(engine).get_columns("alert")}
    columns = {c["name"]: c for c in inspect(engine).get_columns("notification")}
    assert not columns["alert_id"]["nullable"] and "incident_id" not in columns
    assert _alert_states(engine) == alerts
    assert _notifications(engine) == notifications  # the incident's own went with it
    _refused(_insert_notification, engine, None)  # alert_id is required again
    command.upgrade(config, "head")  # and up again
    assert _alert_states(engine) == alerts
    engine.dispose()
