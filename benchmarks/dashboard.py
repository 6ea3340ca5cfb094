"""How fast the quality dashboard answers on a large store.

The store: ``--inferences`` studies of one model (two versions, 75% / 25% of traffic) over
``--days`` days at three sites on seven scanners (a software update on XR-SOUTH-1 and a new
FUJIFILM unit part-way through), 60% of them read by a radiologist with a log-normal delay,
one baseline per version, daily 1d and weekly 7d check runs of both versions with the results
a real check stores (22 drift tests, 5 performance metrics, 72 subgroup results, an
attribution), a few dozen alerts, one pending rollback recommendation. Rows are generated
with numpy (``--seed``) and bulk-inserted (no embeddings).

Timed:

* the query layer (``monitor.store.dashboard``): each query the pages run, for the default
  filters (the active version, the last 30 days) and for everything (both versions, the
  whole period); the first call (cold database cache) and the best of ``--repeats`` more;
* page loads with Streamlit's AppTest: each page with an empty Streamlit cache (every query
  runs) and again with the cache warm (what a person clicking around sees within the TTL),
  for the default filters and for the whole period.

    python benchmarks/dashboard.py [--inferences 1000000] [--days 365] [--seed 0]
                                   [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy
from sqlalchemy import Engine, insert, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, scratch_postgres

from monitor.store import dashboard as q
from monitor.store.db import make_engine, session_factory, session_scope, upgrade
from monitor.store.models import (
    Alert,
    AuditEntry,
    Baseline,
    CheckResult,
    CheckRun,
    ModelAlias,
    ModelVersion,
    RollbackRecommendation,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "cxr-triage"
VERSIONS = (("1.4.0", 0.75), ("1.3.0", 0.25))
START = datetime(2025, 11, 1, tzinfo=UTC)
SECRET = "benchmark-key-0123456789abcdef0123456789abcdef"
# station, manufacturer, model, site, modality, software, kVp, mAs, spacing, share
SCANNERS = (
    ("XR-NORTH-1", "GE Healthcare", "Discovery XR656", "north", "DX", "DM_Platform 5.2",
     120.0, 2.0, 0.2, 0.26),
    ("XR-NORTH-2", "GE Healthcare", "Optima XR240amx", "north", "DX", "DM_Platform 5.1",
     90.0, 3.2, 0.139, 0.11),
    ("XR-SOUTH-1", "SIEMENS", "Ysio Max", "south", "DX", "VF10E", 125.0, 1.8, 0.148, 0.25),
    ("XR-SOUTH-2", "Philips Medical Systems", "MobileDiagnost wDR", "south", "DX", "2.2.1",
     85.0, 3.0, 0.16, 0.08),
    ("XR-EAST-1", "Philips Medical Systems", "DigitalDiagnost C90", "east", "DX", "1.1.3",
     117.0, 2.2, 0.148, 0.18),
    ("XR-EAST-2", "Carestream Health", "DirectView CR 975", "east", "CR", "5.7.412",
     110.0, 3.2, 0.168, 0.12),
    ("XR-EAST-3", "FUJIFILM Corporation", "FDR Smart X", "east", "DX", "V10.2",
     115.0, 2.0, 0.15, 0.0),
)
NEW_SCANNER_SHARE = 0.08
DRIFT_RESULTS = (
    [("MMDDrift", "embedding", "embedding"), ("ClassifierDrift", "embedding", "embedding"),
     ("NoveltyDrift", "embedding", "embedding")]
    + [("CategoricalDrift", f, "metadata") for f in (
        "vendor", "scanner_model", "site", "view", "photometric", "software_version", "sex",
        "age_band")]
    + [("NumericDrift", f, "metadata") for f in ("kvp", "exposure_mas", "pixel_spacing_mm",
                                                 "age_years")]
    + [("ScoreDrift", "score", "prediction"), ("PositiveRateDrift", "positive_rate",
                                               "prediction")]
    + [("PerformanceDrift", m, "performance") for m in (
        "override_rate", "sensitivity", "specificity", "ppv", "npv")]
)
SUBGROUPS = ([("age_band", v) for v in ("0-17", "18-39", "40-64", "65-79", "80+")]
             + [("manufacturer", s[1]) for s in SCANNERS[:6:2]]
             + [("scanner_model", s[2]) for s in SCANNERS[:7]]
             + [("site", s) for s in ("north", "south", "east")]
             + [("sex", s) for s in ("F", "M")] + [("view", v) for v in ("PA", "AP", "LATERAL")])
INFERENCE_COLUMNS = (
    "event_id", "model_version_id", "model", "ts", "received_at", "study_key", "patient_key",
    "sex", "age_years", "age_band", "manufacturer", "vendor", "scanner_model", "station",
    "site", "modality", "body_part", "view", "kvp", "exposure_mas", "pixel_spacing_mm",
    "photometric", "software_version", "scores", "score", "positive", "threshold",
    "latency_ms",
)
OVERRIDE_COLUMNS = ("event_id", "model", "model_version", "study_key", "ts", "received_at",
                    "radiologist_positive", "finding", "agrees_with_model", "reader_key")


# --------------------------------------------------------------------------- the store


def _timestamps(start: datetime, seconds: np.ndarray, dialect: str) -> np.ndarray:
    """Text the driver stores as is: SQLAlchemy's SQLite format, or timestamptz for COPY."""
    base = np.datetime64(start.replace(tzinfo=None), "us")
    text_ = np.datetime_as_string(base + (seconds * 1e6).astype("timedelta64[us]"), unit="us")
    text_ = np.char.replace(text_, "T", " ")
    return np.char.add(text_, "+00") if dialect == "postgresql" else text_


