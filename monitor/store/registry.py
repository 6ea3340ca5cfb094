"""Model versions, aliases and rollback recommendations in the store: every query of the
registry (``monitor.registry``) and of the rollback policies (``monitor.alerting.rollback``).

Functions take a Session, work in the caller's transaction and return frozen dataclasses
(``ModelVersionInfo``, ``RecommendationInfo``, ``AlertInfo``), never rows.

The rules that more than one reader needs live here once:

* ``aliases``: alias -> version of one model;
* ``active_version``: the version the ``production`` alias points at, else the newest with
  status ``active``;
* ``monitored_versions`` (``monitored_version_ids``): what scheduled checks cover, per model
  the ``production`` version and every ``active`` one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from monitor.errors import NotFoundError
from monitor.store.db import updated_rows
from monitor.store.incidents import AlertInfo
from monitor.store.models import Alert, ModelAlias, ModelVersion, RollbackRecommendation
from monitor.store.repo import ModelVersionInfo, list_model_versions
from monitor.vocabulary import PRODUCTION

HOOK_ERROR_LENGTH = 2000


# --- versions ------------------------------------------------------------------------------


def _aliases_of(session: Session, version_ids: Iterable[int]) -> dict[int, tuple[str, ...]]:
    ids = list(version_ids)
    found: dict[int, list[str]] = {}
    if ids:
        for alias, version_id in session.execute(
                select(ModelAlias.alias, ModelAlias.model_version_id)
                .where(ModelAlias.model_version_id.in_(ids))):
            found.setdefault(version_id, []).append(alias)
    return {version_id: tuple(sorted(names)) for version_id, names in found.items()}


def _info(session: Session, row: ModelVersion) -> ModelVersionInfo:
    return ModelVersionInfo.of(row, _aliases_of(session, [row.id]).get(row.id, ()))


def find_version(session: Session, model: str, version: str) -> ModelVersionInfo | None:
    """The version, or None when it is not registered."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.model == model,
                                                    ModelVersion.version == version))
    return None if row is None else _info(session, row)


def add_version(session: Session, *, model: str, version: str, status: str,
                embedding_dim: int | None, notes: str | None, now: datetime) -> None:
    session.add(ModelVersion(model=model, version=version, status=status,
                             embedding_dim=embedding_dim, notes=notes, created_at=now,
                             updated_at=now))
    session.flush()


def _version_row(session: Session, version_id: int) -> ModelVersion:
    row = session.get(ModelVersion, version_id)
    if row is None:
        raise NotFoundError(f"model version id {version_id} not found")
    return row


def update_version(session: Session, version_id: int, *, status: str,
                   embedding_dim: int | None, notes: str | None, now: datetime) -> None:
    row = _version_row(session, version_id)
    row.status, row.embedding_dim, row.notes, row.updated_at = status, embedding_dim, notes, now
    session.flush()


def set_version_status(session: Session, version_id: int, status: str, now: datetime) -> None:
    row = _version_row(session, version_id)
    row.status, row.updated_at = status, now


def monitored_version_ids(session: Session) -> set[int]:
    """The ids of ``monitored_versions``, in one query."""
    production = select(ModelAlias.model_version_id).where(ModelAlias.alias == PRODUCTION)
    return set(session.scalars(select(ModelVersion.id).where(
        (ModelVersion.status == "active") | ModelVersion.id.in_(production))))


def monitored_versions(session: Session) -> list[ModelVersionInfo]:
    """What scheduled checks cover: per model, the production version and every active one."""
    monitored = monitored_version_ids(session)
    return [v for v in list_model_versions(session) if v.id in monitored]


# --- aliases -------------------------------------------------------------------------------


def aliases(session: Session, model: str) -> dict[str, str]:
    """alias -> version of one model, by alias."""
    rows = session.execute(
        select(ModelAlias.alias, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == ModelAlias.model_version_id)
        .where(ModelAlias.model == model)
    ).all()
    return dict(sorted((alias, version) for alias, version in rows))


