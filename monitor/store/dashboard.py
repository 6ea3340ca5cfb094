"""The dashboard's query layer: pre-aggregated reads returning DataFrames and dataclasses.

Every function takes a Session and the filter values it depends on, and does its grouping in
SQL (per day, per value, per version), so a page never loads one row per study: a database
with a million inferences returns a few hundred rows per query. Results are plain DataFrames
and frozen dataclasses, so the Streamlit pages can cache them (``st.cache_data``) keyed by the
filter values. Days are UTC calendar days.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from monitor_client.events import as_utc
from sqlalchemy import Float, Integer, and_, case, cast, exists, false, func, or_, select, true
from sqlalchemy.orm import Session, aliased

from monitor.detect.sequential import STREAM_DETECTOR
from monitor.detect.stats import wilson_interval
from monitor.errors import ValidationError
from monitor.grid import GRID_LABEL, grid_until, grid_windows
from monitor.store.incidents import AlertInfo, IncidentInfo, list_incidents
from monitor.store.models import (
    Alert,
    AuditEntry,
    Baseline,
    CheckResult,
    CheckRun,
    Inference,
    ModelAlias,
    ModelVersion,
    Override,
    RollbackRecommendation,
)
from monitor.store.registry import active_version, monitored_versions
from monitor.store.registry import aliases as model_aliases
from monitor.store.repo import newest_timestamp
from monitor.store.results import newest_baseline, stored_windows
from monitor.vocabulary import STRATUM_FIELDS, HealthStatus

BIAS_DETECTOR = "SubgroupBias"
ATTRIBUTION_DETECTOR = "Attribution"
# Runs whose results count: "partial" runs lost a family but scored the rest.
DONE_STATUSES = ("ok", "partial")
FleetField = Literal["manufacturer", "scanner_model", "software_version", "site"]
FLEET_FIELDS: tuple[FleetField, ...] = ("manufacturer", "scanner_model", "software_version", "site")
RATE_METRICS = ("override_rate", "sensitivity", "specificity", "ppv", "positive_rate")
# Delay histogram bucket edges in hours (the last bucket is open).
DELAY_EDGES_H = (0, 1, 2, 4, 8, 12, 24, 48, 72, 168)


@dataclass(frozen=True)
class Filters:
    """What the sidebar chose: ``version`` None means every version of ``model``; ``start`` and
    ``end`` bound inference time (``end`` exclusive); ``site`` None means every site."""

    model: str
    version: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    site: str | None = None


@dataclass(frozen=True)
class FilterOptions:
    models: tuple[str, ...]
    versions: dict[str, tuple[str, ...]]
    active_versions: dict[str, str | None]
    sites: tuple[str, ...]
    first_ts: dict[str, datetime | None]
    last_ts: dict[str, datetime | None]


@dataclass(frozen=True)
class ModelStatus:
    """One model at a glance. ``rag`` is red when a critical incident is open (or a critical
    finding fires outside any incident) or the active version's latest health is red; amber
    on a warning incident or finding, amber health, or no check yet. ``reasons`` say why in
    words, the open incidents first (plain text: escape it where Markdown renders)."""

    model: str
    active_version: str | None
    aliases: dict[str, str]
    versions: tuple[str, ...]
    health_score: float | None
    health_status: str | None
    last_check_at: datetime | None
    alerts_firing: int
    critical_firing: int
    studies: int
    rag: HealthStatus
    reasons: tuple[str, ...] = field(default_factory=tuple)
    # the active version's last HEALTH_HISTORY health scores, of its most checked window length
    health_history: tuple[float, ...] = field(default_factory=tuple)
    incidents_open: int = 0
    critical_incidents: int = 0


HEALTH_HISTORY = 30


# --------------------------------------------------------------------------- SQL helpers


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _day(session: Session, column: Any) -> Any:
    """The UTC calendar day of a timestamp column."""
    if _dialect(session) == "postgresql":
        return func.date(func.timezone("UTC", column))
    return func.date(column)  # SQLite stores naive UTC text


def _seconds_between(session: Session, later: Any, earlier: Any) -> Any:
    if _dialect(session) == "postgresql":
        return func.extract("epoch", later - earlier)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def _whole_hours(session: Session, later: Any, earlier: Any) -> Any:
    """Whole hours from ``earlier`` to ``later`` (NULL when either is). SQLite: CAST
    truncates, which is the floor for the non-negative delays that matter (SQLAlchemy's
    floor() there is a Python function that fails on NULL); PostgreSQL: floor (its CAST
    rounds)."""
    hours = cast(_seconds_between(session, later, earlier), Float) / 3600.0
    if _dialect(session) == "postgresql":
        return func.floor(hours)
    return cast(hours, Integer)


def _as_day(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values.astype(str), format="%Y-%m-%d", utc=True)


def _version_ids(session: Session, model: str, version: str | None) -> list[int]:
    query = select(ModelVersion.id).where(ModelVersion.model == model)
    if version is not None:
        query = query.where(ModelVersion.version == version)
    return list(session.scalars(query))


def _version_names(session: Session, model: str) -> dict[int, str]:
    return dict(session.execute(
        select(ModelVersion.id, ModelVersion.version).where(ModelVersion.model == model)
    ).all())


def _where_inferences(query: Any, session: Session, filters: Filters) -> Any:
    query = query.where(Inference.model == filters.model)
    if filters.version is not None:
        query = query.where(Inference.model_version_id.in_(
            _version_ids(session, filters.model, filters.version)))
    if filters.start is not None:
        query = query.where(Inference.ts >= filters.start)
    if filters.end is not None:
        query = query.where(Inference.ts < filters.end)
    if filters.site is not None:
        query = query.where(Inference.site == filters.site)
    return query


def _where_runs(query: Any, session: Session, filters: Filters) -> Any:
    """Check runs of the filters' model (and version) whose window ends inside the range."""
    query = query.where(CheckRun.model_version_id.in_(
        _version_ids(session, filters.model, filters.version)))
    if filters.start is not None:
        query = query.where(CheckRun.window_end > filters.start)
    if filters.end is not None:
        query = query.where(CheckRun.window_end <= filters.end + timedelta(days=1))
    return query


def _interval_columns(frame: pd.DataFrame, name: str, successes: str, n: str) -> None:
    """Add ``name``, ``name_low`` and ``name_high`` (Wilson 95%) from two count columns."""
    values, lows, highs = [], [], []
    for k, total in zip(frame[successes].tolist(), frame[n].tolist(), strict=True):
        total = int(total or 0)
        low, high = wilson_interval(int(k or 0), total)
        values.append(k / total if total else np.nan)
        lows.append(low if total else np.nan)
        highs.append(high if total else np.nan)
    frame[name] = values
    frame[f"{name}_low"] = lows
    frame[f"{name}_high"] = highs


# --------------------------------------------------------------------------- filters, overview


def filter_options(session: Session) -> FilterOptions:
    """Models, their versions and active version, the sites seen, and each model's first and
    last inference time (index range scans, not table scans)."""
    versions: dict[str, list[str]] = {}
    for model, version in session.execute(
        select(ModelVersion.model, ModelVersion.version).order_by(
            ModelVersion.model, ModelVersion.created_at, ModelVersion.id)
    ):
        versions.setdefault(model, []).append(version)
    first: dict[str, datetime | None] = {}
    last: dict[str, datetime | None] = {}
    for model in versions:
        first[model] = session.scalar(select(func.min(Inference.ts)).where(
            Inference.model == model))
        last[model] = session.scalar(select(func.max(Inference.ts)).where(
            Inference.model == model))
    sites = sorted(s for s in session.scalars(
        select(Inference.site).where(Inference.site.is_not(None)).group_by(Inference.site))
        if s is not None)
    return FilterOptions(
        models=tuple(versions),
        versions={m: tuple(v) for m, v in versions.items()},
        active_versions={m: active_version(session, m) for m in versions},
        sites=tuple(sites),
        first_ts=first,
        last_ts=last,
    )


