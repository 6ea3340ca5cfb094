"""Rollback policies and the registry wired to the alerting config: the deploy hook settings
taken from the config, a policy with a named target, automatic execution resolving the
rolled-back version's incidents (the engine's tests cover ``last-clean`` policies)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from monitor import registry
from monitor.alerting import rollback
from monitor.alerting.config import AlertingConfig, parse_config
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.models import Alert
from tests.alerting.support import MODEL, add_version

NOW = datetime(2026, 10, 20, tzinfo=UTC)


def test_hook_settings_come_from_the_config() -> None:
    config = parse_config({"deploy_hook": {"url": "http://platform/deploy",
                                           "headers": {"X-Deploy": "k"}, "timeout_s": 2},
                           "notifications": {"retry": {"max_attempts": 3,
                                                       "initial_backoff_s": 10,
                                                       "timeout_s": 7}}})
    hooks = rollback.hook_settings(config)
    assert (hooks.url, dict(hooks.headers), hooks.timeout_s, hooks.max_attempts) == (
        "http://platform/deploy", {"X-Deploy": "k"}, 2, 3)
    assert [hooks.backoff_s(n) for n in (1, 2, 3)] == [10, 20, 40]
    none = rollback.hook_settings(AlertingConfig())
    assert none.url is None and none.timeout_s == AlertingConfig().notifications.retry.timeout_s


def _production(runtime: Runtime) -> None:
    add_version(runtime, "1.2.0", baseline=False)
    for version in ("1.3.0", "1.4.0"):
        add_version(runtime, version)
    with session_scope(runtime.sessions) as session:
        for version in ("1.2.0", "1.3.0", "1.4.0"):
            rollback.promote(session, model=MODEL, version=version, actor="alice",
                             reason=f"release {version}")
        session.add(Alert(key="perf", rule="perf", model=MODEL, model_version="1.4.0",
                          severity="critical", state="firing", consecutive=3, firing_windows=2,
                          started_at=NOW - timedelta(days=2), fired_at=NOW - timedelta(days=1),
                          updated_at=NOW, labels={"category": "performance"}, summary="drop"))


def _policy(**policy: object) -> AlertingConfig:
    return parse_config({"rollback_policies": [{"name": "named", "model": MODEL,
                                                "categories": ["performance"], **policy}]})


def test_a_policy_with_a_named_target(runtime: Runtime) -> None:
    _production(runtime)
    with session_scope(runtime.sessions) as session:
        # 1.2.0 has no baseline: not a sound target
        assert rollback.apply_rollback_policies(session, _policy(target="1.2.0"), model=MODEL,
                                                now=NOW) == []
        assert rollback.apply_rollback_policies(session, _policy(firing_windows=3),
                                                model=MODEL, now=NOW) == []
        (rec,) = rollback.apply_rollback_policies(session, _policy(target="1.3.0"),
                                                  model=MODEL, now=NOW)
        assert (rec.from_version, rec.to_version, rec.status) == ("1.4.0", "1.3.0", "pending")
        assert rec.reason == ("policy named: critical alert perf firing for 2 consecutive "
                              "windows: drop")
        # pending: not recommended again
        assert rollback.apply_rollback_policies(session, _policy(target="1.3.0"), model=MODEL,
                                                now=NOW) == []
        (entry,) = registry.list_audit(session, action="recommend_rollback")
    assert entry.actor == "policy:named" and (entry.details or {})["to_version"] == "1.3.0"


def test_an_automatic_policy_rolls_back_and_resolves_the_versions_findings(
        runtime: Runtime) -> None:
    _production(runtime)
    with session_scope(runtime.sessions) as session:
        (rec,) = rollback.apply_rollback_policies(session, _policy(action="auto"), model=MODEL,
                                                  now=NOW)
    assert (rec.status, rec.decided_by, rec.hook_status) == ("executed", "policy:named", None)
    assert rec.decision_reason is not None and rec.decision_reason.startswith("automatic")
    with session_scope(runtime.sessions) as session:
        assert registry.aliases(session, MODEL) == {"production": "1.3.0"}
        statuses = {v["version"]: v["status"] for v in registry.list_versions(session, MODEL)}
        alert = session.scalar(select(Alert))
    assert statuses == {"1.2.0": "retired", "1.3.0": "active", "1.4.0": "rolled_back"}
    assert alert is not None and alert.state == "resolved"  # resolved with its version