def active_version(session: Session, model: str) -> str | None:
    """The version the ``production`` alias points at; else the newest (by creation time,
    then id) with status ``active``; None when there is neither."""
    production = session.scalar(
        select(ModelVersion.version)
        .join(ModelAlias, ModelAlias.model_version_id == ModelVersion.id)
        .where(ModelAlias.model == model, ModelAlias.alias == PRODUCTION,
               ModelVersion.model == model))
    if production is not None:
        return production
    return session.scalar(
        select(ModelVersion.version)
        .where(ModelVersion.model == model, ModelVersion.status == "active")
        .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc()).limit(1))


def alias_version(session: Session, model: str, alias: str) -> ModelVersionInfo | None:
    """The version ``alias`` points at, None when the model has no such alias."""
    row = session.get(ModelAlias, (model, alias))
    if row is None:
        return None
    version = session.get(ModelVersion, row.model_version_id)
    return None if version is None else _info(session, version)


def lock_alias(session: Session, model: str, alias: str) -> ModelVersionInfo | None:
    """``alias_version``, with the alias row locked for this transaction where the database
    can (PostgreSQL), so two concurrent moves serialise; SQLite serialises writers anyway."""
    row = session.scalar(select(ModelAlias).where(ModelAlias.model == model,
                                                  ModelAlias.alias == alias).with_for_update())
    if row is None:
        return None
    version = session.get(ModelVersion, row.model_version_id)
    return None if version is None else _info(session, version)


def move_alias(session: Session, *, model: str, alias: str, version_id: int,
               now: datetime) -> None:
    """Point ``alias`` at the version (creating the alias if need be); the version becomes
    ``active``."""
    row = session.get(ModelAlias, (model, alias))
    if row is None:
        session.add(ModelAlias(model=model, alias=alias, model_version_id=version_id,
                               updated_at=now))
    else:
        row.model_version_id, row.updated_at = version_id, now
    set_version_status(session, version_id, "active", now)
    session.flush()


def is_aliased(session: Session, version_id: int) -> bool:
    """Whether any alias points at the version."""
    return bool(session.scalar(select(exists().where(
        ModelAlias.model_version_id == version_id))))


# --- the alerts the registry and the rollback policies read ----------------------------------


def alert_exists(session: Session, alert_id: int) -> bool:
    return session.get(Alert, alert_id) is not None


def critical_alert_firing(session: Session, model: str, version: str) -> bool:
    return bool(session.scalar(select(exists().where(
        Alert.model == model, Alert.model_version == version, Alert.severity == "critical",
        Alert.state == "firing"))))


def firing_alerts(session: Session, model: str, version: str) -> list[AlertInfo]:
    """The version's firing alerts (without their notifications)."""
    return [AlertInfo.of(row) for row in session.scalars(select(Alert).where(
        Alert.model == model, Alert.model_version == version, Alert.state == "firing"))]


# --- rollback recommendations and their deploy hooks -----------------------------------------


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


def _recommendation(session: Session, recommendation_id: int) -> RollbackRecommendation:
    row = session.get(RollbackRecommendation, recommendation_id)
    if row is None:
        raise NotFoundError(f"rollback recommendation id {recommendation_id} not found")
    return row


def add_recommendation(session: Session, *, model: str, alias: str, from_version: str,
                       to_version: str, policy: str, alert_id: int | None, reason: str,
                       now: datetime) -> RecommendationInfo:
    """A new ``pending`` recommendation (its id assigned)."""
    row = RollbackRecommendation(model=model, alias=alias, from_version=from_version,
                                 to_version=to_version, policy=policy, alert_id=alert_id,
                                 status="pending", reason=reason, created_at=now,
                                 hook_attempts=0)
    session.add(row)
    session.flush()
    return RecommendationInfo.of(row)


def get_recommendation(session: Session, recommendation_id: int) -> RecommendationInfo:
    return RecommendationInfo.of(_recommendation(session, recommendation_id))


