"""The model registry: versions, aliases, the append-only audit log, rollback policies and
recommendations, and the deploy hook.

Versions have a status: ``candidate`` (registered or first seen in an event), ``shadow``,
``active`` (an alias points at it), ``retired`` (replaced by a promotion) and
``rolled_back`` (moved away from by a rollback, i.e. for cause). Aliases such as
``production`` point at one version; moving one is a one-row update.

Every change writes an audit entry (who, when, what, why, which alert); the table refuses
UPDATE and DELETE (database triggers). Promotions and rollbacks require a reason. A version
that is rolled back, or retired by a promotion, is no longer checked: its open incidents and
findings resolve in the same transaction ("rolled back", "no longer live"), and the resolved
incidents are notified.

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
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from monitor.alerting.config import AlertingConfig, RollbackPolicy, load_config
from monitor.alerting.incidents import NO_LONGER_LIVE, ROLLED_BACK, resolve_version_incidents
from monitor.errors import ConflictError, NotFoundError, ValidationError, clip
from monitor.runtime import Runtime
from monitor.store import repo
from monitor.store.db import session_scope, updated_rows
from monitor.store.models import (
    Alert,
    AuditEntry,
    Baseline,
    ModelAlias,
    ModelVersion,
    RollbackRecommendation,
)

log = logging.getLogger(__name__)

STATUSES = ("candidate", "shadow", "active", "retired", "rolled_back")
REGISTERABLE = ("candidate", "shadow")
SYSTEM_ACTOR = "system"


@dataclass(frozen=True)
class AuditInfo:
    id: int
    ts: datetime
    actor: str
    action: str
    model: str | None
    model_version: str | None
    reason: str | None
    alert_id: int | None
    details: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RecommendationInfo:
    id: int
    model: str
    alias: str
    from_version: str
    to_version: str
    policy: str
    alert_id: int | None
    status: str  # pending | executed | rejected
    reason: str | None
    created_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str | None
    hook_status: str | None  # None (no hook configured) | pending | sent | failed
    hook_attempts: int
    hook_error: str | None
    hook_next_attempt_at: datetime | None

    @classmethod
    def of(cls, row: RollbackRecommendation) -> RecommendationInfo:
        return cls(row.id, row.model, row.alias, row.from_version, row.to_version, row.policy,
                   row.alert_id, row.status, row.reason, row.created_at, row.decided_by,
                   row.decided_at, row.decision_reason, row.hook_status, row.hook_attempts,
                   row.hook_error, row.hook_next_attempt_at)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def record_audit(session: Session, *, actor: str, action: str, model: str | None = None,
                 model_version: str | None = None, reason: str | None = None,
                 alert_id: int | None = None, details: dict[str, Any] | None = None,
                 now: datetime | None = None) -> None:
    """Append one audit entry in the caller's transaction."""
    session.add(AuditEntry(ts=_now(now), actor=actor, action=action, model=model,
                           model_version=model_version, reason=reason, alert_id=alert_id,
                           details=details))


def list_audit(session: Session, *, model: str | None = None, action: str | None = None,
               limit: int = 200) -> list[AuditInfo]:
    """Audit entries, newest first."""
    query = select(AuditEntry).order_by(AuditEntry.ts.desc(), AuditEntry.id.desc()).limit(limit)
    if model is not None:
        query = query.where(AuditEntry.model == model)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    return [AuditInfo(r.id, r.ts, r.actor, r.action, r.model, r.model_version, r.reason,
                      r.alert_id, r.details) for r in session.scalars(query)]


# --- versions and aliases ------------------------------------------------------------------


def _version(session: Session, model: str, version: str) -> ModelVersion:
    row = session.scalar(select(ModelVersion).where(ModelVersion.model == model,
                                                    ModelVersion.version == version))
    if row is None:
        raise NotFoundError(f"model {clip(model)!r} version {clip(version)!r} not found")
    return row


def has_baseline(session: Session, model_version_id: int) -> bool:
    return bool(session.scalar(select(exists().where(
        Baseline.model_version_id == model_version_id))))