def _latest_run(session: Session, version_ids: Sequence[int]) -> CheckRun | None:
    return session.scalar(
        select(CheckRun).where(CheckRun.model_version_id.in_(version_ids),
                               CheckRun.status.in_(DONE_STATUSES))
        .order_by(CheckRun.window_end.desc(), CheckRun.finished_at.desc(), CheckRun.id.desc())
        .limit(1)
    )


def model_statuses(session: Session, *, start: datetime | None = None,
                   end: datetime | None = None) -> list[ModelStatus]:
    """Every model: active version, its latest health, open incidents, firing alerts, last
    check, studies in the range, and a red/amber/green verdict with the reasons for it."""
    statuses = []
    models = list(session.scalars(select(ModelVersion.model).group_by(ModelVersion.model)
                                  .order_by(ModelVersion.model)))
    for model in models:
        active = active_version(session, model)
        ids = _version_ids(session, model, active)
        run = _latest_run(session, ids) if active else None
        last_check = session.scalar(
            select(func.max(CheckRun.finished_at)).where(
                CheckRun.model_version_id.in_(_version_ids(session, model, None))))
        firing = session.execute(
            select(Alert.severity, func.count()).where(Alert.model == model,
                                                       Alert.state == "firing")
            .group_by(Alert.severity)
        ).all()
        by_severity = dict(firing)
        stray = dict(session.execute(
            select(Alert.severity, func.count()).where(Alert.model == model,
                                                       Alert.state == "firing",
                                                       Alert.incident_id.is_(None))
            .group_by(Alert.severity)).all())
        open_incidents = sorted(list_incidents(session, model=model, state="open"),
                                key=_incident_order)
        severities = [i.severity for i in open_incidents]
        studies = session.scalar(_where_inferences(
            select(func.count()).select_from(Inference), session,
            Filters(model=model, start=start, end=end))) or 0
        reasons = [incident_headline(i) for i in open_incidents[:MAX_INCIDENTS_NAMED]]
        if len(open_incidents) > MAX_INCIDENTS_NAMED:
            reasons.append(f"{len(open_incidents) - MAX_INCIDENTS_NAMED} more open "
                           "incident(s)")
        if stray.get("critical"):
            reasons.append(f"{stray['critical']} critical finding(s) firing outside any "
                           "incident")
        if run is not None and run.health_status == "red":
            reasons.append(f"health {run.health_score:.2f} (red)")
        red = ("critical" in severities or bool(stray.get("critical"))
               or (run is not None and run.health_status == "red"))
        if not red:
            if stray.get("warning"):
                reasons.append(f"{stray['warning']} warning finding(s) firing outside any "
                               "incident")
            if run is not None and run.health_status == "amber":
                reasons.append(f"health {run.health_score:.2f} (amber)")
            if run is None:
                reasons.append("no completed check for the active version")
        rag: HealthStatus = "red" if red else "amber" if reasons else "green"
        history: tuple[float, ...] = ()
        if run is not None:
            done = and_(CheckRun.model_version_id.in_(ids), CheckRun.status.in_(DONE_STATUSES),
                        CheckRun.health_score.is_not(None))
            label = session.scalar(select(CheckRun.window_label).where(done)
                                   .group_by(CheckRun.window_label)
                                   .order_by(func.count().desc()).limit(1))
            scores = session.scalars(
                select(CheckRun.health_score).where(done, CheckRun.window_label == label)
                .order_by(CheckRun.window_end.desc()).limit(HEALTH_HISTORY)).all()
            history = tuple(float(x) for x in reversed(scores) if x is not None)
        statuses.append(ModelStatus(
            model=model,
            active_version=active,
            aliases=model_aliases(session, model),
            versions=tuple(_version_names(session, model).values()),
            health_score=run.health_score if run else None,
            health_status=run.health_status if run else None,
            last_check_at=last_check,
            alerts_firing=sum(by_severity.values()),
            critical_firing=int(by_severity.get("critical", 0)),
            studies=int(studies),
            rag=rag,
            reasons=tuple(reasons),
            health_history=history,
            incidents_open=len(open_incidents),
            critical_incidents=severities.count("critical"),
        ))
    return statuses


@dataclass(frozen=True)
class GridProgress:
    """How far the daily grid's checks are: ``expected`` grid windows (every complete local
    day after a monitored version's baseline up to its newest data, as the scheduler counts
    them: ``monitor.grid.grid_until``), ``checked`` of them with a stored run."""

    expected: int
    checked: int

    @property
    def filling_in(self) -> bool:
        """Days are still waiting for their check (a back-fill, a new version, an outage)."""
        return self.checked < self.expected


def grid_progress(session: Session, *, timezone: str, now: datetime | None = None
                  ) -> GridProgress:
    """Checked and expected grid windows over every monitored version (the ``production``
    alias and every active version) that has a baseline."""
    zone, now = ZoneInfo(timezone), now or datetime.now(UTC)
    expected = checked = 0
    for info in monitored_versions(session):
        baseline = newest_baseline(session, info.id)
        newest = newest_timestamp(session, info.id)
        if baseline is None or baseline.window_end is None or newest is None:
            continue
        windows = grid_windows(after=baseline.window_end, until=grid_until(now, newest, zone),
                               zone=zone)
        if not windows:
            continue
        stored = {(as_utc(start), as_utc(end)) for start, end in stored_windows(
            session, info.id, label=GRID_LABEL, start=windows[0].start, end=windows[-1].end)}
        expected += len(windows)
        checked += sum((w.start, w.end) in stored for w in windows)
    return GridProgress(expected=expected, checked=checked)


def count_studies(session: Session, filters: Filters) -> int:
    return int(session.scalar(_where_inferences(
        select(func.count()).select_from(Inference), session, filters)) or 0)


def daily_volume(session: Session, filters: Filters) -> pd.DataFrame:
    """Studies and model positives per day and version: day, version, studies, positives,
    positive_rate."""
    day = _day(session, Inference.ts).label("day")
    query = _where_inferences(
        select(day, Inference.model_version_id.label("version_id"),
               func.count().label("studies"),
               func.sum(case((Inference.positive.is_(True), 1), else_=0)).label("positives"))
        .group_by(day, Inference.model_version_id), session, filters)
    frame = pd.DataFrame(session.execute(query).all(),
                         columns=["day", "version_id", "studies", "positives"])
    names = _version_names(session, filters.model)
    frame.insert(1, "version", frame.pop("version_id").map(names))
    frame["day"] = _as_day(frame["day"]) if len(frame) else frame["day"]
    frame["positives"] = frame["positives"].fillna(0).astype(int)
    frame["positive_rate"] = frame["positives"] / frame["studies"].where(frame["studies"] > 0)
    return frame.sort_values(["day", "version"]).reset_index(drop=True)


