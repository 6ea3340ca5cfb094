"""The check scheduler: every monitored version per round, hooks after each check, errors
logged and survived, a daemon thread that starts and stops; on the daily grid, each complete
local day checked once, oldest first, a backlog worked off over rounds and restarts."""

from __future__ import annotations

import itertools
import shutil
import threading
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from monitor_client.events import as_utc
from sqlalchemy import select, update

from monitor.checks import CheckOptions, CheckOutcome
from monitor.checks import scheduler as scheduler_module
from monitor.checks.baselines import resolve_version
from monitor.checks.scheduler import CheckScheduler, RoundReport
from monitor.errors import ValidationError
from monitor.grid import day_window, grid_day
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.models import CheckRun, ModelVersion
from monitor.store.repo import newest_timestamp
from monitor.store.results import store_check_run
from tests.conftest import open_runtime
from tests.simdb import MODEL, PREVIOUS, PRODUCTION, SimulatedTemplate

pytest_plugins = ["tests.simdb"]

QUICK = CheckOptions(report=False, n_permutations=100)


def add_active_version_without_baseline(runtime: Runtime) -> None:
    now = datetime.now(UTC)
    with session_scope(runtime.sessions) as session:
        session.add(ModelVersion(model="cxr-triage", version="0.9.0", status="active",
                                 created_at=now, updated_at=now))


def test_a_round_checks_every_monitored_version_and_survives_errors(
    simulated_runtime: Runtime,
) -> None:
    add_active_version_without_baseline(simulated_runtime)
    seen: list[tuple[str, int]] = []

    def hook(_runtime: Runtime, outcome: CheckOutcome) -> None:
        seen.append((outcome.version, outcome.check_run_id))

    scheduler = CheckScheduler(simulated_runtime, interval_s=0, window="last:200",
                               options=QUICK, hooks=[hook])
    report = scheduler.run_round()
    assert sorted(o.version for o in report.outcomes) == [PREVIOUS, PRODUCTION]
    assert sorted(seen) == sorted((o.version, o.check_run_id) for o in report.outcomes)
    assert list(report.errors) == ["cxr-triage 0.9.0"]
    assert "monitor baseline create" in report.errors["cxr-triage 0.9.0"]
    assert scheduler.rounds == 1 and scheduler.last_round is report
    for outcome in report.outcomes:
        assert outcome.window.label == "last:200" and outcome.n_studies == 200

    with session_scope(simulated_runtime.sessions) as session:
        session.execute(update(ModelVersion).where(ModelVersion.version == PREVIOUS)
                        .values(status="retired"))
    assert [o.version for o in scheduler.run_round().outcomes] == [PRODUCTION]