def list_versions(session: Session, model: str | None = None) -> list[dict[str, Any]]:
    """Versions with their aliases and whether they have a baseline."""
    with_baseline = set(session.scalars(select(Baseline.model_version_id).distinct()))
    return [{**vars(v), "has_baseline": v.id in with_baseline}
            for v in repo.list_model_versions(session, model)]


def aliases(session: Session, model: str) -> dict[str, str]:
    """alias -> version of one model."""
    rows = session.execute(
        select(ModelAlias.alias, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == ModelAlias.model_version_id)
        .where(ModelAlias.model == model)
    ).all()
    return dict(sorted((alias, version) for alias, version in rows))


def alias_version(session: Session, model: str, alias: str) -> ModelVersion | None:
    row = session.get(ModelAlias, (model, alias))
    return None if row is None else session.get(ModelVersion, row.model_version_id)


def _locked_alias(session: Session, model: str, alias: str) -> ModelAlias | None:
    """The alias row, locked for this transaction where the database can (PostgreSQL), so two
    concurrent moves serialise; SQLite serialises writers anyway."""
    return session.scalar(select(ModelAlias).where(ModelAlias.model == model,
                                                   ModelAlias.alias == alias).with_for_update())


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
    row = session.scalar(select(ModelVersion).where(ModelVersion.model == model,
                                                    ModelVersion.version == version))
    existed = row is not None
    if row is None:
        row = ModelVersion(model=model, version=version, status=status,
                           embedding_dim=embedding_dim, notes=notes, created_at=now,
                           updated_at=now)
        session.add(row)
    else:
        if (embedding_dim is not None and row.embedding_dim is not None
                and embedding_dim != row.embedding_dim):
            raise ConflictError(f"{model} {version} has embedding length {row.embedding_dim}, "
                                f"not {embedding_dim}")
        if row.status in REGISTERABLE:
            row.status = status
        row.embedding_dim = row.embedding_dim or embedding_dim
        row.notes = notes if notes is not None else row.notes
        row.updated_at = now
    session.flush()
    record_audit(session, actor=actor, action="register", model=model, model_version=version,
                 reason=reason, now=now,
                 details={"status": row.status, "embedding_dim": row.embedding_dim,
                          "notes": row.notes, "existed": existed})
    return repo.get_model_version(session, model, version)


def promote(session: Session, *, model: str, version: str, actor: str, reason: str | None,
            alias: str = "production", force: bool = False, alert_id: int | None = None,
            config: AlertingConfig | None = None, now: datetime | None = None) -> AliasMove:
    """Point ``alias`` at ``version`` (status ``active``); the version it pointed at becomes
    ``retired`` unless another alias still points at it, and its open incidents resolve as
    "no longer live" (notified through ``config``'s channels). A version rolled back for
    cause is refused unless ``force``."""
    reason = _require_reason(reason, f"promote {model} {version}")
    now = _now(now)
    _require_alert(session, alert_id)
    target = _version(session, model, version)
    if target.status == "rolled_back" and not force:
        raise ConflictError(f"{model} {version} was rolled back for cause; promote it with "
                            "force and a reason if that is intended")
    row = _locked_alias(session, model, alias)
    previous = None if row is None else session.get(ModelVersion, row.model_version_id)
    if previous is not None and previous.id == target.id:
        raise ConflictError(f"{model} {alias} already points at {version}")
    if row is None:
        session.add(ModelAlias(model=model, alias=alias, model_version_id=target.id,
                               updated_at=now))
    else:
        row.model_version_id, row.updated_at = target.id, now
    target.status, target.updated_at = "active", now
    session.flush()
    if previous is not None and previous.status == "active" and not session.scalar(
            select(exists().where(ModelAlias.model_version_id == previous.id))):
        previous.status, previous.updated_at = "retired", now
        resolve_version_incidents(session, model=model, version=previous.version,
                                  reason=NO_LONGER_LIVE, config=config, now=now)
    record_audit(session, actor=actor, action="promote", model=model, model_version=version,
                 reason=reason, alert_id=alert_id, now=now,
                 details={"alias": alias, "from_version": previous and previous.version,
                          "to_version": version, "forced": force})
    return AliasMove(model, alias, previous.version if previous else None, version)


# --- rollback ------------------------------------------------------------------------------