def _age_bands(ages: np.ndarray) -> np.ndarray:
    return np.select([ages < 18, ages < 40, ages < 65, ages < 80],
                     ["0-17", "18-39", "40-64", "65-79"], "80+")


def generate(n: int, days: int, seed: int, dialect: str, version_ids: dict[str, int]
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Column arrays of the inference and override rows."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.uniform(0, days * 86400, n))
    day = seconds / 86400
    version = np.where(rng.random(n) < VERSIONS[0][1], VERSIONS[0][0], VERSIONS[1][0])
    shares = np.array([s[-1] for s in SCANNERS])
    unit = rng.choice(len(SCANNERS), size=n, p=shares / shares.sum())
    new_unit = (day > 0.7 * days) & (rng.random(n) < NEW_SCANNER_SHARE)
    unit[new_unit] = len(SCANNERS) - 1
    table = {name: np.array([s[i] for s in SCANNERS], dtype=object)[unit] for i, name in
             enumerate(("station", "manufacturer", "scanner_model", "site", "modality",
                        "software_version"))}
    updated = (table["station"] == "XR-SOUTH-1") & (day > 0.55 * days)
    table["software_version"][updated] = "VF12B"
    kvp = np.array([s[6] for s in SCANNERS])[unit] + rng.normal(0, 3, n)
    kvp[updated] -= 15
    mas = np.array([s[7] for s in SCANNERS])[unit] * rng.lognormal(0, 0.1, n)
    spacing = np.array([s[8] for s in SCANNERS])[unit]
    ages = np.clip(rng.normal(58, 18, n), 1, 90).round(1)
    truth = rng.random(n) < 0.12
    logit = -1.7 + 2.8 * truth + rng.normal(0, 1, n)
    score = 1 / (1 + np.exp(-logit))
    positive = score >= 0.5
    ids = np.arange(n)
    inference = {
        "event_id": np.char.add("e", ids.astype(str)),
        "model_version_id": np.where(version == VERSIONS[0][0], version_ids[VERSIONS[0][0]],
                                     version_ids[VERSIONS[1][0]]),
        "model": np.full(n, MODEL, dtype=object),
        "ts": _timestamps(START, seconds, dialect),
        "received_at": _timestamps(START, seconds + 2, dialect),
        "study_key": np.char.mod("%032x", ids * 2654435761 % (1 << 62)),
        "patient_key": np.char.mod("%032x", rng.integers(0, n // 3, n)),
        "sex": np.where(rng.random(n) < 0.5, "F", "M"),
        "age_years": ages,
        "age_band": _age_bands(ages),
        **table,
        "vendor": table["manufacturer"],
        "body_part": np.full(n, "CHEST", dtype=object),
        "view": rng.choice(np.array(["PA", "AP", "LATERAL"]), size=n, p=[0.55, 0.35, 0.1]),
        "kvp": kvp.round(1),
        "exposure_mas": mas.round(2),
        "pixel_spacing_mm": spacing,
        "photometric": np.full(n, "MONOCHROME2", dtype=object),
        "scores": np.char.add(np.char.add('{"pneumothorax": ', np.char.mod("%.4f", score)),
                              "}"),
        "score": score.round(4),
        "positive": positive,
        "threshold": np.full(n, 0.5),
        "latency_ms": rng.lognormal(np.log(80), 0.2, n).round(1),
    }
    read = rng.random(n) < 0.6
    rows = np.flatnonzero(read)
    delay = rng.lognormal(np.log(3 * 3600), 1.0, rows.size)
    radiologist = truth[rows] ^ (rng.random(rows.size) < 0.05)
    read_seconds = seconds[rows] + delay
    override = {
        "event_id": np.char.add("o", rows.astype(str)),
        "model": np.full(rows.size, MODEL, dtype=object),
        "model_version": version[rows],
        "study_key": inference["study_key"][rows],
        "ts": _timestamps(START, read_seconds, dialect),
        "received_at": _timestamps(START, read_seconds + 5, dialect),
        "radiologist_positive": radiologist,
        "finding": np.full(rows.size, "pneumothorax", dtype=object),
        "agrees_with_model": radiologist == positive[rows],
        "reader_key": np.char.mod("%032x", rng.integers(0, 40, rows.size) + 7),
    }
    return inference, override


def _chunks(columns: dict[str, np.ndarray], names: tuple[str, ...], size: int
            ) -> Iterator[list[tuple[Any, ...]]]:
    n = len(next(iter(columns.values())))
    for start in range(0, n, size):
        parts = [columns[name][start : start + size].tolist() for name in names]
        yield list(zip(*parts, strict=True))


def bulk_insert(engine: Engine, table: str, columns: dict[str, np.ndarray],
                names: tuple[str, ...]) -> None:
    """executemany on SQLite, COPY on PostgreSQL (a million ORM inserts would time Python)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "sqlite":
            marks = ", ".join("?" for _ in names)
            for rows in _chunks(columns, names, 50_000):
                cursor.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})",
                                   rows)
        else:
            with cursor.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
                for rows in _chunks(columns, names, 50_000):
                    for row in rows:
                        copy.write_row(row)
        raw.commit()
    finally:
        raw.close()


def _result(run_id: int, detector: str, feature: str, family: str, rng: np.random.Generator,
            drifting: bool) -> dict[str, Any]:
    p = float(rng.uniform(1e-6, 0.01) if drifting else rng.uniform(0.05, 1))
    return {"check_run_id": run_id, "detector": detector, "feature": feature,
            "statistic": float(rng.uniform(0, 1)), "p_value": p, "threshold": 0.05,
            "drift": drifting, "n_reference": 2000, "n_current": 2700,
            "details": {"family": family, "status": "ok"}}


def add_checks(engine: Engine, days: int, seed: int, version_ids: dict[str, int]) -> int:
    """Daily 1d and weekly 7d check runs of both versions, with their results."""
    rng = np.random.default_rng(seed + 1)
    sessions = session_factory(engine)
    runs = []
    for version, version_id in version_ids.items():
        for label, span, step in (("1d", 1, 1), ("7d", 7, 7)):
            for end_day in range(7 + span, days + 1, step):
                end = START + timedelta(days=end_day)
                late = end_day > 0.55 * days
                health = float(rng.uniform(0.3, 0.6) if late else rng.uniform(0.8, 1.0))
                runs.append({
                    "model_version_id": version_id, "baseline_id": None, "window_kind": "time",
                    "window_label": label, "window_start": end - timedelta(days=span),
                    "window_end": end, "started_at": end, "finished_at": end, "status": "ok",
                    "n_studies": 2700 * span, "health_score": health,
                    "health_status": "green" if health >= 0.8 else "red",
                    "report_path": f"{MODEL}/{version}/{label}-{end_day}.html"})
    with session_scope(sessions) as session:
        session.execute(insert(CheckRun), runs)
        stored = session.execute(select(CheckRun.id, CheckRun.window_end)).all()
    results: list[dict[str, Any]] = []
    for run_id, end in stored:
        late = (end - START).days > 0.55 * days
        for detector, feature, family in DRIFT_RESULTS:
            drifting = late and feature in ("software_version", "kvp", "embedding")
            results.append(_result(run_id, detector, feature, family, rng, drifting))
        for field, value in SUBGROUPS:
            for metric in ("sensitivity", "specificity", "override_rate"):
                row = _result(run_id, "SubgroupBias", f"{field}={value}:{metric}", "bias", rng,
                              late and value == "80+")
                low = float(rng.uniform(0.6, 0.8))
                row["details"] = {
                    "family": "bias", "status": "ok", "field": field, "value": value,
                    "metric": metric, "n": 300, "group_value": low + 0.05,
                    "ci": [low, low + 0.1], "rest_value": 0.8, "gap": low - 0.75,
                    "direction": "worse", "q_value": row["p_value"] * 3}
                results.append(row)
        if late:
            results.append({
                "check_run_id": run_id, "detector": "Attribution", "feature": "embedding",
                "statistic": 0.7, "p_value": None, "threshold": 0.0, "drift": False,
                "n_reference": 2000, "n_current": 2700,
                "details": {"family": "attribution", "ranking": [
                    {"field": f, "value": v, "n_reference": 400, "n_current": 500,
                     "share_reference": 0.2, "share_current": 0.2, "own_drift": 0.5,
                     "contribution": c, "explained_share": 0.5, "basis": "embedding"}
                    for f, v, c in (("software_version", "VF12B", 0.7),
                                    ("station", "XR-SOUTH-1", 0.3),
                                    ("scanner_model", "Ysio Max", 0.3),
                                    ("site", "south", 0.1))]}})
    with session_scope(sessions) as session:
        for start in range(0, len(results), 10_000):
            session.execute(insert(CheckResult), results[start : start + 10_000])
    return len(results)


def build_store(engine: Engine, *, n: int, days: int, seed: int) -> dict[str, int]:
    upgrade(engine)
    sessions = session_factory(engine)
    now = START + timedelta(days=days)
    with session_scope(sessions) as session:
        for version, _ in VERSIONS:
            session.add(ModelVersion(model=MODEL, version=version, status="active",
                                     created_at=START, updated_at=START))
        session.flush()
        version_ids = dict(session.execute(select(ModelVersion.version, ModelVersion.id))
                           .all())
        session.add(ModelAlias(model=MODEL, alias="production",
                               model_version_id=version_ids["1.4.0"], updated_at=START))
        for version_id in version_ids.values():
            session.add(Baseline(model_version_id=version_id, created_at=START,
                                 window_start=START, window_end=START + timedelta(days=7),
                                 n_studies=5000, summary={}))
    inference, override = generate(n, days, seed, engine.dialect.name, version_ids)
    bulk_insert(engine, "inference", inference, INFERENCE_COLUMNS)
    bulk_insert(engine, "override", override, OVERRIDE_COLUMNS)
    n_results = add_checks(engine, days, seed, version_ids)
    with session_scope(sessions) as session:
        alerts = []
        for i, (feature, state) in enumerate([("software_version", "firing"),
                                              ("kvp", "firing"), ("site", "resolved")] * 8):
            began = START + timedelta(days=int(0.55 * days) + i)
            alerts.append(Alert(
                key=f"metadata-drift:{feature}:{i}", rule="metadata-drift", model=MODEL,
                model_version="1.4.0", severity="critical" if i % 3 == 0 else "warning",
                state=state, labels={"detector": "CategoricalDrift", "feature": feature},
                summary=f"{feature} distribution changed", consecutive=3, firing_windows=2,
                started_at=began, fired_at=began, updated_at=began,
                resolved_at=began + timedelta(days=2) if state == "resolved" else None))
        session.add_all(alerts)
        session.flush()
        session.add(RollbackRecommendation(
            model=MODEL, alias="production", from_version="1.4.0", to_version="1.3.0",
            policy="critical-sustained", alert_id=alerts[0].id, status="pending",
            reason="critical alert firing", created_at=now, hook_attempts=0))
        for i in range(60):
            session.add(AuditEntry(ts=START + timedelta(days=i), actor="benchmark",
                                   action="acknowledge_alert", model=MODEL,
                                   model_version="1.4.0", reason="seen"))
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("ANALYZE"))
    else:
        with engine.begin() as connection:
            connection.execute(text("ANALYZE"))
            connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    return {"inferences": n, "reads": len(override["event_id"]), "check_results": n_results}


def count_store(engine: Engine) -> dict[str, int]:
    """The sizes of a store built by an earlier run (``--database`` reused)."""
    with engine.connect() as connection:
        return {name: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
                for name, table in (("inferences", "inference"), ("reads", "override"),
                                    ("check_results", "check_result"))}


# --------------------------------------------------------------------------- timing


def page_queries(filters: q.Filters, run_id: int | None) -> list[tuple[str, tuple, dict]]:
    """(query, args, kwargs) of what the pages run for these filters."""
    out: list[tuple[str, tuple, dict]] = [
        ("filter_options", (), {}),
        ("model_statuses", (), {"start": filters.start, "end": filters.end}),
        ("daily_volume", (filters,), {}),
        ("health_trend", (filters,), {}),
        ("drift_series", (filters,), {}),
        ("baseline_periods", (filters,), {}),
        ("alert_episodes", (filters,), {}),
        ("latest_run_with", (filters, "SubgroupBias"), {}),
    ]
    if run_id is not None:
        out += [("attribution_ranking", (run_id,), {}), ("bias_table", (run_id,), {})]
    out += [
        ("fleet_view", (filters,), {}),
        ("read_performance", (filters,), {}),
        ("recent_overridden", (filters,), {"limit": 25}),
        ("alerts_frame", (), {"model": MODEL, "states": ("firing", "pending")}),
        ("registry_frame", (MODEL,), {}),
        ("version_metrics", (filters, ("1.4.0", "1.3.0")), {}),
        ("rollback_recommendations", (), {"model": MODEL, "status": "pending"}),
        ("audit_log", (), {"model": MODEL, "limit": 200}),
    ]
    return out


def _size(value: Any) -> int:
    if isinstance(value, pd.DataFrame | list | tuple):
        return len(value)
    if isinstance(value, dict):
        return sum(_size(v) for v in value.values())
    if isinstance(value, q.ReadPerformance):
        return len(value.daily)
    if isinstance(value, q.FleetView):
        return sum(len(frame) for frame in value.mix.values())
    return 1


def time_queries(engine: Engine, filters: q.Filters, repeats: int) -> list[dict[str, Any]]:
    sessions = session_factory(engine)
    with session_scope(sessions) as session:
        run_id = q.latest_run_with(session, filters, "SubgroupBias")
    rows = []
    for name, args, kwargs in page_queries(filters, run_id):
        times = []
        value: Any = None
        for _ in range(1 + repeats):
            started = time.perf_counter()
            with session_scope(sessions) as session:
                value = getattr(q, name)(session, *args, **kwargs)
            times.append(time.perf_counter() - started)
        label = name
        rows.append({"query": label, "rows": _size(value), "first_s": times[0],
                     "best_s": min(times[1:]) if repeats else times[0]})
    return rows


PAGES = ("overview", "drift", "fleet", "bias", "overrides", "alerts", "versions")


def time_pages(url: str, first: date, last: date, *, everything: bool, timeout_s: float
               ) -> list[dict[str, Any]]:
    """Each page with an empty Streamlit cache, then again with it warm."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ.update({"MONITOR_DATABASE_URL": url, "MONITOR_SECRET_KEY": SECRET,
                       "DO_NOT_TRACK": "1"})
    app = str(ROOT / "dashboards" / "app.py")

    def timed(at: AppTest, page: str) -> float:
        started = time.perf_counter()
        at.run()
        elapsed = time.perf_counter() - started
        if at.exception:
            raise RuntimeError(f"{page}: {at.exception[0].value}")
        return elapsed

    out = []
    for page in PAGES:
        at = AppTest.from_file(app, default_timeout=timeout_s)
        at.run()  # the runtime and the filters (not timed)
        if everything:
            at.selectbox(key=f"filter_version_{MODEL}").set_value("(all)")
            at.date_input(key=f"filter_range_{MODEL}").set_value((first, last))
            at.run()
        if page != "overview":
            at.switch_page(f"views/{page}.py")
        st.cache_data.clear()
        cold = timed(at, page)
        warm = timed(at, page)
        out.append({"page": page, "cold_s": cold, "warm_s": warm})
    return out


# --------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inferences", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres", default=None, help="admin URL; a scratch database is "
                        "created and dropped")
    parser.add_argument("--database", type=Path, default=None,
                        help="SQLite file to build (or reuse, when it exists)")
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "dashboard.md")
    args = parser.parse_args()

    tmp = None if args.database else Path(tempfile.mkdtemp(prefix="dashboard-bench-"))
    database = args.database or tmp / "dashboard.db"  # type: ignore[operator]
    scratch = ExitStack()
    backends = [("sqlite", f"sqlite:///{database}")]
    if args.postgres:
        backends.append(("postgresql", scratch.enter_context(
            scratch_postgres(args.postgres, "monitor_dashboard_bench"))))

    last_day = (START + timedelta(days=args.days - 1)).date()
    default = q.Filters(model=MODEL, version="1.4.0",
                        start=START + timedelta(days=args.days - 30),
                        end=START + timedelta(days=args.days))
    everything = q.Filters(model=MODEL, start=START, end=START + timedelta(days=args.days))
    sections = []
    try:
        for name, url in backends:
            engine = make_engine(url)
            started = time.perf_counter()
            reuse = name == "sqlite" and args.database is not None and database.exists()
            sizes = (count_store(engine) if reuse else
                     build_store(engine, n=args.inferences, days=args.days, seed=args.seed))
            build_s = float("nan") if reuse else time.perf_counter() - started
            print(f"{name}: store ready in {build_s:.0f}s ({sizes})", file=sys.stderr)
            queries = {label: time_queries(engine, filters, args.repeats)
                       for label, filters in (("default", default), ("everything", everything))}
            engine.dispose()
            pages = {label: time_pages(url, START.date(), last_day, everything=whole,
                                       timeout_s=600)
                     for label, whole in (("default", False), ("everything", True))}
            sections.append((name, sizes, build_s, queries, pages))
            print(format_section(name, sizes, build_s, queries, pages), file=sys.stderr)
    finally:
        scratch.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    import streamlit

    header = (
        f"Dashboard benchmark: {args.inferences:,} inferences of one model (2 versions) over "
        f"{args.days} days, 60% read, daily 1d + weekly 7d checks of both versions (seed "
        f"{args.seed}).\nDefault filters: the active version, the last 30 days; everything: "
        f"both versions, all {args.days} days.\n"
        f"Machine: {machine()}; Streamlit {streamlit.__version__}, SQLAlchemy "
        f"{sqlalchemy.__version__}, pandas {pd.__version__}, altair "
        f"{importlib.metadata.version('altair')}. Load average when done: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (a shared machine: the times "
        "include waiting for a core).\n")
    body = "\n".join(format_section(*section) for section in sections)
    report = header + "\n" + body
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        "# Dashboard page load and query times\n\n`python benchmarks/dashboard.py"
        + (" --postgres URL" if args.postgres else "") + "`\n\n" + report
        + "\nPage cold: the page's run with an empty Streamlit cache (every query it needs "
        "runs, the sidebar's filter options included). Page warm: a rerun "
        "within the cache TTL (30 s), what clicking around costs. Query first: its first "
        "call; best: the best of the next "
        f"{args.repeats}. Queries group by day in SQL; no page loads a row per study.\n")
    print(json.dumps({"output": str(args.output)}), file=sys.stderr)


