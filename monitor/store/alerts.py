"""Queries on alerts (findings): the rows ``monitor.alerting`` reads and changes.

An ``alert`` row is the state of one rule on one stream of one model version, keyed by a
stable ``key``. The state machine that moves it (pending, firing, resolved) is the engine's
(``monitor.alerting.engine``); here each check window's outcome is written
(``add_alert``, ``record_alert_window``), alerts are resolved, filed under incidents,
acknowledged and silenced, and read as ``AlertRecord`` (every column: what the alerting code
decides on) or ``AlertInfo`` (with the notifications sent about it: the API, the CLI).

Changes go through the session's unit of work: nothing here commits, and a change is written
at the next flush (the functions that flush say so).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.errors import NotFoundError, ValidationError
from monitor.store.held import held, held_row
from monitor.store.incidents import AlertInfo
from monitor.store.models import Alert, Notification
from monitor.store.notifications import NotificationInfo

ALERT_STATES = ("pending", "firing", "resolved")
OPEN_ALERT_STATES = ("pending", "firing")


@dataclass(frozen=True, slots=True)
class AlertWindow:
    """What one check window leaves on an alert: the columns the engine's state machine
    sets."""

    state: str
    severity: str
    labels: dict[str, Any] | None
    summary: str | None
    consecutive: int
    firing_windows: int
    started_at: datetime
    fired_at: datetime | None
    resolved_at: datetime | None
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    last_check_run_id: int | None
    last_window_end: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One ``alert`` row, every column."""

    id: int
    key: str
    rule: str
    model: str
    model_version: str | None
    severity: str
    state: str
    labels: dict[str, Any] | None
    summary: str | None
    consecutive: int
    firing_windows: int
    last_window_end: datetime | None
    started_at: datetime
    fired_at: datetime | None
    updated_at: datetime
    resolved_at: datetime | None
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    silenced_until: datetime | None
    last_check_run_id: int | None
    incident_id: int | None

    @classmethod
    def of(cls, row: Alert) -> AlertRecord:
        return cls(row.id, row.key, row.rule, row.model, row.model_version, row.severity,
                   row.state, None if row.labels is None else dict(row.labels), row.summary,
                   row.consecutive, row.firing_windows, row.last_window_end, row.started_at,
                   row.fired_at, row.updated_at, row.resolved_at, row.acknowledged_by,
                   row.acknowledged_at, row.silenced_until, row.last_check_run_id,
                   row.incident_id)

    def window(self) -> AlertWindow:
        """The alert's state-machine columns as they stand."""
        return AlertWindow(**{f.name: getattr(self, f.name) for f in fields(AlertWindow)})


def _records(rows: Iterable[Alert]) -> list[AlertRecord]:
    return [AlertRecord.of(row) for row in rows]


def _row(session: Session, alert_id: int) -> Alert:
    row = session.get(Alert, alert_id)
    if row is None:
        raise NotFoundError(f"alert id {alert_id} not found")
    return row


def _set_window(row: Alert, window: AlertWindow) -> None:
    """Every state-machine column; the flush writes those whose value changed."""
    for column in fields(AlertWindow):
        setattr(row, column.name, getattr(window, column.name))


# --- the engine's changes ------------------------------------------------------------------


def alert_by_key(session: Session, key: str) -> AlertRecord | None:
    row = held_row(session, session.scalar(select(Alert).where(Alert.key == key)))
    return None if row is None else AlertRecord.of(row)


def add_alert(session: Session, *, key: str, rule: str, model: str, model_version: str | None,
              window: AlertWindow) -> AlertRecord:
    """Insert a new alert in the state of its first window (flushed: it has its id)."""
    row = Alert(key=key, rule=rule, model=model, model_version=model_version)
    _set_window(row, window)
    session.add(row)
    session.flush()
    return AlertRecord.of(held(session, [row])[0])


def record_alert_window(session: Session, alert_id: int, window: AlertWindow) -> AlertRecord:
    """Write the state a check window left on an existing alert (flushed)."""
    row = _row(session, alert_id)
    _set_window(row, window)
    session.flush()
    return AlertRecord.of(row)


def _resolve(row: Alert, now: datetime) -> None:
    row.state, row.resolved_at, row.updated_at = "resolved", now, now
    row.consecutive, row.firing_windows = 0, 0


def resolve_alert(session: Session, alert_id: int, *, now: datetime) -> AlertRecord:
    """Resolve one alert, its counters back to zero (flushed)."""
    row = _row(session, alert_id)
    _resolve(row, now)
    session.flush()
    return AlertRecord.of(row)


def _resolve_all(session: Session, rows: Iterable[Alert], now: datetime) -> None:
    for row in rows:
        _resolve(row, now)
    session.flush()


