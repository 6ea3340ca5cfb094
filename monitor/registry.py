"""The model registry: versions, aliases, rollbacks and their recommendations, and the deploy
hook. Its queries are the store's (``monitor.store.registry``, the audit log in
``monitor.store.audit``); the rollback policies that recommend rollbacks on alerts are
alerting's (``monitor.alerting.rollback``), which calls this module.

Versions have a status: ``candidate`` (registered or first seen in an event), ``shadow``,
``active`` (an alias points at it), ``retired`` (replaced by a promotion) and
``rolled_back`` (moved away from by a rollback, i.e. for cause). Aliases such as
``production`` point at one version; moving one is a one-row update.

Every change writes an audit entry (who, when, what, why, which alert); the table refuses
UPDATE and DELETE (database triggers). Promotions and rollbacks require a reason. A version
that is rolled back, or retired by a promotion, is no longer checked: the caller's
``on_retired`` callback is called in the same transaction (alerting passes one that resolves
the version's open incidents and findings, "rolled back" or "no longer live", and notifies
the resolved incidents).

Rollback order, and why. A rollback moves the alias, marks the old version ``rolled_back``,
the target ``active``, writes the audit entry and records the deploy hook as ``pending``, all
in one transaction. Only after that commit is the hook called (``deliver_deploy_hooks``), and
it is retried with backoff until it succeeds or runs out of attempts, every outcome written
to the recommendation (``hook_status``, ``hook_attempts``, ``hook_error``) and the audit log.
Calling the hook inside the transaction would let the two disagree with no record of it: a
hook that succeeds followed by a commit that fails leaves the platform switched and the
registry not; a hook that times out after the platform acted, followed by a rollback of the
transaction, leaves the same split. Committing first makes the registry the source of truth
and the pending hook a durable to-do (an outbox); the platform must treat the hook as
idempotent (``recommendation_id`` identifies a rollback; a retry may deliver it twice).
Where the hook is and how it is retried comes in as ``HookSettings`` (alerting builds them
from its config file).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
from sqlalchemy.orm import Session

from monitor.errors import ConflictError, NotFoundError, ValidationError, clip
from monitor.runtime import Runtime
from monitor.store import registry as store
from monitor.store import repo
from monitor.store.audit import SYSTEM_ACTOR as SYSTEM_ACTOR
from monitor.store.audit import AuditInfo as AuditInfo
from monitor.store.audit import last_made_live, record_audit
from monitor.store.audit import list_audit as list_audit
from monitor.store.db import session_scope
from monitor.store.registry import RecommendationInfo as RecommendationInfo
from monitor.store.registry import aliases as aliases
from monitor.store.results import baseline_version_ids, has_baseline
from monitor.vocabulary import PRODUCTION

# (``X as X``: moved to the store, re-exported here for their callers.)

log = logging.getLogger(__name__)

STATUSES = ("candidate", "shadow", "active", "retired", "rolled_back")
REGISTERABLE = ("candidate", "shadow")


def _no_backoff(attempts: int) -> float:
    return 0.0


@dataclass(frozen=True)
class HookSettings:
    """How the registry calls the deploy hook: at ``url`` (None: no hook is configured, and a
    rollback records none) with ``headers``, each call bounded by ``timeout_s``; after the
    n-th failed attempt the next waits ``backoff_s(n)`` seconds, and after ``max_attempts``
    the hook is ``failed``."""

    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0
    max_attempts: int = 1
    backoff_s: Callable[[int], float] = _no_backoff


NO_HOOK = HookSettings()


class VersionRetired(Protocol):
    """Called in the registry's transaction when a version stops being live: rolled back
    (``rolled_back``) or retired by a promotion."""

    def __call__(self, session: Session, *, model: str, version: str, rolled_back: bool,
                 now: datetime) -> object: ...


@dataclass(frozen=True)
class AliasMove:
    model: str
    alias: str
    from_version: str | None
    to_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HookReport:
    sent: int = 0
    retrying: int = 0
    failed: int = 0


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _require_reason(reason: str | None, what: str) -> str:
    if reason is None or not reason.strip():
        raise ValidationError(f"reason is required to {what} (got {reason!r})", field="reason")
    return reason.strip()


def _require_alert(session: Session, alert_id: int | None) -> None:
    """An alert a decision cites must exist (a rollback row references it)."""
    if alert_id is not None and not store.alert_exists(session, alert_id):
        raise ValidationError(f"alert id {alert_id} does not exist", field="alert_id")


# --- versions and aliases ------------------------------------------------------------------


def list_versions(session: Session, model: str | None = None) -> list[dict[str, Any]]:
    """Versions with their aliases and whether they have a baseline."""
    with_baseline = baseline_version_ids(session)
    return [{**vars(v), "has_baseline": v.id in with_baseline}
            for v in repo.list_model_versions(session, model)]


def alias_version(session: Session, model: str, alias: str) -> repo.ModelVersionInfo | None:
    """The version ``alias`` points at (None without that alias)."""
    return store.alias_version(session, model, alias)


def register_version(session: Session, *, model: str, version: str, actor: str,
                     status: str = "candidate", embedding_dim: int | None = None,
                     notes: str | None = None, reason: str | None = None,
                     now: datetime | None = None) -> repo.ModelVersionInfo:
    """Register a version (or complete one first seen in an event). Only ``candidate`` and
    ``shadow`` can be registered; ``active`` comes from a promotion."""
    if status not in REGISTERABLE:
        raise ValidationError(f"status {status!r} cannot be registered; use one of "
                              f"{', '.join(REGISTERABLE)} (active comes from promote)",
                              field="status")
    if embedding_dim is not None and embedding_dim < 1:
        raise ValidationError(f"embedding_dim {embedding_dim} must be positive",
                              field="embedding_dim")
    now = _now(now)
    row = store.find_version(session, model, version)
    existed = row is not None
    if row is None:
        store.add_version(session, model=model, version=version, status=status,
                          embedding_dim=embedding_dim, notes=notes, now=now)
    else:
        if (embedding_dim is not None and row.embedding_dim is not None
                and embedding_dim != row.embedding_dim):
            raise ConflictError(f"{model} {version} has embedding length {row.embedding_dim}, "
                                f"not {embedding_dim}")
        status = status if row.status in REGISTERABLE else row.status
        embedding_dim = row.embedding_dim or embedding_dim
        notes = notes if notes is not None else row.notes
        store.update_version(session, row.id, status=status, embedding_dim=embedding_dim,
                             notes=notes, now=now)
    record_audit(session, actor=actor, action="register", model=model, model_version=version,
                 reason=reason, now=now,
                 details={"status": status, "embedding_dim": embedding_dim, "notes": notes,
                          "existed": existed})
    return repo.get_model_version(session, model, version)


def promote(session: Session, *, model: str, version: str, actor: str, reason: str | None,
            alias: str = PRODUCTION, force: bool = False, alert_id: int | None = None,
            on_retired: VersionRetired | None = None, now: datetime | None = None) -> AliasMove:
    """Point ``alias`` at ``version`` (status ``active``); the version it pointed at becomes
    ``retired`` unless another alias still points at it, and ``on_retired`` is called for
    it. A version rolled back for cause is refused unless ``force``."""
    reason = _require_reason(reason, f"promote {model} {version}")
    now = _now(now)
    _require_alert(session, alert_id)
    target = repo.get_model_version(session, model, version)
    if target.status == "rolled_back" and not force:
        raise ConflictError(f"{model} {version} was rolled back for cause; promote it with "
                            "force and a reason if that is intended")
    previous = store.lock_alias(session, model, alias)
    if previous is not None and previous.id == target.id:
        raise ConflictError(f"{model} {alias} already points at {version}")
    store.move_alias(session, model=model, alias=alias, version_id=target.id, now=now)
    if previous is not None and previous.status == "active" and not store.is_aliased(
            session, previous.id):
        store.set_version_status(session, previous.id, "retired", now)
        if on_retired is not None:
            on_retired(session, model=model, version=previous.version, rolled_back=False,
                       now=now)
    record_audit(session, actor=actor, action="promote", model=model, model_version=version,
                 reason=reason, alert_id=alert_id, now=now,
                 details={"alias": alias, "from_version": previous and previous.version,
                          "to_version": version, "forced": force})
    return AliasMove(model, alias, previous.version if previous else None, version)


# --- rollback ------------------------------------------------------------------------------


def rollback_problems(session: Session, target: repo.ModelVersionInfo) -> list[str]:
    """Why ``target`` is not a sound rollback target (empty when it is)."""
    problems = []
    if not has_baseline(session, target.id):
        problems.append(f"{target.model} {target.version} has no baseline")
    if target.status == "rolled_back":
        problems.append(f"{target.model} {target.version} was itself rolled back for cause")
    return problems


def rollback_target(session: Session, *, model: str, alias: str = PRODUCTION) -> str | None:
    """The last version that was live (``active`` or ``retired``) other than the one behind
    ``alias``, with a baseline, not rolled back, and without a critical alert firing; the
    most recently promoted or rolled-back-to first. None when there is none."""
    current = store.alias_version(session, model, alias)
    last_live = last_made_live(session, model)
    candidates = [
        info for info in repo.list_model_versions(session, model)
        if info.status in ("active", "retired")
        and (current is None or info.id != current.id) and not rollback_problems(session, info)
        and not store.critical_alert_firing(session, model, info.version)
    ]
    if not candidates:
        return None
    best = max(candidates, key=lambda v: (last_live.get(v.version) or v.updated_at, v.id))
    return best.version


def execute(session: Session, rec: RecommendationInfo, *, actor: str, reason: str,
            force: bool, hooks: HookSettings, on_retired: VersionRetired | None,
            now: datetime) -> RecommendationInfo:
    """Move the alias from ``rec.from_version`` to ``rec.to_version`` in the caller's
    transaction; the deploy hook (when ``hooks`` has one) is recorded as pending, to be
    called after the commit (``deliver_deploy_hooks``)."""
    current = store.lock_alias(session, rec.model, rec.alias)
    if current is None or current.version != rec.from_version:
        found = current.version if current is not None else "nothing"
        raise ConflictError(f"{rec.model} {rec.alias} points at {found}, not "
                            f"{rec.from_version}: the recommendation is out of date")
    target = repo.get_model_version(session, rec.model, rec.to_version)
    if target.id == current.id:
        raise ConflictError(f"{rec.model} {rec.alias} already points at {rec.to_version}")
    problems = rollback_problems(session, target)
    if problems and not force:
        raise ConflictError("; ".join(problems) + ": roll back with force and a reason if that "
                            "is intended")
    store.set_version_status(session, current.id, "rolled_back", now)
    store.move_alias(session, model=rec.model, alias=rec.alias, version_id=target.id, now=now)
    done = store.decide_recommendation(session, rec.id, status="executed", actor=actor,
                                       reason=reason, now=now,
                                       hook_pending=hooks.url is not None)
    if on_retired is not None:
        on_retired(session, model=rec.model, version=rec.from_version, rolled_back=True,
                   now=now)
    record_audit(session, actor=actor, action="rollback", model=rec.model,
                 model_version=rec.to_version, reason=reason, alert_id=rec.alert_id, now=now,
                 details={"alias": rec.alias, "from_version": rec.from_version,
                          "to_version": rec.to_version, "recommendation_id": rec.id,
                          "policy": rec.policy, "forced": force, "problems": problems,
                          "deploy_hook": done.hook_status or "not configured"})
    return done


def rollback(session: Session, *, model: str, actor: str, reason: str | None,
             hooks: HookSettings = NO_HOOK, on_retired: VersionRetired | None = None,
             to_version: str | None = None, alias: str = PRODUCTION,
             force: bool = False, alert_id: int | None = None, now: datetime | None = None
             ) -> RecommendationInfo:
    """Roll ``alias`` back now (a human's decision, recorded as an executed recommendation
    with policy ``manual``). ``to_version`` defaults to ``rollback_target``."""
    reason = _require_reason(reason, f"roll back {model}")
    now = _now(now)
    _require_alert(session, alert_id)
    current = store.alias_version(session, model, alias)
    if current is None:
        raise NotFoundError(f"model {clip(model)!r} has no alias {clip(alias)!r}")
    if to_version is None:
        to_version = rollback_target(session, model=model, alias=alias)
        if to_version is None:
            raise ConflictError(f"{model}: no version to roll back to (none was live before "
                                f"{current.version} with a baseline and no critical alert)")
    rec = store.add_recommendation(session, model=model, alias=alias,
                                   from_version=current.version, to_version=to_version,
                                   policy="manual", alert_id=alert_id, reason=reason, now=now)
    return execute(session, rec, actor=actor, reason=reason, force=force, hooks=hooks,
                   on_retired=on_retired, now=now)


def _pending_recommendation(session: Session, recommendation_id: int) -> RecommendationInfo:
    rec = store.get_recommendation(session, recommendation_id)
    if rec.status != "pending":
        raise ConflictError(f"rollback recommendation {recommendation_id} is {rec.status}, "
                            "not pending")
    return rec


def approve(session: Session, recommendation_id: int, *, actor: str, reason: str | None,
            hooks: HookSettings = NO_HOOK, on_retired: VersionRetired | None = None,
            force: bool = False, now: datetime | None = None
            ) -> RecommendationInfo:
    """A human approves a pending recommendation: the rollback is executed."""
    reason = _require_reason(reason, f"approve rollback recommendation {recommendation_id}")
    rec = _pending_recommendation(session, recommendation_id)
    return execute(session, rec, actor=actor, reason=reason, force=force, hooks=hooks,
                   on_retired=on_retired, now=_now(now))


def reject(session: Session, recommendation_id: int, *, actor: str, reason: str | None,
           now: datetime | None = None) -> RecommendationInfo:
    reason = _require_reason(reason, f"reject rollback recommendation {recommendation_id}")
    now = _now(now)
    rec = _pending_recommendation(session, recommendation_id)
    rec = store.decide_recommendation(session, rec.id, status="rejected", actor=actor,
                                      reason=reason, now=now)
    record_audit(session, actor=actor, action="reject_rollback", model=rec.model,
                 model_version=rec.from_version, reason=reason, alert_id=rec.alert_id, now=now,
                 details={"recommendation_id": rec.id, "to_version": rec.to_version})
    return rec


def list_recommendations(session: Session, *, model: str | None = None,
                         status: str | None = None, limit: int = 100
                         ) -> list[RecommendationInfo]:
    return store.list_recommendations(session, model=model, status=status, limit=limit)


def get_recommendation(session: Session, recommendation_id: int) -> RecommendationInfo:
    return store.get_recommendation(session, recommendation_id)


# --- deploy hook ---------------------------------------------------------------------------


def hook_body(rec: RecommendationInfo) -> dict[str, Any]:
    return {
        "event": "rollback",
        "model": rec.model,
        "alias": rec.alias,
        "from_version": rec.from_version,
        "to_version": rec.to_version,
        "reason": rec.decision_reason or rec.reason,
        "recommendation_reason": rec.reason,
        "decided_by": rec.decided_by,
        "decided_at": rec.decided_at.isoformat() if rec.decided_at else None,
        "recommendation_id": rec.id,
        "alert_id": rec.alert_id,
        "policy": rec.policy,
    }


def _call_hook(hooks: HookSettings, rec: RecommendationInfo) -> str | None:
    """Call the hook once: None when it succeeded, else what went wrong."""
    if hooks.url is None:
        return "no deploy_hook is configured any more"
    try:
        response = httpx.post(hooks.url, json=hook_body(rec), headers=dict(hooks.headers),
                              timeout=hooks.timeout_s)
        if response.status_code >= 300:
            return f"{hooks.url} answered {response.status_code}: {response.text[:200]}"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def deliver_deploy_hooks(runtime: Runtime, hooks: HookSettings, *,
                         now: datetime | None = None) -> HookReport:
    """Call the deploy hook for every executed rollback whose hook is due; record each
    outcome on the recommendation and in the audit log; retry with backoff."""
    now = _now(now)
    counts = {"sent": 0, "retrying": 0, "failed": 0}
    lease_until = now + timedelta(seconds=3 * hooks.timeout_s + 30)
    with session_scope(runtime.sessions) as session:
        claimed = store.claim_due_hooks(session, now=now, lease_until=lease_until)
    for rec in claimed:
        error = _call_hook(hooks, rec)
        with session_scope(runtime.sessions) as session:
            attempts = store.count_hook_attempt(session, rec.id)
            status: str | None
            if error is None:
                status, next_at, outcome, action = "sent", None, "sent", "deploy_hook_delivered"
            elif attempts >= hooks.max_attempts:
                status, next_at, outcome, action = "failed", None, "failed", "deploy_hook_failed"
            else:
                status, next_at = None, now + timedelta(seconds=hooks.backoff_s(attempts))
                outcome, action = "retrying", "deploy_hook_failed"
            if error is not None:
                log.warning("deploy hook for rollback %d failed (attempt %d): %s", rec.id,
                            attempts, error)
            after = store.set_hook_outcome(session, rec.id, status=status, error=error,
                                           next_attempt_at=next_at)
            record_audit(session, actor=SYSTEM_ACTOR, action=action, model=rec.model,
                         model_version=rec.to_version, alert_id=rec.alert_id, now=now,
                         details={"recommendation_id": rec.id, "attempt": after.hook_attempts,
                                  "error": error, "hook_status": after.hook_status,
                                  "next_attempt_at": after.hook_next_attempt_at.isoformat()
                                  if after.hook_next_attempt_at else None})
        counts[outcome] += 1
    return HookReport(**counts)


def retry_deploy_hook(session: Session, recommendation_id: int, *, actor: str,
                      reason: str | None = None, now: datetime | None = None
                      ) -> RecommendationInfo:
    """Re-arm a deploy hook that ran out of attempts (after the platform is fixed)."""
    now = _now(now)
    rec = store.get_recommendation(session, recommendation_id)
    if rec.status != "executed" or rec.hook_status not in ("failed", "pending"):
        raise ConflictError(f"rollback recommendation {recommendation_id} has no failed deploy "
                            f"hook (status {rec.status}, hook {rec.hook_status})")
    rec = store.rearm_hook(session, recommendation_id, now=now)
    record_audit(session, actor=actor, action="deploy_hook_retry", model=rec.model,
                 model_version=rec.to_version, reason=reason, alert_id=rec.alert_id, now=now,
                 details={"recommendation_id": rec.id})
    return rec


# --- one object for the API and the CLI ----------------------------------------------------


class Registry:
    """Each method is one transaction; rollbacks call the deploy hook after their commit.
    ``hooks`` and ``on_retired`` are the deploy hook and the callback for versions that stop
    being live (``monitor.alerting.rollback.registry_for`` builds a Registry with both from
    the alerting config)."""

    def __init__(self, runtime: Runtime, *, hooks: HookSettings = NO_HOOK,
                 on_retired: VersionRetired | None = None):
        self.runtime = runtime
        self.hooks = hooks
        self.on_retired = on_retired

    def _session(self) -> AbstractContextManager[Session]:
        return session_scope(self.runtime.sessions)

    def versions(self, model: str | None = None) -> list[dict[str, Any]]:
        with self._session() as session:
            return list_versions(session, model)

    def aliases(self, model: str) -> dict[str, str]:
        with self._session() as session:
            return aliases(session, model)

    def register(self, *, model: str, version: str, actor: str, status: str = "candidate",
                 embedding_dim: int | None = None, notes: str | None = None,
                 reason: str | None = None) -> repo.ModelVersionInfo:
        with self._session() as session:
            return register_version(session, model=model, version=version, actor=actor,
                                    status=status, embedding_dim=embedding_dim, notes=notes,
                                    reason=reason)

    def promote(self, *, model: str, version: str, actor: str, reason: str | None,
                alias: str = PRODUCTION, force: bool = False, alert_id: int | None = None
                ) -> AliasMove:
        with self._session() as session:
            return promote(session, model=model, version=version, actor=actor, reason=reason,
                           alias=alias, force=force, alert_id=alert_id,
                           on_retired=self.on_retired)

    def rollback(self, *, model: str, actor: str, reason: str | None,
                 to_version: str | None = None, alias: str = PRODUCTION, force: bool = False,
                 alert_id: int | None = None) -> RecommendationInfo:
        with self._session() as session:
            rec = rollback(session, model=model, actor=actor, reason=reason, hooks=self.hooks,
                           on_retired=self.on_retired,
                           to_version=to_version, alias=alias, force=force, alert_id=alert_id)
        return self._after_commit(rec)

    def approve(self, recommendation_id: int, *, actor: str, reason: str | None,
                force: bool = False) -> RecommendationInfo:
        with self._session() as session:
            rec = approve(session, recommendation_id, actor=actor, reason=reason,
                          hooks=self.hooks, on_retired=self.on_retired,
                          force=force)
        return self._after_commit(rec)

    def reject(self, recommendation_id: int, *, actor: str, reason: str | None
               ) -> RecommendationInfo:
        with self._session() as session:
            return reject(session, recommendation_id, actor=actor, reason=reason)

    def retry_hook(self, recommendation_id: int, *, actor: str, reason: str | None = None
                   ) -> RecommendationInfo:
        with self._session() as session:
            rec = retry_deploy_hook(session, recommendation_id, actor=actor, reason=reason)
        return self._after_commit(rec)

    def recommendations(self, *, model: str | None = None, status: str | None = None,
                        limit: int = 100) -> list[RecommendationInfo]:
        with self._session() as session:
            return list_recommendations(session, model=model, status=status, limit=limit)

    def recommendation(self, recommendation_id: int) -> RecommendationInfo:
        with self._session() as session:
            return get_recommendation(session, recommendation_id)

    def audit(self, *, model: str | None = None, action: str | None = None, limit: int = 200
              ) -> list[AuditInfo]:
        with self._session() as session:
            return list_audit(session, model=model, action=action, limit=limit)

    def _after_commit(self, rec: RecommendationInfo) -> RecommendationInfo:
        """Deliver the deploy hook now that the alias move is committed."""
        if rec.hook_status == "pending":
            deliver_deploy_hooks(self.runtime, self.hooks)
        return self.recommendation(rec.id)