def format_section(name: str, sizes: dict[str, int], build_s: float,
                   queries: dict[str, list[dict[str, Any]]],
                   pages: dict[str, list[dict[str, Any]]]) -> str:
    built = "reused" if math.isnan(build_s) else f"built in {build_s:.0f} s"
    lines = [f"## {name}\n", f"Store {built}: "
             + ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in sizes.items()) + ".\n",
             "| page | cold s (default) | warm s (default) | cold s (everything) "
             "| warm s (everything) |", "|---|---|---|---|---|"]
    for d, e in zip(pages["default"], pages["everything"], strict=True):
        lines.append(f"| {d['page']} | {d['cold_s']:.2f} | {d['warm_s']:.2f} | "
                     f"{e['cold_s']:.2f} | {e['warm_s']:.2f} |")
    lines += ["", "| query | rows (default) | first s | best s | rows (everything) | "
              "first s | best s |", "|---|---|---|---|---|---|---|"]
    for d, e in zip(queries["default"], queries["everything"], strict=True):
        lines.append(f"| {d['query']} | {d['rows']:,} | {d['first_s']:.3f} | "
                     f"{d['best_s']:.3f} | {e['rows']:,} | {e['first_s']:.3f} | "
                     f"{e['best_s']:.3f} |")
    total = {k: sum(r["best_s"] for r in v) for k, v in queries.items()}
    lines.append(f"| **all queries** | | | {total['default']:.2f} | | | "
                 f"{total['everything']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
