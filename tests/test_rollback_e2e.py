"""End to end on the simulator: the injected performance drop of version 1.4.0
(``override-rise``) is checked, a performance alert fires and is notified, a rollback policy
recommends going back to 1.3.0, an operator approves it over the API, the production alias
moves, the deploy hook is called and every step is in the audit log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from monitor import registry
from monitor.alerting import engine
from monitor.api import create_app
from monitor.checks import CheckOptions, run_check
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from tests.alerting.support import HttpReceiver, http_receiver, write_config
from tests.api.conftest import OPERATOR, VIEWER, store_test_tokens
from tests.simdb import (
    MODEL,
    PREVIOUS,
    PRODUCTION,
    SimulatedTemplate,
)

RULE = "e2e-performance-drop"


@pytest.fixture
def receivers() -> Iterator[tuple[HttpReceiver, HttpReceiver]]:
    with http_receiver() as alert_webhook, http_receiver() as platform:
        yield alert_webhook, platform


def test_performance_drop_leads_to_an_approved_audited_rollback(
        simulated_runtime: Runtime, simulated_template: SimulatedTemplate,
        receivers: tuple[HttpReceiver, HttpReceiver], tmp_path: Path) -> None:
    alert_webhook, platform = receivers
    runtime = simulated_runtime
    rules = write_config(tmp_path, {
        # a rule name of its own: the template's checks may already have been evaluated with
        # the built-in rules (when the engine's check hook was registered before it was built)
        "rules": [{"name": RULE, "family": "performance",
                   "condition": "p_value < 0.01", "for": 1, "severity": "critical",
                   "category": "performance"}],
        "notifications": {"webhooks": [{"url": f"{alert_webhook.url}/alerts"}]},
        "rollback_policies": [{"name": "cxr-performance", "model": MODEL,
                               "categories": ["performance"], "firing_windows": 2}],
        "deploy_hook": {"url": f"{platform.url}/deploy", "timeout_s": 5},
    })
    runtime.settings = runtime.settings.model_copy(update={
        "alert_rules_file": rules,
    })
    store_test_tokens(runtime)
    with session_scope(runtime.sessions) as session:
        assert registry.aliases(session, MODEL) == {"production": PRODUCTION}

    # 1. the clean window raises nothing
    clean = engine.process_check_run(runtime, simulated_template.check_run_ids["clean"])
    assert clean.firing == () and clean.recommendations == ()

    # 2. a check of the 7 days ending at day 29 (override-rise runs from day 20): the engine,
    #    called by the check's hook, fires performance alerts and notifies them
    outcome = run_check(runtime, model=MODEL, version=PRODUCTION, window="7d",
                        now=simulated_template.day(29),
                        options=CheckOptions(report=False, n_permutations=200),
                        hooks=[engine.on_check_complete])
    with session_scope(runtime.sessions) as session:
        firing = [a for a in engine.list_alerts(session, state="firing", model=MODEL)
                  if a.rule == RULE]
        assert registry.list_recommendations(session) == []  # firing for one window only
    assert firing and {a.model_version for a in firing} == {PRODUCTION}
    assert {a.last_check_run_id for a in firing} == {outcome.check_run_id}
    assert "override_rate" in {a.labels["feature"] for a in firing}
    def ours(requests: list) -> list:
        return [r.body for r in requests if r.body["status"] == "firing"
                and any(f["rule"] == RULE for f in r.body["incident"]["findings"])]

    # the performance findings are the version's: one incident, paged once, naming them all
    (notified,) = ours(alert_webhook.wait_for(lambda r: len(ours(r)) == 1))
    assert notified["incident"]["cause"]["field"] == "version"
    assert {f["alert_id"] for f in notified["incident"]["findings"]
            if f["rule"] == RULE} == {a.id for a in firing}

    # 3. the next window (ending at day 30): still firing, the policy recommends a rollback
    late = engine.process_check_run(runtime, simulated_template.check_run_ids["late"])
    (recommended,) = late.recommendations
    assert (recommended.from_version, recommended.to_version) == (PRODUCTION, PREVIOUS)
    assert recommended.status == "pending" and recommended.alert_id in late.firing
    with session_scope(runtime.sessions) as session:
        assert registry.aliases(session, MODEL) == {"production": PRODUCTION}  # waits
        cause = engine.get_alert(session, recommended.alert_id)
    assert cause.severity == "critical" and cause.firing_windows == 2

    # 4. approval over the API: operators only, with a reason
    with TestClient(create_app(runtime)) as client:
        url = f"/v1/rollback-recommendations/{recommended.id}/approve"
        assert client.post(url, json={"reason": "x"}).status_code == 401
        assert client.post(url, json={"reason": "x"}, headers=VIEWER).status_code == 403
        no_reason = client.post(url, json={}, headers=OPERATOR)
        assert no_reason.status_code == 422 and no_reason.json()["field"] == "reason"
        pending = client.get("/v1/rollback-recommendations?status=pending", headers=VIEWER)
        assert [r["id"] for r in pending.json()] == [recommended.id]
        approved = client.post(url, headers=OPERATOR, json={
            "reason": "sensitivity down 40 points against radiologist reads"})
        assert approved.status_code == 200, approved.text
        decision = approved.json()
    assert decision["status"] == "executed" and decision["decided_by"] == "alice"
    assert decision["hook_status"] == "sent" and decision["hook_attempts"] == 1

    # 5. the alias moved (one row), the old version is marked rolled back
    with session_scope(runtime.sessions) as session:
        assert registry.aliases(session, MODEL) == {"production": PREVIOUS}
        statuses = {v["version"]: v["status"] for v in registry.list_versions(session, MODEL)}
        audit = registry.list_audit(session, model=MODEL)
    assert statuses == {PRODUCTION: "rolled_back", PREVIOUS: "active"}

    # 6. the deploy hook told the platform
    (call,) = platform.wait_for(lambda r: len(r) == 1)
    assert call.path == "/deploy"
    assert {k: call.body[k] for k in ("model", "from_version", "to_version", "reason")} == {
        "model": MODEL, "from_version": PRODUCTION, "to_version": PREVIOUS,
        "reason": "sensitivity down 40 points against radiologist reads"}
    assert call.body["recommendation_id"] == recommended.id

    # 7. the audit log holds each step: who, why, which alert
    by_action = {entry.action: entry for entry in audit}
    assert [e.action for e in audit[:3]] == ["deploy_hook_delivered", "rollback",
                                             "recommend_rollback"]
    recommend, rollback = by_action["recommend_rollback"], by_action["rollback"]
    assert recommend.actor == "policy:cxr-performance"
    assert recommend.alert_id == recommended.alert_id
    assert recommend.model_version == PRODUCTION
    assert rollback.actor == "alice" and rollback.alert_id == recommended.alert_id
    assert rollback.reason == "sensitivity down 40 points against radiologist reads"
    assert rollback.details["from_version"] == PRODUCTION
    assert rollback.details["to_version"] == PREVIOUS
    assert by_action["deploy_hook_delivered"].details["recommendation_id"] == recommended.id
