"""The audit log: who did what, when, why and citing which alert.

Every change to the registry, baselines, alerts, incidents and tokens appends one entry in
the caller's transaction (``record_audit``), so the entry and the change commit or roll back
together. The table refuses UPDATE and DELETE (database triggers): entries are only added.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.store.models import AuditEntry

# The actor of what the service does on its own (deliveries, imports, the default creator).
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


def record_audit(session: Session, *, actor: str, action: str, model: str | None = None,
                 model_version: str | None = None, reason: str | None = None,
                 alert_id: int | None = None, details: dict[str, Any] | None = None,
                 now: datetime | None = None) -> None:
    """Append one audit entry in the caller's transaction."""
    session.add(AuditEntry(ts=now or datetime.now(UTC), actor=actor, action=action, model=model,
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


def last_made_live(session: Session, model: str) -> dict[str | None, datetime]:
    """Per version of ``model``, when an alias was last moved to it (its newest ``promote`` or
    ``rollback`` entry)."""
    rows = session.execute(
        select(AuditEntry.model_version, func.max(AuditEntry.ts))
        .where(AuditEntry.model == model, AuditEntry.action.in_(("promote", "rollback")))
        .group_by(AuditEntry.model_version)
    ).all()
    return {version: ts for version, ts in rows}