def _critical_firing(session: Session, model: str, version: str) -> bool:
    return bool(session.scalar(select(exists().where(
        Alert.model == model, Alert.model_version == version, Alert.severity == "critical",
        Alert.state == "firing"))))


def rollback_problems(session: Session, target: ModelVersion) -> list[str]:
    """Why ``target`` is not a sound rollback target (empty when it is)."""
    problems = []
    if not has_baseline(session, target.id):
        problems.append(f"{target.model} {target.version} has no baseline")
    if target.status == "rolled_back":
        problems.append(f"{target.model} {target.version} was itself rolled back for cause")
    return problems


def rollback_target(session: Session, *, model: str, alias: str = "production") -> str | None:
    """The last version that was live (``active`` or ``retired``) other than the one behind
    ``alias``, with a baseline, not rolled back, and without a critical alert firing; the
    most recently promoted or rolled-back-to first. None when there is none."""
    current = alias_version(session, model, alias)
    last_live = dict(session.execute(
        select(AuditEntry.model_version, func.max(AuditEntry.ts))
        .where(AuditEntry.model == model, AuditEntry.action.in_(("promote", "rollback")))
        .group_by(AuditEntry.model_version)
    ).all())
    candidates = [
        row for row in session.scalars(select(ModelVersion).where(
            ModelVersion.model == model, ModelVersion.status.in_(("active", "retired"))))
        if (current is None or row.id != current.id) and not rollback_problems(session, row)
        and not _critical_firing(session, model, row.version)
    ]
    if not candidates:
        return None
    best = max(candidates, key=lambda r: (last_live.get(r.version) or r.updated_at, r.id))
    return best.version


def _execute(session: Session, rec: RollbackRecommendation, *, actor: str, reason: str,
             force: bool, config: AlertingConfig, now: datetime) -> None:
    """Move the alias from ``rec.from_version`` to ``rec.to_version`` in the caller's
    transaction; the deploy hook is recorded as pending, to be called after the commit."""
    row = _locked_alias(session, rec.model, rec.alias)
    current = None if row is None else session.get(ModelVersion, row.model_version_id)
    if row is None or current is None or current.version != rec.from_version:
        found = current.version if current is not None else "nothing"
        raise ConflictError(f"{rec.model} {rec.alias} points at {found}, not "
                            f"{rec.from_version}: the recommendation is out of date")
    target = _version(session, rec.model, rec.to_version)
    if target.id == current.id:
        raise ConflictError(f"{rec.model} {rec.alias} already points at {rec.to_version}")
    problems = rollback_problems(session, target)
    if problems and not force:
        raise ConflictError("; ".join(problems) + ": roll back with force and a reason if that "
                            "is intended")
    row.model_version_id, row.updated_at = target.id, now
    current.status, current.updated_at = "rolled_back", now
    target.status, target.updated_at = "active", now
    rec.status, rec.decided_by, rec.decided_at, rec.decision_reason = "executed", actor, now, reason
    if config.deploy_hook is not None:
        rec.hook_status, rec.hook_next_attempt_at = "pending", now
    session.flush()
    resolve_version_incidents(session, model=rec.model, version=rec.from_version,
                              reason=ROLLED_BACK, config=config, now=now)
    record_audit(session, actor=actor, action="rollback", model=rec.model,
                 model_version=rec.to_version, reason=reason, alert_id=rec.alert_id, now=now,
                 details={"alias": rec.alias, "from_version": rec.from_version,
                          "to_version": rec.to_version, "recommendation_id": rec.id,
                          "policy": rec.policy, "forced": force, "problems": problems,
                          "deploy_hook": rec.hook_status or "not configured"})


def _require_alert(session: Session, alert_id: int | None) -> None:
    """An alert a decision cites must exist (a rollback row references it)."""
    if alert_id is not None and session.get(Alert, alert_id) is None:
        raise ValidationError(f"alert id {alert_id} does not exist", field="alert_id")


def _new_recommendation(session: Session, *, model: str, alias: str, from_version: str,
                        to_version: str, policy: str, alert_id: int | None, reason: str,
                        now: datetime) -> RollbackRecommendation:
    rec = RollbackRecommendation(model=model, alias=alias, from_version=from_version,
                                 to_version=to_version, policy=policy, alert_id=alert_id,
                                 status="pending", reason=reason, created_at=now,
                                 hook_attempts=0)
    session.add(rec)
    session.flush()
    return rec


