"""The Prometheus metrics: values read from the store at scrape time, ingestion instruments,
the /metrics route, and `promtool check metrics` on what it serves."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete, event, select, text, update
from sqlalchemy.orm import sessionmaker

from monitor.api.app import create_app
from monitor.api.metrics import install
from monitor.collect.inprocess import InProcessCollector
from monitor.metrics import (
    FAMILIES,
    REJECT_REASONS,
    Schedule,
    StoreCollector,
    build_service_metrics,
    exposed_metric_names,
    reject_reason,
    split_subgroup_feature,
    total_variation_distance,
)
from monitor.runtime import Runtime
from monitor.store import results as store
from monitor.store import scrape
from monitor.store.db import make_engine, session_scope
from monitor.store.models import Alert, Incident, Inference, ModelAlias, ModelVersion
from tests.api.conftest import INGEST, VIEWER, store_test_tokens
from tests.conftest import open_runtime, require_server
from tests.factories import inference_event, override_event

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
# The newest complete day of the daily grid (UTC) at NOW ends here.
MIDNIGHT = datetime(2026, 11, 22, tzinfo=UTC)
MODEL = "cxr-triage"


def app_with_metrics(runtime: Runtime) -> FastAPI:
    """create_app, with the metrics installed (a no-op where create_app already did it)."""
    app = create_app(runtime)
    install(app)
    return app


def collector(runtime: Runtime, **options: Any) -> tuple[CollectorRegistry, StoreCollector]:
    registry = CollectorRegistry()
    options.setdefault("clock", lambda: NOW.timestamp())
    return registry, StoreCollector(runtime.sessions, registry=registry, **options)


def log(runtime: Runtime, n: int, *, version: str = "1.4.0", model: str = MODEL
        ) -> list[str]:
    events = [inference_event(model=model, model_version=version) for _ in range(n)]
    InProcessCollector(runtime).log_inferences(events)
    return [event["study_uid"] for event in events]


def version_id(runtime: Runtime, version: str, model: str = MODEL) -> int:
    with session_scope(runtime.sessions) as session:
        return session.scalar(select(ModelVersion.id).where(
            ModelVersion.model == model, ModelVersion.version == version))


def result(detector: str, feature: str, statistic: float, p_value: float | None, drift: bool,
           *, n_current: int = 200, details: dict[str, Any] | None = None,
           threshold: float = 0.05) -> dict[str, Any]:
    return {"detector": detector, "feature": feature, "statistic": statistic,
            "p_value": p_value, "threshold": threshold, "drift": drift, "n_reference": 500,
            "n_current": n_current, "details": details or {}}


def store_run(runtime: Runtime, vid: int, results: list[dict[str, Any]], *,
              window: str = "1d", end: datetime = MIDNIGHT, status: str = "ok",
              health: float | None = 0.9, n_studies: int = 300,
              finished: datetime | None = None) -> int:
    """A check run of ``window`` ending at ``end``; by default the grid day before MIDNIGHT."""
    span = timedelta(days=7) if window == "7d" else timedelta(days=1)
    run = {"model_version_id": vid,
           "window_kind": "count" if window.startswith("last:") else "time",
           "window_label": window, "window_start": end - span, "window_end": end,
           "started_at": end, "finished_at": finished or end + timedelta(minutes=1),
           "status": status, "n_studies": n_studies, "health_score": health,
           "health_status": "green"}
    with session_scope(runtime.sessions) as session:
        run_id, _ = store.store_check_run(session, run=run, results=results)
    return run_id


def stream(family: str, feature: str, statistic: float, page_at: float = 4.0,
           level: str = "quiet") -> dict[str, Any]:
    """A SequentialEvidence row as a grid check stores it (docs/paging.md)."""
    return result("SequentialEvidence", feature, statistic, None, level == "page",
                  threshold=page_at,
                  details={"family": "sequential", "of_family": family, "level": level,
                           "warning_at": page_at * 0.8, "page_at": page_at, "days": 3})


def performance_details(value: float, low: float, high: float, n: int, baseline: float
                        ) -> dict[str, Any]:
    return {"family": "performance",
            "current": {"value": value, "ci_low": low, "ci_high": high, "n": n},
            "baseline": {"value": baseline, "ci_low": 0.0, "ci_high": 1.0, "n": 400}}


@contextmanager
def statements(runtime: Runtime) -> Iterator[list[str]]:
    """The SQL statements run inside the block."""
    seen: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        seen.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(runtime.engine, "before_cursor_execute", note)


# --- store collector ------------------------------------------------------------------------


def test_registering_does_not_touch_the_store() -> None:
    def no_sessions() -> None:
        raise AssertionError("describe() opened a session")

    registry = CollectorRegistry(auto_describe=True)
    store_collector = StoreCollector(no_sessions, registry=registry)  # type: ignore[arg-type]
    assert {family.name for family in store_collector.describe()} == {
        spec.name for spec in FAMILIES}
    with pytest.raises(ValueError, match="Duplicated timeseries"):  # the names are taken
        StoreCollector(no_sessions, registry=registry)  # type: ignore[arg-type]


def test_ingestion_counters_count_rows_by_model_version(runtime: Runtime) -> None:
    log(runtime, 7, version="1.4.0")
    uids = log(runtime, 3, version="1.3.0")
    InProcessCollector(runtime).log_overrides(
        [override_event(uid, model_version="1.3.0") for uid in uids[:2]]
        + [override_event(uids[2])])
    registry, _ = collector(runtime)
    value = registry.get_sample_value
    assert value("monitor_inferences_total", {"model": MODEL, "model_version": "1.4.0"}) == 7
    assert value("monitor_inferences_total", {"model": MODEL, "model_version": "1.3.0"}) == 3
    assert value("monitor_overrides_total", {"model": MODEL, "model_version": "1.3.0"}) == 2
    assert value("monitor_overrides_total", {"model": MODEL, "model_version": "unknown"}) == 1
    newest = value("monitor_last_inference_timestamp_seconds",
                   {"model": MODEL, "model_version": "1.4.0"})
    assert newest == datetime(2026, 11, 22, 10, 0, tzinfo=UTC).timestamp()
    assert value("monitor_store_up") == 1


def test_ingestion_counters_stay_exact_across_scrapes_while_rows_settle(
    runtime: Runtime,
) -> None:
    """Rows are counted once when they settle and as the tail before: every scrape is exact,
    whichever side of the settle frontier new rows land."""
    clock = {"now": datetime.now(UTC).timestamp()}
    registry, _ = collector(runtime, settle_seconds=60.0, clock=lambda: clock["now"])
    labels = {"model": MODEL, "model_version": "1.4.0"}
    expected = 0
    for step in range(4):
        log(runtime, 5 + step)
        expected += 5 + step
        assert registry.get_sample_value("monitor_inferences_total", labels) == expected
        clock["now"] += 45.0  # some scrapes see the earlier rows settled, some do not
        assert registry.get_sample_value("monitor_inferences_total", labels) == expected
    clock["now"] += 3600.0
    assert registry.get_sample_value("monitor_inferences_total", labels) == expected
    # Deleted rows (retention) leave a settled counter where it was: counters never go down.
    with session_scope(runtime.sessions) as session:
        session.execute(delete(Inference).where(Inference.id <= 3))
    assert registry.get_sample_value("monitor_inferences_total", labels) == expected
    # A second worker over the same store counts what is there.
    other, _ = collector(runtime, settle_seconds=60.0, clock=lambda: clock["now"])
    assert other.get_sample_value("monitor_inferences_total", labels) == expected - 3


def test_the_newest_grid_check_becomes_p_values_effect_sizes_and_evidence(
    runtime: Runtime,
) -> None:
    log(runtime, 2, version="1.4.0")
    vid = version_id(runtime, "1.4.0")
    older = [result("MMDDrift", "embedding", 0.5, 0.001, True)]
    store_run(runtime, vid, older, end=MIDNIGHT - timedelta(days=1), health=0.2)
    vendor_counts = {"GE": {"reference": 60, "current": 30},
                     "Agfa": {"reference": 40, "current": 50},
                     "Fujifilm": {"reference": 0, "current": 20}}
    latest = [
        result("MMDDrift", "embedding", 0.0123, 0.41, False),
        result("ClassifierDrift", "embedding", 0.61, 0.02, True, details={"auc": 0.61}),
        result("NoveltyDrift", "embedding", 9.0, 0.001, True, n_current=120,
               details={"n_novel_counted": 9, "n_counted": 90}),
        result("CategoricalDrift", "vendor", 31.5, 1e-6, True,
               details={"counts": vendor_counts, "status": "ok"}),
        result("NumericDrift", "kvp", 0.3, 0.04, True,
               details={"ks_statistic": 0.12, "status": "ok"}),
        result("NumericDrift", "age_years", 0.02, None, False,
               details={"status": "insufficient data"}),
        result("ScoreDrift", "score", 0.08, 0.2, False, details={"ks_statistic": 0.08}),
        result("PositiveRateDrift", "positive_rate", 0.031, 0.3, False),
        result("ClassifierDrift", "embedding-failed", 0.0, None, False,
               details={"status": "failed", "error": "boom"}),
        result("PerformanceDrift", "sensitivity", -0.12, 0.003, True, n_current=84,
               details=performance_details(0.71, 0.61, 0.79, 84, 0.83)),
        result("PerformanceDrift", "override_rate", 0.01, 0.3, False, n_current=150,
               details=performance_details(0.11, 0.07, 0.17, 150, 0.10)),
        result("SubgroupBias", "site=north:sensitivity", -0.21, 0.0004, True, n_current=61,
               details={"baseline_gap": -0.02}),
        result("SubgroupBias", "site=south:sensitivity", 0.05, 0.6, False, n_current=40),
        result("SubgroupBias", "scanner_model=DRX:Evolution:override_rate", 0.02, 0.7, False,
               n_current=90),
        result("SubgroupBias", "site=west:sensitivity", -0.4, None, False, n_current=9,
               details={"status": "insufficient data"}),
        result("Attribution", "metadata", 0.7, None, False, threshold=0.0),
        stream("metadata", "CategoricalDrift/vendor", 5.0, page_at=4.0, level="page"),
        stream("metadata", "NumericDrift/kvp", 1.0, page_at=4.0),
        stream("embedding", "MMDDrift/embedding", -0.5, page_at=5.0),
        stream("bias", "SubgroupBias/site=north:sensitivity", 3.6, page_at=4.5,
               level="warning"),
    ]
    store_run(runtime, vid, latest, health=0.55, n_studies=321)
    registry, _ = collector(runtime)
    value = registry.get_sample_value
    version = {"model": MODEL, "model_version": "1.4.0"}

    def test(family: str, detector: str, feature: str) -> dict[str, str]:
        return {**version, "family": family, "detector": detector, "feature": feature}

    p_value, distance = "monitor_test_p_value", "monitor_test_distribution_distance_ratio"
    difference = "monitor_test_proportion_difference_ratio"
    mmd = test("embedding", "MMDDrift", "embedding")
    assert value(p_value, mmd) == 0.41
    assert value(distance, mmd) is None  # MMD² has no comparable kind: not exported
    classifier = test("embedding", "ClassifierDrift", "embedding")
    assert value("monitor_test_classifier_auc_ratio", classifier) == 0.61
    novelty = test("embedding", "NoveltyDrift", "embedding")
    assert value("monitor_test_novel_studies_ratio", novelty) == pytest.approx(0.1)
    vendor = test("metadata", "CategoricalDrift", "vendor")
    assert value(p_value, vendor) == 1e-6
    # shares: GE 0.6 -> 0.3, Agfa 0.4 -> 0.5, Fujifilm 0 -> 0.2: half of 0.3 + 0.1 + 0.2
    assert value(distance, vendor) == pytest.approx(0.3)
    assert value(distance, test("metadata", "NumericDrift", "kvp")) == 0.12  # KS D
    age = test("metadata", "NumericDrift", "age_years")
    assert value(p_value, age) is None and value(distance, age) is None  # insufficient
    assert value(distance, test("prediction", "ScoreDrift", "score")) == 0.08
    assert value(difference, test("prediction", "PositiveRateDrift", "positive_rate")) == 0.031
    assert value(p_value, test("embedding", "ClassifierDrift", "embedding-failed")) is None
    sensitivity = test("performance", "PerformanceDrift", "sensitivity")
    assert value(p_value, sensitivity) == 0.003
    assert value(difference, sensitivity) == -0.12
    assert value("monitor_health_score", version) == 0.55
    assert value("monitor_check_window_studies", version) == 321

    evidence = "monitor_sequential_evidence"
    assert value(evidence, {**version, "family": "metadata"}) == 1.25  # max(5/4, 1/4)
    assert value(evidence, {**version, "family": "embedding"}) == -0.1
    assert value(evidence, {**version, "family": "bias"}) == pytest.approx(0.8)
    assert value(evidence, {**version, "family": "performance"}) is None  # no stream today

    perf = {**version, "metric": "sensitivity"}
    assert value("monitor_performance_ratio", perf) == 0.71
    assert value("monitor_performance_ci_lower_ratio", perf) == 0.61
    assert value("monitor_performance_ci_upper_ratio", perf) == 0.79
    assert value("monitor_performance_baseline_ratio", perf) == 0.83
    assert value("monitor_performance_reads", perf) == 84
    assert value("monitor_performance_ratio", {**version, "metric": "override_rate"}) == 0.11

    north = {**version, "field": "site", "value": "north", "metric": "sensitivity"}
    assert value("monitor_subgroup_gap_ratio", north) == -0.21
    assert value("monitor_subgroup_baseline_gap_ratio", north) == -0.02
    assert value(p_value, test("bias", "SubgroupBias", "site=north:sensitivity")) == 0.0004
    south = {**north, "value": "south"}
    assert value("monitor_subgroup_gap_ratio", south) == 0.05
    assert value("monitor_subgroup_baseline_gap_ratio", south) is None
    west = {**north, "value": "west"}
    assert value("monitor_subgroup_gap_ratio", west) is None  # too small to test
    colon = {**version, "field": "scanner_model", "value": "DRX:Evolution",
             "metric": "override_rate"}
    assert value("monitor_subgroup_gap_ratio", colon) == 0.02

    finished = (MIDNIGHT + timedelta(minutes=1)).timestamp()
    assert value("monitor_check_last_success_timestamp_seconds", version) == finished
    assert value("monitor_check_last_failure_timestamp_seconds", version) is None
    text_out = generate_latest(registry).decode()
    assert "Attribution" not in text_out
    assert "SequentialEvidence" not in text_out  # evidence is per family, not per test
    assert 'window="' not in text_out


def test_only_scheduled_checks_are_exported_and_ended_versions_are_left_out(
    runtime: Runtime,
) -> None:
    log(runtime, 1, version="1.4.0")
    log(runtime, 1, version="1.2.0")
    vid, old = version_id(runtime, "1.4.0"), version_id(runtime, "1.2.0")

    def mmd(p: float) -> list[dict[str, Any]]:
        return [result("MMDDrift", "embedding", 0.1, p, p < 0.05)]

    day = timedelta(days=1)
    store_run(runtime, vid, mmd(0.3), end=MIDNIGHT - day)
    store_run(runtime, vid, mmd(0.2), end=MIDNIGHT, status="partial")  # results stored
    store_run(runtime, vid, mmd(0.01), window="7d", end=MIDNIGHT + day)  # another label
    store_run(runtime, vid, mmd(0.04), end=NOW)  # a rolling 1d window ending at noon
    failed_at = MIDNIGHT + timedelta(hours=1)
    store_run(runtime, vid, [], end=MIDNIGHT + day, status="failed", finished=failed_at)
    store_run(runtime, old, mmd(0.001))
    with session_scope(runtime.sessions) as session:
        session.execute(update(ModelVersion).where(ModelVersion.id == old)
                        .values(status="rolled_back"))
    registry, _ = collector(runtime)
    version = {"model": MODEL, "model_version": "1.4.0"}

    def p(registry: CollectorRegistry, version: str = "1.4.0") -> float | None:
        return registry.get_sample_value("monitor_test_p_value", {
            "model": MODEL, "model_version": version, "family": "embedding",
            "detector": "MMDDrift", "feature": "embedding"})

    assert p(registry) == 0.2  # the newest grid day; the failed later day is not a result
    assert registry.get_sample_value("monitor_check_last_success_timestamp_seconds",
                                     version) == (MIDNIGHT + timedelta(minutes=1)).timestamp()
    assert registry.get_sample_value("monitor_check_last_failure_timestamp_seconds",
                                     version) == failed_at.timestamp()
    assert p(registry, "1.2.0") is None  # rolled back: its last evidence must not page forever

    # A scheduler on a window label reports the runs of that label.
    weekly, _ = collector(runtime, schedule=Schedule("7d"))
    assert p(weekly) == 0.01
    assert weekly.get_sample_value("monitor_check_last_failure_timestamp_seconds",
                                   version) is None
    # The grid's midnights are the site's: in Berlin a UTC-midnight window is not a grid day.
    berlin, _ = collector(runtime, schedule=Schedule("grid", ZoneInfo("Europe/Berlin")))
    assert p(berlin) is None
    store_run(runtime, vid, mmd(0.5), end=MIDNIGHT - timedelta(hours=1))  # Berlin midnight
    assert p(berlin) == 0.5

    # Once the model has a live version, only live versions export check results.
    log(runtime, 1, version="1.5.0")
    candidate = version_id(runtime, "1.5.0")
    store_run(runtime, candidate, mmd(0.02))
    assert p(registry, "1.5.0") == 0.02
    with session_scope(runtime.sessions) as session:
        session.add(ModelAlias(model=MODEL, alias="production", model_version_id=vid,
                               updated_at=NOW))
    assert p(registry, "1.5.0") is None
    assert p(registry) == 0.2


def test_subgroup_values_are_capped_keeping_the_largest_groups(runtime: Runtime) -> None:
    log(runtime, 1)
    vid = version_id(runtime, "1.4.0")
    sizes = {"a": 50, "b": 300, "c": 120, "d": 80}
    store_run(runtime, vid, [
        result("SubgroupBias", f"site={site}:sensitivity", 0.01, 0.5, False, n_current=n)
        for site, n in sizes.items()
    ])
    registry, _ = collector(runtime, max_subgroup_values=2)
    version = {"model": MODEL, "model_version": "1.4.0"}
    kept = {site for site in sizes if registry.get_sample_value(
        "monitor_subgroup_gap_ratio", {**version, "field": "site", "value": site,
                                       "metric": "sensitivity"}) is not None}
    assert kept == {"b", "c"}
    tested = {site for site in sizes if registry.get_sample_value("monitor_test_p_value", {
        **version, "family": "bias", "detector": "SubgroupBias",
        "feature": f"site={site}:sensitivity"}) is not None}
    assert tested == kept
    assert registry.get_sample_value("monitor_subgroup_values_omitted",
                                     {**version, "field": "site"}) == 2


def incident(severity: str, state: str = "open", *, version: str = "1.4.0",
             cause: str = "XR-1") -> Incident:
    return Incident(model=MODEL, model_version=version, cause_field="station",
                    cause_value=cause, cause_label=cause, state=state, severity=severity,
                    opened_at=NOW, quiet_windows=0, updated_at=NOW)


def test_incidents_alerts_and_active_versions_by_model_version(runtime: Runtime) -> None:
    log(runtime, 1, version="1.4.0")
    log(runtime, 1, version="1.3.0")
    log(runtime, 1, version="2.0.0", model="ct-bleed")
    now = NOW
    with session_scope(runtime.sessions) as session:
        session.execute(update(ModelVersion).where(ModelVersion.version == "2.0.0")
                        .values(status="active"))
        session.add(ModelAlias(model=MODEL, alias="production",
                               model_version_id=version_id(runtime, "1.4.0"),
                               updated_at=now))
        for i, (severity, state) in enumerate([("critical", "firing"), ("critical", "firing"),
                                               ("warning", "resolved"), ("info", "firing")]):
            session.add(Alert(key=f"k{i}", rule="sequential-page", model=MODEL,
                              model_version="1.4.0", severity=severity, state=state,
                              started_at=now, updated_at=now))
        session.add_all([incident("critical", cause="XR-1"), incident("warning", cause="XR-2"),
                         incident("warning", cause="XR-3"),
                         incident("critical", "resolved", cause="XR-4"),
                         incident("critical", "accepted", cause="XR-5"),
                         incident("warning", version="1.3.0")])
    registry, _ = collector(runtime)
    value = registry.get_sample_value
    prod = {"model": MODEL, "model_version": "1.4.0"}
    assert value("monitor_open_incidents", {**prod, "severity": "critical"}) == 1
    assert value("monitor_open_incidents", {**prod, "severity": "warning"}) == 2
    # 1.3.0 is not live, but its open incident still counts
    assert value("monitor_open_incidents", {"model": MODEL, "model_version": "1.3.0",
                                            "severity": "warning"}) == 1
    ct = {"model": "ct-bleed", "model_version": "2.0.0"}
    assert value("monitor_open_incidents", {**ct, "severity": "critical"}) == 0  # zero-filled
    assert value("monitor_alerts_firing", {**prod, "severity": "critical"}) == 2
    assert value("monitor_alerts_firing", {**prod, "severity": "warning"}) == 0
    assert value("monitor_alerts_firing", {**prod, "severity": "info"}) == 1
    assert value("monitor_alerts_firing", {**ct, "severity": "critical"}) == 0
    info = "monitor_model_active_version_info"
    assert value(info, prod) == 1
    assert value(info, {"model": MODEL, "model_version": "1.3.0"}) is None
    assert value(info, ct) == 1


def test_a_scrape_runs_a_fixed_number_of_queries(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One query per read whatever the store holds, and per chunk of ``IN_CHUNK`` ids for
    the scheduled runs (one) and their results (three)."""
    uids = log(runtime, 2, version="1.4.0")
    log(runtime, 1, version="1.3.0")
    InProcessCollector(runtime).log_overrides([override_event(uids[0])])
    for version in ("1.4.0", "1.3.0"):
        store_run(runtime, version_id(runtime, version), [
            result("CategoricalDrift", "vendor", 3.0, 0.2, False,
                   details={"counts": {"GE": {"reference": 6, "current": 3}}}),
            result("PerformanceDrift", "sensitivity", -0.1, 0.01, True,
                   details=performance_details(0.7, 0.6, 0.8, 90, 0.8)),
            stream("metadata", "CategoricalDrift/vendor", 2.0),
        ])
    with session_scope(runtime.sessions) as session:
        session.add(incident("warning"))
    clock = {"now": datetime.now(UTC).timestamp() + 3600.0}  # every row settled
    registry, _ = collector(runtime, clock=lambda: clock["now"])
    # versions; per ingestion table the settled frontier, the newly settled rows and the
    # tail; newest inferences; the production alias; scheduled runs; their results,
    # categorical counts and performance details; the incident table (first scrape only);
    # open incidents; firing alerts.
    with statements(runtime) as first:
        list(registry.collect())
    assert len(first) == 1 + 2 * 3 + 1 + 1 + 1 + 3 + 1 + 1 + 1
    with statements(runtime) as warm:  # nothing settled since: no count of settled rows
        list(registry.collect())
    assert len(warm) == 1 + 2 * 2 + 1 + 1 + 1 + 3 + 1 + 1
    monkeypatch.setattr(scrape, "IN_CHUNK", 1)  # two chunks of versions and of runs
    with statements(runtime) as chunked:
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for family in registry.collect() for s in family.samples
                  if s.name != "monitor_store_scrape_duration_seconds"}
    assert len(chunked) == len(warm) + 1 + 3
    monkeypatch.setattr(scrape, "IN_CHUNK", 900)
    assert values == {(s.name, tuple(sorted(s.labels.items()))): s.value
                      for family in registry.collect() for s in family.samples
                      if s.name != "monitor_store_scrape_duration_seconds"}
    assert values[("monitor_test_distribution_distance_ratio", (
        ("detector", "CategoricalDrift"), ("family", "metadata"), ("feature", "vendor"),
        ("model", MODEL), ("model_version", "1.3.0")))] == 0.0