def list_recommendations(session: Session, *, model: str | None = None,
                         status: str | None = None, limit: int = 100
                         ) -> list[RecommendationInfo]:
    """Recommendations, newest first."""
    query = select(RollbackRecommendation).order_by(RollbackRecommendation.id.desc())
    if model is not None:
        query = query.where(RollbackRecommendation.model == model)
    if status is not None:
        query = query.where(RollbackRecommendation.status == status)
    return [RecommendationInfo.of(r) for r in session.scalars(query.limit(limit))]


def decide_recommendation(session: Session, recommendation_id: int, *, status: str,
                          actor: str, reason: str, now: datetime, hook_pending: bool = False
                          ) -> RecommendationInfo:
    """Record the decision (``executed`` or ``rejected``: who, when, why); with
    ``hook_pending`` the deploy hook is due now."""
    row = _recommendation(session, recommendation_id)
    row.status, row.decided_by, row.decided_at, row.decision_reason = status, actor, now, reason
    if hook_pending:
        row.hook_status, row.hook_next_attempt_at = "pending", now
    session.flush()
    return RecommendationInfo.of(row)


def recommendation_handled(session: Session, *, model: str, alias: str, from_version: str,
                           alert_id: int, since: datetime) -> bool:
    """A pending recommendation to move ``alias`` away from ``from_version`` exists, or one
    citing ``alert_id`` was rejected at or after ``since``."""
    return bool(session.scalar(select(exists().where(
        RollbackRecommendation.model == model, RollbackRecommendation.alias == alias,
        RollbackRecommendation.from_version == from_version,
        (RollbackRecommendation.status == "pending")
        | ((RollbackRecommendation.status == "rejected")
           & (RollbackRecommendation.alert_id == alert_id)
           & (RollbackRecommendation.created_at >= since)),
    ))))


def claim_due_hooks(session: Session, *, now: datetime, lease_until: datetime
                    ) -> list[RecommendationInfo]:
    """The recommendations whose deploy hook is pending and due, each claimed until
    ``lease_until`` by a conditional UPDATE (a concurrent claimer that got there first
    keeps it)."""
    due = session.execute(
        select(RollbackRecommendation.id, RollbackRecommendation.hook_next_attempt_at)
        .where(RollbackRecommendation.hook_status == "pending",
               RollbackRecommendation.hook_next_attempt_at <= now)
        .order_by(RollbackRecommendation.id)
    ).all()
    claimed = []
    for rec_id, seen in due:
        taken = updated_rows(session,
            update(RollbackRecommendation)
            .where(RollbackRecommendation.id == rec_id,
                   RollbackRecommendation.hook_status == "pending",
                   RollbackRecommendation.hook_next_attempt_at == seen)
            .values(hook_next_attempt_at=lease_until))
        if taken:
            claimed.append(get_recommendation(session, rec_id))
    return claimed


def count_hook_attempt(session: Session, recommendation_id: int) -> int:
    """One more attempt at the deploy hook; returns how many there have been."""
    row = _recommendation(session, recommendation_id)
    row.hook_attempts += 1
    return row.hook_attempts


def set_hook_outcome(session: Session, recommendation_id: int, *, status: str | None,
                     error: str | None, next_attempt_at: datetime | None
                     ) -> RecommendationInfo:
    """After an attempt: the hook's status (None: unchanged), its error (None: the last one
    stays) and when it is next due (None: never)."""
    row = _recommendation(session, recommendation_id)
    if status is not None:
        row.hook_status = status
    if error is not None:
        row.hook_error = error[:HOOK_ERROR_LENGTH]
    row.hook_next_attempt_at = next_attempt_at
    return RecommendationInfo.of(row)


def rearm_hook(session: Session, recommendation_id: int, *, now: datetime
               ) -> RecommendationInfo:
    """The deploy hook is pending again, due now, with no attempts."""
    row = _recommendation(session, recommendation_id)
    row.hook_status, row.hook_attempts, row.hook_next_attempt_at = "pending", 0, now
    return RecommendationInfo.of(row)