def rollback(session: Session, *, model: str, actor: str, reason: str | None,
             config: AlertingConfig, to_version: str | None = None, alias: str = "production",
             force: bool = False, alert_id: int | None = None, now: datetime | None = None
             ) -> RecommendationInfo:
    """Roll ``alias`` back now (a human's decision, recorded as an executed recommendation
    with policy ``manual``). ``to_version`` defaults to ``rollback_target``."""
    reason = _require_reason(reason, f"roll back {model}")
    now = _now(now)
    _require_alert(session, alert_id)
    current = alias_version(session, model, alias)
    if current is None:
        raise NotFoundError(f"model {clip(model)!r} has no alias {clip(alias)!r}")
    if to_version is None:
        to_version = rollback_target(session, model=model, alias=alias)
        if to_version is None:
            raise ConflictError(f"{model}: no version to roll back to (none was live before "
                                f"{current.version} with a baseline and no critical alert)")
    rec = _new_recommendation(session, model=model, alias=alias, from_version=current.version,
                              to_version=to_version, policy="manual", alert_id=alert_id,
                              reason=reason, now=now)
    _execute(session, rec, actor=actor, reason=reason, force=force, config=config, now=now)
    return RecommendationInfo.of(rec)


def _pending_recommendation(session: Session, recommendation_id: int) -> RollbackRecommendation:
    rec = session.get(RollbackRecommendation, recommendation_id)
    if rec is None:
        raise NotFoundError(f"rollback recommendation id {recommendation_id} not found")
    if rec.status != "pending":
        raise ConflictError(f"rollback recommendation {recommendation_id} is {rec.status}, "
                            "not pending")
    return rec


def approve(session: Session, recommendation_id: int, *, actor: str, reason: str | None,
            config: AlertingConfig, force: bool = False, now: datetime | None = None
            ) -> RecommendationInfo:
    """A human approves a pending recommendation: the rollback is executed."""
    reason = _require_reason(reason, f"approve rollback recommendation {recommendation_id}")
    rec = _pending_recommendation(session, recommendation_id)
    _execute(session, rec, actor=actor, reason=reason, force=force, config=config,
             now=_now(now))
    return RecommendationInfo.of(rec)


def reject(session: Session, recommendation_id: int, *, actor: str, reason: str | None,
           now: datetime | None = None) -> RecommendationInfo:
    reason = _require_reason(reason, f"reject rollback recommendation {recommendation_id}")
    now = _now(now)
    rec = _pending_recommendation(session, recommendation_id)
    rec.status, rec.decided_by, rec.decided_at, rec.decision_reason = "rejected", actor, now, reason
    record_audit(session, actor=actor, action="reject_rollback", model=rec.model,
                 model_version=rec.from_version, reason=reason, alert_id=rec.alert_id, now=now,
                 details={"recommendation_id": rec.id, "to_version": rec.to_version})
    return RecommendationInfo.of(rec)


def list_recommendations(session: Session, *, model: str | None = None,
                         status: str | None = None, limit: int = 100
                         ) -> list[RecommendationInfo]:
    query = select(RollbackRecommendation).order_by(RollbackRecommendation.id.desc())
    if model is not None:
        query = query.where(RollbackRecommendation.model == model)
    if status is not None:
        query = query.where(RollbackRecommendation.status == status)
    return [RecommendationInfo.of(r) for r in session.scalars(query.limit(limit))]


def get_recommendation(session: Session, recommendation_id: int) -> RecommendationInfo:
    rec = session.get(RollbackRecommendation, recommendation_id)
    if rec is None:
        raise NotFoundError(f"rollback recommendation id {recommendation_id} not found")
    return RecommendationInfo.of(rec)


# --- policies ------------------------------------------------------------------------------


def _policy_alert(session: Session, policy: RollbackPolicy, model: str, version: str
                  ) -> Alert | None:
    firing = session.scalars(select(Alert).where(
        Alert.model == model, Alert.model_version == version, Alert.state == "firing"))
    matching = [a for a in firing
                if a.firing_windows >= policy.firing_windows and policy.matches(
                    rule=a.rule, severity=a.severity, category=(a.labels or {}).get("category"))]
    return max(matching, key=lambda a: (a.firing_windows, -a.id), default=None)