def resolve_open_alerts_of_version(session: Session, *, model: str, version: str,
                                   now: datetime) -> None:
    """Resolve every pending or firing alert of a model version (flushed)."""
    _resolve_all(session, session.scalars(select(Alert).where(
        Alert.model == model, Alert.model_version == version,
        Alert.state.in_(OPEN_ALERT_STATES))), now)


def resolve_open_alerts_of_incident(session: Session, incident_id: int, *,
                                    now: datetime) -> None:
    """Resolve every pending or firing alert filed under an incident (flushed)."""
    _resolve_all(session, session.scalars(select(Alert).where(
        Alert.incident_id == incident_id, Alert.state.in_(OPEN_ALERT_STATES))), now)


def open_alerts_of_removed_rules(session: Session, *, model: str, version: str,
                                 rules: Sequence[str]) -> list[AlertRecord]:
    """Pending or firing alerts of a model version whose rule is none of ``rules``."""
    return _records(held(session, session.scalars(select(Alert).where(
        Alert.model == model, Alert.model_version == version,
        Alert.state.in_(OPEN_ALERT_STATES), Alert.rule.not_in(rules)))))


# --- incidents' findings -------------------------------------------------------------------


def open_alerts_of_version(session: Session, *, model: str, version: str
                           ) -> list[AlertRecord]:
    """A model version's pending and firing alerts, by id."""
    return _records(held(session, session.scalars(select(Alert).where(
        Alert.model == model, Alert.model_version == version,
        Alert.state.in_(OPEN_ALERT_STATES)).order_by(Alert.id))))


def alerts_of_incident(session: Session, incident_id: int) -> list[AlertRecord]:
    """Every alert filed under an incident, open or not, by id."""
    return _records(session.scalars(select(Alert).where(Alert.incident_id == incident_id)
                                    .order_by(Alert.id)))


def set_alert_incident(session: Session, alert_id: int, incident_id: int | None) -> None:
    """File an alert under an incident (None: under none), written at the next flush."""
    _row(session, alert_id).incident_id = incident_id


def flushed_alerts(session: Session, alert_ids: Iterable[int]) -> list[AlertRecord]:
    """Flush, then the alerts as the session holds them: an alert whose change a rolled-back
    savepoint undid (another transaction opened the same incident) reads as stored."""
    session.flush()
    return [AlertRecord.of(_row(session, alert_id)) for alert_id in alert_ids]


# --- reading and changing alerts -----------------------------------------------------------


def alert_record(session: Session, alert_id: int) -> AlertRecord:
    return AlertRecord.of(_row(session, alert_id))


def _notifications(session: Session, alert: Alert) -> tuple[NotificationInfo, ...]:
    """What was sent about an alert: its incident's notifications (and its own, from before
    incidents)."""
    about = Notification.alert_id == alert.id
    if alert.incident_id is not None:
        about = about | (Notification.incident_id == alert.incident_id)
    rows = session.scalars(select(Notification).where(about).order_by(Notification.id))
    return tuple(NotificationInfo.of(r) for r in rows)


def get_alert(session: Session, alert_id: int) -> AlertInfo:
    """One alert with its (incident's) notifications."""
    row = _row(session, alert_id)
    return AlertInfo.of(row, _notifications(session, row))


def list_alerts(session: Session, *, state: str | None = "active", model: str | None = None,
                version: str | None = None, severity: str | None = None, limit: int = 200
                ) -> list[AlertInfo]:
    """Alerts, most recently updated first. ``state``: pending, firing, resolved, ``active``
    (pending or firing) or None for all."""
    query = select(Alert).order_by(Alert.updated_at.desc(), Alert.id.desc()).limit(limit)
    if state == "active":
        query = query.where(Alert.state.in_(OPEN_ALERT_STATES))
    elif state is not None:
        if state not in ALERT_STATES:
            raise ValidationError(f"state {state!r} is not one of active, "
                                  f"{', '.join(ALERT_STATES)}", field="state")
        query = query.where(Alert.state == state)
    if model is not None:
        query = query.where(Alert.model == model)
    if version is not None:
        query = query.where(Alert.model_version == version)
    if severity is not None:
        query = query.where(Alert.severity == severity)
    return [AlertInfo.of(row) for row in session.scalars(query)]


def acknowledge_alert(session: Session, alert_id: int, *, actor: str, now: datetime
                      ) -> AlertRecord:
    """Record who looked at the alert, and when (written at the next flush)."""
    row = _row(session, alert_id)
    row.acknowledged_by, row.acknowledged_at, row.updated_at = actor, now, now
    return AlertRecord.of(row)


def silence_alert(session: Session, alert_id: int, *, until: datetime, now: datetime
                  ) -> AlertRecord:
    """Silence the alert until ``until`` (written at the next flush)."""
    row = _row(session, alert_id)
    row.silenced_until, row.updated_at = until, now
    return AlertRecord.of(row)
