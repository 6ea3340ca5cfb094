"""The alert state machine on stored check runs: pending -> firing -> resolved, windows
counted once, deduplication, acknowledgement and silences (audited), rollback policies."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from monitor import registry
from monitor.alerting import engine, rollback
from monitor.alerting.config import AlertingConfig, parse_config
from monitor.errors import ValidationError
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.models import Alert, AuditEntry, Incident, Notification
from tests.alerting.support import add_version, result, store_run

PERF_RULE = {"name": "perf", "family": "performance", "condition": "p_value < 0.01",
             "for": 2, "severity": "critical", "category": "performance"}
WEBHOOK = {"webhooks": [{"url": "http://127.0.0.1:9/never-called"}]}


def _config(**extra: object) -> AlertingConfig:
    return parse_config({"rules": [PERF_RULE], **extra})


def _perf(p_value: float | None, *, status: str | None = None, feature: str = "sensitivity"
          ) -> dict:
    return result("PerformanceDrift", feature, p_value=p_value, family="performance",
                  status=status)


def _evaluate(runtime: Runtime, run_id: int, config: AlertingConfig,
              now: datetime | None = None) -> engine.EvaluationReport:
    return engine.process_check_run(runtime, run_id, config=config, now=now, deliver=False)


def _alerts(runtime: Runtime) -> list[engine.AlertInfo]:
    with session_scope(runtime.sessions) as session:
        return engine.list_alerts(session, state=None)


def test_pending_firing_resolved_and_a_new_episode(runtime: Runtime) -> None:
    config = _config()
    version = add_version(runtime, "1.4.0")
    first = _evaluate(runtime, store_run(runtime, version, day=10, results=[_perf(0.001)]),
                      config)
    assert [(t.before, t.after) for t in first.transitions] == [(None, "pending")]
    (alert,) = _alerts(runtime)
    assert (alert.state, alert.consecutive, alert.firing_windows) == ("pending", 1, 0)

    second = _evaluate(runtime, store_run(runtime, version, day=11, results=[_perf(0.002)]),
                       config)
    assert [(t.before, t.after) for t in second.transitions] == [("pending", "firing")]
    assert second.firing == (alert.id,)
    _evaluate(runtime, store_run(runtime, version, day=12, results=[_perf(0.003)]), config)
    (alert,) = _alerts(runtime)
    assert (alert.state, alert.consecutive, alert.firing_windows) == ("firing", 3, 2)
    assert alert.fired_at is not None and alert.labels["feature"] == "sensitivity"

    with session_scope(runtime.sessions) as session:
        engine.acknowledge(session, alert.id, actor="alice", reason="looking into it")
    cleared = _evaluate(runtime, store_run(runtime, version, day=13, results=[_perf(0.4)]),
                        config)
    assert [(t.before, t.after) for t in cleared.transitions] == [("firing", "resolved")]
    (alert,) = _alerts(runtime)
    assert alert.state == "resolved" and alert.resolved_at is not None
    assert alert.acknowledged_by == "alice"

    again = _evaluate(runtime, store_run(runtime, version, day=14, results=[_perf(0.001)]),
                      config)
    assert [(t.before, t.after) for t in again.transitions] == [("resolved", "pending")]
    (renewed,) = _alerts(runtime)
    assert renewed.id == alert.id  # deduplicated: one row per key
    assert renewed.consecutive == 1 and renewed.resolved_at is None
    assert renewed.acknowledged_by is None  # a new episode needs a new acknowledgement
    assert renewed.started_at > alert.started_at


def test_a_pending_alert_that_clears_never_fires(runtime: Runtime) -> None:
    config = _config()
    version = add_version(runtime, "1.4.0")
    _evaluate(runtime, store_run(runtime, version, day=10, results=[_perf(0.001)]), config)
    _evaluate(runtime, store_run(runtime, version, day=11, results=[_perf(0.5)]), config)
    (alert,) = _alerts(runtime)
    assert alert.state == "resolved" and alert.fired_at is None


def test_a_window_counts_once(runtime: Runtime) -> None:
    config = _config()
    version = add_version(runtime, "1.4.0")
    run = store_run(runtime, version, day=10, results=[_perf(0.001)])
    for _ in range(3):  # the same window evaluated again (a re-check, a repeated hook call)
        _evaluate(runtime, run, config)
    older = store_run(runtime, version, day=5, results=[_perf(0.001)])  # a back-filled window
    report = _evaluate(runtime, older, config)
    assert report.transitions == ()
    (alert,) = _alerts(runtime)
    assert (alert.state, alert.consecutive) == ("pending", 1)


def test_missing_evidence_leaves_the_alert_as_it_is(runtime: Runtime) -> None:
    config = _config()
    version = add_version(runtime, "1.4.0")
    for day in (10, 11):
        _evaluate(runtime, store_run(runtime, version, day=day, results=[_perf(0.001)]), config)
    thin = store_run(runtime, version, day=12,
                     results=[_perf(None, status="insufficient data")])
    assert _evaluate(runtime, thin, config).transitions == ()
    empty = store_run(runtime, version, day=13, results=[])
    assert _evaluate(runtime, empty, config).transitions == ()
    (alert,) = _alerts(runtime)
    assert (alert.state, alert.consecutive) == ("firing", 2)


def test_alerts_of_a_removed_rule_resolve_at_the_next_check(runtime: Runtime) -> None:
    version = add_version(runtime, "1.4.0")
    for day in (10, 11):
        _evaluate(runtime, store_run(runtime, version, day=day, results=[_perf(0.001)]),
                  _config(notifications=WEBHOOK))
    other_rule = parse_config({"rules": [{"name": "health", "metric": "health_score",
                                          "condition": "value < 0.6"}],
                               "notifications": WEBHOOK})
    report = _evaluate(runtime, store_run(runtime, version, day=12, results=[_perf(0.001)]),
                       other_rule)
    assert [(t.rule, t.before, t.after) for t in report.transitions] == [
        ("perf", "firing", "resolved")]
    # its incident ends after a second window without an open finding
    _evaluate(runtime, store_run(runtime, version, day=13, results=[_perf(0.001)]), other_rule)
    with session_scope(runtime.sessions) as session:
        events = [e for (e,) in session.execute(select(Notification.event)
                                                .order_by(Notification.id))]
    assert events == ["firing", "resolved"]


def test_one_alert_per_rule_version_and_feature(runtime: Runtime) -> None:
    config = _config()
    new, old = add_version(runtime, "1.4.0"), add_version(runtime, "1.3.0")
    for day in (10, 11, 12):
        for version in (new, old):
            store = store_run(runtime, version, day=day,
                              results=[_perf(0.001), _perf(0.001, feature="ppv")])
            _evaluate(runtime, store, config)
    alerts = _alerts(runtime)
    assert sorted((a.model_version, a.labels["feature"]) for a in alerts) == [
        ("1.3.0", "ppv"), ("1.3.0", "sensitivity"), ("1.4.0", "ppv"), ("1.4.0", "sensitivity")]
    assert len({a.key for a in alerts}) == 4
    with session_scope(runtime.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Alert)) == 4


def test_notifications_are_queued_once_per_incident_and_not_while_silenced(
        runtime: Runtime) -> None:
    config = _config(notifications=WEBHOOK)
    version = add_version(runtime, "1.4.0")
    now = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    for day in (10, 11, 12):
        run = store_run(runtime, version, day=day, results=[_perf(0.001)])
        _evaluate(runtime, run, config, now=now + timedelta(minutes=day))
    (alert,) = _alerts(runtime)
    with session_scope(runtime.sessions) as session:
        events = session.execute(select(Notification.event, Notification.status)).all()
    assert events == [("firing", "pending")]  # opened at day 11, not re-queued at day 12

    with session_scope(runtime.sessions) as session:
        silenced = engine.silence(session, alert.id, actor="bob", reason="known, fix on Monday",
                                  until=now + timedelta(hours=2), now=now)
    assert silenced.silenced_until == now + timedelta(hours=2)
    # resolved while silenced (two clear windows): no resolved notification; fires again
    # while still silenced: none either
    for day in (13, 14):
        _evaluate(runtime, store_run(runtime, version, day=day, results=[_perf(0.6)]), config,
                  now=now + timedelta(minutes=30 + day))
    for day in (15, 16):
        _evaluate(runtime, store_run(runtime, version, day=day, results=[_perf(0.001)]), config,
                  now=now + timedelta(minutes=30 + day))
    with session_scope(runtime.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Notification)) == 1
        assert session.scalar(select(func.count()).select_from(Incident)) == 2
    # the silence has ended: the next window of the still-firing alert pages its incident
    _evaluate(runtime, store_run(runtime, version, day=17, results=[_perf(0.001)]), config,
              now=now + timedelta(hours=3))
    with session_scope(runtime.sessions) as session:
        events = session.execute(select(Notification.event).order_by(Notification.id)).all()
        incidents = session.scalar(select(func.count()).select_from(Incident))
    assert [e for (e,) in events] == ["firing", "firing"] and incidents == 2


def test_acknowledge_and_silence_are_audited_and_silence_needs_a_reason(
        runtime: Runtime) -> None:
    config = _config()
    version = add_version(runtime, "1.4.0")
    _evaluate(runtime, store_run(runtime, version, day=10, results=[_perf(0.001)]), config)
    (alert,) = _alerts(runtime)
    with session_scope(runtime.sessions) as session:
        acked = engine.acknowledge(session, alert.id, actor="alice", reason="on it")
        with pytest.raises(ValidationError, match="reason is required") as info:
            engine.silence(session, alert.id, actor="alice", reason=" ",
                           until=datetime.now(UTC) + timedelta(hours=1))
        assert info.value.field == "reason"
    assert acked.acknowledged_by == "alice" and acked.acknowledged_at is not None
    with session_scope(runtime.sessions) as session:
        engine.silence(session, alert.id, actor="bob", reason="maintenance",
                       until=datetime(2030, 1, 1))
        entries = registry.list_audit(session, model="cxr-triage")
    ack_entry, silence_entry = (next(e for e in entries if e.action == action)
                                for action in ("acknowledge_alert", "silence_alert"))
    assert (ack_entry.actor, ack_entry.reason, ack_entry.alert_id) == ("alice", "on it", alert.id)
    assert (silence_entry.actor, silence_entry.reason) == ("bob", "maintenance")
    assert silence_entry.details["until"].startswith("2030-01-01")
    with session_scope(runtime.sessions) as session:
        # the audit table keeps exactly these two plus the version's registration
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 3


def test_the_check_hook_evaluates_each_check(runtime: Runtime, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.api import create_app

    # the API's checks evaluate the rules (and so does `monitor serve`'s scheduler)
    hooks = create_app(runtime).state.check_hooks
    assert hooks == (engine.on_check_complete,)

    rules = tmp_path / "rules.yml"
    rules.write_text("rules:\n  - {name: perf, family: performance, condition: p_value < 0.01}\n")
    runtime.settings = runtime.settings.model_copy(update={"alert_rules_file": rules})
    version = add_version(runtime, "1.4.0")
    run = store_run(runtime, version, day=10, results=[_perf(0.001)])
    for hook in hooks:
        report = hook(runtime, SimpleNamespace(check_run_id=run))
    assert report is not None and [t.after for t in report.transitions] == ["firing"]
    # a broken evaluation is logged, never raised into the check
    assert engine.on_check_complete(runtime, SimpleNamespace(check_run_id=10_000)) is None


def _policy_config(**policy: object) -> AlertingConfig:
    return _config(rollback_policies=[{"name": "perf-rollback", "model": "cxr-triage",
                                       "categories": ["performance"], "firing_windows": 2,
                                       **policy}])


def _setup_production(runtime: Runtime) -> tuple[int, int]:
    old, new = add_version(runtime, "1.3.0"), add_version(runtime, "1.4.0")
    with session_scope(runtime.sessions) as session:
        rollback.promote(session, model="cxr-triage", version="1.3.0", actor="alice",
                         reason="initial release")
        rollback.promote(session, model="cxr-triage", version="1.4.0", actor="alice",
                         reason="better AUC in validation")
    return old, new


def test_a_policy_recommends_once_after_sustained_firing(runtime: Runtime) -> None:
    config = _policy_config()
    _, new = _setup_production(runtime)
    made = []
    for day in range(10, 15):  # pending at 10, firing 11 (1 window), 12 (2 windows), ...
        run = store_run(runtime, new, day=day, results=[_perf(0.001)])
        made.append(len(_evaluate(runtime, run, config).recommendations))
    assert made == [0, 0, 1, 0, 0]  # recommended once; the pending one is not repeated
    with session_scope(runtime.sessions) as session:
        (rec,) = registry.list_recommendations(session)
        (alert,) = engine.list_alerts(session)
        assert registry.aliases(session, "cxr-triage") == {"production": "1.4.0"}  # waits
        (entry,) = registry.list_audit(session, action="recommend_rollback")
    assert (rec.from_version, rec.to_version, rec.status) == ("1.4.0", "1.3.0", "pending")
    assert rec.alert_id == alert.id and rec.policy == "perf-rollback"
    assert "firing for 2 consecutive windows" in (rec.reason or "")
    assert entry.actor == "policy:perf-rollback" and entry.alert_id == alert.id

    with session_scope(runtime.sessions) as session:
        registry.reject(session, rec.id, actor="alice", reason="reads are late this week")
    run = store_run(runtime, new, day=15, results=[_perf(0.001)])
    assert _evaluate(runtime, run, config).recommendations == ()  # same episode: no repeat


def test_an_automatic_policy_rolls_back_at_once(runtime: Runtime) -> None:
    config = _policy_config(action="auto")
    _, new = _setup_production(runtime)
    for day in (10, 11, 12):
        report = _evaluate(runtime, store_run(runtime, new, day=day, results=[_perf(0.001)]),
                           config)
    (rec,) = report.recommendations
    assert rec.status == "executed" and rec.decided_by == "policy:perf-rollback"
    assert rec.hook_status is None  # no deploy hook configured
    with session_scope(runtime.sessions) as session:
        assert registry.aliases(session, "cxr-triage") == {"production": "1.3.0"}
        (entry,) = registry.list_audit(session, action="rollback")
    assert entry.actor == "policy:perf-rollback" and entry.reason.startswith("automatic")


def test_no_recommendation_without_a_sound_target(runtime: Runtime) -> None:
    config = _policy_config()
    old = add_version(runtime, "1.3.0", baseline=False)  # no baseline: not a target
    new = add_version(runtime, "1.4.0")
    with session_scope(runtime.sessions) as session:
        rollback.promote(session, model="cxr-triage", version="1.3.0", actor="a", reason="r")
        rollback.promote(session, model="cxr-triage", version="1.4.0", actor="a", reason="r")
    assert old != new
    for day in (10, 11, 12, 13):
        report = _evaluate(runtime, store_run(runtime, new, day=day, results=[_perf(0.001)]),
                           config)
        assert report.recommendations == ()


def test_alerts_cli(runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.commands import alerts as alerts_cli

    config = _config()
    version = add_version(runtime, "1.4.0")
    for day in (10, 11):
        _evaluate(runtime, store_run(runtime, version, day=day, results=[_perf(0.001)]), config)
    (alert,) = _alerts(runtime)
    monkeypatch.setenv("MONITOR_DATABASE_URL", runtime.settings.database_url)
    monkeypatch.setenv("MONITOR_SECRET_KEY", runtime.settings.secret_key.get_secret_value())
    parser = argparse.ArgumentParser()
    alerts_cli.add_commands(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> str:
        args = parser.parse_args(["alerts", *argv])
        assert args.func(args) == 0
        return capsys.readouterr().out

    assert "firing" in run("list") and "sensitivity" in run("list")
    assert "acknowledged by carol" in run("ack", str(alert.id), "--actor", "carol")
    assert "silenced until" in run("silence", str(alert.id), "--for", "2h", "--reason", "noisy",
                                   "--actor", "carol")
    assert '"silenced_until"' in run("show", str(alert.id))
    with session_scope(runtime.sessions) as session:
        actions = {(e.action, e.actor) for e in registry.list_audit(session)}
    assert {("acknowledge_alert", "carol"), ("silence_alert", "carol")} <= actions
    args = parser.parse_args(["alerts", "silence", str(alert.id), "--reason", "x"])
    with pytest.raises(ValidationError, match="exactly one of --for and --until"):
        args.func(args)
