"""The dashboard's query layer (``monitor.store.dashboard``) on SQLite and PostgreSQL: its
per-day and per-value aggregates equal what the simulator generated, the latest radiologist
read of a study is the one that counts, and stored check results read back as the pages
draw them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from monitor.checks import CheckOptions, run_check
from monitor.checks.scheduler import due_grid_windows
from monitor.collect.inprocess import InProcessCollector
from monitor.runtime import Runtime
from monitor.simulate import SimulatedDeployment
from monitor.store import dashboard as q
from monitor.store.db import session_scope
from monitor.store.incidents import IncidentInfo
from monitor.store.registry import monitored_versions
from monitor.store.results import store_check_run
from tests.dashboards.seed import DAILY_Z, seed_daily_evidence, seed_incidents
from tests.factories import override_event
from tests.simdb import MODEL, PREVIOUS, PRODUCTION, populate, simulate


@pytest.fixture
def loaded(runtime: Runtime) -> tuple[Runtime, SimulatedDeployment]:
    deployment = simulate(seed=5, n_studies=900, days=20, embedding_dim=32)
    populate(runtime, deployment)
    return runtime, deployment


def run(runtime: Runtime, name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
    with session_scope(runtime.sessions) as session:
        return getattr(q, name)(session, *args, **kwargs)


def truth_days(deployment: SimulatedDeployment) -> np.ndarray:
    return np.array([f"{deployment.start + timedelta(days=int(d)):%Y-%m-%d}"
                     for d in deployment.truth.day])


def test_filter_options_and_status(loaded: tuple[Runtime, SimulatedDeployment]) -> None:
    runtime, deployment = loaded
    options = run(runtime, "filter_options")
    assert options.models == (MODEL,)
    assert set(options.versions[MODEL]) == {PRODUCTION, PREVIOUS}
    assert options.active_versions[MODEL] == PRODUCTION
    assert options.sites == ("east", "north", "south")
    assert options.first_ts[MODEL] >= deployment.start
    (status,) = run(runtime, "model_statuses")
    assert (status.active_version, status.studies) == (PRODUCTION, 900)
    assert status.rag == "amber" and status.health_score is None  # no check yet


def test_daily_volume_and_fleet_mix_equal_the_simulated_counts(
        loaded: tuple[Runtime, SimulatedDeployment]) -> None:
    runtime, deployment = loaded
    truth = deployment.truth
    days = truth_days(deployment)
    volume = run(runtime, "daily_volume", q.Filters(model=MODEL))
    got = {(f"{d:%Y-%m-%d}", v): n for d, v, n in
           zip(volume["day"], volume["version"], volume["studies"], strict=True)}
    expected = pd.Series(1, index=pd.MultiIndex.from_arrays(
        [days, truth.model_version])).groupby(level=[0, 1]).sum().to_dict()
    assert got == expected
    east = q.Filters(model=MODEL, version=PREVIOUS, site="east",
                     start=deployment.start + timedelta(days=3),
                     end=deployment.start + timedelta(days=9))
    inside = ((truth.model_version == PREVIOUS) & (truth.site == "east")
              & (truth.time_s >= 3 * 86400) & (truth.time_s < 9 * 86400))
    assert run(runtime, "count_studies", east) == int(inside.sum())
    mix = run(runtime, "fleet_mix", q.Filters(model=MODEL), "scanner_model")
    got_mix = {(f"{d:%Y-%m-%d}", v): n for d, v, n in
               zip(mix["day"], mix["value"], mix["studies"], strict=True)}
    expected_mix = pd.Series(1, index=pd.MultiIndex.from_arrays(
        [days, truth.scanner_model])).groupby(level=[0, 1]).sum().to_dict()
    assert got_mix == expected_mix
    assert np.allclose(mix.groupby("day")["share"].sum(), 1.0)


def test_new_software_versions_are_flagged_from_the_day_they_appear(
        loaded: tuple[Runtime, SimulatedDeployment]) -> None:
    runtime, deployment = loaded
    truth = deployment.truth
    seen = run(runtime, "first_seen", q.Filters(model=MODEL), "software_version")
    flagged = dict(zip(seen["value"], seen["new"], strict=True))
    assert flagged.pop("VF12B") is True and flagged.pop("V10.2") is True
    assert not any(flagged.values())
    first = deployment.start + timedelta(seconds=float(
        truth.time_s[truth.software_version == "VF12B"].min()))
    row = seen[seen["value"] == "VF12B"].iloc[0]
    assert row["first_seen"] == first
    assert (row["manufacturer"], row["scanner_model"]) == ("SIEMENS", "Ysio Max")
    assert run(runtime, "reference_end", q.Filters(model=MODEL)) == deployment.baseline_end


def test_performance_counts_use_the_latest_read_of_each_study(
        loaded: tuple[Runtime, SimulatedDeployment]) -> None:
    runtime, deployment = loaded
    truth = deployment.truth
    everything = q.Filters(model=MODEL)
    daily = run(runtime, "performance_daily", everything)
    read = truth.read
    assert int(daily["studies"].sum()) == truth.time_s.size
    assert int(daily["reads"].sum()) == int(read.sum())
    disagree = read & (truth.radiologist_positive != truth.positive)
    assert int(daily["overrides"].sum()) == int(disagree.sum())
    assert int(daily["tp"].sum()) == int((read & truth.radiologist_positive
                                          & truth.positive).sum())
    assert int(daily["tn"].sum()) == int((read & ~truth.radiologist_positive
                                          & ~truth.positive).sum())
    day_rate = daily.dropna(subset=["override_rate"])
    assert ((day_rate["override_rate_low"] <= day_rate["override_rate"])
            & (day_rate["override_rate"] <= day_rate["override_rate_high"])).all()

    # a second, later read of a study the model called negative and the radiologist agreed
    # with: now the radiologist calls it positive, so the study becomes an override (a miss)
    agreed = np.flatnonzero(read & ~truth.positive & ~truth.radiologist_positive)[0]
    later = deployment.start + timedelta(seconds=float(truth.read_time_s[agreed]) + 3600)
    InProcessCollector(runtime).log_overrides([override_event(
        str(truth.study_uid[agreed]), model=MODEL, radiologist_positive=True,
        agrees_with_model=False, timestamp=later.isoformat().replace("+00:00", "Z"))])
    after = run(runtime, "performance_daily", everything)
    assert int(after["reads"].sum()) == int(read.sum())  # still one read per study
    assert int(after["overrides"].sum()) == int(disagree.sum()) + 1
    assert int(after["fn"].sum()) == int(daily["fn"].sum()) + 1


def test_read_delay_quantiles_are_within_the_hour(
        loaded: tuple[Runtime, SimulatedDeployment]) -> None:
    runtime, deployment = loaded
    truth = deployment.truth
    delays_h = (truth.read_time_s - truth.time_s)[truth.read] / 3600
    summary = run(runtime, "read_delay_summary", q.Filters(model=MODEL))
    assert summary["reads"] == truth.read.sum()
    assert abs(summary["median_delay_h"] - np.median(delays_h)) <= 1.0
    assert abs(summary["p90_delay_h"] - np.quantile(delays_h, 0.9)) <= 1.0
    histogram = run(runtime, "delay_histogram", q.Filters(model=MODEL))
    assert int(histogram["reads"].sum()) == int(truth.read.sum())
    assert int(histogram.loc[histogram["bucket"] == "0-1 h", "reads"].iloc[0]) == int(
        (delays_h < 1).sum())


def test_recent_overridden_studies_are_pseudonymised_and_newest_first(
        loaded: tuple[Runtime, SimulatedDeployment]) -> None:
    runtime, deployment = loaded
    recent = run(runtime, "recent_overridden", q.Filters(model=MODEL, version=PRODUCTION),
                 limit=10)
    assert len(recent) == 10
    assert recent["read_at"].is_monotonic_decreasing
    assert (recent["model_positive"] != recent["radiologist_positive"]).all()
    assert (recent["version"] == PRODUCTION).all()
    assert not set(recent["study_key"]) & set(deployment.truth.study_uid.tolist())


def test_registry_and_version_comparison(loaded: tuple[Runtime, SimulatedDeployment]) -> None:
    runtime, deployment = loaded
    truth = deployment.truth
    registry = run(runtime, "registry_frame", MODEL).set_index("version")
    assert registry.loc[PRODUCTION, "aliases"] == "production"
    assert registry.loc[PREVIOUS, "studies"] == int((truth.model_version == PREVIOUS).sum())
    assert registry["baseline_studies"].notna().all()
    metrics = run(runtime, "version_metrics", q.Filters(model=MODEL), (PRODUCTION, PREVIOUS))
    studies = metrics[metrics["metric"] == "studies"].set_index("version")["value"]
    assert studies.to_dict() == {v: float((truth.model_version == v).sum())
                                 for v in (PRODUCTION, PREVIOUS)}
    rates = metrics[metrics["metric"] == "override_rate"]
    assert ((rates["low"] <= rates["value"]) & (rates["value"] <= rates["high"])).all()


def _store_run(runtime: Runtime, deployment: SimulatedDeployment) -> int:
    start = deployment.start + timedelta(days=10)
    results = [
        {"detector": "MMDDrift", "feature": "embedding", "statistic": 0.01, "p_value": 0.002,
         "threshold": 0.05, "drift": True, "n_reference": 300, "n_current": 40,
         "details": {"family": "embedding"}},
        {"detector": "NumericDrift", "feature": "kvp", "statistic": 0.3, "p_value": None,
         "threshold": 0.05, "drift": False, "n_reference": 300, "n_current": 40,
         "details": {"family": "metadata", "status": "insufficient data"}},
        {"detector": "SubgroupBias", "feature": "age_band=80+:specificity",
         "statistic": -0.1, "p_value": 0.001, "threshold": 0.05, "drift": True,
         "n_reference": 200, "n_current": 60,
         "details": {"family": "bias", "field": "age_band", "value": "80+",
                     "metric": "specificity", "status": "ok", "n": 60,
                     "group_value": 0.8, "ci": [0.68, 0.88], "rest_value": 0.9, "gap": -0.1,
                     "direction": "worse", "q_value": 0.01}},
        {"detector": "Attribution", "feature": "embedding", "statistic": 0.7, "p_value": None,
         "threshold": 0.0, "drift": False, "n_reference": 300, "n_current": 40,
         "details": {"family": "attribution", "ranking": [
             {"field": "software_version", "value": "VF12B", "n_reference": 0,
              "n_current": 9, "share_reference": 0.0, "share_current": 0.2,
              "own_drift": 0.9, "contribution": 0.7, "explained_share": 0.8,
              "basis": "embedding"},
             {"field": "site", "value": "south", "n_reference": 90, "n_current": 12,
              "share_reference": 0.3, "share_current": 0.3, "own_drift": 0.2,
              "contribution": 0.1, "explained_share": 0.5, "basis": "embedding"}]}},
    ]
    with session_scope(runtime.sessions) as session:
        version_id = q._version_ids(session, MODEL, PRODUCTION)[0]
        run_id, _ = store_check_run(session, run={
            "model_version_id": version_id, "window_kind": "time", "window_label": "1d",
            "window_start": start, "window_end": start + timedelta(days=1),
            "started_at": datetime.now(UTC), "finished_at": datetime.now(UTC),
            "status": "partial", "n_studies": 40, "health_score": 0.5,
            "health_status": "red", "report_path": "cxr-triage/1.4.0/r.html",
        }, results=results)
    return run_id


def test_stored_results_read_back_for_the_drift_and_bias_pages(
        loaded: tuple[Runtime, SimulatedDeployment]) -> None:
    runtime, deployment = loaded
    run_id = _store_run(runtime, deployment)
    production = q.Filters(model=MODEL, version=PRODUCTION)
    series = run(runtime, "drift_series", production)
    assert sorted(series["detector"]) == ["MMDDrift", "NumericDrift"]
    mmd = series[series["detector"] == "MMDDrift"].iloc[0]
    assert (mmd["kind"], mmd["value"], mmd["family"], bool(mmd["drift"])) == (
        "p-value", 0.002, "embedding", True)
    kvp = series[series["detector"] == "NumericDrift"].iloc[0]
    assert (kvp["kind"], kvp["status"]) == ("statistic", "insufficient data")
    assert run(runtime, "drift_series", q.Filters(model=MODEL, version=PREVIOUS)).empty
    trend = run(runtime, "health_trend", production)
    assert trend[["run_id", "health_status"]].values.tolist() == [[run_id, "red"]]
    assert run(runtime, "latest_run_with", production, "SubgroupBias") == run_id
    bias = run(runtime, "bias_table", run_id)
    row = bias.iloc[0]
    assert (row["field"], row["value"], row["metric"], row["ci_low"], row["ci_high"],
            bool(row["drift"])) == ("age_band", "80+", "specificity", 0.68, 0.88, True)
    ranking = run(runtime, "attribution_ranking", run_id)
    assert ranking["value"].tolist() == ["VF12B", "south"]
    baselines = run(runtime, "baseline_periods", production)
    assert baselines["window_end"].tolist() == [deployment.baseline_end]
    assert run(runtime, "check_run", run_id)["report_path"] == "cxr-triage/1.4.0/r.html"
    (status,) = run(runtime, "model_statuses")
    assert status.rag == "red" and status.health_score == 0.5


def test_version_health_names_the_findings_of_the_newest_check(
        loaded: tuple[Runtime, SimulatedDeployment]) -> None:
    runtime, deployment = loaded
    run_id = _store_run(runtime, deployment)
    health = run(runtime, "version_health", MODEL, PRODUCTION)
    assert (health.run_id, health.health_status, health.health_score) == (run_id, "red", 0.5)
    # flagged results only, most significant first; attribution is not a finding
    assert health.findings == (("SubgroupBias", "age_band=80+:specificity", 0.001),
                               ("MMDDrift", "embedding", 0.002))
    assert run(runtime, "version_health", MODEL, PREVIOUS) is None  # never checked
    assert run(runtime, "version_health", MODEL, "9.9.9") is None


def test_sequential_evidence_reads_back_per_stream_and_per_family(
        loaded: tuple[Runtime, SimulatedDeployment]) -> None:
    runtime, deployment = loaded
    window_run = _store_run(runtime, deployment)  # a day without sequential rows
    daily = seed_daily_evidence(runtime, deployment.start + timedelta(days=12))
    production = q.Filters(model=MODEL, version=PRODUCTION)
    sequential = run(runtime, "sequential_series", production)
    assert len(sequential) == len(daily) * len(DAILY_Z)
    assert set(sequential["stream"]) == set(DAILY_Z)
    assert {s: f for s, f in zip(sequential["stream"], sequential["family"], strict=True)} == {
        s: f for s, (f, _) in DAILY_Z.items()}
    assert window_run not in set(sequential["run_id"])
    # the per-window detector series holds no sequential rows
    assert "SequentialEvidence" not in set(run(runtime, "drift_series", production)["detector"])
    pages = q.paging_windows(sequential)
    assert pages == {run_id for run_id, level in zip(sequential["run_id"], sequential["level"],
                                                     strict=True) if level == "page"}
    assert daily[0] not in pages and set(daily[2:]) <= pages
    assert q.paging_windows(sequential.iloc[0:0]) == set()

    families = q.family_evidence(sequential)
    assert len(families) == len(daily) * 4  # embedding, metadata, prediction, bias
    for (_, family), group in sequential.groupby(["run_id", "family"]):
        row = families[(families["run_id"] == group["run_id"].iloc[0])
                       & (families["family"] == family)].iloc[0]
        ratios = group["statistic"] / group["page_at"]
        assert row["ratio"] == pytest.approx(ratios.max())
        assert row["stream"] == group.loc[ratios.idxmax(), "stream"]
        assert row["n_streams"] == len(group)
        worst = max(group["level"], key=q.LEVEL_ORDER.get)
        assert row["level"] == worst
        assert 0.8 < row["warning_ratio"] < 1.0
    last = families[families["run_id"] == daily[-1]].set_index("family")
    assert last.loc["embedding", "level"] == "page" and last.loc["prediction", "level"] == "quiet"
    assert last.loc["embedding", "ratio"] > 1 > last.loc["prediction", "ratio"]
    assert run(runtime, "sequential_series", production, window_label="7d").empty
    assert q.family_evidence(sequential.iloc[0:0]).empty


def test_incidents_read_back_in_page_order_with_their_findings(
        loaded: tuple[Runtime, SimulatedDeployment]) -> None:
    runtime, deployment = loaded
    ids = seed_incidents(runtime, deployment.start)
    opened = run(runtime, "incidents", model=MODEL)
    assert [i.id for i in opened] == [ids["software-update"], ids["version"],
                                      ids["subgroup-80+"], ids["new-vendor"]]
    assert [len(i.findings) for i in opened] == [2, 1, 1, 1]
    assert all(a.incident_id == i.id and a.state == "firing" for i in opened
               for a in i.findings)
    closed = run(runtime, "incidents", model=MODEL, states=q.CLOSED_INCIDENT_STATES)
    assert [i.id for i in closed] == [ids["accepted-firmware"], ids["site-south"]]  # newest
    later = deployment.start + timedelta(days=9, hours=12)
    assert [i.id for i in run(runtime, "incidents", model=MODEL,
                              states=q.CLOSED_INCIDENT_STATES, closed_since=later)] == [
        ids["accepted-firmware"]]
    assert run(runtime, "incidents", model="another-model") == []

    (status,) = run(runtime, "model_statuses")
    assert status.rag == "red"
    assert (status.incidents_open, status.critical_incidents) == (4, 2)
    assert status.reasons[:4] == (
        f"critical: XR-SOUTH-1 (SIEMENS Ysio Max, software VF12B) on {PREVIOUS} since "
        "2026-10-11 - embedding MMD p<1e-4",
        f"critical: version {PREVIOUS} since 2026-10-19 - sensitivity 88% -> 79% (p=0.002)",
        f"warning: age 80+ on {PREVIOUS} since 2026-10-12 - age_band=80+ sensitivity 71% vs "
        "86% for the rest, gap 11 pts worse than in the baseline (95% CI -18 to -4)",
        "1 more open incident(s)")


def test_an_incidents_strongest_evidence_gives_its_effect_and_direction() -> None:
    page = {"level": "page", "statistic": 4.4, "threshold": 4.0, "family": "embedding",
            "detector": "MMDDrift", "effect": "embedding MMD p<1e-4"}
    warning = {"level": "warning", "statistic": 9.0, "threshold": 10.0, "family": "metadata",
               "detector": "NumericDrift", "effect": "kvp median 125 -> 110"}
    stronger = {**page, "statistic": 6.0, "effect": "stronger"}
    info = IncidentInfo(
        id=1, model=MODEL, model_version=PRODUCTION, cause_field="station",
        cause_value="XR-1", cause_label="XR-1", state="open", severity="critical",
        summary=None, opened_at=datetime(2026, 10, 12, tzinfo=UTC), first_evidence_day=None,
        paged_at=None, resolved_at=None, resolved_reason=None, accepted_by=None,
        accepted_at=None, accept_reason=None, evidence=[warning, page, stronger])
    # the page level before warning, then the larger statistic relative to its threshold
    assert q.strongest_evidence(info) == stronger
    assert q.incident_headline(info) == f"critical: XR-1 on {PRODUCTION} - stronger"
    assert q.evidence_level(stronger) == "page (Z 6.0, pages at 4.0)"
    assert q.strongest_evidence(replace(info, evidence=[])) is None
    assert q.effect_direction(page) == "shifted"
    bias = {"detector": "SubgroupBias", "family": "bias", "direction": "worse"}
    assert q.effect_direction(bias) == "worse"
    # one-sided: a subgroup finding without a stated direction is a group doing worse
    assert q.effect_direction({"detector": "SubgroupBias", "family": "bias"}) == "worse"
    performance = {"detector": "PerformanceDrift", "family": "performance",
                   "baseline": {"value": 0.88}, "current": {"value": 0.79}}
    assert q.effect_direction(performance) == "lower"
    assert q.effect_direction({**performance, "current": {"value": 0.91}}) == "higher"
    assert q.effect_direction(None) == ""


def test_grid_progress_counts_the_days_the_scheduler_still_owes(
        loaded: tuple[Runtime, SimulatedDeployment]) -> None:
    """Expected: every complete grid day after each monitored version's baseline, as the
    scheduler counts them; checked: those stored. The Overview's banner shows the two."""
    runtime, deployment = loaded
    days = deployment.days - 7  # after the clean baseline week
    now = datetime.now(UTC)
    progress = run(runtime, "grid_progress", timezone="UTC", now=now)
    assert (progress.expected, progress.checked, progress.filling_in) == (2 * days, 0, True)
    with session_scope(runtime.sessions) as session:
        owed = sum(len(due_grid_windows(session, info, zone=UTC, now=now))
                   for info in monitored_versions(session))
    assert owed == progress.expected - progress.checked
    run_check(runtime, model=MODEL, version=PRODUCTION, day=(deployment.start
              + timedelta(days=7)).date(), options=CheckOptions(n_permutations=20,
                                                                report=False))
    assert run(runtime, "grid_progress", timezone="UTC", now=now) == q.GridProgress(
        expected=2 * days, checked=1)
    # with the clock in the middle of the data, only the days that have ended count
    midway = deployment.start + timedelta(days=10, hours=5)
    assert run(runtime, "grid_progress", timezone="UTC", now=midway) == q.GridProgress(
        expected=2 * 3, checked=1)