def _already_handled(session: Session, model: str, alias: str, from_version: str,
                     alert: Alert) -> bool:
    """A pending recommendation for this version exists, or a human rejected one for this
    alert's current firing episode."""
    return bool(session.scalar(select(exists().where(
        RollbackRecommendation.model == model, RollbackRecommendation.alias == alias,
        RollbackRecommendation.from_version == from_version,
        (RollbackRecommendation.status == "pending")
        | ((RollbackRecommendation.status == "rejected")
           & (RollbackRecommendation.alert_id == alert.id)
           & (RollbackRecommendation.created_at >= (alert.fired_at or alert.started_at))),
    ))))


def apply_rollback_policies(session: Session, config: AlertingConfig, *, model: str,
                            now: datetime | None = None) -> list[RecommendationInfo]:
    """Turn sustained matching alerts into rollback recommendations (executed at once for
    ``action: auto``), in the caller's transaction."""
    now = _now(now)
    made = []
    for policy in config.rollback_policies:
        if not policy.applies_to(model):
            continue
        current = alias_version(session, model, policy.alias)
        if current is None:
            continue
        alert = _policy_alert(session, policy, model, current.version)
        if alert is None or _already_handled(session, model, policy.alias, current.version,
                                             alert):
            continue
        if policy.target == "last-clean":
            target = rollback_target(session, model=model, alias=policy.alias)
        else:
            named = session.scalar(select(ModelVersion).where(
                ModelVersion.model == model, ModelVersion.version == policy.target))
            target = None if named is None or rollback_problems(session, named) else named.version
        if target is None or target == current.version:
            log.warning("policy %s: %s %s should be rolled back (%s) but there is no sound "
                        "target", policy.name, model, current.version, alert.rule)
            continue
        reason = (f"policy {policy.name}: {alert.severity} alert {alert.rule} firing for "
                  f"{alert.firing_windows} consecutive windows: {alert.summary or ''}").strip()
        rec = _new_recommendation(session, model=model, alias=policy.alias,
                                  from_version=current.version, to_version=target,
                                  policy=policy.name, alert_id=alert.id, reason=reason, now=now)
        actor = f"policy:{policy.name}"
        record_audit(session, actor=actor, action="recommend_rollback", model=model,
                     model_version=current.version, reason=reason, alert_id=alert.id, now=now,
                     details={"recommendation_id": rec.id, "alias": policy.alias,
                              "to_version": target, "action": policy.action})
        if policy.action == "auto":
            _execute(session, rec, actor=actor, reason=f"automatic rollback: {reason}",
                     force=False, config=config, now=now)
        made.append(RecommendationInfo.of(rec))
    return made


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


def _claim_hooks(runtime: Runtime, now: datetime, lease_s: float) -> list[RecommendationInfo]:
    claimed = []
    with session_scope(runtime.sessions) as session:
        due = session.execute(
            select(RollbackRecommendation.id, RollbackRecommendation.hook_next_attempt_at)
            .where(RollbackRecommendation.hook_status == "pending",
                   RollbackRecommendation.hook_next_attempt_at <= now)
            .order_by(RollbackRecommendation.id)
        ).all()
        for rec_id, seen in due:
            taken = updated_rows(session,
                update(RollbackRecommendation)
                .where(RollbackRecommendation.id == rec_id,
                       RollbackRecommendation.hook_status == "pending",
                       RollbackRecommendation.hook_next_attempt_at == seen)
                .values(hook_next_attempt_at=now + timedelta(seconds=lease_s)))
            if taken:
                claimed.append(get_recommendation(session, rec_id))
    return claimed