def test_the_thread_keeps_going_after_errors_and_stops(
    simulated_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    two_rounds = threading.Event()

    def flaky_check(_runtime: Runtime, *, model: str, version: str, **_kwargs: object
                    ) -> CheckOutcome:
        calls.append(version)
        if len(calls) >= 4:
            two_rounds.set()
        raise RuntimeError(f"check of {model} {version} broke")

    monkeypatch.setattr(scheduler_module, "run_check", flaky_check)
    scheduler = CheckScheduler(simulated_runtime, interval_s=0.05, window="1d")
    scheduler.start()
    try:
        assert two_rounds.wait(timeout=60), "the scheduler stopped after an error"
        assert scheduler.running
    finally:
        scheduler.stop()
    assert not scheduler.running
    assert scheduler.rounds >= 2 and len(calls) >= 4
    assert set(calls) == {PRODUCTION, PREVIOUS}
    assert scheduler.last_round is not None and scheduler.last_round.errors
    assert all("broke" in error for error in scheduler.last_round.errors.values())


def test_interval_zero_is_off_and_bad_windows_fail_early(simulated_runtime: Runtime) -> None:
    scheduler = CheckScheduler(simulated_runtime)  # the test settings have interval 0
    assert scheduler.interval_s == 0
    scheduler.start()
    assert not scheduler.running
    scheduler.stop()
    with pytest.raises(ValidationError, match="window"):
        CheckScheduler(simulated_runtime, interval_s=60, window="daily")


# --- the daily grid -----------------------------------------------------------------------


def recording_check(calls: list[tuple[str, datetime, datetime]]) -> Any:
    """A stand-in for run_check that stores an empty run of its window (what the scheduler
    reads back to know a day is done) and records the call."""

    def check(runtime: Runtime, *, model: str, version: str, start: datetime, end: datetime,
              **_kwargs: object) -> CheckOutcome:
        with session_scope(runtime.sessions) as session:
            info = resolve_version(session, model, version)
            day = grid_day(start, end, runtime.settings.zone)
            assert day is not None, (start, end)
            store_check_run(session, run={
                "model_version_id": info.id, "window_kind": "time", "window_label": "1d",
                "window_start": start, "window_end": end, "started_at": start,
                "status": "ok"}, results=[])
        calls.append((version, start, end))
        return cast(CheckOutcome, (version, start, end))

    return check


def stored_days(runtime: Runtime, version: str) -> list[tuple[datetime, datetime]]:
    with session_scope(runtime.sessions) as session:
        rows = session.execute(
            select(CheckRun.window_start, CheckRun.window_end)
            .join(ModelVersion, ModelVersion.id == CheckRun.model_version_id)
            .where(ModelVersion.version == version, CheckRun.window_label == "1d")
            .order_by(CheckRun.window_start)).all()
    return [(as_utc(start), as_utc(end)) for start, end in rows]


def test_each_grid_day_is_checked_once_over_rounds_and_a_restart(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Days 7 to 11 are complete at the clock; the template already holds runs of days 8 and
    10 of 1.4.0. Two days per round: the backlog goes oldest first over rounds, a new
    scheduler (a restart) checks only what is left, and nothing is checked twice."""
    calls: list[tuple[str, datetime, datetime]] = []
    monkeypatch.setattr(scheduler_module, "run_check", recording_check(calls))
    clock = simulated_template.day(12) + timedelta(hours=5)
    utc = ZoneInfo("UTC")

    def scheduler() -> CheckScheduler:
        return CheckScheduler(simulated_runtime, interval_s=0, max_days_per_round=2,
                              clock=lambda: clock)

    def days(version: str, report: RoundReport) -> list[int]:
        done = cast(list[tuple[str, datetime, datetime]], report.outcomes)
        return [(start - simulated_template.start).days for v, start, _ in done
                if v == version]

    first = scheduler()
    assert first.grid
    one = first.run_round()
    assert days(PRODUCTION, one) == [7, 9] and days(PREVIOUS, one) == [7, 8]
    assert one.pending == {f"{MODEL} {PRODUCTION}": 1, f"{MODEL} {PREVIOUS}": 3}
    two = first.run_round()
    assert days(PRODUCTION, two) == [11] and days(PREVIOUS, two) == [9, 10]
    assert two.pending == {f"{MODEL} {PREVIOUS}": 1}
    restarted = scheduler()
    three = restarted.run_round()
    assert days(PRODUCTION, three) == [] and days(PREVIOUS, three) == [11]
    assert not three.pending and not three.errors
    assert restarted.run_round().outcomes == []

    assert len(calls) == len(set(calls)) == 3 + 5
    for version in (PRODUCTION, PREVIOUS):
        stored = [w for w in stored_days(simulated_runtime, version)
                  if w[0] < simulated_template.day(12)]
        assert stored == [
            (w.start, w.end) for w in (day_window(simulated_template.day(d).date(), utc)
                                       for d in range(7, 12))]
    # The next day completes: the next round checks it, for both versions.
    clock = simulated_template.day(13) + timedelta(minutes=5)
    assert len(restarted.run_round().outcomes) == 2


def test_the_grid_follows_the_site_time_zone_across_a_daylight_saving_change(
    simulated_template: SimulatedTemplate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Europe/Berlin: the baseline ends at 02:00 local on 8 October, so the first day checked
    is the 9th; 25 October is 25 hours long; the last day checked is the newest inference's
    local day (the clock is long past it), none of the empty days after it."""
    database = tmp_path / "berlin.db"
    shutil.copyfile(simulated_template.database, database)
    runtime = open_runtime(f"sqlite:///{database}", tmp_path, timezone="Europe/Berlin")
    calls: list[tuple[str, datetime, datetime]] = []
    monkeypatch.setattr(scheduler_module, "run_check", recording_check(calls))
    try:
        with session_scope(runtime.sessions) as session:
            session.execute(update(ModelVersion).where(ModelVersion.version == PREVIOUS)
                            .values(status="retired"))
            info = resolve_version(session, MODEL, PRODUCTION)
            newest = newest_timestamp(session, info.id)
        scheduler = CheckScheduler(runtime, interval_s=0)
        report = scheduler.run_round()
    finally:
        runtime.close()
    berlin = ZoneInfo("Europe/Berlin")
    assert newest is not None
    last = newest.astimezone(berlin).date()  # the clock is long past: its day is complete
    windows = [(start, end) for _, start, end in calls]
    local_days = [start.astimezone(berlin).date() for start, _ in windows]
    assert local_days[0] == date(2026, 10, 9) and local_days[-1] == last
    assert local_days == sorted(set(local_days))
    assert len(local_days) == (last - date(2026, 10, 9)).days + 1 >= 20
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))
    lengths = {start.astimezone(berlin).date(): end - start for start, end in windows}
    assert lengths[date(2026, 10, 25)] == timedelta(hours=25)
    assert {v for d, v in lengths.items() if d != date(2026, 10, 25)} == {timedelta(hours=24)}
    assert all(start.astimezone(berlin).time() == time(0) for start, _ in windows)
    assert not report.pending and not report.errors


