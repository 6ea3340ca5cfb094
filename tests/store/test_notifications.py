"""The notification outbox of ``monitor.store.notifications``: queued, claimed once, its
outcome recorded, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from monitor.runtime import Runtime
from monitor.store import notifications as outbox
from monitor.store.db import session_scope
from monitor.store.incidents import add_open_incident

NOW = datetime(2026, 10, 12, 6, 0, tzinfo=UTC)
LEASE = NOW + timedelta(minutes=2)


def incident(runtime: Runtime) -> int:
    with session_scope(runtime.sessions) as session:
        return add_open_incident(session, model="m", version="1.4.0", cause_field="site",
                                 cause_value="A", cause_label="site A", severity="warning",
                                 now=NOW).id


def queue(runtime: Runtime, incident_id: int, event: str = "firing", *,
          target: str = "hook") -> None:
    with session_scope(runtime.sessions) as session:
        outbox.queue_notification(session, incident_id=incident_id, channel="webhook",
                                  target=target, event=event, now=NOW)


def claim(runtime: Runtime, now: datetime = NOW) -> list[outbox.NotificationInfo]:
    with session_scope(runtime.sessions) as session:
        return list(outbox.claim_due_notifications(session, now=now, lease_until=LEASE,
                                                    limit=10))


def test_a_due_notification_is_claimed_once_until_its_lease_ends(runtime: Runtime) -> None:
    incident_id = incident(runtime)
    queue(runtime, incident_id)
    queue(runtime, incident_id, target="other")
    (first, second) = claim(runtime)
    assert (first.incident_id, first.status, first.next_attempt_at) == (
        incident_id, "pending", LEASE)
    assert second.target == "other"
    assert claim(runtime) == []  # leased: not due again before the lease ends
    assert [n.id for n in claim(runtime, LEASE)] == [first.id, second.id]


def test_outcomes(runtime: Runtime) -> None:
    incident_id = incident(runtime)
    for target in ("sent", "silenced", "failing"):
        queue(runtime, incident_id, target=target)
    sent, silenced, failing = claim(runtime)
    with session_scope(runtime.sessions) as session:
        outbox.mark_notification_sent(session, sent.id, now=NOW)
        outbox.mark_notification_silenced(session, silenced.id, reason="silenced")
        assert outbox.count_failed_attempt(session, failing.id, error="x" * 3000) == 1
        outbox.schedule_retry(session, failing.id, at=NOW + timedelta(minutes=1))
    with session_scope(runtime.sessions) as session:
        page = outbox.latest_page(session, incident_id, channel="webhook", target="failing")
        assert page is not None
        assert (page.status, page.attempts, page.next_attempt_at) == (
            "pending", 1, NOW + timedelta(minutes=1))
        assert page.last_error == "x" * outbox.MAX_ERROR_LENGTH
        assert outbox.count_failed_attempt(session, failing.id, error="again") == 2
        outbox.mark_notification_failed(session, failing.id)
    with session_scope(runtime.sessions) as session:
        rows = {target: outbox.latest_page(session, incident_id, channel="webhook",
                                           target=target) for target in
                ("sent", "silenced", "failing")}
    assert {t: (r.status, r.attempts) for t, r in rows.items() if r is not None} == {
        "sent": ("sent", 1), "silenced": ("silenced", 0), "failing": ("failed", 2)}
    assert rows["sent"] is not None and rows["sent"].sent_at == NOW
    assert rows["failing"] is not None and rows["failing"].next_attempt_at is None


def test_an_event_dropped_while_silenced_is_not_yet_notified(runtime: Runtime) -> None:
    incident_id = incident(runtime)
    queue(runtime, incident_id, "escalated")
    (row,) = claim(runtime)

    def notified(*events: str) -> bool:
        with session_scope(runtime.sessions) as session:
            return outbox.incident_notified(session, incident_id, channel="webhook",
                                            target="hook", events=events)

    assert notified("firing", "escalated") and not notified("resolved")
    with session_scope(runtime.sessions) as session:
        outbox.mark_notification_silenced(session, row.id, reason="silenced")
    assert not notified("firing", "escalated")


def test_the_latest_page_is_rearmed(runtime: Runtime) -> None:
    incident_id = incident(runtime)
    queue(runtime, incident_id, "firing")
    queue(runtime, incident_id, "escalated")
    queue(runtime, incident_id, "resolved")
    with session_scope(runtime.sessions) as session:
        page = outbox.latest_page(session, incident_id, channel="webhook", target="hook")
        assert page is not None and page.event == "escalated"
        outbox.mark_notification_sent(session, page.id, now=NOW)
        outbox.rearm_notification(session, page.id, now=LEASE)
    with session_scope(runtime.sessions) as session:
        again = outbox.latest_page(session, incident_id, channel="webhook", target="hook")
    assert again is not None
    assert (again.id, again.status, again.attempts, again.next_attempt_at) == (
        page.id, "pending", 0, LEASE)
