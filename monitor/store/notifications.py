"""Queries on notifications: the outbox ``monitor.alerting.notify`` queues and delivers.

A ``notification`` row is one delivery of an incident's event (firing, escalated, resolved) to
one channel, queued ``pending`` in the transaction that changed the incident. Delivery takes
the due rows (``claim_due_notifications``: a conditional UPDATE leases each, so two delivery
loops never send the same row), sends each outside any transaction and records the outcome
in a transaction of its own: ``sent``, ``silenced``, a failed attempt to retry at a later time,
or ``failed`` for good. Rows written before incidents (revision 0004) belong to an alert
(``alert_id``) instead.

Nothing here commits; a change is written at the next flush.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from monitor.errors import NotFoundError
from monitor.store.db import updated_rows
from monitor.store.held import held_row
from monitor.store.models import Notification

PAGE_EVENTS = ("firing", "escalated")  # the events that page (and that Alertmanager re-sends)
MAX_ERROR_LENGTH = 2000  # of ``last_error``


@dataclass(frozen=True, slots=True)
class NotificationInfo:
    """One ``notification`` row, every column."""

    id: int
    alert_id: int | None
    incident_id: int | None
    channel: str
    target: str
    event: str
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime | None
    sent_at: datetime | None

    @classmethod
    def of(cls, row: Notification) -> NotificationInfo:
        return cls(row.id, row.alert_id, row.incident_id, row.channel, row.target, row.event,
                   row.status, row.attempts, row.last_error, row.created_at,
                   row.next_attempt_at, row.sent_at)


def _row(session: Session, notification_id: int) -> Notification:
    row = session.get(Notification, notification_id)
    if row is None:
        raise NotFoundError(f"notification id {notification_id} not found")
    return row


# --- queueing ------------------------------------------------------------------------------


def incident_notified(session: Session, incident_id: int, *, channel: str, target: str,
                      events: Sequence[str]) -> bool:
    """Whether the incident has a notification of one of ``events`` for this channel that
    was not dropped while silenced (one that was is to be sent again)."""
    return session.scalar(select(Notification.id).where(
        Notification.incident_id == incident_id, Notification.channel == channel,
        Notification.target == target, Notification.event.in_(events),
        Notification.status != "silenced",
    ).limit(1)) is not None


def queue_notification(session: Session, *, incident_id: int, channel: str, target: str,
                       event: str, now: datetime) -> None:
    """Add a pending notification, due at once (inserted at the next flush)."""
    session.add(Notification(
        incident_id=incident_id, channel=channel, target=target, event=event,
        status="pending", attempts=0, created_at=now, next_attempt_at=now,
    ))


def latest_page(session: Session, incident_id: int, *, channel: str, target: str
                ) -> NotificationInfo | None:
    """The incident's newest firing or escalated notification for this channel, if any."""
    row = held_row(session, session.scalar(select(Notification).where(
        Notification.incident_id == incident_id, Notification.channel == channel,
        Notification.target == target, Notification.event.in_(PAGE_EVENTS),
    ).order_by(Notification.id.desc()).limit(1)))
    return None if row is None else NotificationInfo.of(row)


def rearm_notification(session: Session, notification_id: int, *, now: datetime) -> None:
    """Make a sent, failed or silenced notification pending again, due at once, its attempts
    counted afresh."""
    row = _row(session, notification_id)
    row.status, row.attempts, row.next_attempt_at = "pending", 0, now


# --- delivering ----------------------------------------------------------------------------


def _lease(session: Session, notification_id: int, seen: datetime | None,
           until: datetime) -> bool:
    """Move a pending notification's next attempt to ``until`` if it is still at ``seen``:
    False when another delivery loop took it first."""
    return bool(updated_rows(session, update(Notification).where(
        Notification.id == notification_id, Notification.status == "pending",
        Notification.next_attempt_at == seen,
    ).values(next_attempt_at=until)))


def claim_due_notifications(session: Session, *, now: datetime, lease_until: datetime,
                            limit: int) -> Iterator[NotificationInfo]:
    """Take the pending notifications due at ``now`` (at most ``limit``, oldest first), one
    at a time as the caller iterates: each is leased until ``lease_until`` only if nobody
    moved it first, so two delivery loops never send the same row at once. Yields those this
    session took."""
    due = session.execute(
        select(Notification.id, Notification.next_attempt_at)
        .where(Notification.status == "pending", Notification.next_attempt_at <= now)
        .order_by(Notification.id).limit(limit)
    ).all()
    for notification_id, seen in due:
        if _lease(session, notification_id, seen, lease_until):
            yield NotificationInfo.of(_row(session, notification_id))


def mark_notification_silenced(session: Session, notification_id: int, *,
                               reason: str | None) -> None:
    """Drop a notification while its incident is silenced (queued again once it is not)."""
    row = _row(session, notification_id)
    row.status, row.next_attempt_at, row.last_error = "silenced", None, reason


def mark_notification_sent(session: Session, notification_id: int, *, now: datetime) -> None:
    row = _row(session, notification_id)
    row.attempts += 1
    row.status, row.sent_at, row.next_attempt_at = "sent", now, None


def count_failed_attempt(session: Session, notification_id: int, *, error: str) -> int:
    """Count one failed attempt and keep its error; returns the attempts made so far."""
    row = _row(session, notification_id)
    row.attempts += 1
    row.last_error = error[:MAX_ERROR_LENGTH]
    return row.attempts


def mark_notification_failed(session: Session, notification_id: int) -> None:
    """Give up on a notification: no further attempt."""
    row = _row(session, notification_id)
    row.status, row.next_attempt_at = "failed", None


def schedule_retry(session: Session, notification_id: int, *, at: datetime) -> None:
    _row(session, notification_id).next_attempt_at = at
