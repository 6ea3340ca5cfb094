"""Registry routes: register, promote and roll back (operators; a reason to move an alias),
recommendations approved or rejected by operators, the audit log."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.testclient import TestClient

from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.models import RollbackRecommendation
from tests.alerting.support import add_version
from tests.api.conftest import INGEST, OPERATOR, VIEWER


def test_register_promote_rollback(token_client: TestClient, runtime: Runtime) -> None:
    first = {"version": "1.3.0", "embedding_dim": 64, "notes": "first"}
    for reader in (VIEWER, INGEST):  # a wrong embedding_dim would lock out the real events
        refused = token_client.post("/v1/models/cxr-triage/versions", headers=reader,
                                    json=first)
        assert refused.status_code == 403
    made = token_client.post("/v1/models/cxr-triage/versions", headers=OPERATOR, json=first)
    assert made.status_code == 200 and made.json()["status"] == "candidate"
    bad = token_client.post("/v1/models/cxr-triage/versions", headers=OPERATOR,
                      json={"version": "1.4.0", "status": "active"})
    assert bad.status_code == 422 and bad.json()["field"] == "status"
    add_version(runtime, "1.3.0")  # its baseline
    add_version(runtime, "1.4.0")

    promote = "/v1/models/cxr-triage/promote"
    assert token_client.post(promote, json={"version": "1.3.0", "reason": "r"},
                       headers=VIEWER).status_code == 403
    no_reason = token_client.post(promote, json={"version": "1.3.0"}, headers=OPERATOR)
    assert no_reason.status_code == 422 and no_reason.json()["field"] == "reason"
    for version in ("1.3.0", "1.4.0"):
        moved = token_client.post(promote, json={"version": version, "reason": f"ship {version}"},
                            headers=OPERATOR)
        assert moved.status_code == 200 and moved.json()["to_version"] == version
    again = token_client.post(promote, json={"version": "1.4.0", "reason": "x"}, headers=OPERATOR)
    assert again.status_code == 409
    missing = token_client.post(promote, json={"version": "9.9", "reason": "x"}, headers=OPERATOR)
    assert missing.status_code == 404
    aliases = token_client.get("/v1/models/cxr-triage/aliases", headers=VIEWER)
    assert aliases.json() == {"production": "1.4.0"}

    rollback = "/v1/models/cxr-triage/rollback"
    assert token_client.post(rollback, json={"reason": "r"}, headers=VIEWER).status_code == 403
    assert token_client.post(rollback, json={}, headers=OPERATOR).json()["field"] == "reason"
    unknown_alert = token_client.post(rollback, json={"reason": "r", "alert_id": 1},
                                      headers=OPERATOR)  # was a 500: the row references alerts
    assert unknown_alert.status_code == 422 and unknown_alert.json()["field"] == "alert_id"
    done = token_client.post(rollback, json={"reason": "override rate doubled"}, headers=OPERATOR)
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["from_version"], body["to_version"], body["status"]) == (
        "1.4.0", "1.3.0", "executed")
    assert body["decided_by"] == "alice" and body["hook_status"] is None
    assert token_client.get("/v1/models/cxr-triage/aliases", headers=VIEWER).json() == {
        "production": "1.3.0"}
    refused = token_client.post(rollback, json={"to_version": "1.4.0", "reason": "back"},
                          headers=OPERATOR)
    assert refused.status_code == 409 and "rolled back for cause" in refused.json()["detail"]

    audit = token_client.get("/v1/audit?model=cxr-triage", headers=VIEWER).json()
    assert [(e["action"], e["actor"]) for e in audit[:3]] == [
        ("rollback", "alice"), ("promote", "alice"), ("promote", "alice")]
    assert audit[0]["reason"] == "override rate doubled"
    assert {e["actor"] for e in audit if e["action"] == "register"} == {"alice", "setup"}


def _pending(runtime: Runtime) -> int:
    with session_scope(runtime.sessions) as session:
        rec = RollbackRecommendation(model="cxr-triage", alias="production",
                                     from_version="1.4.0", to_version="1.3.0", policy="p",
                                     status="pending", reason="critical alert",
                                     created_at=datetime.now(UTC), hook_attempts=0)
        session.add(rec)
        session.flush()
        return rec.id


def test_recommendations_are_decided_by_operators(token_client: TestClient,
                                                  runtime: Runtime) -> None:
    for version in ("1.3.0", "1.4.0"):
        add_version(runtime, version)
        assert token_client.post("/v1/models/cxr-triage/promote", headers=OPERATOR,
                           json={"version": version, "reason": "r"}).status_code == 200
    first, second = _pending(runtime), _pending(runtime)
    listed = token_client.get("/v1/rollback-recommendations?model=cxr-triage&status=pending",
                        headers=VIEWER).json()
    assert [r["id"] for r in listed] == [second, first]

    reject = f"/v1/rollback-recommendations/{first}/reject"
    assert token_client.post(reject, json={"reason": "r"}, headers=VIEWER).status_code == 403
    assert token_client.post(reject, json={}, headers=OPERATOR).status_code == 422
    rejected = token_client.post(reject, json={"reason": "reads are delayed"}, headers=OPERATOR)
    assert rejected.json()["status"] == "rejected"
    assert token_client.post(reject, json={"reason": "twice"}, headers=OPERATOR).status_code == 409

    approve = f"/v1/rollback-recommendations/{second}/approve"
    assert token_client.post(approve, json={"reason": "r"}, headers=VIEWER).status_code == 403
    approved = token_client.post(approve, json={"reason": "confirmed"}, headers=OPERATOR)
    assert approved.status_code == 200 and approved.json()["status"] == "executed"
    one = token_client.get(f"/v1/rollback-recommendations/{second}", headers=VIEWER).json()
    assert one["decision_reason"] == "confirmed"
    assert token_client.get("/v1/rollback-recommendations/999", headers=VIEWER).status_code == 404
    actions = [e["action"] for e in token_client.get("/v1/audit?limit=2", headers=VIEWER).json()]
    assert actions == ["rollback", "reject_rollback"]