def health_trend(session: Session, filters: Filters) -> pd.DataFrame:
    """Completed check runs in the range: run_id, version, window_label, window_start,
    window_end, n_studies, health_score, health_status, report_path."""
    query = _where_runs(
        select(CheckRun.id, CheckRun.model_version_id, CheckRun.window_label,
               CheckRun.window_start, CheckRun.window_end, CheckRun.n_studies,
               CheckRun.health_score, CheckRun.health_status, CheckRun.report_path,
               CheckRun.finished_at)
        .where(CheckRun.status.in_(DONE_STATUSES)), session, filters)
    columns = ["run_id", "version_id", "window_label", "window_start", "window_end",
               "n_studies", "health_score", "health_status", "report_path", "finished_at"]
    frame = pd.DataFrame(session.execute(query).all(), columns=columns)
    frame.insert(1, "version", frame.pop("version_id").map(_version_names(session,
                                                                          filters.model)))
    for name in ("window_start", "window_end", "finished_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    return frame.sort_values(["window_end", "version", "run_id"]).reset_index(drop=True)


# --------------------------------------------------------------------------- drift


def drift_series(session: Session, filters: Filters, *,
                 window_label: str | None = None) -> pd.DataFrame:
    """Every window-level detector result over time (subgroup results are on the bias page,
    the sequential evidence in ``sequential_series``):
    run_id, version, window_label, window_start, window_end, detector, feature, family,
    statistic, p_value, threshold, drift, n_reference, n_current, status, value, kind
    (``value`` is the p-value where the detector has one, else the statistic; ``kind`` says
    which, so a chart can draw the threshold on the right side)."""
    query = _where_runs(
        select(CheckRun.id, CheckRun.model_version_id, CheckRun.window_label,
               CheckRun.window_start, CheckRun.window_end, CheckResult.detector,
               CheckResult.feature, CheckResult.statistic, CheckResult.p_value,
               CheckResult.threshold, CheckResult.drift, CheckResult.n_reference,
               CheckResult.n_current, CheckResult.details)
        .join(CheckResult, CheckResult.check_run_id == CheckRun.id)
        .where(CheckRun.status.in_(DONE_STATUSES),
               CheckResult.detector.not_in((BIAS_DETECTOR, ATTRIBUTION_DETECTOR,
                                            STREAM_DETECTOR))),
        session, filters)
    if window_label is not None:
        query = query.where(CheckRun.window_label == window_label)
    columns = ["run_id", "version_id", "window_label", "window_start", "window_end", "detector",
               "feature", "statistic", "p_value", "threshold", "drift", "n_reference",
               "n_current", "details"]
    frame = pd.DataFrame(session.execute(query).all(), columns=columns)
    frame.insert(1, "version", frame.pop("version_id").map(_version_names(session,
                                                                          filters.model)))
    details = frame.pop("details").tolist()
    frame["family"] = [(d or {}).get("family") for d in details]
    frame["status"] = [(d or {}).get("status", "ok") for d in details]
    frame["kind"] = np.where(frame["p_value"].notna(), "p-value", "statistic")
    frame["value"] = frame["p_value"].where(frame["p_value"].notna(), frame["statistic"])
    for name in ("window_start", "window_end"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    frame["drift"] = frame["drift"].astype(bool)
    return frame.sort_values(["detector", "feature", "window_end"]).reset_index(drop=True)


SEQUENTIAL_COLUMNS = ["run_id", "version", "window_label", "window_start", "window_end",
                      "stream", "family", "statistic", "warning_at", "page_at", "level",
                      "since", "days", "daily_p"]
LEVEL_ORDER = {"quiet": 0, "warning": 1, "page": 2}


def sequential_series(session: Session, filters: Filters, *,
                      window_label: str | None = None) -> pd.DataFrame:
    """The stored sequential evidence (``SequentialEvidence`` rows, one per stream and daily
    grid window with evidence that day): ``SEQUENTIAL_COLUMNS``, ``family`` being the stream's
    own family (embedding, metadata, ...), ``level`` quiet, warning or page, ``since`` the
    first day of the run behind the statistic. Empty for checks off the daily grid, which
    store no such rows."""
    query = _where_runs(
        select(CheckRun.id, CheckRun.model_version_id, CheckRun.window_label,
               CheckRun.window_start, CheckRun.window_end, CheckResult.feature,
               CheckResult.statistic, CheckResult.threshold, CheckResult.details)
        .join(CheckResult, CheckResult.check_run_id == CheckRun.id)
        .where(CheckRun.status.in_(DONE_STATUSES), CheckResult.detector == STREAM_DETECTOR),
        session, filters)
    if window_label is not None:
        query = query.where(CheckRun.window_label == window_label)
    rows = []
    for run_id, version_id, label, start, end, stream, statistic, page_at, details in (
            session.execute(query)):
        details = details or {}
        rows.append((run_id, version_id, label, start, end, stream,
                     str(details.get("of_family") or ""), float(statistic),
                     float(details.get("warning_at", page_at)),
                     float(details.get("page_at", page_at)),
                     str(details.get("level") or "quiet"), details.get("since"),
                     details.get("days"), details.get("daily_p")))
    frame = pd.DataFrame(rows, columns=["run_id", "version_id", *SEQUENTIAL_COLUMNS[2:]])
    frame.insert(1, "version", frame.pop("version_id").map(_version_names(session,
                                                                          filters.model)))
    for name in ("window_start", "window_end"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    for name in ("statistic", "warning_at", "page_at", "daily_p"):
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return frame.sort_values(["window_start", "version", "family", "stream"]
                             ).reset_index(drop=True)


def paging_windows(sequential: pd.DataFrame) -> set[int]:
    """Run ids of the windows in a ``sequential_series`` frame where at least one stream is at
    its page threshold (what the ``sequential-page`` rule fires on)."""
    if sequential.empty:
        return set()
    return {int(run_id) for run_id in sequential.loc[sequential["level"] == "page", "run_id"]}


FAMILY_EVIDENCE_COLUMNS = ["version", "run_id", "window_start", "family", "ratio",
                           "warning_ratio", "stream", "statistic", "warning_at", "page_at",
                           "level", "since", "n_streams"]


def family_evidence(sequential: pd.DataFrame) -> pd.DataFrame:
    """Per version, window and family: the stream with the largest statistic relative to its
    page threshold (``ratio`` = statistic / page_at, 1 at the page level), the warning level on
    the same scale (``warning_ratio`` = warning_at / page_at: the thresholds of one family's
    streams on one day are equal, they depend on the family's number of streams), the
    family's worst level and its number of streams. ``FAMILY_EVIDENCE_COLUMNS``."""
    if sequential.empty:
        return pd.DataFrame(columns=FAMILY_EVIDENCE_COLUMNS)
    data = sequential.copy()
    data["ratio"] = data["statistic"] / data["page_at"]
    data["warning_ratio"] = data["warning_at"] / data["page_at"]
    data["level_rank"] = data["level"].map(LEVEL_ORDER).fillna(0)
    keys = ["version", "run_id", "window_start", "family"]
    worst = data.groupby(keys)["level_rank"].max().rename("worst")
    counts = data.groupby(keys)["stream"].nunique().rename("n_streams")
    top = data.sort_values("ratio", ascending=False).drop_duplicates(keys)
    top = top.join(worst, on=keys).join(counts, on=keys)
    names = {rank: level for level, rank in LEVEL_ORDER.items()}
    top["level"] = top["worst"].map(names)
    return (top[FAMILY_EVIDENCE_COLUMNS].sort_values(["version", "window_start", "family"])
            .reset_index(drop=True))


def baseline_periods(session: Session, filters: Filters) -> pd.DataFrame:
    """Each version's baselines: version, baseline_id, window_start, window_end, n_studies,
    created_at (the newest baseline of a version is the one its checks use)."""
    query = (select(Baseline.id, Baseline.model_version_id, Baseline.window_start,
                    Baseline.window_end, Baseline.n_studies, Baseline.created_at)
             .where(Baseline.model_version_id.in_(
                 _version_ids(session, filters.model, filters.version))))
    frame = pd.DataFrame(session.execute(query).all(),
                         columns=["baseline_id", "version_id", "window_start", "window_end",
                                  "n_studies", "created_at"])
    frame.insert(0, "version", frame.pop("version_id").map(_version_names(session,
                                                                          filters.model)))
    for name in ("window_start", "window_end", "created_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    return frame.sort_values(["version", "created_at"]).reset_index(drop=True)


def alert_episodes(session: Session, filters: Filters) -> pd.DataFrame:
    """Alert episodes overlapping the range, from when the alert fired (or, if it never fired,
    opened) until it resolved, or still open: alert_id, rule, severity, state, model_version,
    started_at, ended_at, summary, detector and feature (from the alert's labels; empty for
    model-level alerts such as the health score), open."""
    began = func.coalesce(Alert.fired_at, Alert.started_at)
    query = select(Alert.id, Alert.rule, Alert.severity, Alert.state, Alert.model_version,
                   began, Alert.resolved_at, Alert.summary, Alert.labels
                   ).where(Alert.model == filters.model)
    if filters.version is not None:
        query = query.where(or_(Alert.model_version == filters.version,
                                Alert.model_version.is_(None)))
    if filters.end is not None:
        query = query.where(began < filters.end + timedelta(days=1))
    if filters.start is not None:
        query = query.where(or_(Alert.resolved_at.is_(None), Alert.resolved_at >= filters.start))
    frame = pd.DataFrame(session.execute(query).all(),
                         columns=["alert_id", "rule", "severity", "state", "model_version",
                                  "started_at", "ended_at", "summary", "labels"])
    for name in ("started_at", "ended_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    labels = frame.pop("labels").tolist()
    frame["detector"] = [(item or {}).get("detector") for item in labels]
    frame["feature"] = [(item or {}).get("feature") for item in labels]
    frame["open"] = frame["ended_at"].isna()
    return frame.sort_values("started_at").reset_index(drop=True)


def check_run(session: Session, run_id: int) -> dict[str, Any] | None:
    """One check run's window and report path, or None."""
    row = session.get(CheckRun, run_id)
    if row is None:
        return None
    return {
        "run_id": row.id, "version_id": row.model_version_id, "window_label": row.window_label,
        "window_start": row.window_start, "window_end": row.window_end,
        "n_studies": row.n_studies, "health_score": row.health_score,
        "health_status": row.health_status, "report_path": row.report_path,
        "baseline_id": row.baseline_id,
    }


ATTRIBUTION_COLUMNS = ["basis", "field", "value", "n_reference", "n_current",
                       "share_reference", "share_current", "own_drift", "contribution",
                       "explained_share", "where"]
# Fields whose values name equipment, and what to say about where a value runs.
_EQUIPMENT = {"software_version": ("manufacturer", "scanner_model", "station"),
              "station": ("manufacturer", "scanner_model", "site"),
              "scanner_model": ("manufacturer",)}


def attribution_ranking(session: Session, run_id: int) -> pd.DataFrame:
    """Which site, scanner model, software version, station or vendor drives the drift of one
    check run: the ranking the check stored (``Attribution`` results, one per basis:
    ``embedding`` when the embeddings drifted, ``metadata`` when the metadata did), largest
    contribution first within each basis, embedding basis first. Columns
    ``ATTRIBUTION_COLUMNS``; empty when the run found no drift to attribute."""
    rows: list[dict[str, Any]] = []
    stored = session.execute(
        select(CheckResult.feature, CheckResult.details)
        .where(CheckResult.check_run_id == run_id, CheckResult.detector == ATTRIBUTION_DETECTOR)
    ).all()
    for feature, details in stored:
        for item in (details or {}).get("ranking") or []:
            if isinstance(item, dict):
                rows.append({**{k: item.get(k) for k in ATTRIBUTION_COLUMNS}, "basis": feature})
    frame = pd.DataFrame(rows, columns=ATTRIBUTION_COLUMNS)
    if frame.empty:
        return frame
    for name in ATTRIBUTION_COLUMNS[3:-1]:
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    frame["value"] = frame["value"].astype(str)
    frame["where"] = _equipment_context(session, run_id, frame)
    frame["basis_order"] = (frame["basis"] != "embedding").astype(int)
    frame = frame.sort_values(["basis_order", "contribution"], ascending=[True, False])
    return frame.drop(columns="basis_order").reset_index(drop=True)


def _equipment_context(session: Session, run_id: int, frame: pd.DataFrame) -> list[str]:
    """For software versions, stations and scanner models of a ranking: the equipment they
    belong to in the run's window ("SIEMENS Ysio Max XR-SOUTH-1"), so a reader sees which
    scanner a software version runs on."""
    run = session.get(CheckRun, run_id)
    described: dict[tuple[str, str], str] = {}
    if run is None:
        return [""] * len(frame)
    for field_name, context in _EQUIPMENT.items():
        values = frame.loc[frame["field"] == field_name, "value"].unique().tolist()
        if not values:
            continue
        column = getattr(Inference, field_name)
        found: dict[str, list[str]] = {}
        for row in session.execute(
                select(column, *[getattr(Inference, c) for c in context])
                .where(Inference.model_version_id == run.model_version_id,
                       Inference.ts >= run.window_start, Inference.ts < run.window_end,
                       column.in_(values))
                .group_by(column, *[getattr(Inference, c) for c in context])):
            found.setdefault(str(row[0]), []).append(
                " ".join(str(part) for part in row[1:] if part is not None))
        for value, where in found.items():
            described[(field_name, value)] = "; ".join(sorted(where))
    return [described.get((f, v), "") for f, v in zip(frame["field"], frame["value"],
                                                       strict=True)]


# --------------------------------------------------------------------------- scanners and sites


def reference_end(session: Session, filters: Filters) -> datetime | None:
    """Where "new" starts: the end of the earliest baseline of the filtered versions; without
    a baseline, one day after the model's first inference."""
    ends = session.scalar(select(func.min(Baseline.window_end)).where(
        Baseline.model_version_id.in_(_version_ids(session, filters.model, filters.version))))
    if ends is not None:
        return ends
    first = session.scalar(select(func.min(Inference.ts)).where(
        Inference.model == filters.model))
    return None if first is None else first + timedelta(days=1)


def equipment_days(session: Session, filters: Filters) -> pd.DataFrame:
    """One scan of the model's (and version's) studies over all time, grouped by UTC day,
    manufacturer, scanner model, software version and site: day, the four fields, first_ts,
    last_ts, studies. The scanners page derives the mix over time (in the range) and when
    each value first appeared (over all time) from it; a few thousand rows a year."""
    day = _day(session, Inference.ts).label("day")
    keys = [getattr(Inference, name) for name in FLEET_FIELDS]
    query = _where_inferences(
        select(day, *keys, func.min(Inference.ts), func.max(Inference.ts), func.count())
        .group_by(day, *keys), session, Filters(model=filters.model, version=filters.version))
    frame = pd.DataFrame(session.execute(query).all(),
                         columns=["day", *FLEET_FIELDS, "first_ts", "last_ts", "studies"])
    frame[list(FLEET_FIELDS)] = frame[list(FLEET_FIELDS)].fillna("(missing)")
    if len(frame):
        frame["day"] = _as_day(frame["day"])
    for name in ("first_ts", "last_ts"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    return frame


def _in_view(days: pd.DataFrame, filters: Filters) -> pd.DataFrame:
    """The rows of ``equipment_days`` inside the filters' days and site."""
    keep = pd.Series(True, index=days.index)
    if filters.start is not None:
        keep &= days["day"] >= pd.Timestamp(filters.start).floor("D")
    if filters.end is not None:
        keep &= days["day"] < pd.Timestamp(filters.end)
    if filters.site is not None:
        keep &= days["site"] == filters.site
    return days[keep]


def mix_of(days: pd.DataFrame, fleet_field: FleetField, filters: Filters) -> pd.DataFrame:
    """Studies per day and value of one field in the range and site: day, value, studies,
    share (of the day's studies)."""
    view = _in_view(days, filters)
    frame = (view.groupby(["day", fleet_field], as_index=False)["studies"].sum()
             .rename(columns={fleet_field: "value"}))
    frame["value"] = frame["value"].astype(str)
    frame["share"] = frame["studies"] / frame.groupby("day")["studies"].transform("sum")
    return frame.sort_values(["day", "value"]).reset_index(drop=True)


FIRST_SEEN_KEYS: dict[str, tuple[str, ...]] = {
    "manufacturer": ("manufacturer",),
    "scanner_model": ("manufacturer", "scanner_model"),
    "software_version": ("manufacturer", "scanner_model", "software_version"),
    "site": ("site",),
}
FIRST_SEEN_COLUMNS = ["value", "manufacturer", "scanner_model", "first_seen", "last_seen",
                      "studies", "new"]


def first_seen_of(days: pd.DataFrame, fleet_field: FleetField, filters: Filters,
                  boundary: datetime | None) -> pd.DataFrame:
    """One field's values from ``equipment_days``: value, manufacturer, scanner_model,
    first_seen, last_seen (over all time, so "new" means new, not new to the range),
    studies in the range and site, and ``new``: first seen at or after ``boundary``. Only
    values with studies in the range are listed, newest first."""
    keys = list(FIRST_SEEN_KEYS[fleet_field])
    if days.empty:
        return pd.DataFrame(columns=FIRST_SEEN_COLUMNS)
    history = days.groupby(keys, as_index=False).agg(first_seen=("first_ts", "min"),
                                                     last_seen=("last_ts", "max"))
    in_view = _in_view(days, filters).groupby(keys, as_index=False)["studies"].sum()
    grouped = history.merge(in_view, on=keys, how="inner")
    grouped = grouped[grouped["studies"] > 0]
    new = (grouped["first_seen"] >= pd.Timestamp(boundary) if boundary is not None
           else pd.Series(False, index=grouped.index))
    frame = pd.DataFrame({
        "value": grouped[fleet_field].astype(str),
        "manufacturer": grouped["manufacturer"] if "manufacturer" in keys else None,
        "scanner_model": grouped["scanner_model"] if "scanner_model" in keys else None,
        "first_seen": grouped["first_seen"],
        "last_seen": grouped["last_seen"],
        "studies": grouped["studies"].astype(int),
        "new": new.astype(bool),
    }, columns=FIRST_SEEN_COLUMNS)
    return frame.sort_values(["new", "first_seen"], ascending=[False, False]).reset_index(
        drop=True)


@dataclass(frozen=True)
class FleetView:
    """The scanners page: per field, the mix over time and the values with when they first
    appeared; ``new_since`` is the boundary of "new" (``reference_end``)."""

    mix: dict[str, pd.DataFrame]
    first_seen: dict[str, pd.DataFrame]
    new_since: datetime | None


def fleet_view(session: Session, filters: Filters) -> FleetView:
    days = equipment_days(session, filters)
    boundary = reference_end(session, filters)
    return FleetView(
        mix={name: mix_of(days, name, filters) for name in FLEET_FIELDS},
        first_seen={name: first_seen_of(days, name, filters, boundary)
                    for name in FLEET_FIELDS},
        new_since=boundary,
    )


def _fleet_field(fleet_field: str) -> FleetField:
    if fleet_field not in FLEET_FIELDS:
        raise ValidationError(f"field {fleet_field!r} is not one of {', '.join(FLEET_FIELDS)}",
                              field="field")
    return fleet_field


def fleet_mix(session: Session, filters: Filters, fleet_field: FleetField) -> pd.DataFrame:
    """``FleetView.mix`` of one field."""
    return fleet_view(session, filters).mix[_fleet_field(fleet_field)]


def first_seen(session: Session, filters: Filters, fleet_field: FleetField) -> pd.DataFrame:
    """``FleetView.first_seen`` of one field."""
    return fleet_view(session, filters).first_seen[_fleet_field(fleet_field)]


# --------------------------------------------------------------------------- bias


def latest_run_with(session: Session, filters: Filters, detector: str) -> int | None:
    """The newest completed run (in the range) of the filtered versions holding results of
    ``detector``."""
    query = _where_runs(
        select(CheckRun.id).join(CheckResult, CheckResult.check_run_id == CheckRun.id)
        .where(CheckRun.status.in_(DONE_STATUSES), CheckResult.detector == detector),
        session, filters)
    found = session.scalar(query.order_by(CheckRun.window_end.desc(), CheckRun.id.desc()).limit(1))
    return None if found is None else int(found)


BIAS_COLUMNS = ["field", "value", "metric", "status", "n", "group_value", "ci_low", "ci_high",
                "rest_value", "gap", "direction", "p_value", "q_value", "drift",
                "baseline_value", "baseline_gap", "gap_change", "change_low", "change_high",
                "standing", "tolerance", "feature"]


def bias_table(session: Session, run_id: int) -> pd.DataFrame:
    """The subgroup results of one run: ``BIAS_COLUMNS``; ``status`` is "insufficient data"
    for groups under the minimum size (their p and q are empty). ``baseline_gap``,
    ``gap_change`` (with its 95% interval ``change_low``/``change_high``), ``standing`` and
    ``tolerance`` are empty (False) for results stored before baseline gaps were kept."""
    results = session.execute(
        select(CheckResult.feature, CheckResult.statistic, CheckResult.p_value,
               CheckResult.drift, CheckResult.n_current, CheckResult.details)
        .where(CheckResult.check_run_id == run_id, CheckResult.detector == BIAS_DETECTOR)
    ).all()
    rows = []
    for feature, statistic, p_value, drift, n_current, details in results:
        details = details or {}
        ci = details.get("ci") or (None, None)
        change_ci = details.get("gap_change_ci") or (None, None)
        group, _, metric = feature.rpartition(":")
        field_name, _, value = group.partition("=")
        rows.append({
            "field": details.get("field", field_name),
            "value": str(details.get("value", value)),
            "metric": details.get("metric", metric),
            "status": details.get("status", "ok"),
            "n": int(details.get("n", n_current)),
            "group_value": details.get("group_value"),
            "ci_low": ci[0],
            "ci_high": ci[1],
            "rest_value": details.get("rest_value"),
            "gap": details.get("gap", statistic),
            "direction": details.get("direction"),
            "p_value": p_value,
            "q_value": details.get("q_value"),
            "drift": bool(drift),
            "baseline_value": details.get("baseline_value"),
            "baseline_gap": details.get("baseline_gap"),
            "gap_change": details.get("gap_change"),
            "change_low": change_ci[0],
            "change_high": change_ci[1],
            "standing": bool(details.get("standing", False)),
            "tolerance": details.get("tolerance"),
            "feature": feature,
        })
    frame = pd.DataFrame(rows, columns=BIAS_COLUMNS)
    for name in ("group_value", "ci_low", "ci_high", "rest_value", "gap", "p_value", "q_value",
                 "baseline_value", "baseline_gap", "gap_change", "change_low", "change_high",
                 "tolerance"):
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return frame.sort_values(["metric", "field", "value"]).reset_index(drop=True)


# --------------------------------------------------------------------------- overrides


def _latest_reads(session: Session, model: str) -> tuple[Any, Any]:
    """The latest radiologist read of each study (latest read time, then highest id) as
    (something with ``.c`` columns study_key, ts, radiologist_positive, agrees_with_model;
    the condition joining it to ``Inference``).

    Written per database, because the portable forms are quadratic on one of them: SQLite
    runs a correlated "no later read of this study" probe on ``ix_override_model_study`` in
    microseconds, but re-evaluates an uncorrelated IN list per row and scans a materialised
    window-function subquery; PostgreSQL hashes a window-function subquery but runs the
    correlated probe inside an outer join's ON as a nested loop."""
    if _dialect(session) == "postgresql":
        rank = func.row_number().over(partition_by=Override.study_key,
                                      order_by=(Override.ts.desc(), Override.id.desc()))
        latest = (select(Override.study_key, Override.ts, Override.radiologist_positive,
                         Override.agrees_with_model, rank.label("rank"))
                  .where(Override.model == model).subquery("latest_read"))
        return latest, and_(latest.c.study_key == Inference.study_key, latest.c.rank == 1)
    later = aliased(Override)
    newer = exists().where(
        later.model == Override.model, later.study_key == Override.study_key,
        or_(later.ts > Override.ts, and_(later.ts == Override.ts, later.id > Override.id)))
    table = Override.__table__
    return table, and_(table.c.model == Inference.model,
                       table.c.study_key == Inference.study_key, ~newer)


def _read_counts(session: Session, filters: Filters, key: Any, *,
                 delay_hours: bool = False) -> pd.DataFrame:
    """Per ``key``: studies, reads, overrides and the 2x2 table against the latest read;
    with ``delay_hours`` also per whole hour of read delay (``hour``, None without a read),
    so one pass gives the counts and the delay histogram."""
    read, joined = _latest_reads(session, filters.model)
    keys = [key.label("key")]
    if delay_hours:
        keys.append(_whole_hours(session, read.c.ts, Inference.ts).label("hour"))
    has_read = read.c.study_key.is_not(None)
    model_positive = Inference.positive.is_(True)
    radiologist_positive = read.c.radiologist_positive.is_(True)
    # An override: the read disagrees with the model (as sent, else derived from the calls).
    agrees = case(
        (read.c.agrees_with_model.is_not(None), read.c.agrees_with_model),
        else_=case((radiologist_positive == model_positive, true()), else_=false()),
    )

    def count_where(condition: Any) -> Any:
        return func.sum(case((condition, 1), else_=0))

    query = _where_inferences(
        select(*keys, func.count().label("studies"),
               count_where(model_positive).label("positives"),
               count_where(has_read).label("reads"),
               count_where(and_(has_read, agrees.is_(False))).label("overrides"),
               count_where(and_(has_read, radiologist_positive, model_positive)).label("tp"),
               count_where(and_(has_read, radiologist_positive, ~model_positive)).label("fn"),
               count_where(and_(has_read, ~radiologist_positive, ~model_positive)).label("tn"),
               count_where(and_(has_read, ~radiologist_positive, model_positive)).label("fp"))
        .select_from(Inference)
        .outerjoin(read, joined)
        .group_by(*keys), session, filters)
    counts = ["studies", "positives", "reads", "overrides", "tp", "fn", "tn", "fp"]
    columns = ["key", *(["hour"] if delay_hours else []), *counts]
    frame = pd.DataFrame(session.execute(query).all(), columns=columns)
    for name in counts:
        frame[name] = frame[name].fillna(0).astype(int)
    return frame


def _with_rates(frame: pd.DataFrame) -> pd.DataFrame:
    frame["read_coverage"] = frame["reads"] / frame["studies"].where(frame["studies"] > 0)
    frame["sens_n"] = frame["tp"] + frame["fn"]
    frame["spec_n"] = frame["tn"] + frame["fp"]
    frame["ppv_n"] = frame["tp"] + frame["fp"]
    _interval_columns(frame, "override_rate", "overrides", "reads")
    _interval_columns(frame, "sensitivity", "tp", "sens_n")
    _interval_columns(frame, "specificity", "tn", "spec_n")
    _interval_columns(frame, "ppv", "tp", "ppv_n")
    _interval_columns(frame, "positive_rate", "positives", "studies")
    return frame


@dataclass(frozen=True)
class ReadPerformance:
    """What the overrides page draws, from two passes over the studies and their reads.

    ``daily``: per day of the inference, studies, reads, overrides, tp/fn/tn/fp,
    read_coverage, and override_rate, sensitivity, specificity, ppv, positive_rate each with
    ``_low``/``_high`` (Wilson 95%) columns, plus median_delay_h and p90_delay_h.
    ``delay``: median_delay_h, p90_delay_h and reads over the range. ``histogram``: reads per
    ``DELAY_EDGES_H`` bucket. Delays are to the whole hour (linear within it); the newest
    days show low coverage until their reads come in."""

    daily: pd.DataFrame
    delay: dict[str, float]
    histogram: pd.DataFrame


def read_performance(session: Session, filters: Filters) -> ReadPerformance:
    """Counts per day and delay hour in one pass over the studies and their latest reads."""
    fine = _read_counts(session, filters, _day(session, Inference.ts), delay_hours=True)
    counts = ["studies", "positives", "reads", "overrides", "tp", "fn", "tn", "fp"]
    frame = fine.groupby("key", as_index=False)[counts].sum().rename(columns={"key": "day"})
    buckets = fine.loc[fine["hour"].notna(), ["key", "hour", "reads"]].rename(
        columns={"key": "day"})
    buckets["hour"] = buckets["hour"].astype(float).clip(lower=0)
    if len(frame):
        frame["day"] = _as_day(frame["day"])
        buckets["day"] = _as_day(buckets["day"]) if len(buckets) else buckets["day"]
    frame = _with_rates(frame)
    quantiles = [{"day": day, **delay_quantiles(group)} for day, group in
                 buckets.groupby("day")]
    by_day = pd.DataFrame(quantiles, columns=["day", "median_delay_h", "p90_delay_h"])
    frame = frame.merge(by_day, on="day", how="left").sort_values("day").reset_index(
        drop=True)
    return ReadPerformance(daily=frame,
                           delay={**delay_quantiles(buckets),
                                  "reads": float(buckets["reads"].sum())},
                           histogram=delay_histogram_of(buckets))


def performance_daily(session: Session, filters: Filters) -> pd.DataFrame:
    """``ReadPerformance.daily``."""
    return read_performance(session, filters).daily


def delay_quantiles(buckets: pd.DataFrame) -> dict[str, float]:
    """Median and 90th percentile (hours) from a per-hour histogram, linear within a bucket."""
    hist = buckets.groupby("hour")["reads"].sum().sort_index()
    cumulative = hist.cumsum()
    total = float(cumulative.iloc[-1]) if len(cumulative) else 0.0
    out = {}
    for name, q in (("median_delay_h", 0.5), ("p90_delay_h", 0.9)):
        if total <= 0:
            out[name] = np.nan
            continue
        target = q * total
        position = int(np.searchsorted(cumulative.to_numpy(), target))
        hour = float(hist.index[position])
        before = float(cumulative.iloc[position - 1]) if position else 0.0
        inside = float(hist.iloc[position])
        out[name] = hour + (target - before) / inside if inside else hour
    return out


def read_delay_buckets(session: Session, filters: Filters) -> pd.DataFrame:
    """Reads per whole hour of delay (read time minus inference time, latest read of each
    study): hour, reads."""
    read, joined = _latest_reads(session, filters.model)
    hours = _whole_hours(session, read.c.ts, Inference.ts).label("hour")
    query = _where_inferences(
        select(hours, func.count().label("reads")).select_from(Inference)
        .join(read, joined).group_by(hours), session, filters)
    frame = pd.DataFrame(session.execute(query).all(), columns=["hour", "reads"])
    frame["hour"] = frame["hour"].astype(float).clip(lower=0)
    return frame


def read_delay_summary(session: Session, filters: Filters) -> dict[str, float]:
    """``ReadPerformance.delay`` alone."""
    buckets = read_delay_buckets(session, filters)
    return {**delay_quantiles(buckets), "reads": float(buckets["reads"].sum())}


def delay_histogram_of(buckets: pd.DataFrame) -> pd.DataFrame:
    """Reads per delay bucket (``DELAY_EDGES_H``): bucket label, low_h, reads, share."""
    edges = [*DELAY_EDGES_H, np.inf]
    labels = [f"{lo}-{hi} h" if np.isfinite(hi) else f">{lo} h" for lo, hi in pairwise(edges)]
    index = np.searchsorted(np.array(edges[1:]), buckets["hour"].to_numpy(), side="right")
    counts = np.bincount(index.astype(int), weights=buckets["reads"].to_numpy(float),
                         minlength=len(labels))[: len(labels)]
    total = counts.sum()
    return pd.DataFrame({"bucket": labels, "low_h": edges[:-1], "reads": counts.astype(int),
                         "share": counts / total if total else np.zeros(len(labels))})


def delay_histogram(session: Session, filters: Filters) -> pd.DataFrame:
    """``ReadPerformance.histogram`` alone."""
    return delay_histogram_of(read_delay_buckets(session, filters))


def recent_overridden(session: Session, filters: Filters, *, limit: int = 25) -> pd.DataFrame:
    """The most recent reads that disagree with the model, newest read first (pseudonymised
    study keys only): read_at, study_key, version, study_at, site, scanner_model, score,
    model_positive, radiologist_positive, finding."""
    agrees = case(
        (Override.agrees_with_model.is_not(None), Override.agrees_with_model),
        else_=case((Override.radiologist_positive == Inference.positive.is_(True), true()),
                   else_=false()),
    )
    query = _where_inferences(
        select(Override.ts, Override.study_key, Inference.model_version_id, Inference.ts,
               Inference.site, Inference.scanner_model, Inference.score, Inference.positive,
               Override.radiologist_positive, Override.finding)
        .join(Override, and_(Override.model == Inference.model,
                             Override.study_key == Inference.study_key))
        .where(agrees.is_(False)), session, filters)
    query = query.order_by(Override.ts.desc(), Override.id.desc()).limit(limit)
    frame = pd.DataFrame(session.execute(query).all(),
                         columns=["read_at", "study_key", "version_id", "study_at", "site",
                                  "scanner_model", "score", "model_positive",
                                  "radiologist_positive", "finding"])
    frame.insert(2, "version", frame.pop("version_id").map(_version_names(session,
                                                                          filters.model)))
    for name in ("read_at", "study_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    return frame


# --------------------------------------------------------------------------- alerts


ALERT_COLUMNS = ["alert_id", "rule", "model", "model_version", "severity", "state", "summary",
                 "consecutive", "firing_windows", "started_at", "fired_at", "updated_at",
                 "resolved_at", "acknowledged_by", "acknowledged_at", "silenced_until", "labels",
                 "last_check_run_id", "incident_id"]


def alerts_frame(session: Session, *, model: str | None = None,
                 states: Sequence[str] | None = None, since: datetime | None = None,
                 limit: int = 200) -> pd.DataFrame:
    """Alerts (findings), newest update first: ``ALERT_COLUMNS`` plus ``silenced`` (silence in
    force); ``incident_id`` is the incident a finding belongs to, if any."""
    query = select(Alert.id, Alert.rule, Alert.model, Alert.model_version, Alert.severity,
                   Alert.state, Alert.summary, Alert.consecutive, Alert.firing_windows,
                   Alert.started_at, Alert.fired_at, Alert.updated_at, Alert.resolved_at,
                   Alert.acknowledged_by, Alert.acknowledged_at, Alert.silenced_until,
                   Alert.labels, Alert.last_check_run_id, Alert.incident_id)
    if model is not None:
        query = query.where(Alert.model == model)
    if states:
        query = query.where(Alert.state.in_(list(states)))
    if since is not None:
        query = query.where(Alert.updated_at >= since)
    query = query.order_by(Alert.updated_at.desc(), Alert.id.desc()).limit(limit)
    frame = pd.DataFrame(session.execute(query).all(), columns=ALERT_COLUMNS)
    for name in ("started_at", "fired_at", "updated_at", "resolved_at", "acknowledged_at",
                 "silenced_until"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    now = pd.Timestamp(datetime.now(UTC))
    frame["silenced"] = frame["silenced_until"].notna() & (frame["silenced_until"] > now)
    return frame


# --------------------------------------------------------------------------- incidents


OPEN_INCIDENT_STATES = ("open",)
CLOSED_INCIDENT_STATES = ("resolved", "accepted")
INCIDENT_SEVERITY_RANK = {"critical": 0, "warning": 1}
# The causes an operator can accept as a validated change: a stratum of the fleet, which can
# be re-baselined.
ACCEPTABLE_CAUSES = STRATUM_FIELDS
VERSION_CAUSE = "version"  # the cause of an incident with no narrower attribution
MAX_INCIDENTS_NAMED = 3  # in a model's "why" on the overview
_LEVEL_RANK = {"page": 2, "warning": 1}


def _incident_order(info: IncidentInfo) -> tuple[int, datetime, int]:
    """Most severe first, then the oldest (the longest open) first."""
    return (INCIDENT_SEVERITY_RANK.get(info.severity, len(INCIDENT_SEVERITY_RANK)),
            info.opened_at, info.id)


def _closed_at(info: IncidentInfo) -> datetime:
    return info.resolved_at or info.accepted_at or info.opened_at


def incidents(session: Session, *, model: str | None = None, version: str | None = None,
              states: Sequence[str] = OPEN_INCIDENT_STATES, closed_since: datetime | None = None,
              limit: int = 200) -> list[IncidentInfo]:
    """Incidents in ``states`` with their findings (alerts), two queries in all. Open ones
    most severe first, then the oldest first; resolved and accepted ones (``closed_since``:
    only those closed since then) the most recently closed first."""
    found: list[IncidentInfo] = []
    for state in states:
        found += list_incidents(session, model=model, version=version, state=state,
                                limit=limit)
    if closed_since is not None:
        found = [i for i in found if i.state == "open" or _closed_at(i) >= closed_since]
    if not found:
        return []
    by_incident: dict[int, list[AlertInfo]] = {}
    for row in session.scalars(select(Alert).where(
            Alert.incident_id.in_([i.id for i in found])).order_by(Alert.id)):
        by_incident.setdefault(int(row.incident_id or 0), []).append(AlertInfo.of(row))
    rank = {"critical": 0, "warning": 1}
    out = []
    for info in found:
        findings = sorted(by_incident.get(info.id, []), key=lambda a: (
            a.state not in ("pending", "firing"), rank.get(a.severity, 2), a.id))
        out.append(replace(info, findings=tuple(findings)))
    opened = sorted((i for i in out if i.state == "open"), key=_incident_order)
    closed = sorted((i for i in out if i.state != "open"), key=_closed_at, reverse=True)
    return [*opened, *closed][:limit]


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _evidence_strength(row: Mapping[str, Any]) -> tuple[int, float]:
    statistic, threshold = _number(row.get("statistic")), _number(row.get("threshold"))
    ratio = (statistic / threshold if statistic is not None and threshold
             else statistic if statistic is not None else 0.0)
    return _LEVEL_RANK.get(str(row.get("level")), 0), ratio


def strongest_evidence(info: IncidentInfo) -> dict[str, Any] | None:
    """The incident's strongest evidence row: at the page level before warning, then the
    largest statistic relative to its threshold."""
    rows: list[Mapping[str, Any]] = [row for row in info.evidence if isinstance(row, Mapping)]
    if not rows:
        return None
    strongest: Mapping[str, Any] = max(rows, key=_evidence_strength)
    return dict(strongest)


def effect_direction(row: Mapping[str, Any] | None) -> str:
    """Which way the evidence points: for a subgroup, whether the group does worse than in
    the baseline; for a performance metric, lower or higher than the baseline's; for a
    distribution, that it shifted (it has no sign)."""
    if not row:
        return ""
    if row.get("detector") == BIAS_DETECTOR:
        # one-sided: a group doing better than in its baseline is never a finding
        direction = row.get("direction")
        return str(direction) if direction in ("worse", "better") else "worse"
    baseline, current = row.get("baseline"), row.get("current")
    if isinstance(baseline, Mapping) and isinstance(current, Mapping):
        before, after = _number(baseline.get("value")), _number(current.get("value"))
        if before is not None and after is not None and before != after:
            return "lower" if after < before else "higher"
    return "shifted" if row.get("family") in ("embedding", "metadata", "prediction") else ""


def evidence_level(row: Mapping[str, Any] | None) -> str:
    """"page (Z 5.6, pages at 3.9)" for a sequential finding."""
    if not row:
        return ""
    statistic, threshold = _number(row.get("statistic")), _number(row.get("threshold"))
    level = str(row.get("level") or row.get("severity") or "")
    if statistic is None or threshold is None:
        return level
    return f"{level} (Z {statistic:.1f}, pages at {threshold:.1f})"


def incident_headline(info: IncidentInfo) -> str:
    """An incident in words: "critical: XR-SOUTH-1 (SIEMENS Ysio Max) on 1.4.0 since
    2026-10-11 - embedding MMD p<1e-4" (plain text: escape it where Markdown renders)."""
    since = (f" since {info.first_evidence_day.isoformat()}"
             if info.first_evidence_day is not None else "")
    top = strongest_evidence(info)
    effect = f" - {top['effect']}" if top and top.get("effect") else ""
    return f"{info.severity}: {incident_cause(info)}{since}{effect}"


def incident_cause(info: IncidentInfo) -> str:
    """The cause and the version it is seen on ("age 80+ on 1.4.0"; a version alone when the
    version is the cause)."""
    if info.cause_field == VERSION_CAUSE:
        return info.cause_label
    return f"{info.cause_label} on {info.model_version}"


# --------------------------------------------------------------------------- versions


def registry_frame(session: Session, model: str) -> pd.DataFrame:
    """Versions of one model: version, status, aliases, embedding_dim, studies, first_ts,
    last_ts, baseline_studies, baseline_start, baseline_end, created_at, notes."""
    versions = session.execute(
        select(ModelVersion.id, ModelVersion.version, ModelVersion.status,
               ModelVersion.embedding_dim, ModelVersion.created_at, ModelVersion.notes)
        .where(ModelVersion.model == model).order_by(ModelVersion.created_at, ModelVersion.id)
    ).all()
    ids = [row[0] for row in versions]
    aliases: dict[int, list[str]] = {}
    for alias, version_id in session.execute(
            select(ModelAlias.alias, ModelAlias.model_version_id).where(ModelAlias.model == model)):
        aliases.setdefault(version_id, []).append(alias)
    traffic = {row[0]: row[1:] for row in session.execute(
        select(Inference.model_version_id, func.count(), func.min(Inference.ts),
               func.max(Inference.ts))
        .where(Inference.model_version_id.in_(ids)).group_by(Inference.model_version_id))}
    latest_baseline: dict[int, Any] = {}
    for row in session.execute(
            select(Baseline.model_version_id, Baseline.n_studies, Baseline.window_start,
                   Baseline.window_end, Baseline.created_at)
            .where(Baseline.model_version_id.in_(ids)).order_by(Baseline.created_at)):
        latest_baseline[row[0]] = row[1:4]
    rows = []
    for version_id, version, status, dim, created_at, notes in versions:
        studies, first, last = traffic.get(version_id, (0, None, None))
        baseline = latest_baseline.get(version_id, (None, None, None))
        rows.append({
            "version": version, "status": status,
            "aliases": ", ".join(sorted(aliases.get(version_id, []))),
            "embedding_dim": dim, "studies": int(studies), "first_ts": first, "last_ts": last,
            "baseline_studies": baseline[0], "baseline_start": baseline[1],
            "baseline_end": baseline[2], "created_at": created_at, "notes": notes,
        })
    frame = pd.DataFrame(rows, columns=["version", "status", "aliases", "embedding_dim",
                                        "studies", "first_ts", "last_ts", "baseline_studies",
                                        "baseline_start", "baseline_end", "created_at", "notes"])
    for name in ("first_ts", "last_ts", "baseline_start", "baseline_end", "created_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    return frame


def version_metrics(session: Session, filters: Filters, versions: Sequence[str]
                    ) -> pd.DataFrame:
    """Side-by-side metrics of versions over the same range and site, long form: version,
    metric, value, low, high, n (Wilson 95% for rates), plus studies, reads, read coverage,
    mean score, mean latency and the latest health score."""
    names = _version_names(session, filters.model)
    wanted = {i: v for i, v in names.items() if v in set(versions)}
    scoped = Filters(model=filters.model, start=filters.start, end=filters.end,
                     site=filters.site)
    counts = _read_counts(session, scoped, Inference.model_version_id)
    counts = _with_rates(counts[counts["key"].isin(list(wanted))].reset_index(drop=True))
    extras = {row[0]: row[1:] for row in session.execute(_where_inferences(
        select(Inference.model_version_id, func.avg(Inference.score),
               func.avg(Inference.latency_ms))
        .group_by(Inference.model_version_id), session, scoped))}
    rows: list[dict[str, Any]] = []
    denominators = {"override_rate": "reads", "sensitivity": "sens_n",
                    "specificity": "spec_n", "ppv": "ppv_n", "positive_rate": "studies"}
    for record in counts.to_dict("records"):
        version = wanted[record["key"]]
        for metric in RATE_METRICS:
            rows.append({"version": version, "metric": metric, "value": record[metric],
                         "low": record[f"{metric}_low"], "high": record[f"{metric}_high"],
                         "n": int(record[denominators[metric]])})
        mean_score, mean_latency = extras.get(record["key"], (None, None))
        run = _latest_run(session, [record["key"]])
        for metric, value, n in (
            ("studies", record["studies"], record["studies"]),
            ("reads", record["reads"], record["studies"]),
            ("read_coverage", record["read_coverage"], record["studies"]),
            ("mean_score", mean_score, record["studies"]),
            ("mean_latency_ms", mean_latency, record["studies"]),
            ("health_score", run.health_score if run else None, run.n_studies if run else 0),
        ):
            rows.append({"version": version, "metric": metric,
                         "value": np.nan if value is None else float(value),
                         "low": np.nan, "high": np.nan, "n": int(n or 0)})
    return pd.DataFrame(rows, columns=["version", "metric", "value", "low", "high", "n"])


@dataclass(frozen=True)
class VersionHealth:
    """A version's newest completed check: its window, health and the findings behind it
    (``findings``: detector, feature, p-value or None, most significant first)."""

    version: str
    run_id: int
    window_start: datetime
    window_end: datetime
    health_score: float | None
    health_status: str | None
    findings: tuple[tuple[str, str, float | None], ...]


def version_health(session: Session, model: str, version: str) -> VersionHealth | None:
    """The newest completed check of ``model`` ``version`` and its flagged results (every
    detector but attribution, subgroup results included: they count in the health score);
    None when the version has no completed check."""
    run = _latest_run(session, _version_ids(session, model, version))
    if run is None:
        return None
    flagged = session.execute(
        select(CheckResult.detector, CheckResult.feature, CheckResult.p_value)
        .where(CheckResult.check_run_id == run.id, CheckResult.drift.is_(True),
               CheckResult.detector != ATTRIBUTION_DETECTOR)).all()
    findings = sorted(((d, f, p) for d, f, p in flagged),
                      key=lambda item: (item[2] is None, item[2] or 0.0, item[0], item[1]))
    return VersionHealth(version=version, run_id=run.id, window_start=run.window_start,
                         window_end=run.window_end, health_score=run.health_score,
                         health_status=run.health_status, findings=tuple(findings))


ROLLBACK_COLUMNS = ["recommendation_id", "model", "alias", "from_version", "to_version",
                    "policy", "alert_id", "status", "reason", "created_at", "decided_by",
                    "decided_at", "decision_reason", "hook_status", "hook_attempts",
                    "hook_error"]


def rollback_recommendations(session: Session, *, model: str | None = None,
                             status: str | None = None, limit: int = 100) -> pd.DataFrame:
    r = RollbackRecommendation
    query = select(r.id, r.model, r.alias, r.from_version, r.to_version, r.policy, r.alert_id,
                   r.status, r.reason, r.created_at, r.decided_by, r.decided_at,
                   r.decision_reason, r.hook_status, r.hook_attempts, r.hook_error)
    if model is not None:
        query = query.where(RollbackRecommendation.model == model)
    if status is not None:
        query = query.where(RollbackRecommendation.status == status)
    query = query.order_by(RollbackRecommendation.created_at.desc(),
                           RollbackRecommendation.id.desc()).limit(limit)
    frame = pd.DataFrame(session.execute(query).all(), columns=ROLLBACK_COLUMNS)
    for name in ("created_at", "decided_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    return frame


def audit_log(session: Session, *, model: str | None = None, limit: int = 200) -> pd.DataFrame:
    """The newest audit entries: ts, actor, action, model, model_version, reason, alert_id,
    details."""
    query = select(AuditEntry.ts, AuditEntry.actor, AuditEntry.action, AuditEntry.model,
                   AuditEntry.model_version, AuditEntry.reason, AuditEntry.alert_id,
                   AuditEntry.details)
    if model is not None:
        query = query.where(or_(AuditEntry.model == model, AuditEntry.model.is_(None)))
    query = query.order_by(AuditEntry.ts.desc(), AuditEntry.id.desc()).limit(limit)
    frame = pd.DataFrame(session.execute(query).all(),
                         columns=["ts", "actor", "action", "model", "model_version", "reason",
                                  "alert_id", "details"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["details"] = frame["details"].map(lambda d: "" if not d else str(d))
    return frame


def day_range(start: date, end: date) -> tuple[datetime, datetime]:
    """[start, end] as whole UTC days: (start 00:00, the day after end 00:00)."""
    return (datetime(start.year, start.month, start.day, tzinfo=UTC),
            datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1))


