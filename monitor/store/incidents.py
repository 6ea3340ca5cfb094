"""Incidents and alerts (findings): read by the API, the CLI and the dashboard, written for
``monitor.alerting.incidents``.

An incident groups the findings (alerts) of one model version that share a cause. It is read
as ``IncidentInfo``: ``list_incidents`` (most severe first, then the longest open first) and
``get_incident`` (with its findings). The grouping reads ``IncidentRecord`` (every column) and
changes incidents through the functions below ``--- grouping``: opened once per cause
(``add_open_incident``), a check run's evidence recorded, paged, escalated, resolved,
accepted. Nothing here commits; a change is written at the next flush (the functions that
flush say so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import case, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from monitor.errors import NotFoundError, ValidationError
from monitor.store.held import held, held_row
from monitor.store.models import Alert, Incident, Notification
from monitor.store.notifications import NotificationInfo

INCIDENT_STATES = ("open", "resolved", "accepted")
INCIDENT_SEVERITIES = ("warning", "critical")


@dataclass(frozen=True)
class AlertInfo:
    """One finding: the state of one rule on one stream of one version."""

    id: int
    key: str
    rule: str
    model: str
    model_version: str | None
    severity: str
    state: str
    labels: dict[str, Any]
    summary: str | None
    consecutive: int
    firing_windows: int
    started_at: datetime
    fired_at: datetime | None
    updated_at: datetime
    resolved_at: datetime | None
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    silenced_until: datetime | None
    last_check_run_id: int | None
    notifications: tuple[NotificationInfo, ...] = ()
    incident_id: int | None = None

    @classmethod
    def of(cls, row: Alert, notifications: tuple[NotificationInfo, ...] = ()) -> AlertInfo:
        return cls(row.id, row.key, row.rule, row.model, row.model_version, row.severity,
                   row.state, dict(row.labels or {}), row.summary, row.consecutive,
                   row.firing_windows, row.started_at, row.fired_at, row.updated_at,
                   row.resolved_at, row.acknowledged_by, row.acknowledged_at,
                   row.silenced_until, row.last_check_run_id, notifications, row.incident_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class IncidentInfo:
    """One incident. ``evidence``: per finding {rule, detector, feature, family, level,
    statistic, since, effect, ...}; ``findings``: its alerts (filled by ``get_incident``)."""

    id: int
    model: str
    model_version: str
    cause_field: str
    cause_value: str
    cause_label: str
    state: str  # open | resolved | accepted
    severity: str  # warning | critical
    summary: str | None
    opened_at: datetime
    first_evidence_day: date | None
    paged_at: datetime | None
    resolved_at: datetime | None
    resolved_reason: str | None
    accepted_by: str | None
    accepted_at: datetime | None
    accept_reason: str | None
    evidence: list[dict[str, Any]]
    findings: tuple[AlertInfo, ...] = ()
    escalated_at: datetime | None = None
    accepted_since: date | None = None
    updated_at: datetime | None = None
    last_window_end: datetime | None = None
    notifications: tuple[NotificationInfo, ...] = ()

    @classmethod
    def of(cls, row: Incident, findings: tuple[AlertInfo, ...] = (),
           notifications: tuple[NotificationInfo, ...] = ()) -> IncidentInfo:
        return cls(
            id=row.id, model=row.model, model_version=row.model_version,
            cause_field=row.cause_field, cause_value=row.cause_value,
            cause_label=row.cause_label, state=row.state, severity=row.severity,
            summary=row.summary, opened_at=row.opened_at,
            first_evidence_day=row.first_evidence_day, paged_at=row.paged_at,
            resolved_at=row.resolved_at, resolved_reason=row.resolved_reason,
            accepted_by=row.accepted_by, accepted_at=row.accepted_at,
            accept_reason=row.accept_reason, evidence=list(row.evidence or []),
            findings=findings, escalated_at=row.escalated_at,
            accepted_since=row.accepted_since, updated_at=row.updated_at,
            last_window_end=row.last_window_end, notifications=notifications,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SEVERITY_ORDER = case((Incident.severity == "critical", 0), (Incident.severity == "warning", 1),
                      else_=2)


def list_incidents(session: Session, *, model: str | None = None, version: str | None = None,
                   state: str | None = "open", severity: str | None = None, limit: int = 200
                   ) -> list[IncidentInfo]:
    """Incidents, most severe first, then the oldest (longest open) first. ``state``: open,
    resolved, accepted, or None for all; ``severity``: warning or critical."""
    if state is not None and state not in INCIDENT_STATES:
        raise ValidationError(f"state {state!r} is not one of {', '.join(INCIDENT_STATES)} "
                              "(or all)", field="state")
    if severity is not None and severity not in INCIDENT_SEVERITIES:
        raise ValidationError(f"severity {severity!r} is not one of "
                              f"{', '.join(INCIDENT_SEVERITIES)}", field="severity")
    if limit < 1:
        raise ValidationError(f"limit has value {limit}; must be >= 1", field="limit")
    query = (select(Incident).order_by(SEVERITY_ORDER, Incident.opened_at, Incident.id)
             .limit(limit))
    if model is not None:
        query = query.where(Incident.model == model)
    if version is not None:
        query = query.where(Incident.model_version == version)
    if state is not None:
        query = query.where(Incident.state == state)
    if severity is not None:
        query = query.where(Incident.severity == severity)
    return [IncidentInfo.of(row) for row in session.scalars(query)]


def incident_row(session: Session, incident_id: int) -> Incident:
    row = session.get(Incident, incident_id)
    if row is None:
        raise NotFoundError(f"incident id {incident_id} not found")
    return row


def incident_findings(session: Session, incident_id: int) -> tuple[AlertInfo, ...]:
    """The incident's alerts: open ones first, then the most severe, then by id."""
    rows = session.scalars(select(Alert).where(Alert.incident_id == incident_id)
                           .order_by(Alert.id))
    found = [AlertInfo.of(row) for row in rows]
    rank = {"critical": 0, "warning": 1, "info": 2}
    found.sort(key=lambda a: (a.state not in ("pending", "firing"), rank.get(a.severity, 3),
                              a.id))
    return tuple(found)


