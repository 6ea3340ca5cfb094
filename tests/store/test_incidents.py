"""The incident changes of ``monitor.store.incidents``: one open incident per cause, a check
run's evidence, paging, escalation, resolution and acceptance, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from monitor.errors import NotFoundError
from monitor.runtime import Runtime
from monitor.store import incidents
from monitor.store.db import session_scope
from tests.alerting.support import add_version, store_run

NOW = datetime(2026, 10, 12, 6, 0, tzinfo=UTC)
CAUSE = {"model": "m", "version": "1.4.0", "cause_field": "station", "cause_value": "XR-1",
         "cause_label": "XR-1"}


def test_a_cause_has_one_open_incident_whoever_adds_it(runtime: Runtime) -> None:
    with session_scope(runtime.sessions) as session:
        first = incidents.add_open_incident(session, severity="warning", now=NOW, **CAUSE)
    with session_scope(runtime.sessions) as session:
        # the partial unique index refuses a second: the savepoint rolls back, the
        # transaction goes on with the open one
        again = incidents.add_open_incident(session, severity="critical", now=NOW, **CAUSE)
        assert again == first
        assert [i.id for i in incidents.open_incidents(session, model="m",
                                                       version="1.4.0")] == [first.id]
    with session_scope(runtime.sessions) as session:
        incidents.resolve_incident(session, first.id, state="resolved", reason="cause gone",
                                   now=NOW)
        reopened = incidents.add_open_incident(session, severity="warning", now=NOW, **CAUSE)
    assert reopened.id != first.id


def test_a_run_pages_escalates_resolves_and_accepts(runtime: Runtime) -> None:
    run = store_run(runtime, add_version(runtime, "1.4.0", model="m"), day=10, results=[])
    with session_scope(runtime.sessions) as session:
        opened = incidents.add_open_incident(session, severity="warning", now=NOW, **CAUSE)
    later = NOW + timedelta(days=1)
    with session_scope(runtime.sessions) as session:
        recorded = incidents.record_incident_run(
            session, opened.id, evidence=[{"alert_id": 1, "state": "firing"}], summary="s",
            severity="critical", first_evidence_day=date(2026, 10, 11), quiet_windows=1,
            check_run_id=run, window_end=later, now=later)
        paged = incidents.mark_incident_paged(session, opened.id, now=later)
        escalated = incidents.mark_incident_escalated(session, opened.id, now=later)
    assert recorded.evidence == ({"alert_id": 1, "state": "firing"},)
    assert (recorded.severity, recorded.quiet_windows, recorded.last_check_run_id,
            recorded.last_window_end) == ("critical", 1, run, later)
    assert (paged.paged_at, escalated.escalated_at) == (later, later)
    with session_scope(runtime.sessions) as session:
        incidents.record_acceptance(session, opened.id, actor="alice", reason="validated",
                                    since=date(2026, 10, 11), now=later)
        done = incidents.resolve_incident(session, opened.id, state="accepted",
                                          reason="accepted", now=later)
    assert (done.state, done.resolved_reason, done.accepted_by, done.accepted_since) == (
        "accepted", "accepted", "alice", date(2026, 10, 11))
    with session_scope(runtime.sessions) as session:
        assert incidents.incident_record(session, opened.id) == done
        assert incidents.open_paged_incidents(session) == []
        with pytest.raises(NotFoundError):
            incidents.incident_record(session, opened.id + 1)
