"""How long one /metrics scrape takes on a large store.

The store: ``--versions`` model versions (10 per model... ``--models``), ``--rows`` inference
rows and a third as many radiologist reads spread over them, ``--history-days`` of checks per
version (one daily grid check per day, as the scheduler runs them, and hourly 7d checks, as
an older hourly schedule left them), and for the newest grid check the results a real check
stores: 3 embedding detectors, 8 categorical and 4 numeric metadata tests (with their counts
and KS statistics), 2 prediction tests, 5 performance metrics, an attribution row,
``--subgroups`` subgroups x 3 metrics of subgroup bias, and one sequential-evidence row per
stream.

Timed: the first scrape of a process (it counts the ingestion tables once), then
``--scrapes`` warm scrapes (collect + text exposition, as GET /metrics does) while new rows
keep arriving, and for comparison a plain ``COUNT(*) ... GROUP BY`` of both ingestion tables
(what each scrape would cost without the settled counts).

    python benchmarks/scrape.py [--rows 1000000] [--versions 50] [--subgroups 100]
                                [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, insert, select, text, update

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, scratch_postgres

from monitor.detect.health import DETECTOR_FAMILIES
from monitor.metrics import build_service_metrics
from monitor.store.db import make_engine, session_factory, session_scope, upgrade
from monitor.store.models import CheckResult, CheckRun, Inference, ModelVersion, Override

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
GRID_END = datetime(2026, 11, 22, tzinfo=UTC)  # the newest complete day (UTC grid)
SUBGROUP_FIELDS = {"scanner_model": 50, "site": 20, "age_band": 10, "view": 10, "vendor": 8,
                   "sex": 2}
DRIFT_RESULTS = (
    [("MMDDrift", "embedding"), ("ClassifierDrift", "embedding"), ("NoveltyDrift", "embedding")]
    + [("CategoricalDrift", f) for f in ("vendor", "scanner_model", "site", "view",
                                         "photometric", "software_version", "sex", "age_band")]
    + [("NumericDrift", f) for f in ("kvp", "exposure_mas", "pixel_spacing_mm", "age_years")]
    + [("ScoreDrift", "score"), ("PositiveRateDrift", "positive_rate")]
)
PERFORMANCE = ("override_rate", "sensitivity", "specificity", "ppv", "npv")


def subgroup_values(n: int) -> list[tuple[str, str]]:
    """``n`` (field, value) pairs, filling the fields in SUBGROUP_FIELDS order."""
    out: list[tuple[str, str]] = []
    while len(out) < n:
        for field, size in SUBGROUP_FIELDS.items():
            for i in range(size):
                out.append((field, f"{field}-{len(out) // 100}-{i:02d}"))
    return out[:n]


def check_run(version_id: int, label: str, start: datetime, end: datetime) -> dict[str, Any]:
    return {"model_version_id": version_id, "window_kind": "time", "window_label": label,
            "window_start": start, "window_end": end, "started_at": end, "finished_at": end,
            "status": "ok", "n_studies": 500, "health_score": 0.9, "health_status": "green"}


def details_family(detector: str) -> str:
    return DETECTOR_FAMILIES.get(detector, "other")


def build_store(engine: Engine, *, rows: int, versions: int, models: int, subgroups: int,
                history_days: int) -> dict[str, int]:
    upgrade(engine)
    sessions = session_factory(engine)
    dialect = engine.dialect.name
    with session_scope(sessions) as session:
        session.execute(insert(ModelVersion), [
            {"model": f"model-{i % models:02d}", "version": f"1.{i // models}.0",
             "status": "active" if i < models else "candidate", "created_at": NOW,
             "updated_at": NOW}
            for i in range(versions)
        ])
    received = NOW - timedelta(days=1)
    # Inference and override rows in SQL: a million INSERTs from Python would time the driver.
    with engine.begin() as connection:
        if dialect == "sqlite":
            connection.execute(text(
                "INSERT INTO inference (event_id, model_version_id, model, ts, received_at, "
                "study_key, scores) WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
                "FROM seq WHERE i < :n) SELECT 'e' || i, mv.id, mv.model, "
                "datetime(:start, '+' || (i % 2592000) || ' seconds'), :received, 's' || i, "
                "'{}' FROM seq JOIN model_version mv ON mv.id = 1 + (i % :versions)"),
                {"n": rows, "versions": versions, "start": "2026-10-01 00:00:00",
                 "received": received.replace(tzinfo=None).isoformat(sep=" ")})
            connection.execute(text(
                "INSERT INTO override (event_id, model, model_version, study_key, ts, "
                "received_at, radiologist_positive) WITH RECURSIVE seq(i) AS (SELECT 1 UNION "
                "ALL SELECT i + 1 FROM seq WHERE i < :n) SELECT 'o' || i, mv.model, "
                "mv.version, 's' || i, :received, :received, 0 FROM seq JOIN model_version mv "
                "ON mv.id = 1 + (i % :versions)"),
                {"n": rows // 3, "versions": versions,
                 "received": received.replace(tzinfo=None).isoformat(sep=" ")})
        else:
            connection.execute(text(
                "INSERT INTO inference (event_id, model_version_id, model, ts, received_at, "
                "study_key, scores) SELECT 'e' || i, mv.id, mv.model, "
                "CAST(:start AS timestamptz) + (i % 2592000) * interval '1 second', "
                ":received, 's' || i, '{}' FROM generate_series(1, :n) AS i "
                "JOIN model_version mv ON mv.id = 1 + (i % :versions)"),
                {"n": rows, "versions": versions, "start": "2026-10-01T00:00:00+00:00",
                 "received": received})
            connection.execute(text(
                "INSERT INTO override (event_id, model, model_version, study_key, ts, "
                "received_at, radiologist_positive) SELECT 'o' || i, mv.model, mv.version, "
                "'s' || i, :received, :received, false FROM generate_series(1, :n) AS i "
                "JOIN model_version mv ON mv.id = 1 + (i % :versions)"),
                {"n": rows // 3, "versions": versions, "received": received})
            connection.execute(text("ANALYZE"))
    groups = subgroup_values(subgroups)
    n_runs = n_results = 0
    with session_scope(sessions) as session:
        version_ids = list(session.scalars(select(ModelVersion.id)))
        runs = []
        for version_id in version_ids:
            for day in range(history_days, -1, -1):
                end = GRID_END - timedelta(days=day)
                runs.append(check_run(version_id, "1d", end - timedelta(days=1), end))
            for hour in range(history_days * 24, -1, -1):
                end = NOW - timedelta(hours=hour)
                runs.append(check_run(version_id, "7d", end - timedelta(days=7), end))
        session.execute(insert(CheckRun), runs)
        n_runs = len(runs)
        latest = session.execute(select(CheckRun.id).where(
            CheckRun.window_end == GRID_END, CheckRun.window_label == "1d")).scalars()
        results: list[dict[str, Any]] = []
        for run_id in latest:
            def add(detector: str, feature: str, *, details: dict[str, Any] | None = None,
                    run_id: int = run_id, p_value: float | None = 0.3,
                    threshold: float = 0.05) -> None:
                results.append({"check_run_id": run_id, "detector": detector,
                                "feature": feature, "statistic": 0.1, "p_value": p_value,
                                "threshold": threshold, "drift": False, "n_reference": 2000,
                                "n_current": 500, "details": details or {}})
                if p_value is not None:
                    add("SequentialEvidence", f"{detector}/{feature}", p_value=None,
                        threshold=4.5, details={
                            "family": "sequential", "of_family": details_family(detector),
                            "level": "quiet", "warning_at": 3.9, "page_at": 4.5, "days": 3,
                            "since": "2026-11-19", "daily_p": p_value, "z": -0.5,
                            "rho": 0.2, "reference": "weekday", "detector": detector,
                            "feature": feature})

            for detector, feature in DRIFT_RESULTS:
                details: dict[str, Any] = {"status": "ok", "reference": "weekday"}
                if detector == "CategoricalDrift":
                    details["counts"] = {f"{feature}-{i}": {"reference": 40 + i, "current": 10}
                                         for i in range(12)}
                elif detector in ("NumericDrift", "ScoreDrift"):
                    details["ks_statistic"] = 0.05
                add(detector, feature, details=details)
            for metric in PERFORMANCE:
                add("PerformanceDrift", metric, details={
                    "family": "performance", "status": "ok",
                    "current": {"value": 0.8, "ci_low": 0.75, "ci_high": 0.85, "n": 300},
                    "baseline": {"value": 0.82, "ci_low": 0.8, "ci_high": 0.84, "n": 2000}})
            add("Attribution", "metadata", details={"ranking": [{"field": "site"}] * 10},
                p_value=None)
            for field, value in groups:
                for metric in ("sensitivity", "specificity", "override_rate"):
                    add("SubgroupBias", f"{field}={value}:{metric}",
                        details={"family": "bias", "status": "ok", "q_value": 0.4,
                                 "ci": [0.7, 0.9], "rest_ci": [0.7, 0.9], "gap": 0.01,
                                 "baseline_gap": 0.0})
        for start in range(0, len(results), 5_000):
            session.execute(insert(CheckResult), results[start : start + 5_000])
        n_results = len(results)
    if dialect == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("ANALYZE"))
    return {"check_runs": n_runs, "check_results": n_results}


def naive_count(engine: Engine) -> float:
    sessions = session_factory(engine)
    started = time.perf_counter()
    with session_scope(sessions) as session:
        session.execute(select(Inference.model_version_id, func.count())
                        .group_by(Inference.model_version_id)).all()
        session.execute(select(Override.model, Override.model_version, func.count())
                        .group_by(Override.model, Override.model_version)).all()
    return time.perf_counter() - started


def add_rows(engine: Engine, n: int) -> None:
    """New rows arriving between scrapes (received now: the unsettled tail)."""
    now = datetime.now(UTC)
    with session_scope(session_factory(engine)) as session:
        session.execute(insert(Inference), [
            {"event_id": str(uuid.uuid4()), "model_version_id": 1, "model": "model-00",
             "ts": now, "received_at": now, "study_key": uuid.uuid4().hex[:32], "scores": {}}
            for _ in range(n)])


def set_live(engine: Engine, n_live: int) -> None:
    """The first ``n_live`` versions active, the others candidates (no production alias)."""
    with session_scope(session_factory(engine)) as session:
        session.execute(update(ModelVersion).values(status="candidate"))
        session.execute(update(ModelVersion).where(ModelVersion.id <= n_live)
                        .values(status="active"))


def measure(engine: Engine, *, scrapes: int, arriving: int) -> dict[str, Any]:
    metrics = build_service_metrics(session_factory(engine), check_interval_s=3600,
                                    process_metrics=False)
    started = time.perf_counter()
    first = generate_latest(metrics.registry)
    first_s = time.perf_counter() - started
    warm = []
    collect_only = []
    body = first
    for _ in range(scrapes):
        add_rows(engine, arriving)
        started = time.perf_counter()
        body = generate_latest(metrics.registry)
        warm.append(time.perf_counter() - started)
        started = time.perf_counter()
        list(metrics.store.collect())
        collect_only.append(time.perf_counter() - started)
    series = sum(len(f.samples) for f in text_string_to_metric_families(body.decode()))
    naive = [naive_count(engine) for _ in range(3)]
    del metrics
    return {"first_s": first_s, "warm_median_s": statistics.median(warm),
            "warm_max_s": max(warm), "collect_median_s": statistics.median(collect_only),
            "series": series, "bytes": len(body), "naive_count_s": statistics.median(naive)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--subgroups", type=int, default=100)
    parser.add_argument("--history-days", type=int, default=30)
    parser.add_argument("--scrapes", type=int, default=10)
    parser.add_argument("--arriving", type=int, default=100, help="rows added between scrapes")
    parser.add_argument("--postgres", default=None, help="admin URL; a scratch database is "
                        "created and dropped")
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "scrape.md")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="scrape-bench-"))
    rows_out = []
    with ExitStack() as scratch:
        backends = [("sqlite", f"sqlite:///{tmp / 'scrape.db'}")]
        if args.postgres:
            backends.append(("postgresql", scratch.enter_context(
                scratch_postgres(args.postgres, "monitor_scrape_bench"))))
        for name, url in backends:
            engine = make_engine(url)
            started = time.perf_counter()
            sizes = build_store(engine, rows=args.rows, versions=args.versions,
                                models=args.models, subgroups=args.subgroups,
                                history_days=args.history_days)
            build_s = time.perf_counter() - started
            print(f"{name}: built in {build_s:.0f}s", file=sys.stderr)
            for live in sorted({args.models, args.versions}):
                set_live(engine, live)
                result = measure(engine, scrapes=args.scrapes, arriving=args.arriving)
                rows_out.append((name, live, sizes, result))
                print(f"{name}, {live} live: {result}", file=sys.stderr)
            engine.dispose()

    header = (f"Scrape benchmark: {args.versions} model versions ({args.models} models), "
              f"{args.rows:,} inferences + {args.rows // 3:,} reads, {args.subgroups} subgroups "
              f"x 3 metrics, {args.history_days} days of daily grid checks and hourly 7d checks.\n"
              f"Machine: {machine()}; prometheus_client "
              f"{importlib.metadata.version('prometheus-client')}, "
              f"SQLAlchemy {sqlalchemy.__version__}. Load average when done: "
              f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (a shared machine: the "
              "times include waiting for a core).\n")
    table = ["| backend | live versions | check runs | check results | series | body KiB "
             "| first scrape s | warm scrape s (median / max) | collect s (median) "
             "| COUNT GROUP BY s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, live, sizes, r in rows_out:
        table.append(
            f"| {name} | {live} | {sizes['check_runs']:,} | {sizes['check_results']:,} | "
            f"{r['series']:,} | {r['bytes'] / 1024:.0f} | {r['first_s']:.3f} | "
            f"{r['warm_median_s']:.3f} / {r['warm_max_s']:.3f} | "
            f"{r['collect_median_s']:.3f} | {r['naive_count_s']:.3f} |")
    report = header + "\n" + "\n".join(table) + "\n"
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        "# /metrics scrape time\n\n`python benchmarks/scrape.py"
        + (" --postgres URL" if args.postgres else "") + "`\n\n" + report
        + "\nfirst scrape: a new process counts both ingestion tables once. warm scrape: "
        "collect + text exposition (GET /metrics) with "
        f"{args.arriving} new rows arriving before each. COUNT GROUP BY: what counting the "
        "ingestion tables on every scrape would add instead.\n")


if __name__ == "__main__":
    main()