def test_a_store_without_the_incident_table_still_answers(sqlite_runtime: Runtime) -> None:
    """A database from before revision 0004: every other metric is reported."""
    log(sqlite_runtime, 2)
    with session_scope(sqlite_runtime.sessions) as session:
        session.execute(text("DROP TABLE incident"))
    registry, _ = collector(sqlite_runtime)
    assert registry.get_sample_value("monitor_store_up") == 1
    assert registry.get_sample_value("monitor_inferences_total",
                                     {"model": MODEL, "model_version": "1.4.0"}) == 2
    assert not [s for f in registry.collect() if f.name == "monitor_open_incidents"
                for s in f.samples]


@pytest.mark.parametrize(("counts", "distance"), [
    ({"a": {"reference": 5, "current": 5}}, 0.0),
    ({"a": {"reference": 5, "current": 0}, "b": {"reference": 0, "current": 7}}, 1.0),
    ({"a": {"reference": 1, "current": 1}, "b": {"reference": 3, "current": 1}}, 0.25),
    ({"a": {"reference": 0, "current": 3}}, None),
])
def test_total_variation_distance(counts: dict[str, Any], distance: float | None) -> None:
    assert total_variation_distance(counts) == (
        None if distance is None else pytest.approx(distance))


def test_an_unreadable_store_reports_store_up_zero(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # no tables
    registry = CollectorRegistry()
    StoreCollector(sessionmaker(engine), registry=registry, check_interval_s=3600)
    assert registry.get_sample_value("monitor_store_up") == 0
    assert registry.get_sample_value("monitor_check_interval_seconds") == 3600
    assert registry.get_sample_value("monitor_inferences_total", {"model": MODEL,
                                                                  "model_version": "1.4.0"}) is None
    engine.dispose()


def test_every_family_follows_the_naming_conventions() -> None:
    for spec in FAMILIES:
        assert spec.name.startswith("monitor_"), spec.name
        assert not spec.name.endswith(("_total", "_count", "_sum", "_bucket")), spec.name
        assert spec.documentation.strip()
        assert not {"study", "study_uid", "patient", "reader", "event_id"} & set(spec.labels)
    assert "monitor_model_active_version_info" in exposed_metric_names()
    assert "monitor_inferences_total" in exposed_metric_names()


@pytest.mark.parametrize(("feature", "parts"), [
    ("site=north:sensitivity", ("site", "north", "sensitivity")),
    ("scanner_model=DRX:Evolution:ppv", ("scanner_model", "DRX:Evolution", "ppv")),
    ("view=A=B:npv", ("view", "A=B", "npv")),
    ("*", None),
    ("site:north", None),
])
def test_split_subgroup_feature(feature: str, parts: tuple[str, str, str] | None) -> None:
    assert split_subgroup_feature(feature) == parts


# --- ingestion instruments ------------------------------------------------------------------


@pytest.mark.parametrize(("status", "body", "reason"), [
    (200, b"", None),
    (401, b"", "unauthorized"),
    (403, b"", "forbidden"),
    (413, b"", "body_too_large"),
    (500, b"", "server_error"),
    (422, b'{"detail": [{"index": null, "field": "body", "message": "malformed JSON: x"}]}',
     "malformed_json"),
    (422, b'{"detail": [{"index": null, "field": "body", "message": "batch of 9 events '
          b'exceeds the limit of 5"}]}', "batch_too_large"),
    (422, b'{"detail": [{"index": null, "field": "body", "message": "batch is empty"}]}',
     "invalid_body"),
    (422, b'{"detail": [{"index": 3, "field": "embedding", "message": "embedding length 8 '
          b'does not match cxr-triage 1.4.0 (expects 16)"}]}', "embedding_length"),
    (422, b'{"detail": [{"index": 0, "field": "timestamp", "message": "bad"}]}',
     "invalid_event"),
    (422, b"not json", "invalid_event"),
    (404, b"", "other"),
])
def test_reject_reason(status: int, body: bytes, reason: str | None) -> None:
    assert reject_reason(status, body) == reason
    assert reason is None or reason in REJECT_REASONS


@pytest.fixture
def client(sqlite_runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(app_with_metrics(sqlite_runtime)) as test_client:
        yield test_client


def _sample(text: str, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return sample.value
    return None


def test_metrics_route_serves_store_and_ingestion_metrics(client: TestClient) -> None:
    events = [inference_event() for _ in range(4)]
    assert client.post("/v1/inferences", json=events).status_code == 200
    bad_dim = inference_event(embedding=[0.1] * 8)
    assert client.post("/v1/inferences", json=[bad_dim]).status_code == 422
    assert client.post("/v1/inferences", content=b"[{",
                       headers={"content-type": "application/json"}).status_code == 422
    assert client.post("/v1/overrides", json=[{"event_id": "x"}]).status_code == 422
    client.get("/healthz")  # not an ingestion request: not counted
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert _sample(text, "monitor_inferences_total",
                   {"model": MODEL, "model_version": "1.4.0"}) == 4
    rejected = "monitor_ingest_rejected_batches_total"
    assert _sample(text, rejected, {"kind": "inference", "reason": "embedding_length"}) == 1
    assert _sample(text, rejected, {"kind": "inference", "reason": "malformed_json"}) == 1
    assert _sample(text, rejected, {"kind": "override", "reason": "invalid_event"}) == 1
    assert _sample(text, rejected, {"kind": "inference", "reason": "unauthorized"}) == 0
    count = "monitor_ingest_request_duration_seconds_count"
    assert _sample(text, count, {"kind": "inference", "outcome": "accepted"}) == 1
    assert _sample(text, count, {"kind": "inference", "outcome": "rejected"}) == 2
    assert _sample(text, count, {"kind": "override", "outcome": "accepted"}) == 0
    assert _sample(text, "process_cpu_seconds_total", {}) is not None


def test_metrics_route_speaks_openmetrics_when_asked(client: TestClient) -> None:
    response = client.get("/metrics",
                          headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_metrics_route_needs_a_token_when_tokens_are_configured(
    sqlite_url: str, tmp_path: Path,
) -> None:
    runtime = open_runtime(sqlite_url, tmp_path)
    store_test_tokens(runtime)
    try:
        with TestClient(app_with_metrics(runtime)) as test_client:
            assert test_client.get("/metrics").status_code == 401
            assert test_client.post("/v1/inferences", json=[inference_event()]
                                    ).status_code == 401
            assert test_client.get("/metrics", headers=INGEST).status_code == 403
            response = test_client.get("/metrics", headers=VIEWER)
            assert response.status_code == 200
            assert _sample(response.text, "monitor_ingest_rejected_batches_total",
                           {"kind": "inference", "reason": "unauthorized"}) == 1
    finally:
        runtime.close()


def test_two_apps_have_their_own_registries(sqlite_runtime: Runtime) -> None:
    first, second = app_with_metrics(sqlite_runtime), app_with_metrics(sqlite_runtime)
    assert first.state.metrics.registry is not second.state.metrics.registry


def test_promtool_accepts_the_exposition(sqlite_runtime: Runtime, tmp_path: Path) -> None:
    """`promtool check metrics` lints names, units, suffixes and help texts."""
    promtool = shutil.which("promtool")
    require_server(promtool is not None, "promtool (Debian package prometheus)")
    assert promtool is not None
    uids = log(sqlite_runtime, 3)
    InProcessCollector(sqlite_runtime).log_overrides([override_event(uids[0])])
    vid = version_id(sqlite_runtime, "1.4.0")
    store_run(sqlite_runtime, vid, [
        result("MMDDrift", "embedding", 0.01, 0.3, False),
        result("PerformanceDrift", "sensitivity", -0.1, 0.01, True,
               details=performance_details(0.7, 0.6, 0.8, 90, 0.8)),
        result("SubgroupBias", "site=north:sensitivity", -0.2, 0.001, True),
        stream("performance", "PerformanceDrift/sensitivity", 3.0),
    ])
    metrics = build_service_metrics(sqlite_runtime.sessions, check_interval_s=3600)
    metrics.ingest.observe(kind="inference", status=200, seconds=0.02)
    text = generate_latest(metrics.registry)
    names = {family.name for family in text_string_to_metric_families(text.decode())}
    assert {"monitor_test_p_value", "monitor_subgroup_gap_ratio", "monitor_sequential_evidence",
            "monitor_test_proportion_difference_ratio", "monitor_open_incidents",
            "monitor_performance_ratio"} <= names
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                             timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.decode().strip() == "", checked.stdout.decode()


def test_exposition_has_only_bounded_labels(sqlite_runtime: Runtime) -> None:
    """No label carries a study, patient, reader or event identifier."""
    uids = log(sqlite_runtime, 3)
    InProcessCollector(sqlite_runtime).log_overrides([override_event(uids[0])])
    registry, _ = collector(sqlite_runtime)
    text = generate_latest(registry).decode()
    with session_scope(sqlite_runtime.sessions) as session:
        keys = session.execute(select(Inference.study_key, Inference.patient_key,
                                      Inference.event_id)).all()
    for row in keys:
        for key in row:
            assert key not in text
    for uid in uids:
        assert uid not in text
    assert json.dumps(sorted(exposed_metric_names()))
