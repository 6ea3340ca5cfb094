"""Incident routes: listing (most severe first, then the oldest; filters) and reading for any
token; accepting a validated change for operators only, audited with the token's name."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient

from monitor.alerting import engine, rollback
from monitor.alerting.config import parse_config
from monitor.runtime import Runtime
from monitor.store import repo
from monitor.store.db import session_scope
from tests.alerting.support import (
    STATION,
    T0,
    add_version,
    attribution,
    deploy_update,
    rank,
    sequential,
    store_run,
)
from tests.api.conftest import OPERATOR, VIEWER

CONFIG = parse_config({})  # the built-in rules


def _incident(runtime: Runtime, version_id: int, day: int, rows: list[dict[str, Any]]) -> int:
    run = store_run(runtime, version_id, day=day, results=rows)
    report = engine.process_check_run(runtime, run, config=CONFIG, deliver=False,
                                      now=T0 + timedelta(days=day + 1))
    (incident_id,) = report.incidents_opened
    return incident_id


def _three(runtime: Runtime) -> tuple[int, int, int]:
    """1.4.0: a critical incident on XR-SOUTH-1 (day 10), a warning on age 80+ (day 11);
    1.3.0: a critical incident on the version (day 12)."""
    new, old = add_version(runtime, "1.4.0"), add_version(runtime, "1.3.0")
    south = _incident(runtime, new, 10, [
        sequential("MMDDrift/embedding", "embedding", "page"),
        attribution(rank(**STATION))])
    aged = _incident(runtime, new, 11, [
        sequential("MMDDrift/embedding", "embedding", "page"),
        attribution(rank(**STATION)),
        sequential("SubgroupBias/age_band=80+:sensitivity", "bias", "warning")])
    version = _incident(runtime, old, 12, [
        sequential("PerformanceDrift/sensitivity", "performance", "page")])
    return south, aged, version


def test_list_sorted_by_severity_then_age_with_filters(token_client: TestClient,
                                                       runtime: Runtime) -> None:
    south, aged, version = _three(runtime)
    assert token_client.get("/v1/incidents").status_code == 401
    listed = token_client.get("/v1/incidents", headers=VIEWER)
    assert listed.status_code == 200
    assert [i["id"] for i in listed.json()] == [south, version, aged]
    first = listed.json()[0]
    assert (first["cause_field"], first["cause_value"], first["severity"]) == (
        "station", "XR-SOUTH-1", "critical")
    assert first["first_evidence_day"] == "2026-10-11" and first["findings"] == []

    def ids(**params: str) -> list[int]:
        answer = token_client.get("/v1/incidents", params=params, headers=VIEWER)
        assert answer.status_code == 200, answer.text
        return [i["id"] for i in answer.json()]

    assert ids(version="1.4.0") == [south, aged]
    assert ids(severity="warning") == [aged]
    assert ids(model="cxr-triage", severity="critical") == [south, version]
    assert ids(model="other") == [] and ids(state="resolved") == []
    with session_scope(runtime.sessions) as session:
        rollback.promote(session, model="cxr-triage", version="1.3.0", actor="a", reason="r")
        rollback.promote(session, model="cxr-triage", version="1.4.0", actor="a", reason="r")
    assert ids(state="resolved") == [version]  # 1.3.0 was retired: no longer live
    assert ids(state="all") == [south, version, aged]
    bad = token_client.get("/v1/incidents", params={"state": "burning"}, headers=VIEWER)
    assert bad.status_code == 422 and "state" in bad.text


def test_one_incident_with_its_findings(token_client: TestClient, runtime: Runtime) -> None:
    south, _, _ = _three(runtime)
    one = token_client.get(f"/v1/incidents/{south}", headers=VIEWER)
    assert one.status_code == 200
    body = one.json()
    (finding,) = body["findings"]
    assert finding["incident_id"] == south and finding["rule"] == "sequential-page"
    assert finding["labels"]["feature"] == "MMDDrift/embedding"
    (row,) = body["evidence"]
    assert (row["stream"], row["level"], row["alert_id"]) == (
        "MMDDrift/embedding", "page", finding["id"])
    assert body["summary"].startswith("XR-SOUTH-1 since 2026-10-11: embedding MMD")
    assert token_client.get("/v1/incidents/999", headers=VIEWER).status_code == 404
    # a finding links back to its incident
    alert = token_client.get(f"/v1/alerts/{finding['id']}", headers=VIEWER).json()
    assert alert["incident_id"] == south


def test_accept_needs_an_operator_a_reason_and_a_stratum(token_client: TestClient,
                                                         runtime: Runtime) -> None:
    deploy_update(runtime)
    south, version = _on_deployment(runtime)
    accept = f"/v1/incidents/{south}/accept"
    body = {"since": "2026-10-11", "reason": "firmware VF12B validated by physics"}
    assert token_client.post(accept, json=body, headers=VIEWER).status_code == 403
    no_reason = token_client.post(accept, json={"since": "2026-10-11"}, headers=OPERATOR)
    assert no_reason.status_code == 422 and no_reason.json()["field"] == "reason"
    bad_day = token_client.post(accept, json={**body, "since": "11/10/2026"}, headers=OPERATOR)
    assert bad_day.status_code == 422 and "since" in bad_day.text
    too_soon = token_client.post(accept, json={**body, "since": "2026-10-16"},
                                 headers=OPERATOR)
    assert too_soon.status_code == 422
    assert "has 25 studies; re-baselining it needs at least 28" in too_soon.json()["detail"]
    not_stratum = token_client.post(f"/v1/incidents/{version}/accept", json=body,
                                    headers=OPERATOR)
    assert not_stratum.status_code == 409
    assert "cause is version 1.3.0 (version=1.3.0), not a stratum" in \
        not_stratum.json()["detail"]

    done = token_client.post(accept, json=body, headers=OPERATOR)
    assert done.status_code == 200, done.text
    accepted = done.json()
    assert (accepted["state"], accepted["accepted_by"], accepted["accepted_since"]) == (
        "accepted", "alice", "2026-10-11")
    assert accepted["accept_reason"] == body["reason"]
    again = token_client.post(accept, json=body, headers=OPERATOR)
    assert again.status_code == 409
    audit = token_client.get("/v1/audit", params={"action": "accept_incident"},
                             headers=VIEWER).json()
    assert [(e["actor"], e["reason"], e["details"]["incident_id"]) for e in audit] == [
        ("alice", body["reason"], south)]
    listed = token_client.get("/v1/incidents", params={"state": "accepted"},
                              headers=VIEWER).json()
    assert [i["id"] for i in listed] == [south]


def _on_deployment(runtime: Runtime) -> tuple[int, int]:
    """On the factory deployment (1.4.0 with studies): the station's incident; and the
    version incident of a 1.3.0 without studies."""
    with session_scope(runtime.sessions) as session:
        new = repo.get_model_version(session, "cxr-triage", "1.4.0").id
    south = _incident(runtime, new, 10, [sequential("MMDDrift/embedding", "embedding", "page"),
                                         attribution(rank(**STATION))])
    old = add_version(runtime, "1.3.0")
    version = _incident(runtime, old, 12, [
        sequential("PerformanceDrift/sensitivity", "performance", "page")])
    return south, version
