"""Checks end to end on the simulated deployment: every family over a window, stored once per
window, episodes found and attributed, small windows and failing detectors handled."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from monitor.checks import CheckOptions, CheckOutcome, run_check
from monitor.checks import run as checks
from monitor.checks.baselines import Reference, create_baseline
from monitor.checks.run import day_type_reference
from monitor.collect.inprocess import InProcessCollector
from monitor.commands.checks import add_commands
from monitor.detect import sequential
from monitor.detect.result import DetectionResult
from monitor.detect.sequential import StreamState
from monitor.errors import NotFoundError, ValidationError
from monitor.runtime import Runtime
from monitor.simulate import simulate_deployment
from monitor.store import results
from monitor.store.db import session_scope
from monitor.store.models import CheckResult, CheckRun
from tests.conftest import TEST_SECRET, open_runtime
from tests.factories import inference_event
from tests.simdb import (
    MODEL,
    NEW_VENDOR,
    PRODUCTION,
    UPDATED_SCANNER,
    SimulatedTemplate,
    populate,
)

pytest_plugins = ["tests.simdb"]

QUICK = CheckOptions(report=False, n_permutations=200)
FAMILIES = {"embedding", "metadata", "prediction", "performance", "bias"}


def stored_run(runtime: Runtime, run_id: int) -> results.CheckRunInfo:
    with session_scope(runtime.sessions) as session:
        return results.get_check_run(session, run_id)


def by_key(run: results.CheckRunInfo) -> dict[tuple[str, str], results.CheckResultInfo]:
    return {(r.detector, r.feature): r for r in run.results}


def identifies_updated_scanner(field: str, value: str) -> bool:
    return UPDATED_SCANNER.get(field) == value


def test_every_family_runs_and_a_clean_window_is_green(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    """The clean day is a grid window (one UTC day): every p-valued result is one day of
    evidence for its stream, every stream is quiet, so health is green."""
    run = stored_run(simulated_runtime, simulated_template.check_run_ids["clean"])
    assert run.status == "ok" and run.error is None
    assert run.window_label == "1d"
    assert run.health_status == "green" and run.health_score is not None
    assert 0.8 <= run.health_score <= 1.0
    assert run.n_studies > 80
    families = {(r.details or {}).get("family") for r in run.results}
    assert families >= FAMILIES | {"sequential"}
    found = by_key(run)
    for key in [("MMDDrift", "embedding"), ("ClassifierDrift", "embedding"),
                ("NoveltyDrift", "embedding"),
                ("ScoreDrift", "score"), ("PositiveRateDrift", "positive_rate"),
                ("NumericDrift", "kvp"), ("CategoricalDrift", "vendor"),
                ("PerformanceDrift", "override_rate")]:
        assert key in found, key
        assert ("SequentialEvidence", f"{key[0]}/{key[1]}") in found, key
    streams = [r for r in run.results if r.detector == "SequentialEvidence"]
    tested = [r for r in run.results if r.p_value is not None
              and (r.details or {}).get("family") in FAMILIES]
    assert len(streams) == len(tested)
    assert {s.details["level"] for s in streams} == {"quiet"}
    assert not [r for r in run.results if r.drift]
    assert run.report_path is not None


def test_software_update_scanner_leads_the_attribution(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    before = run_check(simulated_runtime, model=MODEL, window="1d",
                       now=simulated_template.day(10), options=QUICK)
    assert not any(identifies_updated_scanner(a.field, a.value) for a in before.attribution)

    # The first day of the update: the new software version and kVp give it away.
    run = stored_run(simulated_runtime, simulated_template.check_run_ids["software-update"])
    found = by_key(run)
    software = found[("CategoricalDrift", "software_version")]
    assert software.drift and UPDATED_SCANNER["software_version"] in software.details[
        "new_categories"]
    top = found[("Attribution", "metadata")].details["ranking"][0]
    assert identifies_updated_scanner(top["field"], top["value"]), top
    assert run.health_status in ("amber", "red")

    # Over the last week the embeddings drift too, and the same scanner explains it.
    late = by_key(stored_run(simulated_runtime, simulated_template.check_run_ids["late"]))
    assert late[("MMDDrift", "embedding")].drift
    ranking = late[("Attribution", "embedding")].details["ranking"]
    assert ranking[0]["basis"] == "embedding"
    assert identifies_updated_scanner(ranking[0]["field"], ranking[0]["value"]), ranking[0]
    assert late[("MMDDrift", "embedding")].details["attribution"][0] == ranking[0]


def test_new_vendor_is_a_finding_on_the_first_window_it_appears_in(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    day_before = run_check(simulated_runtime, model=MODEL, window="1d",
                           now=simulated_template.day(14), options=QUICK)
    vendor = next(r for r in day_before.results if r.feature == "vendor")
    assert vendor.details["new_categories"] == {}

    run = stored_run(simulated_runtime, simulated_template.check_run_ids["new-vendor"])
    found = by_key(run)
    for field in ("vendor", "scanner_model"):
        result = found[("CategoricalDrift", field)]
        assert result.drift and result.details["reason"] == "new_category"
        assert NEW_VENDOR[field] in result.details["new_categories"]
    assert run.health_status == "red"


def test_late_window_finds_the_performance_drop(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    found = by_key(stored_run(simulated_runtime, simulated_template.check_run_ids["late"]))
    assert found[("PerformanceDrift", "override_rate")].drift
    assert found[("PerformanceDrift", "sensitivity")].drift
    assert found[("PerformanceDrift", "sensitivity")].statistic < 0


def test_rerunning_a_window_replaces_its_results(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    first_id = simulated_template.check_run_ids["new-vendor"]
    start, end = simulated_template.window("new-vendor")
    again = run_check(simulated_runtime, model=MODEL, window="1d", now=end, options=QUICK)
    assert again.replaced and again.check_run_id == first_id
    with session_scope(simulated_runtime.sessions) as session:
        runs = session.scalar(select(func.count()).select_from(CheckRun).where(
            CheckRun.window_start == start, CheckRun.window_end == end))
        stored = session.scalar(select(func.count()).select_from(CheckResult).where(
            CheckResult.check_run_id == first_id))
    assert runs == 1
    assert stored == len(again.results)


def test_count_windows(simulated_runtime: Runtime, simulated_template: SimulatedTemplate) -> None:
    now = simulated_template.day(16)
    outcome = run_check(simulated_runtime, model=MODEL, window="last:300", now=now,
                        options=QUICK)
    assert outcome.window.kind == "count" and outcome.window.label == "last:300"
    assert outcome.n_studies == 300
    assert outcome.window.end <= now
    run = stored_run(simulated_runtime, outcome.check_run_id)
    assert run.window_kind == "count" and run.n_studies == 300
    again = run_check(simulated_runtime, model=MODEL, window="last:300", now=now, options=QUICK)
    assert again.replaced and again.check_run_id == outcome.check_run_id
    bigger = run_check(simulated_runtime, model=MODEL, window="last:400", now=now,
                       options=QUICK)
    assert bigger.window.start < outcome.window.start and bigger.window.end == outcome.window.end
    assert bigger.check_run_id != outcome.check_run_id


def test_small_windows_give_insufficient_data_not_errors(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    tiny = run_check(simulated_runtime, model=MODEL, window="last:5",
                     now=simulated_template.day(20), options=QUICK)
    assert tiny.status == "ok" and not tiny.failures
    found = {(r.detector, r.feature): r for r in tiny.results}
    assert found[("MMDDrift", "embedding")].details["status"] == "insufficient data"
    assert found[("PerformanceDrift", "sensitivity")].details["status"] == "insufficient data"
    assert tiny.health is not None

    empty = run_check(simulated_runtime, model=MODEL, start=simulated_template.day(-3),
                      end=simulated_template.day(-2), options=QUICK)
    assert empty.n_studies == 0 and empty.status == "ok"
    assert empty.health is None and empty.health_status == "no data"
    assert stored_run(simulated_runtime, empty.check_run_id).health_status == "no data"


def test_a_failing_detector_is_recorded_and_the_rest_kept(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken:
        def __init__(self, **_kwargs: Any):
            pass

        def fit(self, *_args: Any, **_kwargs: Any) -> Broken:
            raise RuntimeError("kaput")

    monkeypatch.setattr(checks, "ScoreDrift", Broken)
    outcome = run_check(simulated_runtime, model=MODEL, window="1d",
                        now=simulated_template.day(12), options=QUICK)
    assert outcome.status == "partial"
    assert "kaput" in outcome.failures["prediction"]
    run = stored_run(simulated_runtime, outcome.check_run_id)
    found = by_key(run)
    assert found[("ScoreDrift", "score")].details["status"] == "failed"
    assert "RuntimeError: kaput" in found[("ScoreDrift", "score")].details["error"]
    assert found[("PositiveRateDrift", "positive_rate")].details["status"] == "ok"
    assert ("MMDDrift", "embedding") in found and run.status == "partial"
    assert run.error is not None and "kaput" in run.error


def test_studies_without_embeddings_are_left_out_of_the_embedding_tests_only(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    day = simulated_template.day(12)
    InProcessCollector(simulated_runtime).log_inferences([inference_event(
        model=MODEL, model_version=PRODUCTION, embedding=None,
        timestamp=(day + timedelta(hours=1, minutes=i)).isoformat()) for i in range(3)])
    outcome = run_check(simulated_runtime, model=MODEL, window="1d",
                        now=day + timedelta(days=1), options=QUICK)
    assert outcome.status == "ok" and not outcome.failures
    found = {(r.detector, r.feature): r for r in outcome.results}
    mmd = found[("MMDDrift", "embedding")]
    assert mmd.details["n_current_without_embedding"] == 3
    assert mmd.n_current == outcome.n_studies - 3
    assert found[("CategoricalDrift", "vendor")].n_current == outcome.n_studies


def test_stored_details_are_strict_json(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    run = stored_run(simulated_runtime, simulated_template.check_run_ids["late"])
    json.dumps([r.details for r in run.results], allow_nan=False)
    novelty = by_key(run)[("NoveltyDrift", "embedding")].details
    for study in novelty["novel_studies"]:
        assert {"study_key", "patient_key", "site", "station", "scanner_model"} <= set(study)


def test_default_version_is_production_and_missing_baseline_names_the_command(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    outcome = run_check(simulated_runtime, model=MODEL, window="1d",
                        now=simulated_template.day(9), options=QUICK)
    assert outcome.version == PRODUCTION
    InProcessCollector(simulated_runtime).log_inferences([inference_event(
        model=MODEL, model_version="2.0.0", timestamp="2026-10-20T10:00:00Z",
        embedding=[0.0] * 64)])
    with pytest.raises(NotFoundError, match=re.escape(
            "monitor baseline create --model cxr-triage --version 2.0.0")):
        run_check(simulated_runtime, model=MODEL, version="2.0.0", options=QUICK)
    with pytest.raises(NotFoundError, match="no-such-model"):
        run_check(simulated_runtime, model="no-such-model", options=QUICK)
    with pytest.raises(ValidationError, match="window"):
        run_check(simulated_runtime, model=MODEL, window="yesterday", options=QUICK)


def test_hooks_run_after_the_check_is_stored(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    seen: list[tuple[int, str | None]] = []

    def record(runtime: Runtime, outcome: CheckOutcome) -> None:
        with session_scope(runtime.sessions) as session:
            seen.append((outcome.check_run_id,
                         results.get_check_run(session, outcome.check_run_id).health_status))

    def explode(_runtime: Runtime, _outcome: CheckOutcome) -> None:
        raise RuntimeError("hook bug")

    outcome = run_check(simulated_runtime, model=MODEL, window="1d",
                        now=simulated_template.day(12), options=QUICK,
                        hooks=[explode, record])
    assert seen == [(outcome.check_run_id, outcome.health_status)]


def test_cli_prints_the_summary(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    monkeypatch.setenv("MONITOR_DATABASE_URL", simulated_runtime.settings.database_url)
    monkeypatch.setenv("MONITOR_SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("MONITOR_REPORTS_DIR", str(tmp_path / "cli-reports"))
    parser = argparse.ArgumentParser(prog="monitor")
    add_commands(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> str:
        args = parser.parse_args(list(argv))
        assert args.func(args) == 0
        return capsys.readouterr().out

    out = run("check", "--model", MODEL, "--window", "7d", "--permutations", "200")
    for expected in ("detector", "feature", "statistic", "verdict", "MMDDrift", "CategoricalDrift",
                     "DRIFT new: ", "health: ", "attribution (embedding basis), top 3:",
                     "  1. ", "  3. ", "report: "):
        assert expected in out, expected
    report = Path(out.split("report: ")[1].splitlines()[0])
    assert report.is_file() and report.is_relative_to(tmp_path / "cli-reports")
    assert "grid day" not in out and "health-v1" in out

    saturday = simulated_template.day(9).date().isoformat()
    out = run("check", "--model", MODEL, "--day", saturday, "--permutations", "200",
              "--no-report")
    assert f"window 1d [{saturday}T00:00:00+00:00" in out
    assert f"grid day {saturday} against the baseline's weekend members: " in out
    assert "SequentialEvidence" not in out and "(green, sequential-v1)" in out
    with pytest.raises(ValidationError, match="--day"):
        run("check", "--model", MODEL, "--day", saturday, "--now", "2026-10-10T00:00:00Z")

    out = run("baseline", "create", "--model", MODEL, "--version", "1.3.0", "--last", "400")
    assert "for cxr-triage 1.3.0: 400 studies" in out
    listing = run("baseline", "list", "--model", MODEL)
    assert listing.splitlines()[2].split()[2] == "1.3.0"  # newest first


@pytest.mark.slow
def test_no_shift_false_alarm_rate(tmp_path: Path) -> None:
    """10 deployments without episodes: baseline week 1, check week 2 (like-for-like weeks).
    Each family is Bonferroni-controlled at 0.05 inside the health score, so a window is
    non-green with probability <= ~0.23 (union over five families; 4 of 20 in a larger run).
    Band: at most 5 of 10 non-green (P = 0.02 at 0.23), and the pooled share of per-feature
    p-values below 0.05 at most 0.10 (nominal 0.05; 0.066 in the larger run)."""
    non_green, significant, tested = 0, 0, 0
    runs = 10
    for seed in range(300, 300 + runs):
        deployment = simulate_deployment(seed=seed, n_studies=1_200, days=14, episodes=(),
                                         embedding_dim=32)
        directory = tmp_path / f"seed-{seed}"
        directory.mkdir()
        runtime = open_runtime(f"sqlite:///{directory / 'monitor.db'}", directory)
        try:
            populate(runtime, deployment)
            outcome = run_check(runtime, model=MODEL, window="7d",
                                now=deployment.start + timedelta(days=14),
                                options=CheckOptions(report=False, n_permutations=200,
                                                     seed=seed))
        finally:
            runtime.close()
        non_green += outcome.health_status != "green"
        p_values = [r.p_value for r in outcome.results
                    if r.p_value is not None and r.detector != "SubgroupBias"]
        significant += int(np.sum(np.asarray(p_values) < 0.05))
        tested += len(p_values)
    assert non_green <= 5
    assert tested > runs * 15
    assert significant / tested <= 0.10


def test_check_on_each_database(runtime: Runtime) -> None:
    """The same check on SQLite and PostgreSQL: stored, listed, idempotent."""
    deployment = simulate_deployment(seed=5, n_studies=1_200, days=12,
                                     episodes=("software-update",), embedding_dim=32)
    populate(runtime, deployment)
    end = deployment.start + timedelta(days=12)
    first = run_check(runtime, model=MODEL, window="2d", now=end, options=QUICK)
    second = run_check(runtime, model=MODEL, window="2d", now=end, options=QUICK)
    assert second.replaced and second.check_run_id == first.check_run_id
    with session_scope(runtime.sessions) as session:
        listed = results.list_check_results(session, model=MODEL, detector="CategoricalDrift",
                                            feature="software_version")
        runs = results.list_check_runs(session, model=MODEL)
    assert len(listed) == 1 and listed[0].drift
    assert [r.id for r in runs] == [first.check_run_id]
    assert create_baseline(runtime, model=MODEL, version="1.3.0", last=100).n_studies == 100


# --- grid windows: day-type reference, sequential evidence, history -------------------------


def reference_of(timestamps: list[datetime]) -> Reference:
    frame = pd.DataFrame({"id": range(len(timestamps)),
                          "ts": pd.to_datetime(timestamps, utc=True)})
    return Reference(baseline=None, frame=frame,  # type: ignore[arg-type]
                     embeddings=np.arange(len(timestamps), dtype=np.float32)[:, None])


def test_a_grid_day_is_tested_against_baseline_days_of_its_type() -> None:
    week = datetime(2026, 10, 5, 12, tzinfo=UTC)  # Monday noon
    stamps = [week + timedelta(days=d, minutes=i) for d in range(7) for i in range(20)]
    late_friday = datetime(2026, 10, 9, 23, 30, tzinfo=UTC)  # Saturday 01:30 in Berlin
    reference = reference_of([*stamps, late_friday])
    utc, berlin = ZoneInfo("UTC"), ZoneInfo("Europe/Berlin")

    frame, embeddings, key = day_type_reference(reference, date(2026, 10, 17), utc,
                                                minimum=30)
    assert key == "weekend" and len(frame) == 40
    assert embeddings is not None and embeddings[:, 0].tolist() == frame["id"].tolist()
    frame, _, key = day_type_reference(reference, date(2026, 10, 17), berlin, minimum=30)
    assert key == "weekend" and len(frame) == 41  # the late Friday study is Saturday there
    frame, _, key = day_type_reference(reference, date(2026, 10, 14), utc, minimum=30)
    assert key == "weekday" and len(frame) == 101
    # Too few weekend members: every member is the reference.
    frame, _, key = day_type_reference(reference, date(2026, 10, 18), utc, minimum=50)
    assert key == "all" and len(frame) == 141


def test_a_grid_check_records_its_reference_and_stores_one_row_per_stream(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    saturday = simulated_template.day(9).date()
    assert saturday.weekday() == 5
    outcome = run_check(simulated_runtime, model=MODEL, day=saturday, options=QUICK)
    assert outcome.day == saturday and outcome.window.label == "1d"
    assert outcome.reference == "weekend"
    assert outcome.health is not None and outcome.health.formula_version == "sequential-v1"
    tested = [r for r in outcome.results if (r.details or {}).get("family") in FAMILIES]
    assert {r.details["reference"] for r in tested} == {"weekend"}
    with session_scope(simulated_runtime.sessions) as session:
        members = results.get_baseline(session, outcome.baseline_id).n_studies
    mmd = next(r for r in tested if r.detector == "MMDDrift")
    assert 50 <= mmd.n_reference < members  # the weekend members only
    streams = {r.feature: r for r in outcome.results if r.detector == "SequentialEvidence"}
    assert len(streams) == len(outcome.streams) == sum(1 for r in tested
                                                      if r.p_value is not None)
    row = streams["MMDDrift/embedding"]
    assert row.p_value is None and row.threshold == row.details["page_at"]
    assert row.details["reference"] == "weekend" and row.details["daily_p"] == mmd.p_value
    assert {"family", "of_family", "level", "warning_at", "page_at", "days", "since", "z",
            "rho", "detector", "feature"} <= set(row.details)

    everyone = run_check(simulated_runtime, model=MODEL, day=saturday,
                         options=replace(QUICK, min_day_type_reference=100_000))
    assert everyone.replaced and everyone.reference == "all"
    assert next(r for r in everyone.results if r.detector == "MMDDrift").n_reference == members


def test_other_windows_keep_the_per_window_health_and_store_no_streams(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    late = stored_run(simulated_runtime, simulated_template.check_run_ids["late"])
    assert late.window_label == "7d"
    assert not [r for r in late.results if r.detector == "SequentialEvidence"]
    noon = run_check(simulated_runtime, model=MODEL, window="1d",
                     now=simulated_template.day(12.5), options=QUICK)
    assert noon.day is None and noon.streams == ()
    assert noon.health is not None and noon.health.formula_version == "health-v1"
    assert "reference" not in next(r for r in noon.results if r.detector == "MMDDrift").details
    # A window given by start and end that is exactly one day is that day's grid window.
    start, end = simulated_template.window("clean")
    again = run_check(simulated_runtime, model=MODEL, start=start, end=end, options=QUICK)
    assert again.replaced and again.check_run_id == simulated_template.check_run_ids["clean"]
    assert again.window.label == "1d" and again.day == start.date()
    with pytest.raises(ValidationError, match="day"):
        run_check(simulated_runtime, model=MODEL, day=start.date(), now=end, options=QUICK)


def test_an_escalated_metadata_stream_gets_attribution_without_window_drift(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    day = simulated_template.day(9).date()
    quiet = run_check(simulated_runtime, model=MODEL, day=day, options=QUICK)
    assert not [r for r in quiet.results if r.drift]
    assert not [r for r in quiet.results if r.detector == "Attribution"]

    def kvp_at_warning(*args: Any, **kwargs: Any) -> list[StreamState]:
        states = sequential.evaluate(*args, **kwargs)
        return [replace(s, statistic=s.warning_at + 0.01) if s.stream == "NumericDrift/kvp"
                else s for s in states]

    monkeypatch.setattr(checks, "evaluate", kvp_at_warning)
    warned = run_check(simulated_runtime, model=MODEL, day=day, options=QUICK)
    assert [s.stream for s in warned.escalated] == ["NumericDrift/kvp"]
    assert warned.health is not None and warned.health.status == "amber"
    rows = [r for r in warned.results if r.detector == "Attribution"]
    assert [r.feature for r in rows] == ["metadata"] and rows[0].details["ranking"]


def test_bias_tolerances_reach_the_subgroup_detector_only_when_given(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[dict[str, Any]] = []
    real = checks.SubgroupBias

    def recording(**kwargs: Any) -> Any:
        seen.append(dict(kwargs))
        kwargs.pop("tolerances", None)
        return real(**kwargs)

    monkeypatch.setattr(checks, "SubgroupBias", recording)
    now = simulated_template.day(12)
    run_check(simulated_runtime, model=MODEL, window="last:300", now=now, options=QUICK)
    run_check(simulated_runtime, model=MODEL, window="last:300", now=now,
              options=replace(QUICK, bias_tolerances={"sensitivity": 0.1}))
    assert "tolerances" not in seen[0]
    assert seen[1]["tolerances"] == {"sensitivity": 0.1}


def test_grid_checks_build_on_the_evidence_of_earlier_days(runtime: Runtime) -> None:
    """On SQLite and PostgreSQL: each day's statistic is the sequential layer's over the
    evidence stored with the earlier days of the same baseline; another baseline starts
    afresh and a non-grid window is not history."""
    deployment = simulate_deployment(seed=5, n_studies=1_200, days=11, episodes=(),
                                     embedding_dim=32)
    populate(runtime, deployment)
    days = [deployment.start.date() + timedelta(days=d) for d in (7, 8, 10)]  # 9 unchecked
    run_check(runtime, model=MODEL, window="7d", now=deployment.start + timedelta(days=10),
              options=QUICK)
    outcomes = [run_check(runtime, model=MODEL, day=day, options=QUICK) for day in days]
    assert [o.day for o in outcomes] == days
    with session_scope(runtime.sessions) as session:
        version_id = outcomes[0].model_version_id
        history = results.sequential_history(
            session, model_version_id=version_id, baseline_id=outcomes[0].baseline_id,
            detector="SequentialEvidence", label="1d", start=deployment.start,
            end=outcomes[-1].window.start)
        stored = [results.get_check_run(session, o.check_run_id) for o in outcomes]
    assert sorted({h.window_start.date() for h in history}) == days[:2]
    evidence = [sequential.evidence_from_row(r.feature, r.details or {}, r.n_current,
                                             r.n_reference, r.window_start.date())
                for run in stored for r in run.results if r.detector == "SequentialEvidence"]
    expected = {s.stream: s for s in sequential.evaluate(evidence, day=days[-1])}
    last = {s.stream: s for s in outcomes[-1].streams}
    assert set(last) == set(expected) and len(last) > 15
    for stream, state in last.items():
        assert state.statistic == pytest.approx(expected[stream].statistic)
        assert state.days == expected[stream].days
    assert max(s.days for s in last.values()) >= 2  # some stream's run spans earlier days
    assert {s.since for s in last.values()} <= set(days)

    create_baseline(runtime, model=MODEL, version=PRODUCTION, start=deployment.start,
                    end=deployment.start + timedelta(days=7), created_by="test", seed=1)
    fresh = run_check(runtime, model=MODEL, day=days[-1] + timedelta(days=-1), options=QUICK)
    assert fresh.baseline_id != outcomes[0].baseline_id
    assert {s.days for s in fresh.streams} == {1}


def test_novelty_attribution_ranks_the_studies_beyond_the_reference() -> None:
    """Of the listed novel studies, those beyond every reference study (p = 1 / (n_cal + 1))
    are ranked when there are three of them; the chance ones at p < 0.01 would blur it."""
    current = pd.DataFrame({"study_key": [f"s{i}" for i in range(10)],
                            "station": ["XR-NORTH-1"] * 4 + ["XR-SOUTH-1"] * 6})
    listed = ([{"study_key": f"s{i}", "p_value": 1 / 1001} for i in range(3)]
              + [{"study_key": f"s{i}", "p_value": 0.005} for i in (5, 6, 7, 8)])
    novelty = DetectionResult(detector="NoveltyDrift", feature="embedding", statistic=7.0,
                              p_value=1e-4, threshold=0.05, drift=True, n_reference=1000,
                              n_current=10, details={"novel_studies": listed,
                                                     "n_calibration": 1000})
    assert checks._novel_frame(current, [novelty])["study_key"].tolist() == ["s0", "s1", "s2"]
    fewer = replace(novelty, details={**novelty.details, "novel_studies": listed[2:]})
    assert checks._novel_frame(current, [fewer])["study_key"].tolist() == [
        "s2", "s5", "s6", "s7", "s8"]
    two = replace(novelty, details={"novel_studies": listed[:2]})
    assert checks._novel_frame(current, [two]) is None