def incident_notifications(session: Session, incident_id: int) -> tuple[NotificationInfo, ...]:
    rows = session.scalars(select(Notification).where(Notification.incident_id == incident_id)
                           .order_by(Notification.id))
    return tuple(NotificationInfo.of(row) for row in rows)


def get_incident(session: Session, incident_id: int) -> IncidentInfo:
    """One incident with its findings (alerts) and its notifications."""
    row = incident_row(session, incident_id)
    return IncidentInfo.of(row, incident_findings(session, incident_id),
                           incident_notifications(session, incident_id))


# --- grouping ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """One ``incident`` row, every column (``evidence``: its rows, as stored)."""

    id: int
    model: str
    model_version: str
    cause_field: str
    cause_value: str
    cause_label: str
    state: str
    severity: str
    opened_at: datetime
    first_evidence_day: date | None
    paged_at: datetime | None
    escalated_at: datetime | None
    resolved_at: datetime | None
    resolved_reason: str | None
    summary: str | None
    evidence: tuple[dict[str, Any], ...]
    quiet_windows: int
    last_check_run_id: int | None
    last_window_end: datetime | None
    accepted_by: str | None
    accepted_at: datetime | None
    accept_reason: str | None
    accepted_since: date | None
    updated_at: datetime

    @classmethod
    def of(cls, row: Incident) -> IncidentRecord:
        return cls(
            id=row.id, model=row.model, model_version=row.model_version,
            cause_field=row.cause_field, cause_value=row.cause_value,
            cause_label=row.cause_label, state=row.state, severity=row.severity,
            opened_at=row.opened_at, first_evidence_day=row.first_evidence_day,
            paged_at=row.paged_at, escalated_at=row.escalated_at, resolved_at=row.resolved_at,
            resolved_reason=row.resolved_reason, summary=row.summary,
            evidence=tuple(row.evidence or ()), quiet_windows=row.quiet_windows,
            last_check_run_id=row.last_check_run_id, last_window_end=row.last_window_end,
            accepted_by=row.accepted_by, accepted_at=row.accepted_at,
            accept_reason=row.accept_reason, accepted_since=row.accepted_since,
            updated_at=row.updated_at,
        )