def test_a_failing_day_stops_its_version_so_days_stay_in_order(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, datetime, datetime]] = []
    record = recording_check(calls)
    broken = {simulated_template.day(9)}

    def flaky(runtime: Runtime, *, version: str, start: datetime, **kwargs: Any
              ) -> CheckOutcome:
        if version == PRODUCTION and start in broken:
            raise RuntimeError("database went away")
        return record(runtime, version=version, start=start,  # type: ignore[no-any-return]
                      **kwargs)

    monkeypatch.setattr(scheduler_module, "run_check", flaky)
    scheduler = CheckScheduler(simulated_runtime, interval_s=0,
                               clock=lambda: simulated_template.day(12))
    report = scheduler.run_round()
    assert list(report.errors) == [f"{MODEL} {PRODUCTION}"]
    assert "database went away" in report.errors[f"{MODEL} {PRODUCTION}"]
    production = [(s - simulated_template.start).days for v, s, _ in calls if v == PRODUCTION]
    assert production == [7]  # 8 and 10 were stored already; 9 failed, 11 waits
    assert report.pending[f"{MODEL} {PRODUCTION}"] == 2
    broken.clear()
    again = cast(list[tuple[str, datetime, datetime]], scheduler.run_round().outcomes)
    assert [(s - simulated_template.start).days for _, s, _ in again] == [9, 11]
    assert scheduler.last_round is not None and not scheduler.last_round.pending


def test_a_real_grid_round_stores_day_windows_the_next_round_skips(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate,
) -> None:
    clock = simulated_template.day(11) + timedelta(hours=1)  # days 7 to 10 are complete
    with session_scope(simulated_runtime.sessions) as session:
        session.execute(update(ModelVersion).where(ModelVersion.version == PREVIOUS)
                        .values(status="retired"))
    scheduler = CheckScheduler(simulated_runtime, interval_s=0, options=QUICK,
                               clock=lambda: clock, hooks=[])
    report = scheduler.run_round()
    assert [o.day for o in report.outcomes] == [simulated_template.day(d).date()
                                                for d in (7, 9)]
    assert all(o.window.label == "1d" and o.streams for o in report.outcomes)
    assert scheduler.run_round().outcomes == []
