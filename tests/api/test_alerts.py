"""Alert routes: listing and reading for any token; acknowledging and silencing for
operators only, audited with the token's name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from monitor import registry
from monitor.alerting import engine
from monitor.alerting.config import parse_config
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from tests.alerting.support import add_version, result, store_run
from tests.api.conftest import OPERATOR, VIEWER


def _firing_alert(runtime: Runtime) -> int:
    config = parse_config({"rules": [{"name": "perf", "family": "performance",
                                      "condition": "p_value < 0.01", "severity": "critical"}]})
    version = add_version(runtime, "1.4.0")
    run = store_run(runtime, version, day=10, results=[
        result("PerformanceDrift", "sensitivity", p_value=0.001, family="performance")])
    (alert_id,) = engine.process_check_run(runtime, run, config=config, deliver=False).firing
    return alert_id


def test_list_and_read(token_client: TestClient, runtime: Runtime) -> None:
    alert_id = _firing_alert(runtime)
    assert token_client.get("/v1/alerts").status_code == 401
    listed = token_client.get("/v1/alerts", headers=VIEWER)
    assert listed.status_code == 200
    (item,) = listed.json()
    assert (item["id"], item["state"], item["severity"]) == (alert_id, "firing", "critical")
    assert item["labels"]["feature"] == "sensitivity"
    assert token_client.get("/v1/alerts?state=resolved", headers=VIEWER).json() == []
    every = token_client.get("/v1/alerts?state=all&model=cxr-triage", headers=VIEWER).json()
    assert len(every) == 1
    bad = token_client.get("/v1/alerts?state=burning", headers=VIEWER)
    assert bad.status_code == 422 and bad.json()["field"] == "state"
    one = token_client.get(f"/v1/alerts/{alert_id}", headers=VIEWER).json()
    assert one["notifications"] == [] and one["summary"].startswith("perf:")
    assert token_client.get("/v1/alerts/999", headers=VIEWER).status_code == 404


def test_acknowledge_and_silence_need_an_operator_and_are_audited(
        token_client: TestClient, runtime: Runtime) -> None:
    alert_id = _firing_alert(runtime)
    ack = f"/v1/alerts/{alert_id}/acknowledge"
    assert token_client.post(ack, json={}, headers=VIEWER).status_code == 403
    done = token_client.post(ack, json={"reason": "paging the vendor"}, headers=OPERATOR)
    assert done.status_code == 200 and done.json()["acknowledged_by"] == "alice"

    silence = f"/v1/alerts/{alert_id}/silence"
    assert token_client.post(silence, json={"duration": "2h", "reason": "x"},
                       headers=VIEWER).status_code == 403
    no_reason = token_client.post(silence, json={"duration": "2h"}, headers=OPERATOR)
    assert no_reason.status_code == 422 and no_reason.json()["field"] == "reason"
    both = token_client.post(silence, json={"duration": "2h", "until": "2030-01-01T00:00:00Z",
                                      "reason": "x"}, headers=OPERATOR)
    assert both.status_code == 422
    bad = token_client.post(silence, json={"duration": "soon", "reason": "x"}, headers=OPERATOR)
    assert bad.status_code == 422 and bad.json()["field"] == "duration"
    before = datetime.now(UTC)
    silenced = token_client.post(silence, json={"duration": "2h", "reason": "scanner service"},
                           headers=OPERATOR)
    assert silenced.status_code == 200
    until = datetime.fromisoformat(silenced.json()["silenced_until"])
    assert before + timedelta(hours=2) <= until <= datetime.now(UTC) + timedelta(hours=2)
    in_30_days = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
    until_body = token_client.post(silence, json={"until": f"{in_30_days}T00:00:00Z",
                                                  "reason": "r"}, headers=OPERATOR)
    assert until_body.json()["silenced_until"].startswith(in_30_days)
    for unbounded in ({"duration": 1e17}, {"duration": "400d"},
                      {"until": "9999-12-31T23:59:59-14:00"},
                      {"until": "0001-01-01T00:00:00+14:00"}):
        refused = token_client.post(silence, json={**unbounded, "reason": "x"},
                                    headers=OPERATOR)
        assert refused.status_code == 422, (unbounded, refused.text)
        assert refused.json()["field"] == next(iter(unbounded))

    with session_scope(runtime.sessions) as session:
        entries = registry.list_audit(session, model="cxr-triage")
    actions = [(e.action, e.actor, e.reason, e.alert_id) for e in entries
               if e.action != "register"]
    assert actions == [
        ("silence_alert", "alice", "r", alert_id),
        ("silence_alert", "alice", "scanner service", alert_id),
        ("acknowledge_alert", "alice", "paging the vendor", alert_id),
    ]


def test_delivery_pass_for_operators(token_client: TestClient) -> None:
    assert token_client.post("/v1/alerts/deliver", json={}, headers=VIEWER).status_code == 403
    done = token_client.post("/v1/alerts/deliver", json={}, headers=OPERATOR)
    assert done.status_code == 200
    assert done.json()["notifications"]["sent"] == 0
    audit = token_client.get("/v1/audit", params={"action": "deliver_alerts"},
                             headers=VIEWER).json()
    assert [e["actor"] for e in audit] == ["alice"]
