"""The check scheduler: every monitored version per round, hooks after each check, errors
logged and survived, a daemon thread that starts and stops."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from monitor import scheduler as scheduler_module
from monitor.checks import CheckOptions, CheckOutcome
from monitor.errors import ValidationError
from monitor.runtime import Runtime
from monitor.scheduler import CheckScheduler
from monitor.store.db import session_scope
from monitor.store.models import ModelVersion
from tests.simdb import PREVIOUS, PRODUCTION

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