def incident_record(session: Session, incident_id: int) -> IncidentRecord:
    return IncidentRecord.of(held(session, [incident_row(session, incident_id)])[0])


def open_incidents(session: Session, *, model: str, version: str) -> list[IncidentRecord]:
    """A model version's open incidents, by id."""
    rows = held(session, session.scalars(select(Incident).where(
        Incident.model == model, Incident.model_version == version, Incident.state == "open")
        .order_by(Incident.id)))
    return [IncidentRecord.of(row) for row in rows]


def open_paged_incidents(session: Session) -> list[IncidentRecord]:
    """Every open incident that has been paged."""
    return [IncidentRecord.of(row) for row in session.scalars(select(Incident).where(
        Incident.state == "open", Incident.paged_at.is_not(None)))]


def _open_incident_of(session: Session, *, model: str, version: str, cause_field: str,
                      cause_value: str) -> Incident | None:
    return session.scalar(select(Incident).where(
        Incident.model == model, Incident.model_version == version,
        Incident.cause_field == cause_field, Incident.cause_value == cause_value,
        Incident.state == "open"))


def add_open_incident(session: Session, *, model: str, version: str, cause_field: str,
                      cause_value: str, cause_label: str, severity: str, now: datetime
                      ) -> IncidentRecord:
    """Add the open incident of a cause (flushed, in a savepoint); if another transaction
    just added it, that one (the partial unique index refuses a second)."""
    row = Incident(model=model, model_version=version, cause_field=cause_field,
                   cause_value=cause_value, cause_label=cause_label, state="open",
                   severity=severity, opened_at=now, quiet_windows=0, evidence=[],
                   updated_at=now)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        found = held_row(session, _open_incident_of(
            session, model=model, version=version, cause_field=cause_field,
            cause_value=cause_value))
        if found is None:
            raise
        return IncidentRecord.of(found)
    return IncidentRecord.of(held(session, [row])[0])


def record_incident_run(session: Session, incident_id: int, *,
                        evidence: Sequence[dict[str, Any]], summary: str, severity: str,
                        first_evidence_day: date | None, quiet_windows: int,
                        check_run_id: int, window_end: datetime, now: datetime
                        ) -> IncidentRecord:
    """Write what a check run made of an incident: its evidence rows and summary, severity,
    first day of evidence, quiet windows and the newest window it counted (flushed)."""
    row = incident_row(session, incident_id)
    row.first_evidence_day, row.severity = first_evidence_day, severity
    row.evidence, row.summary = list(evidence), summary
    row.quiet_windows, row.last_check_run_id = quiet_windows, check_run_id
    row.last_window_end, row.updated_at = window_end, now
    session.flush()
    return IncidentRecord.of(row)


def mark_incident_paged(session: Session, incident_id: int, *, now: datetime
                        ) -> IncidentRecord:
    """The incident's first page went out (written at the next flush)."""
    row = incident_row(session, incident_id)
    row.paged_at = now
    return IncidentRecord.of(row)


def mark_incident_escalated(session: Session, incident_id: int, *, now: datetime
                            ) -> IncidentRecord:
    """The incident went from warning to critical (written at the next flush)."""
    row = incident_row(session, incident_id)
    row.escalated_at = now
    return IncidentRecord.of(row)


def resolve_incident(session: Session, incident_id: int, *, state: str, reason: str,
                     now: datetime) -> IncidentRecord:
    """End an incident: ``state`` resolved or accepted, with ``reason`` (flushed)."""
    row = incident_row(session, incident_id)
    row.state, row.resolved_at, row.resolved_reason = state, now, reason
    row.updated_at = now
    session.flush()
    return IncidentRecord.of(row)


def record_acceptance(session: Session, incident_id: int, *, actor: str, reason: str,
                      since: date, now: datetime) -> IncidentRecord:
    """Who accepted the incident as a validated change, why, and from which day (written at
    the next flush)."""
    row = incident_row(session, incident_id)
    row.accepted_by, row.accepted_at = actor, now
    row.accept_reason, row.accepted_since = reason, since
    return IncidentRecord.of(row)
