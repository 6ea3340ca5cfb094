"""The registry: versions, aliases, the audit log, rollback targets and rules, and the deploy
hook called after the commit and retried; on its own (its deploy hook and retirement
callback as arguments) and wired to the alerting config (``monitor.alerting.rollback``)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session

from monitor import registry
from monitor.alerting import rollback
from monitor.alerting.config import AlertingConfig, parse_config
from monitor.errors import ConflictError, NotFoundError, ValidationError
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.models import Alert, AuditEntry, ModelAlias, RollbackRecommendation
from tests.alerting.support import MODEL, add_version, http_receiver
from tests.servers import free_port

NO_HOOK = AlertingConfig()


def _hook_config(url: str) -> AlertingConfig:
    return parse_config({"deploy_hook": {"url": url, "headers": {"X-Deploy": "k"},
                                         "timeout_s": 2},
                         "notifications": {"retry": {"max_attempts": 3,
                                                     "initial_backoff_s": 10}}})


def _live(runtime: Runtime, *versions: str) -> None:
    """Register the versions (with baselines) and promote them in order."""
    for version in versions:
        add_version(runtime, version)
    with session_scope(runtime.sessions) as session:
        for version in versions:
            registry.promote(session, model=MODEL, version=version, actor="alice",
                             reason=f"release {version}")


def _status(runtime: Runtime) -> dict[str, str]:
    with session_scope(runtime.sessions) as session:
        return {v["version"]: v["status"] for v in registry.list_versions(session, MODEL)}


def test_register_promote_and_the_audit_log(runtime: Runtime) -> None:
    with session_scope(runtime.sessions) as session:
        info = registry.register_version(session, model=MODEL, version="1.3.0", actor="alice",
                                         embedding_dim=512, notes="first", reason="release")
        assert (info.status, info.embedding_dim) == ("candidate", 512)
        shadow = registry.register_version(session, model=MODEL, version="1.4.0",
                                           actor="alice", status="shadow")
        assert shadow.status == "shadow"
        with pytest.raises(ConflictError, match="embedding length 512, not 256"):
            registry.register_version(session, model=MODEL, version="1.3.0", actor="alice",
                                      embedding_dim=256)
        with pytest.raises(ValidationError, match="status 'active' cannot be registered"):
            registry.register_version(session, model=MODEL, version="2.0", actor="a",
                                      status="active")
    with session_scope(runtime.sessions) as session:
        first = registry.promote(session, model=MODEL, version="1.3.0", actor="alice",
                                 reason="validated")
        second = registry.promote(session, model=MODEL, version="1.4.0", actor="bob",
                                  reason="better sensitivity in shadow")
        assert registry.aliases(session, MODEL) == {"production": "1.4.0"}
        with pytest.raises(ConflictError, match=r"already points at 1\.4\.0"):
            registry.promote(session, model=MODEL, version="1.4.0", actor="bob", reason="again")
        with pytest.raises(ValidationError, match="reason is required") as info:
            registry.promote(session, model=MODEL, version="1.3.0", actor="bob", reason="  ")
        assert info.value.field == "reason"
        with pytest.raises(NotFoundError, match=r"'9\.9'"):
            registry.promote(session, model=MODEL, version="9.9", actor="bob", reason="r")
    assert (first.from_version, first.to_version) == (None, "1.3.0")
    assert (second.from_version, second.to_version) == ("1.3.0", "1.4.0")
    assert _status(runtime) == {"1.3.0": "retired", "1.4.0": "active"}
    with session_scope(runtime.sessions) as session:
        entries = registry.list_audit(session, model=MODEL)
        assert session.scalar(select(ModelAlias.model_version_id)) is not None
    assert [(e.action, e.actor, e.model_version) for e in entries] == [
        ("promote", "bob", "1.4.0"), ("promote", "alice", "1.3.0"),
        ("register", "alice", "1.4.0"), ("register", "alice", "1.3.0")]
    assert entries[0].reason == "better sensitivity in shadow"
    assert entries[0].details["from_version"] == "1.3.0"


def test_the_audit_log_refuses_changes(runtime: Runtime) -> None:
    _live(runtime, "1.3.0")
    with pytest.raises(DatabaseError, match="append-only"), runtime.engine.begin() as c:
        c.execute(update(AuditEntry).values(reason="rewritten"))
    with pytest.raises(DatabaseError, match="append-only"), runtime.engine.begin() as c:
        c.execute(AuditEntry.__table__.delete())


def test_rollback_target_is_the_last_clean_live_version(runtime: Runtime) -> None:
    _live(runtime, "1.1.0", "1.2.0", "1.3.0", "1.4.0")
    add_version(runtime, "1.5.0")  # a candidate: never live, never a target
    with session_scope(runtime.sessions) as session:
        assert registry.rollback_target(session, model=MODEL) == "1.3.0"
        now = datetime.now(UTC)
        session.add(Alert(key="k", rule="perf", model=MODEL, model_version="1.3.0",
                          severity="critical", state="firing", consecutive=3, firing_windows=2,
                          started_at=now, updated_at=now, labels={}))
    with session_scope(runtime.sessions) as session:
        # 1.3.0 has a critical alert firing: the one before it
        assert registry.rollback_target(session, model=MODEL) == "1.2.0"
        session.execute(update(Alert).values(state="resolved"))
    rec = _rollback(runtime, reason="sensitivity dropped")
    assert (rec.from_version, rec.to_version) == ("1.4.0", "1.3.0")
    with session_scope(runtime.sessions) as session:
        # 1.4.0 is rolled back for cause: never a target; 1.2.0 is next
        assert registry.rollback_target(session, model=MODEL) == "1.2.0"


def _rollback(runtime: Runtime, *, config: AlertingConfig = NO_HOOK, **kwargs: object
              ) -> registry.RecommendationInfo:
    with session_scope(runtime.sessions) as session:
        return rollback.rollback(session, model=MODEL, actor="alice", config=config,
                                 **{"reason": "r", **kwargs})  # type: ignore[arg-type]


def test_manual_rollback_moves_the_alias_and_marks_the_old_version(runtime: Runtime) -> None:
    _live(runtime, "1.3.0", "1.4.0")
    rec = _rollback(runtime, reason="override rate doubled", alert_id=None)
    assert rec.status == "executed" and rec.policy == "manual" and rec.hook_status is None
    assert _status(runtime) == {"1.3.0": "active", "1.4.0": "rolled_back"}
    with session_scope(runtime.sessions) as session:
        assert registry.aliases(session, MODEL) == {"production": "1.3.0"}
        (entry,) = registry.list_audit(session, action="rollback")
    assert (entry.actor, entry.reason, entry.model_version) == (
        "alice", "override rate doubled", "1.3.0")
    assert entry.details["from_version"] == "1.4.0"
    assert entry.details["deploy_hook"] == "not configured"
    with pytest.raises(ValidationError, match="reason is required"):
        _rollback(runtime, reason="")


def test_targets_without_baseline_or_rolled_back_need_force(runtime: Runtime) -> None:
    add_version(runtime, "1.2.0", baseline=False)
    _live(runtime, "1.3.0", "1.4.0")
    with pytest.raises(ConflictError, match=r"1\.2\.0 has no baseline"):
        _rollback(runtime, to_version="1.2.0", reason="try the old one")
    assert _status(runtime)["1.4.0"] == "active"  # nothing changed
    forced = _rollback(runtime, to_version="1.2.0", reason="1.3.0 is broken too", force=True)
    assert forced.status == "executed"
    with session_scope(runtime.sessions) as session:
        (entry,) = registry.list_audit(session, action="rollback")
    assert entry.details["forced"] is True
    assert entry.details["problems"] == ["cxr-triage 1.2.0 has no baseline"]

    # 1.4.0 was rolled back for cause: going back to it needs force too
    with pytest.raises(ConflictError, match="rolled back for cause"):
        _rollback(runtime, to_version="1.4.0", reason="fixed upstream")
    with session_scope(runtime.sessions) as session, pytest.raises(ConflictError,
                                                                    match="rolled back"):
        registry.promote(session, model=MODEL, version="1.4.0", actor="a", reason="r")
    assert _rollback(runtime, to_version="1.4.0", reason="fixed", force=True).status == "executed"


def _recommend(runtime: Runtime, from_version: str = "1.4.0", to_version: str = "1.3.0"
               ) -> int:
    with session_scope(runtime.sessions) as session:
        rec = RollbackRecommendation(model=MODEL, alias="production", from_version=from_version,
                                     to_version=to_version, policy="p", status="pending",
                                     reason="test", created_at=datetime.now(UTC),
                                     hook_attempts=0)
        session.add(rec)
        session.flush()
        return rec.id


def test_decisions_need_a_reason_and_a_pending_recommendation(runtime: Runtime) -> None:
    _live(runtime, "1.3.0", "1.4.0")
    rec_id = _recommend(runtime)
    with session_scope(runtime.sessions) as session:
        with pytest.raises(ValidationError, match="reason is required"):
            rollback.approve(session, rec_id, actor="alice", reason=None, config=NO_HOOK)
        with pytest.raises(NotFoundError, match="id 999"):
            registry.reject(session, 999, actor="alice", reason="r")
        rejected = registry.reject(session, rec_id, actor="alice", reason="reads are late")
    assert (rejected.status, rejected.decided_by) == ("rejected", "alice")
    with session_scope(runtime.sessions) as session, pytest.raises(ConflictError,
                                                                    match="is rejected"):
        rollback.approve(session, rec_id, actor="alice", reason="changed my mind",
                         config=NO_HOOK)
    assert _status(runtime)["1.4.0"] == "active"


def test_an_out_of_date_recommendation_is_refused(runtime: Runtime) -> None:
    _live(runtime, "1.2.0", "1.3.0", "1.4.0")
    rec_id = _recommend(runtime)
    _rollback(runtime, to_version="1.2.0", reason="manual, earlier")
    with session_scope(runtime.sessions) as session, pytest.raises(ConflictError,
                                                                    match="out of date"):
        rollback.approve(session, rec_id, actor="alice", reason="go", config=NO_HOOK)
    with session_scope(runtime.sessions) as session:
        assert registry.aliases(session, MODEL) == {"production": "1.2.0"}


def test_deploy_hook_is_called_after_the_commit(sqlite_runtime: Runtime) -> None:
    _live(sqlite_runtime, "1.3.0", "1.4.0")
    rec_id = _recommend(sqlite_runtime)
    with http_receiver() as platform:
        reg = rollback.registry_for(sqlite_runtime, _hook_config(f"{platform.url}/deploy"))
        done = reg.approve(rec_id, actor="alice", reason="sensitivity below target")
        (call,) = platform.wait_for(lambda r: len(r) == 1)
    assert (done.status, done.hook_status, done.hook_attempts) == ("executed", "sent", 1)
    assert call.path == "/deploy" and call.headers["x-deploy"] == "k"
    body = call.body
    assert (body["model"], body["from_version"], body["to_version"]) == (MODEL, "1.4.0", "1.3.0")
    assert body["reason"] == "sensitivity below target" and body["recommendation_id"] == rec_id
    assert body["decided_by"] == "alice" and body["alias"] == "production"
    actions = [e.action for e in reg.audit(model=MODEL)]
    assert actions[:2] == ["deploy_hook_delivered", "rollback"]


def test_a_failing_deploy_hook_is_retried_and_the_registry_stays_whole(
        runtime: Runtime) -> None:
    _live(runtime, "1.3.0", "1.4.0")
    port = free_port()  # the platform is down
    config = _hook_config(f"http://127.0.0.1:{port}/deploy")
    reg = rollback.registry_for(runtime, config)
    rec = reg.rollback(model=MODEL, actor="alice", reason="override rate up")
    assert (rec.status, rec.hook_status, rec.hook_attempts) == ("executed", "pending", 1)
    assert "ConnectError" in (rec.hook_error or "")
    # the alias moved and stays moved: the registry is not half-changed by the failure
    assert reg.aliases(MODEL) == {"production": "1.3.0"}
    assert _status(runtime) == {"1.3.0": "active", "1.4.0": "rolled_back"}
    (failed,) = reg.audit(action="deploy_hook_failed")
    assert failed.details["attempt"] == 1 and "ConnectError" in failed.details["error"]

    assert rec.hook_next_attempt_at is not None
    due = rec.hook_next_attempt_at
    assert rollback.deliver_deploy_hooks(runtime, config=config,
                                         now=due - timedelta(seconds=1)).sent == 0
    with http_receiver(port) as platform:
        report = rollback.deliver_deploy_hooks(runtime, config=config, now=due)
        (call,) = platform.wait_for(lambda r: len(r) == 1)
    assert report.sent == 1 and call.body["to_version"] == "1.3.0"
    after = reg.recommendation(rec.id)
    assert (after.hook_status, after.hook_attempts) == ("sent", 2)
    assert "ConnectError" in (after.hook_error or "")  # the earlier failure stays visible


def test_a_deploy_hook_that_keeps_failing_ends_failed_and_can_be_retried(
        sqlite_runtime: Runtime) -> None:
    _live(sqlite_runtime, "1.3.0", "1.4.0")
    with http_receiver() as platform:
        platform.fail_next = 3
        config = _hook_config(platform.url)
        reg = rollback.registry_for(sqlite_runtime, config)
        rec = reg.rollback(model=MODEL, actor="alice", reason="r")
        later = datetime.now(UTC) + timedelta(hours=1)
        for step in (1, 2):
            rollback.deliver_deploy_hooks(sqlite_runtime, config=config,
                                          now=later + timedelta(hours=step))
        failed = reg.recommendation(rec.id)
        assert (failed.hook_status, failed.hook_attempts) == ("failed", 3)
        assert "500" in (failed.hook_error or "")
        assert len(reg.audit(action="deploy_hook_failed")) == 3
        retried = reg.retry_hook(rec.id, actor="bob", reason="platform fixed")
        assert retried.hook_status == "sent"
        assert len(platform.requests) == 1
    assert {e.action for e in reg.audit()} >= {"deploy_hook_retry", "deploy_hook_delivered"}


def test_the_registry_takes_its_hook_and_retirement_callback_as_arguments(
        sqlite_runtime: Runtime) -> None:
    """No alerting config: the deploy hook comes as ``HookSettings`` and the versions that
    stop being live go to the caller's callback, inside the registry's transaction."""
    retired: list[tuple[str, bool]] = []

    def on_retired(session: Session, *, model: str, version: str, rolled_back: bool,
                   now: datetime) -> None:
        assert session.in_transaction() and model == MODEL
        retired.append((version, rolled_back))

    for version in ("1.2.0", "1.3.0", "1.4.0"):
        add_version(sqlite_runtime, version)
    with http_receiver() as platform:
        hooks = registry.HookSettings(url=f"{platform.url}/deploy", headers={"X-Deploy": "k"},
                                      timeout_s=2, max_attempts=2, backoff_s=lambda n: 5.0)
        reg = registry.Registry(sqlite_runtime, hooks=hooks, on_retired=on_retired)
        for version in ("1.2.0", "1.3.0", "1.4.0"):
            reg.promote(model=MODEL, version=version, actor="alice", reason="release")
        assert retired == [("1.2.0", False), ("1.3.0", False)]
        rec = reg.rollback(model=MODEL, actor="alice", reason="sensitivity")
        (call,) = platform.wait_for(lambda r: len(r) == 1)
    assert retired[-1] == ("1.4.0", True)
    assert (rec.to_version, rec.hook_status, rec.hook_attempts) == ("1.3.0", "sent", 1)
    assert call.path == "/deploy" and call.headers["x-deploy"] == "k"
    assert registry.deliver_deploy_hooks(sqlite_runtime, hooks) == registry.HookReport()


def test_versions_cli(runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.commands import versions as versions_cli

    monkeypatch.setenv("MONITOR_DATABASE_URL", runtime.settings.database_url)
    monkeypatch.setenv("MONITOR_SECRET_KEY", runtime.settings.secret_key.get_secret_value())
    monkeypatch.delenv("MONITOR_ALERT_RULES_FILE", raising=False)
    parser = argparse.ArgumentParser()
    versions_cli.add_commands(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> str:
        args = parser.parse_args(["versions", *argv])
        assert args.func(args) == 0
        return capsys.readouterr().out

    for version in ("1.3.0", "1.4.0"):
        run("register", MODEL, version, "--embedding-dim", "64", "--actor", "carol")
        add_version(runtime, version)  # a baseline
    assert "(none) -> 1.3.0" in run("promote", MODEL, "1.3.0", "--reason", "go", "--actor", "c")
    assert "1.3.0 -> 1.4.0" in run("promote", MODEL, "1.4.0", "--reason", "go", "--actor", "c")
    listing = run("list", "--model", MODEL)
    assert "production" in listing and "retired" in listing
    out = run("rollback", MODEL, "--reason", "sensitivity", "--actor", "dave")
    assert "1.4.0 -> 1.3.0" in out and "no deploy hook configured" in out
    assert "executed" in run("recommendations")
    audit = run("audit", "--model", MODEL)
    assert "dave" in audit and "rollback" in audit and "sensitivity" in audit
    with pytest.raises(SystemExit):  # --reason is required
        parser.parse_args(["versions", "rollback", MODEL])
