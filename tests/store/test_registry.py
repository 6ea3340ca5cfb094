"""The registry's store: versions and aliases (one rule each for the aliases, the active
version and the monitored versions), rollback recommendations and their deploy hooks, and
the audit log; on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta

import pytest

from monitor.errors import NotFoundError
from monitor.runtime import Runtime
from monitor.store import audit
from monitor.store import registry as store
from monitor.store.db import session_scope
from tests.alerting.support import MODEL, T0, add_version


def _promote(runtime: Runtime, version: str, alias: str = "production") -> None:
    with session_scope(runtime.sessions) as session:
        info = store.find_version(session, MODEL, version)
        assert info is not None
        store.move_alias(session, model=MODEL, alias=alias, version_id=info.id, now=T0)


def test_aliases_active_and_monitored_versions(runtime: Runtime) -> None:
    with session_scope(runtime.sessions) as session:
        assert store.active_version(session, MODEL) is None
        assert store.aliases(session, MODEL) == {} and store.monitored_versions(session) == []
    for version in ("1.2.0", "1.3.0", "1.4.0"):
        add_version(runtime, version)
    add_version(runtime, "0.9", model="other")
    _promote(runtime, "1.3.0", "canary")
    _promote(runtime, "1.2.0", "fallback")
    with session_scope(runtime.sessions) as session:
        # no production alias: the newest active version (1.3.0 was registered after 1.2.0)
        assert store.active_version(session, MODEL) == "1.3.0"
        assert list(store.aliases(session, MODEL)) == ["canary", "fallback"]
        assert store.active_version(session, "other") is None
    _promote(runtime, "1.4.0")
    with session_scope(runtime.sessions) as session:
        assert store.active_version(session, MODEL) == "1.4.0"
        assert store.aliases(session, MODEL) == {"canary": "1.3.0", "fallback": "1.2.0",
                                                 "production": "1.4.0"}
        monitored = store.monitored_versions(session)
        assert {(v.model, v.version) for v in monitored} == {
            (MODEL, "1.2.0"), (MODEL, "1.3.0"), (MODEL, "1.4.0")}
        assert store.monitored_version_ids(session) == {v.id for v in monitored}
        production = store.alias_version(session, MODEL, "production")
        assert production is not None and production.aliases == ("production",)
        assert store.alias_version(session, MODEL, "nothing") is None
        assert store.is_aliased(session, production.id)
        with pytest.raises(FrozenInstanceError):
            production.status = "retired"  # type: ignore[misc]


def test_versions_are_added_updated_and_locked(runtime: Runtime) -> None:
    with session_scope(runtime.sessions) as session:
        store.add_version(session, model=MODEL, version="1.0", status="candidate",
                          embedding_dim=None, notes=None, now=T0)
        info = store.find_version(session, MODEL, "1.0")
        assert info is not None and (info.status, info.created_at) == ("candidate", T0)
        store.update_version(session, info.id, status="shadow", embedding_dim=64, notes="n",
                             now=T0 + timedelta(hours=1))
        assert store.find_version(session, MODEL, "2.0") is None
        with pytest.raises(NotFoundError):
            store.set_version_status(session, 10_000, "retired", T0)
    with session_scope(runtime.sessions) as session:
        info = store.find_version(session, MODEL, "1.0")
        assert info is not None
        assert (info.status, info.embedding_dim, info.notes) == ("shadow", 64, "n")
        assert store.lock_alias(session, MODEL, "production") is None
    _promote(runtime, "1.0")
    with session_scope(runtime.sessions) as session:
        locked = store.lock_alias(session, MODEL, "production")
        assert locked is not None and (locked.version, locked.status) == ("1.0", "active")


def test_recommendations_and_their_deploy_hooks(runtime: Runtime) -> None:
    now = datetime(2026, 10, 20, tzinfo=UTC)
    with session_scope(runtime.sessions) as session:
        rec = store.add_recommendation(session, model=MODEL, alias="production",
                                       from_version="1.4.0", to_version="1.3.0", policy="p",
                                       alert_id=None, reason="r", now=now)
        assert (rec.status, rec.hook_status, rec.hook_attempts) == ("pending", None, 0)
        other = store.add_recommendation(session, model="other", alias="production",
                                         from_version="2", to_version="1", policy="manual",
                                         alert_id=None, reason="r", now=now)
    with session_scope(runtime.sessions) as session:
        assert store.recommendation_handled(session, model=MODEL, alias="production",
                                            from_version="1.4.0", alert_id=1, since=now)
        assert [r.id for r in store.list_recommendations(session)] == [other.id, rec.id]
        assert [r.id for r in store.list_recommendations(session, model=MODEL)] == [rec.id]
        assert store.list_recommendations(session, status="executed") == []
        done = store.decide_recommendation(session, rec.id, status="executed", actor="alice",
                                           reason="go", now=now, hook_pending=True)
        assert (done.status, done.decided_by, done.hook_status) == ("executed", "alice",
                                                                    "pending")
        with pytest.raises(NotFoundError, match="id 999"):
            store.get_recommendation(session, 999)
    with session_scope(runtime.sessions) as session:
        assert not store.recommendation_handled(session, model=MODEL, alias="production",
                                                from_version="1.4.0", alert_id=1, since=now)
        assert store.claim_due_hooks(session, now=now - timedelta(seconds=1),
                                     lease_until=now) == []
        (claimed,) = store.claim_due_hooks(session, now=now, lease_until=now + timedelta(1))
        assert claimed.id == rec.id
        assert store.claim_due_hooks(session, now=now, lease_until=now) == []  # leased
    with session_scope(runtime.sessions) as session:
        assert store.count_hook_attempt(session, rec.id) == 1
        retrying = store.set_hook_outcome(session, rec.id, status=None, error="x" * 3000,
                                          next_attempt_at=now + timedelta(minutes=1))
        assert retrying.hook_status == "pending" and len(retrying.hook_error or "") == 2000
    with session_scope(runtime.sessions) as session:
        assert store.count_hook_attempt(session, rec.id) == 2
        sent = store.set_hook_outcome(session, rec.id, status="sent", error=None,
                                      next_attempt_at=None)
        assert (sent.hook_status, sent.hook_attempts) == ("sent", 2) and sent.hook_error
        again = store.rearm_hook(session, rec.id, now=now)
        assert (again.hook_status, again.hook_attempts, again.hook_next_attempt_at) == (
            "pending", 0, now)


def test_the_audit_log(runtime: Runtime) -> None:
    with session_scope(runtime.sessions) as session:
        for hours, action, version in ((1, "promote", "1.3.0"), (2, "promote", "1.4.0"),
                                       (3, "rollback", "1.3.0"), (4, "register", "1.5.0")):
            audit.record_audit(session, actor=audit.SYSTEM_ACTOR, action=action, model=MODEL,
                               model_version=version, now=T0 + timedelta(hours=hours))
        audit.record_audit(session, actor="alice", action="token-create")
    with session_scope(runtime.sessions) as session:
        entries = audit.list_audit(session, model=MODEL)
        assert [e.action for e in entries] == ["register", "rollback", "promote", "promote"]
        assert [e.actor for e in audit.list_audit(session, action="token-create")] == ["alice"]
        assert len(audit.list_audit(session, limit=2)) == 2
        assert audit.last_made_live(session, MODEL) == {
            "1.3.0": T0 + timedelta(hours=3), "1.4.0": T0 + timedelta(hours=2)}
    assert entries[0].to_dict()["model_version"] == "1.5.0"
