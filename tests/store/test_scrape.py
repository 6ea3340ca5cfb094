"""The store reads behind /metrics (monitor.store.scrape): values, never ORM rows, with IN
lists cut into chunks."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from monitor.collect.inprocess import InProcessCollector
from monitor.runtime import Runtime
from monitor.store import scrape
from monitor.store.db import session_scope
from monitor.store.models import Alert, ModelAlias
from tests.factories import override_event
from tests.test_metrics import (
    MIDNIGHT,
    MODEL,
    NOW,
    incident,
    log,
    performance_details,
    result,
    statements,
    store_run,
    stream,
    version_id,
)


def test_versions_ingestion_and_the_production_alias(runtime: Runtime) -> None:
    uids = log(runtime, 3, version="1.4.0")
    InProcessCollector(runtime).log_overrides(
        [override_event(uids[0], model_version="1.4.0"), override_event(uids[1])])
    with session_scope(runtime.sessions) as session:
        session.add(ModelAlias(model=MODEL, alias="production",
                               model_version_id=version_id(runtime, "1.4.0"), updated_at=NOW))
    log(runtime, 1, version="1.3.0")
    vid, older = version_id(runtime, "1.4.0"), version_id(runtime, "1.3.0")
    later = datetime.now(UTC) + timedelta(hours=1)  # every row settled
    with session_scope(runtime.sessions) as session:
        versions = scrape.model_versions(session)
        assert versions[vid] == scrape.VersionStatus(MODEL, "1.4.0", "candidate")
        with pytest.raises(dataclasses.FrozenInstanceError):
            versions[vid].status = "active"  # type: ignore[misc]
        newest = scrape.newest_inference_times(session)
        assert newest == {vid: datetime(2026, 11, 22, 10, 0, tzinfo=UTC),
                          older: datetime(2026, 11, 22, 10, 0, tzinfo=UTC)}
        counted = scrape.settled_inference_counts(settle_seconds=60.0)
        assert counted.read(session, now=later) == {(vid,): 3, (older,): 1}
        overrides = scrape.settled_override_counts().read(session, now=later)
        assert overrides == {(MODEL, "1.4.0"): 1, (MODEL, None): 1}


def test_recent_check_runs_keeps_the_newest_per_outcome(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
) -> None:
    log(runtime, 1, version="1.4.0")
    log(runtime, 1, version="1.3.0")
    vid, older = version_id(runtime, "1.4.0"), version_id(runtime, "1.3.0")
    day = timedelta(days=1)
    for days in range(4):
        store_run(runtime, vid, [], end=MIDNIGHT - days * day)
    failed = store_run(runtime, vid, [], end=MIDNIGHT + day, status="failed")
    store_run(runtime, vid, [], window="7d", end=MIDNIGHT + 2 * day)  # another label
    store_run(runtime, vid, [], end=MIDNIGHT + 3 * day, status="running")  # not finished
    other = store_run(runtime, older, [], end=MIDNIGHT, status="partial", health=None)
    monkeypatch.setattr(scrape, "IN_CHUNK", 1)
    with session_scope(runtime.sessions) as session, statements(runtime) as seen:
        runs = scrape.recent_check_runs(session, [older, vid], window_label="1d",
                                        per_outcome=2)
    assert len(seen) == 2  # one query per chunk of versions
    assert [(run.model_version_id, run.status, run.window_end) for run in runs] == [
        (vid, "failed", MIDNIGHT + day), (vid, "ok", MIDNIGHT), (vid, "ok", MIDNIGHT - day),
        (older, "partial", MIDNIGHT),
    ]
    assert runs[0].id == failed and runs[-1].id == other
    assert runs[-1].health_score is None and runs[-1].n_studies == 300
    assert runs[1].finished_at == MIDNIGHT + timedelta(minutes=1)
    assert all(type(run) is scrape.RecentRun for run in runs)


def test_check_results_of_runs_reads_detail_fields_by_detector(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
) -> None:
    log(runtime, 1, version="1.4.0")
    log(runtime, 1, version="1.3.0")
    vid, older = version_id(runtime, "1.4.0"), version_id(runtime, "1.3.0")
    counts = {"GE": {"reference": 60, "current": 30}}
    first = store_run(runtime, vid, [
        result("NumericDrift", "kvp", 0.3, 0.04, True,
               details={"ks_statistic": 0.12, "status": "ok"}),
        result("MMDDrift", "embedding", 0.01, 0.4, False, details={"ks_statistic": 0.5}),
        result("NoveltyDrift", "embedding", 9.0, 0.001, True,
               details={"n_novel_counted": 9, "n_counted": 90}),
        result("SubgroupBias", "site=north:sensitivity", -0.2, 0.01, True,
               details={"baseline_gap": -0.02}),
        result("CategoricalDrift", "vendor", 3.0, 0.2, False, details={"counts": counts}),
        result("CategoricalDrift", "site", 3.0, None, False, details={"counts": counts}),
        result("PerformanceDrift", "sensitivity", -0.1, 0.01, True,
               details=performance_details(0.7, 0.6, 0.8, 90, 0.8)),
        stream("metadata", "NumericDrift/kvp", 2.0),
    ])
    second = store_run(runtime, older, [result("ScoreDrift", "score", 0.08, 0.2, False)])
    monkeypatch.setattr(scrape, "IN_CHUNK", 1)
    with session_scope(runtime.sessions) as session, statements(runtime) as seen:
        chunks = list(scrape.check_results_of_runs(session, [second, first]))
    assert len(seen) == 6  # three queries per chunk of runs
    assert len(chunks) == 2
    one, two = chunks
    assert [(r.check_run_id, r.detector, r.feature) for r in two.results] == [
        (second, "ScoreDrift", "score")]
    assert two.categorical_counts == () and two.performance == ()
    by_detector = {r.detector: r for r in one.results}
    assert [r.detector for r in one.results] == sorted(r.detector for r in one.results)
    numeric = by_detector["NumericDrift"]
    assert (numeric.statistic, numeric.p_value, numeric.n_current) == (0.3, 0.04, 200)
    assert (numeric.status, numeric.ks_statistic) == ("ok", 0.12)
    assert by_detector["MMDDrift"].ks_statistic is None  # not one of its fields
    novelty = by_detector["NoveltyDrift"]
    assert (novelty.n_novel_counted, novelty.n_counted) == (9, 90)
    assert by_detector["SubgroupBias"].baseline_gap == -0.02
    evidence = by_detector["SequentialEvidence"]
    assert (evidence.of_family, evidence.status, evidence.threshold) == ("metadata", None, 4.0)
    assert one.categorical_counts == (scrape.CategoricalCounts(first, "vendor", counts),)
    assert one.performance == (scrape.PerformanceDetails(
        first, "sensitivity", performance_details(0.7, 0.6, 0.8, 90, 0.8)),)
    assert all(type(r) is scrape.ResultFields for chunk in chunks for r in chunk.results)


def test_incident_and_alert_counts(runtime: Runtime) -> None:
    with session_scope(runtime.sessions) as session:
        assert scrape.has_incident_table(session)
        assert scrape.open_incident_counts(session) == {}
        assert scrape.firing_alert_counts(session) == {}
        session.add_all([incident("critical", cause="a"), incident("critical", cause="b"),
                         incident("warning", "resolved", cause="c")])
        for i, (version, state) in enumerate([("1.4.0", "firing"), (None, "firing"),
                                              (None, "firing"), ("1.4.0", "resolved")]):
            session.add(Alert(key=f"k{i}", rule="sequential-page", model=MODEL,
                              model_version=version, severity="warning", state=state,
                              started_at=NOW, updated_at=NOW))
    with session_scope(runtime.sessions) as session:
        assert scrape.open_incident_counts(session) == {(MODEL, "1.4.0", "critical"): 2}
        assert scrape.firing_alert_counts(session) == {(MODEL, "1.4.0", "warning"): 1,
                                                       (MODEL, None, "warning"): 2}


def test_a_store_without_the_incident_table(sqlite_runtime: Runtime) -> None:
    with session_scope(sqlite_runtime.sessions) as session:
        session.execute(text("DROP TABLE incident"))
    with session_scope(sqlite_runtime.sessions) as session:
        assert not scrape.has_incident_table(session)
