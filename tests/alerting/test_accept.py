"""Accepting an incident as a validated change: the stratum is re-baselined from a day, the
incident becomes accepted (who, why, since; audited), and later checks no longer page for it.

The store-level tests use a few hundred factory studies on SQLite and PostgreSQL; the last
test runs real grid checks of a simulated deployment whose scanner gets a software update."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from monitor import registry
from monitor.alerting import engine
from monitor.alerting.config import AlertingConfig, parse_config
from monitor.alerting.incidents import accept_incident
from monitor.checks import CheckOptions, run_check
from monitor.checks.baselines import load_reference
from monitor.errors import ConflictError, InsufficientDataError, ValidationError
from monitor.runtime import Runtime
from monitor.store import repo
from monitor.store.db import session_scope
from monitor.store.incidents import get_incident, list_incidents
from monitor.store.models import Notification
from monitor.store.results import newest_baseline
from tests.alerting.support import (
    MODEL,
    STATION,
    T0,
    attribution,
    deploy_update,
    rank,
    sequential,
    store_run,
)
from tests.conftest import open_runtime
from tests.simdb import PRODUCTION, populate, simulate

WEBHOOK = {"webhooks": [{"url": "http://127.0.0.1:9/never-called"}]}
def _open_incident(runtime: Runtime, cause: dict[str, Any] | None = None) -> int:
    """An incident on 1.4.0 from a stored grid run of day 10: the station, by default."""
    with session_scope(runtime.sessions) as session:
        version_id = repo.get_model_version(session, MODEL, "1.4.0").id
    rows = [sequential("MMDDrift/embedding", "embedding", "page")]
    if cause is not None:
        rows.append(attribution(rank(**cause)))
    run = store_run(runtime, version_id, day=10, results=rows)
    report = engine.process_check_run(runtime, run, config=parse_config(
        {"notifications": WEBHOOK}), deliver=False, now=T0 + timedelta(days=11))
    (incident_id,) = report.incidents_opened
    return incident_id




def _accept(runtime: Runtime, incident_id: int, since: date, **extra: Any) -> Any:
    with session_scope(runtime.sessions) as session:
        return accept_incident(session, incident_id, actor="alice", since=since,
                               reason=extra.pop("reason", "firmware validated by physics"),
                               config=parse_config({"notifications": WEBHOOK}), zone=UTC,
                               now=T0 + timedelta(days=20), **extra)


def test_accepting_a_station_rebaselines_it_from_the_day(runtime: Runtime) -> None:
    deploy_update(runtime)
    incident_id = _open_incident(runtime, STATION)
    with session_scope(runtime.sessions) as session:
        old = newest_baseline(session, repo.get_model_version(session, MODEL, "1.4.0").id)
    assert old is not None
    accepted = _accept(runtime, incident_id, (T0 + timedelta(days=10)).date())
    assert (accepted.state, accepted.accepted_by) == ("accepted", "alice")
    assert accepted.accept_reason == "firmware validated by physics"
    assert accepted.accepted_since == date(2026, 10, 11)
    assert accepted.resolved_reason == "accepted as a validated change"
    assert all(f.state == "resolved" for f in accepted.findings)

    with session_scope(runtime.sessions) as session:
        new = newest_baseline(session, old.model_version_id)
        assert new is not None and new.id != old.id  # the one checks use from now on
        members = load_reference(session, new, with_embeddings=False).frame
        old_members = load_reference(session, old, with_embeddings=False).frame
        (entry,) = registry.list_audit(session, action="accept_incident")
        events = [e for (e,) in session.execute(select(Notification.event)
                                                .order_by(Notification.id))]
    # north kept as it was; south's studies now those of days 10-16, on VF12B
    by_station = Counter(zip(members["station"], members["software_version"], strict=True))
    assert by_station == {("XR-NORTH-1", "DM_Platform 5.2"): 56, ("XR-SOUTH-1", "VF12B"): 35}
    assert set(old_members.loc[old_members["station"] == "XR-NORTH-1", "id"]) == set(
        members.loc[members["station"] == "XR-NORTH-1", "id"])
    south_days = members.loc[members["station"] == "XR-SOUTH-1", "ts"]
    assert south_days.min() >= T0 + timedelta(days=10)
    assert south_days.max() < T0 + timedelta(days=17)
    assert (new.window_start, new.window_end) == (T0, T0 + timedelta(days=17))
    assert new.summary is not None and new.summary["source"]["accepted"]["replaced"] == 35
    assert (entry.actor, entry.reason) == ("alice", "firmware validated by physics")
    assert entry.details["incident_id"] == incident_id
    assert entry.details["baseline_id"] == new.id
    assert entry.details["previous_baseline_id"] == old.id
    assert events == ["firing", "resolved"]


def test_accepting_a_software_version_replaces_the_stations_that_run_it(
        runtime: Runtime) -> None:
    deploy_update(runtime)
    incident_id = _open_incident(runtime, {**STATION, "field": "software_version",
                                           "value": "VF12B"})
    _accept(runtime, incident_id, (T0 + timedelta(days=10)).date())
    with session_scope(runtime.sessions) as session:
        version_id = repo.get_model_version(session, MODEL, "1.4.0").id
        baseline = newest_baseline(session, version_id)
        assert baseline is not None
        members = load_reference(session, baseline, with_embeddings=False).frame
    # no VF10E left behind: it would read as a category that disappeared
    assert Counter(members["software_version"]) == {"DM_Platform 5.2": 56, "VF12B": 35}


def test_too_few_studies_from_the_day_says_how_many(runtime: Runtime) -> None:
    deploy_update(runtime)
    incident_id = _open_incident(runtime, STATION)
    with pytest.raises(InsufficientDataError, match=r"station=XR-SOUTH-1 of cxr-triage 1\.4\.0 "
                       r"in \[2026-10-16.*has 25 studies; re-baselining it needs at least 28 "
                       r"\(80% of the 35 baseline \d+ held from it\)"):
        _accept(runtime, incident_id, (T0 + timedelta(days=15)).date())
    with session_scope(runtime.sessions) as session:
        assert get_incident(session, incident_id).state == "open"  # nothing changed


def test_only_an_open_incident_of_a_stratum_can_be_accepted(runtime: Runtime) -> None:
    deploy_update(runtime)
    version_incident = _open_incident(runtime)  # no attribution: the version is the cause
    day = (T0 + timedelta(days=10)).date()
    with pytest.raises(ConflictError, match=r"cause is version 1\.4\.0 \(version=1\.4\.0\), "
                       "not a stratum"):
        _accept(runtime, version_incident, day)
    with pytest.raises(ValidationError, match="reason is required") as refused:
        _accept(runtime, version_incident, day, reason=" ")
    assert refused.value.field == "reason"
    with pytest.raises(ValidationError, match="in the future") as future:
        _accept(runtime, version_incident, date(2027, 1, 1))
    assert future.value.field == "since"


def test_an_accepted_incident_cannot_be_accepted_again(runtime: Runtime) -> None:
    deploy_update(runtime)
    incident_id = _open_incident(runtime, STATION)
    day = (T0 + timedelta(days=10)).date()
    _accept(runtime, incident_id, day)
    with pytest.raises(ConflictError, match="is accepted, not open"):
        _accept(runtime, incident_id, day)


# --- on a simulated deployment, with real grid checks ----------------------------------------


def test_an_accepted_software_update_stops_paging(tmp_path: Path) -> None:
    """The simulator's software update of XR-SOUTH-1 (day 10) pages on the first checked
    day; once accepted from that day, the checks of later days page nothing for it: its
    streams are quiet, no incident opens."""
    deployment = simulate(n_studies=3_000, days=20)
    runtime = open_runtime(f"sqlite:///{tmp_path / 'monitor.db'}", tmp_path)
    try:
        populate(runtime, deployment)
        options = CheckOptions(report=False, n_permutations=200)
        config = AlertingConfig()  # the built-in rules

        def check(day: int) -> tuple[engine.EvaluationReport, dict[str, str]]:
            outcome = run_check(runtime, model=MODEL, version=PRODUCTION, hooks=[],
                                day=(deployment.start + timedelta(days=day)).date(),
                                options=options)
            report = engine.process_check_run(runtime, outcome.check_run_id, config=config,
                                              deliver=False)
            levels = {r.feature: str(r.details.get("level")) for r in outcome.results
                      if r.detector == "SequentialEvidence"}
            return report, levels

        first, levels = check(10)
        assert levels["CategoricalDrift/software_version"] == "page"
        (incident_id,) = first.incidents_opened
        with session_scope(runtime.sessions) as session:
            incident = get_incident(session, incident_id)
        assert (incident.cause_field, incident.cause_value) in {
            ("station", "XR-SOUTH-1"), ("software_version", "VF12B")}
        assert incident.severity == "critical"

        with session_scope(runtime.sessions) as session:
            accept_incident(session, incident_id, actor="alice", reason="VF12B validated",
                            since=(deployment.start + timedelta(days=10)).date(),
                            config=config, zone=runtime.settings.zone)
        for day in (17, 18, 19):  # the days after the new baseline's span
            report, levels = check(day)
            assert report.incidents_opened == (), (day, levels)
            assert levels["CategoricalDrift/software_version"] == "quiet", (day, levels)
            assert levels["NumericDrift/kvp"] != "page", (day, levels)
        with session_scope(runtime.sessions) as session:
            assert list_incidents(session) == []  # nothing open
            assert [i.state for i in list_incidents(session, state=None)] == ["accepted"]
    finally:
        runtime.close()


def test_accept_stamps_now_when_none_is_given(runtime: Runtime) -> None:
    """The default clock: accepting today from a day in the past."""
    deploy_update(runtime)
    incident_id = _open_incident(runtime, STATION)
    before = datetime.now(UTC)
    with session_scope(runtime.sessions) as session:
        accepted = accept_incident(session, incident_id, actor="bob", reason="validated",
                                   since=(T0 + timedelta(days=10)).date(),
                                   config=AlertingConfig(), zone=UTC)
    assert accepted.accepted_at is not None and accepted.accepted_at >= before


def test_incidents_cli(runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from monitor.commands import alerts as alerts_cli

    deploy_update(runtime)
    incident_id = _open_incident(runtime, STATION)
    monkeypatch.setenv("MONITOR_DATABASE_URL", runtime.settings.database_url)
    monkeypatch.setenv("MONITOR_SECRET_KEY", runtime.settings.secret_key.get_secret_value())
    parser = argparse.ArgumentParser()
    alerts_cli.add_commands(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> str:
        args = parser.parse_args(["incidents", *argv])
        assert args.func(args) == 0
        return capsys.readouterr().out

    listed = run("list")
    assert f"{incident_id:>5}  open      critical  1.4.0" in listed and "XR-SOUTH-1" in listed
    assert '"cause_value": "XR-SOUTH-1"' in run("show", str(incident_id))
    assert run("list", "--state", "accepted") == "no incidents\n"
    accepted = run("accept", str(incident_id), "--since", "2026-10-11", "--reason",
                   "VF12B validated", "--actor", "carol")
    assert f"incident {incident_id} (XR-SOUTH-1) accepted by carol" in accepted
    assert str(incident_id) in run("list", "--state", "accepted")
    with session_scope(runtime.sessions) as session:
        (entry,) = registry.list_audit(session, action="accept_incident")
    assert (entry.actor, entry.reason) == ("carol", "VF12B validated")
    with pytest.raises(SystemExit):  # not a day
        parser.parse_args(["incidents", "accept", "1", "--since", "yesterday", "--reason", "r"])