def deliver_deploy_hooks(runtime: Runtime, *, config: AlertingConfig | None = None,
                         now: datetime | None = None) -> HookReport:
    """Call the deploy hook for every executed rollback whose hook is due; record each
    outcome on the recommendation and in the audit log; retry with backoff."""
    config = config or load_config(runtime.settings)
    now = _now(now)
    hook, retry = config.deploy_hook, config.notifications.retry
    counts = {"sent": 0, "retrying": 0, "failed": 0}
    lease_s = 3 * (hook.timeout_s if hook else retry.timeout_s) + 30
    for rec in _claim_hooks(runtime, now, lease_s):
        error = None
        if hook is None:
            error = "no deploy_hook is configured any more"
        else:
            try:
                response = httpx.post(hook.url, json=hook_body(rec), headers=hook.headers,
                                      timeout=hook.timeout_s)
                if response.status_code >= 300:
                    error = f"{hook.url} answered {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
        with session_scope(runtime.sessions) as session:
            row = session.get(RollbackRecommendation, rec.id)
            assert row is not None
            row.hook_attempts += 1
            if error is None:
                row.hook_status, row.hook_next_attempt_at = "sent", None
                outcome, action = "sent", "deploy_hook_delivered"
            else:
                row.hook_error = error[:2000]
                if row.hook_attempts >= retry.max_attempts:
                    row.hook_status, row.hook_next_attempt_at = "failed", None
                    outcome = "failed"
                else:
                    row.hook_next_attempt_at = now + timedelta(
                        seconds=retry.backoff_s(row.hook_attempts))
                    outcome = "retrying"
                action = "deploy_hook_failed"
                log.warning("deploy hook for rollback %d failed (attempt %d): %s", rec.id,
                            row.hook_attempts, error)
            record_audit(session, actor=SYSTEM_ACTOR, action=action, model=rec.model,
                         model_version=rec.to_version, alert_id=rec.alert_id, now=now,
                         details={"recommendation_id": rec.id, "attempt": row.hook_attempts,
                                  "error": error, "hook_status": row.hook_status,
                                  "next_attempt_at": row.hook_next_attempt_at.isoformat()
                                  if row.hook_next_attempt_at else None})
        counts[outcome] += 1
    return HookReport(**counts)


def retry_deploy_hook(session: Session, recommendation_id: int, *, actor: str,
                      reason: str | None = None, now: datetime | None = None
                      ) -> RecommendationInfo:
    """Re-arm a deploy hook that ran out of attempts (after the platform is fixed)."""
    now = _now(now)
    rec = session.get(RollbackRecommendation, recommendation_id)
    if rec is None:
        raise NotFoundError(f"rollback recommendation id {recommendation_id} not found")
    if rec.status != "executed" or rec.hook_status not in ("failed", "pending"):
        raise ConflictError(f"rollback recommendation {recommendation_id} has no failed deploy "
                            f"hook (status {rec.status}, hook {rec.hook_status})")
    rec.hook_status, rec.hook_attempts, rec.hook_next_attempt_at = "pending", 0, now
    record_audit(session, actor=actor, action="deploy_hook_retry", model=rec.model,
                 model_version=rec.to_version, reason=reason, alert_id=rec.alert_id, now=now,
                 details={"recommendation_id": rec.id})
    return RecommendationInfo.of(rec)


# --- one object for the API and the CLI ----------------------------------------------------


class Registry:
    """Each method is one transaction; rollbacks call the deploy hook after their commit."""

    def __init__(self, runtime: Runtime, config: AlertingConfig | None = None):
        self.runtime = runtime
        self.config = config or load_config(runtime.settings)

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
                alias: str = "production", force: bool = False, alert_id: int | None = None
                ) -> AliasMove:
        with self._session() as session:
            return promote(session, model=model, version=version, actor=actor, reason=reason,
                           alias=alias, force=force, alert_id=alert_id, config=self.config)

    def rollback(self, *, model: str, actor: str, reason: str | None,
                 to_version: str | None = None, alias: str = "production", force: bool = False,
                 alert_id: int | None = None) -> RecommendationInfo:
        with self._session() as session:
            rec = rollback(session, model=model, actor=actor, reason=reason, config=self.config,
                           to_version=to_version, alias=alias, force=force, alert_id=alert_id)
        return self._after_commit(rec)

    def approve(self, recommendation_id: int, *, actor: str, reason: str | None,
                force: bool = False) -> RecommendationInfo:
        with self._session() as session:
            rec = approve(session, recommendation_id, actor=actor, reason=reason,
                          config=self.config, force=force)
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
            deliver_deploy_hooks(self.runtime, config=self.config)
        return self.recommendation(rec.id)
