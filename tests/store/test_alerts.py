"""The alert queries of ``monitor.store.alerts``: written per check window, resolved, filed under
incidents, read as records, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from monitor.errors import NotFoundError, ValidationError
from monitor.runtime import Runtime
from monitor.store import alerts
from monitor.store.db import session_scope
from monitor.store.incidents import add_open_incident

NOW = datetime(2026, 10, 12, 6, 0, tzinfo=UTC)


def window(**changes: Any) -> alerts.AlertWindow:
    first = alerts.AlertWindow(
        state="pending", severity="warning", labels={"feature": "site"}, summary="s",
        consecutive=1, firing_windows=0, started_at=NOW, fired_at=None, resolved_at=None,
        acknowledged_by=None, acknowledged_at=None, last_check_run_id=None,
        last_window_end=NOW, updated_at=NOW)
    return replace(first, **changes)


def add(runtime: Runtime, key: str = "k", *, version: str = "1.4.0",
        **changes: Any) -> alerts.AlertRecord:
    with session_scope(runtime.sessions) as session:
        return alerts.add_alert(session, key=key, rule="r", model="m", model_version=version,
                                window=window(**changes))


@contextmanager
def statements(runtime: Runtime) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(runtime.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(runtime.engine, "before_cursor_execute", record)


def test_a_window_finds_its_row_in_the_session_and_writes_what_changed(
        runtime: Runtime) -> None:
    add(runtime)
    with session_scope(runtime.sessions) as session, statements(runtime) as seen:
        found = alerts.alert_by_key(session, "k")
        assert found is not None and found.window() == window()
        later = NOW + timedelta(days=1)
        after = alerts.record_alert_window(session, found.id, replace(
            found.window(), state="firing", fired_at=later, consecutive=2, firing_windows=1,
            updated_at=later))
    assert (after.state, after.consecutive, after.fired_at) == ("firing", 2, later)
    selects = [s for s in seen if s.startswith("SELECT")]
    updates = [s for s in seen if s.startswith("UPDATE")]
    assert len(selects) == 1  # the row read by key is the one changed: no second read
    assert len(updates) == 1
    assigned = updates[0].split(" SET ")[1].split(" WHERE ")[0]
    assert {part.split("=")[0].strip() for part in assigned.split(",")} == {
        "state", "consecutive", "firing_windows", "fired_at", "updated_at"}


def test_resolving_sets_the_counters_back(runtime: Runtime) -> None:
    one = add(runtime, "a", state="firing", consecutive=3, firing_windows=2)
    other = add(runtime, "b", version="1.5.0")
    with session_scope(runtime.sessions) as session:
        alerts.resolve_open_alerts_of_version(session, model="m", version="1.4.0", now=NOW)
        gone = alerts.alert_record(session, one.id)
        kept = alerts.alert_record(session, other.id)
    assert (gone.state, gone.resolved_at, gone.consecutive, gone.firing_windows) == (
        "resolved", NOW, 0, 0)
    assert kept.state == "pending"
    with session_scope(runtime.sessions) as session:
        assert alerts.resolve_alert(session, other.id, now=NOW).state == "resolved"
        assert alerts.open_alerts_of_version(session, model="m", version="1.5.0") == []


def test_findings_are_filed_under_an_incident_and_resolved_with_it(runtime: Runtime) -> None:
    one, two = add(runtime, "a"), add(runtime, "b")
    with session_scope(runtime.sessions) as session:
        incident = add_open_incident(session, model="m", version="1.4.0", cause_field="site",
                                     cause_value="A", cause_label="site A",
                                     severity="warning", now=NOW)
        alerts.set_alert_incident(session, one.id, incident.id)
        alerts.set_alert_incident(session, two.id, None)
        filed = alerts.flushed_alerts(session, [one.id, two.id])
    assert [a.incident_id for a in filed] == [incident.id, None]
    with session_scope(runtime.sessions) as session:
        assert [a.id for a in alerts.alerts_of_incident(session, incident.id)] == [one.id]
        alerts.resolve_open_alerts_of_incident(session, incident.id, now=NOW)
    with session_scope(runtime.sessions) as session:
        assert [a.id for a in alerts.open_alerts_of_version(
            session, model="m", version="1.4.0")] == [two.id]


def test_alerts_of_removed_rules(runtime: Runtime) -> None:
    kept, orphan = add(runtime, "a"), add(runtime, "b")
    with session_scope(runtime.sessions) as session:
        alerts.record_alert_window(session, orphan.id, replace(orphan.window(), state="firing"))
    with session_scope(runtime.sessions) as session:
        assert alerts.open_alerts_of_removed_rules(session, model="m", version="1.4.0",
                                                   rules=["r"]) == []
        found = alerts.open_alerts_of_removed_rules(session, model="m", version="1.4.0",
                                                    rules=[])
    assert sorted(a.id for a in found) == [kept.id, orphan.id]


def test_acknowledge_silence_read_and_list(runtime: Runtime) -> None:
    alert = add(runtime)
    with session_scope(runtime.sessions) as session:
        acked = alerts.acknowledge_alert(session, alert.id, actor="alice", now=NOW)
        silenced = alerts.silence_alert(session, alert.id, until=NOW + timedelta(hours=1),
                                        now=NOW)
    assert (acked.acknowledged_by, acked.acknowledged_at) == ("alice", NOW)
    assert silenced.silenced_until == NOW + timedelta(hours=1)
    with session_scope(runtime.sessions) as session:
        info = alerts.get_alert(session, alert.id)
        assert (info.acknowledged_by, info.notifications) == ("alice", ())
        assert [a.id for a in alerts.list_alerts(session)] == [alert.id]
        assert alerts.list_alerts(session, state="resolved") == []
        with pytest.raises(ValidationError, match="state"):
            alerts.list_alerts(session, state="open")
        with pytest.raises(NotFoundError):
            alerts.get_alert(session, alert.id + 1)
