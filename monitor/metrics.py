"""Prometheus metrics. Every metric, its labels and the bound on each label: docs/metrics.md.

Two sources:

* ``StoreCollector`` reads the store on every scrape: rows ingested per model version, the
  latest check results (drift, performance, subgroup gaps, health), alerts firing and the
  active version. ``collect()`` builds fresh families each time and ``describe()`` answers
  without touching the store, so every API worker over one database reports the same numbers
  and registering the collector costs nothing.
* ``IngestMetrics`` counts rejected ingestion requests and times ingestion requests. Only the
  process that served a request knows these, so each worker exports its own series, told apart
  by Prometheus's ``instance`` label when each worker is scraped (see docs/metrics.md).

Label values come from small sets: model names and versions, configured check windows,
detector and feature names, subgroup fields and their values (sites, vendors, scanner models,
sex, age bands, views; at most ``MAX_SUBGROUP_VALUES`` per field). Study UIDs, patient and
reader keys, event IDs and free text never become labels.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import and_, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.detect.health import DETECTOR_FAMILIES
from monitor.store.db import session_scope
from monitor.store.models import (
    Alert,
    CheckResult,
    CheckRun,
    Inference,
    ModelAlias,
    ModelVersion,
    Override,
)

log = logging.getLogger(__name__)

# Subgroup values exported per (model version, window, field, metric): the largest groups.
MAX_SUBGROUP_VALUES = 50
# Ingested rows older than this are counted once and remembered (see SettledCount).
SETTLE_SECONDS = 300.0
SEVERITIES = ("info", "warning", "critical")
# A model's check results are exported for its live versions (the production alias and
# status active: what scheduled checks cover). A model with no live version falls back to its
# versions not ended, so on-demand checks of an unregistered model still show. Ended versions
# never export results: a rolled-back version's last drift verdict would page forever.
ENDED_STATUSES = frozenset({"retired", "rolled_back"})
# Runs that stored results: ``partial`` means some family (or the report) failed.
RESULT_STATUSES = ("ok", "partial")
PERFORMANCE_DETECTOR = "PerformanceDrift"
SUBGROUP_DETECTOR = "SubgroupBias"
NOT_EXPORTED_DETECTORS = frozenset({"Attribution"})  # a ranking, not a test
# Result statuses whose statistic means nothing (a failed detector stores 0.0).
NO_STATISTIC = frozenset({"failed", "insufficient data"})
UNKNOWN_VERSION = "unknown"  # an override event that names no model version
_IN_CHUNK = 900

# ``model_version``, as on the service's own alerts and in the Alertmanager configs.
VERSION_LABELS = ("model", "model_version")
WINDOW_LABELS = ("model", "model_version", "window")
DRIFT_LABELS = (*WINDOW_LABELS, "family", "detector", "feature")
PERFORMANCE_LABELS = (*WINDOW_LABELS, "metric")
SUBGROUP_LABELS = (*WINDOW_LABELS, "field", "value", "metric")


@dataclass(frozen=True)
class FamilySpec:
    """One metric family of the store collector: ``name`` without ``_total`` for counters and
    without ``_info`` for info metrics (the client library adds them)."""

    name: str
    kind: Literal["gauge", "counter", "info"]
    documentation: str
    labels: tuple[str, ...] = ()

    def new(self) -> Metric:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        if self.kind == "info":
            return InfoMetricFamily(self.name, self.documentation, labels=self.labels)
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labels)

    @property
    def exposed_name(self) -> str:
        return self.name + {"counter": "_total", "info": "_info", "gauge": ""}[self.kind]


FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec("monitor_store_up", "gauge",
               "1 if the last scrape read the store, 0 if reading it failed."),
    FamilySpec("monitor_store_scrape_duration_seconds", "gauge",
               "Time spent reading the store for this scrape."),
    FamilySpec("monitor_inferences", "counter",
               "Inference events stored, by model version.", VERSION_LABELS),
    FamilySpec("monitor_overrides", "counter",
               "Radiologist reads (override events) stored, by model version "
               "('unknown' where the read names no version).", VERSION_LABELS),
    FamilySpec("monitor_last_inference_timestamp_seconds", "gauge",
               "Event time of the newest stored inference, by model version.", VERSION_LABELS),
    FamilySpec("monitor_model_active_version", "info",
               "The live versions of each model: the production alias and every version with "
               "status active (what scheduled checks cover).",
               ("model",)),  # model_version is the info label
    FamilySpec("monitor_check_interval_seconds", "gauge",
               "Interval of the scheduled checks (0: scheduler off)."),
    FamilySpec("monitor_check_last_success_timestamp_seconds", "gauge",
               "Time the last successful check of a model version finished.", VERSION_LABELS),
    FamilySpec("monitor_check_window_studies", "gauge",
               "Studies in the window of the latest successful check.", WINDOW_LABELS),
    FamilySpec("monitor_health_score", "gauge",
               "Combined health score of the latest check (1 quiet; amber < 0.8; red < 0.6).",
               WINDOW_LABELS),
    FamilySpec("monitor_drift_statistic", "gauge",
               "Test statistic of each detector in the latest check (MMD², KS D, chi², "
               "AUC, metric difference, ...).", DRIFT_LABELS),
    FamilySpec("monitor_drift_p_value", "gauge",
               "p-value of each detector in the latest check (absent where the detector has "
               "no test or too little data).", DRIFT_LABELS),
    FamilySpec("monitor_drift_detected", "gauge",
               "Verdict of each detector in the latest check (1 drift, 0 none).", DRIFT_LABELS),
    FamilySpec("monitor_performance_ratio", "gauge",
               "Performance against radiologist reads in the latest check window "
               "(override_rate, sensitivity, specificity, ppv, npv).", PERFORMANCE_LABELS),
    FamilySpec("monitor_performance_ci_lower_ratio", "gauge",
               "Lower bound of the Wilson 95% interval of monitor_performance_ratio.",
               PERFORMANCE_LABELS),
    FamilySpec("monitor_performance_ci_upper_ratio", "gauge",
               "Upper bound of the Wilson 95% interval of monitor_performance_ratio.",
               PERFORMANCE_LABELS),
    FamilySpec("monitor_performance_baseline_ratio", "gauge",
               "The same metric in the version's baseline.", PERFORMANCE_LABELS),
    FamilySpec("monitor_performance_reads", "gauge",
               "Reads in the metric's denominator in the latest check window.",
               PERFORMANCE_LABELS),
    FamilySpec("monitor_subgroup_gap_ratio", "gauge",
               "Subgroup's metric minus the rest of the window's, for subgroups large enough "
               "to test (latest check).", SUBGROUP_LABELS),
    FamilySpec("monitor_subgroup_disparity_detected", "gauge",
               "1 for each subgroup whose gap is significant after false-discovery control "
               "(no series for the others).", SUBGROUP_LABELS),
    FamilySpec("monitor_subgroup_values_omitted", "gauge",
               f"Subgroup values not exported (beyond the {MAX_SUBGROUP_VALUES} largest per "
               "field).", (*WINDOW_LABELS, "field")),
    FamilySpec("monitor_alerts_firing", "gauge",
               "Alerts of the service's own rules now firing, by model and severity.",
               ("model", "severity")),
)
FAMILY_BY_NAME = {spec.name: spec for spec in FAMILIES}


def exposed_metric_names() -> frozenset[str]:
    """Names as they appear on /metrics (store families and ingestion metrics)."""
    names = {spec.exposed_name for spec in FAMILIES}
    names.add("monitor_ingest_rejected_batches_total")
    names.update(f"{INGEST_DURATION}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return frozenset(names)


# --- ingestion counts ---------------------------------------------------------------------


class SettledCount:
    """Rows of one table per key, exact on every scrape without counting the table each time.

    A row whose ``received_at`` is more than ``settle_seconds`` old belongs to a committed
    (or abandoned) transaction: it is counted once and remembered, up to a frontier id. Each
    scrape adds the rows settled since the last one and counts the tail beyond the frontier,
    both by primary-key range. The first scrape of a process counts the table once. Rows
    inserted in a transaction that stays open longer than ``settle_seconds`` could be missed;
    ingestion commits one bounded batch per transaction, in well under a second.
    """

    def __init__(self, id_column: Any, received_column: Any, key_columns: Sequence[Any],
                 *, settle_seconds: float = SETTLE_SECONDS):
        self._id = id_column
        self._received = received_column
        self._keys = tuple(key_columns)
        self.settle_seconds = settle_seconds
        self._frontier = 0
        self._settled: Tally[tuple[Any, ...]] = Tally()
        self._lock = threading.Lock()

    def _count(self, session: Session, after: int, upto: int | None) -> Tally[tuple[Any, ...]]:
        query = select(*self._keys, func.count()).where(self._id > after).group_by(*self._keys)
        if upto is not None:
            query = query.where(self._id <= upto)
        return Tally({tuple(row[:-1]): int(row[-1]) for row in session.execute(query)})

    def read(self, session: Session, *, now: datetime) -> dict[tuple[Any, ...], int]:
        with self._lock:
            cutoff = now - timedelta(seconds=self.settle_seconds)
            frontier = session.scalar(
                select(func.max(self._id)).where(self._id > self._frontier,
                                                 self._received < cutoff)
            )
            if frontier is not None and frontier > self._frontier:
                self._settled.update(self._count(session, self._frontier, frontier))
                self._frontier = int(frontier)
            counts = Tally(self._settled)
            counts.update(self._count(session, self._frontier, None))
        return dict(counts)


# --- the store collector ------------------------------------------------------------------


@dataclass(frozen=True)
class _Version:
    model: str
    version: str
    status: str


@dataclass(frozen=True)
class _Run:
    id: int
    version_id: int
    window: str
    n_studies: int
    health_score: float | None


def exported_versions(versions: dict[int, _Version], live: set[int]) -> set[int]:
    """Whose check results are exported: per model its live versions, or, for a model with
    none, its versions not ended."""
    models_with_live = {versions[i].model for i in live}
    return {i for i, version in versions.items()
            if i in live or (version.model not in models_with_live
                             and version.status not in ENDED_STATUSES)}


def _timestamp(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), _IN_CHUNK):
        yield ids[start : start + _IN_CHUNK]


def _as_dict(details: Any) -> dict[str, Any]:
    if isinstance(details, str):  # a driver that hands JSON back as text
        details = json.loads(details)
    return details if isinstance(details, dict) else {}


def split_subgroup_feature(feature: str) -> tuple[str, str, str] | None:
    """``"site=north:sensitivity"`` -> ``("site", "north", "sensitivity")``."""
    field, sep, rest = feature.partition("=")
    value, sep2, metric = rest.rpartition(":")
    if not sep or not sep2 or not field or not metric:
        return None
    return field, value, metric


class StoreCollector(Collector):
    """Metrics read from the store at scrape time (docs/metrics.md lists them).

    Parameters
    ----------
    sessions
        The runtime's session factory.
    registry
        Registered there when given (tests pass a fresh ``CollectorRegistry()``).
    check_interval_s
        Exported as ``monitor_check_interval_seconds`` so the stale-check rule follows the
        configured schedule.
    clock
        Seconds since the epoch; tests pass a fixed one.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        registry: CollectorRegistry | None = None,
        check_interval_s: float = 0.0,
        settle_seconds: float = SETTLE_SECONDS,
        max_subgroup_values: int = MAX_SUBGROUP_VALUES,
        clock: Callable[[], float] = time.time,
    ):
        self._sessions = sessions
        self.check_interval_s = check_interval_s
        self.max_subgroup_values = max_subgroup_values
        self._clock = clock
        self._inferences = SettledCount(Inference.id, Inference.received_at,
                                        [Inference.model_version_id],
                                        settle_seconds=settle_seconds)
        self._overrides = SettledCount(Override.id, Override.received_at,
                                       [Override.model, Override.model_version],
                                       settle_seconds=settle_seconds)
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return [spec.new() for spec in FAMILIES]

    def collect(self) -> Iterable[Metric]:
        started = time.perf_counter()
        families = {spec.name: spec.new() for spec in FAMILIES}
        try:
            with session_scope(self._sessions) as session:
                self._fill(session, families)
            up = 1.0
        except SQLAlchemyError as exc:
            log.warning("metrics: reading the store failed: %s", type(exc).__name__)
            families = {spec.name: spec.new() for spec in FAMILIES}
            up = 0.0
        families["monitor_store_up"].add_metric([], up)
        families["monitor_store_scrape_duration_seconds"].add_metric(
            [], time.perf_counter() - started)
        families["monitor_check_interval_seconds"].add_metric([], float(self.check_interval_s))
        return list(families.values())

    # Each _fill_* reads one part of the store into its families.

    def _fill(self, session: Session, families: dict[str, Metric]) -> None:
        versions = {
            row.id: _Version(row.model, row.version, row.status)
            for row in session.execute(
                select(ModelVersion.id, ModelVersion.model, ModelVersion.version,
                       ModelVersion.status))
        }
        now = datetime.fromtimestamp(self._clock(), UTC)
        self._fill_ingestion(session, families, versions, now)
        live = self._fill_registry(session, families, versions)
        self._fill_checks(session, families, versions, exported_versions(versions, live))
        self._fill_alerts(session, families, versions)

    def _fill_ingestion(self, session: Session, families: dict[str, Metric],
                        versions: dict[int, _Version], now: datetime) -> None:
        inferences = families["monitor_inferences"]
        for (version_id,), n in sorted(self._inferences.read(session, now=now).items()):
            version = versions.get(version_id)
            if version is not None:
                inferences.add_metric([version.model, version.version], n)
        overrides = families["monitor_overrides"]
        for (model, version), n in sorted(self._overrides.read(session, now=now).items(),
                                          key=lambda item: (item[0][0], item[0][1] or "")):
            overrides.add_metric([model, version or UNKNOWN_VERSION], n)
        newest = (select(func.max(Inference.ts))
                  .where(Inference.model_version_id == ModelVersion.id).scalar_subquery())
        last = families["monitor_last_inference_timestamp_seconds"]
        for version_id, ts in session.execute(select(ModelVersion.id, newest)):
            stamp = _timestamp(ts)
            if stamp is not None and version_id in versions:
                version = versions[version_id]
                last.add_metric([version.model, version.version], stamp)

    def _fill_registry(self, session: Session, families: dict[str, Metric],
                       versions: dict[int, _Version]) -> set[int]:
        """Export the live versions; return their ids."""
        live = {version_id for version_id, version in versions.items()
                if version.status == "active"}
        production = session.scalars(
            select(ModelAlias.model_version_id).where(ModelAlias.alias == "production"))
        live.update(version_id for version_id in production if version_id in versions)
        info = families["monitor_model_active_version"]
        for version_id in sorted(live, key=lambda i: (versions[i].model, versions[i].version)):
            info.add_metric([versions[version_id].model],
                            {"model_version": versions[version_id].version})
        return live

    def _latest_runs(self, session: Session, exported: set[int]) -> list[_Run]:
        """The latest successful run of each (model version, window), by window end."""
        latest = (
            select(CheckRun.model_version_id, CheckRun.window_label,
                   func.max(CheckRun.window_end).label("window_end"))
            .where(CheckRun.status.in_(RESULT_STATUSES))
            .group_by(CheckRun.model_version_id, CheckRun.window_label)
            .subquery()
        )
        query = (
            select(CheckRun.id, CheckRun.model_version_id, CheckRun.window_label,
                   CheckRun.n_studies, CheckRun.health_score)
            .join(latest, and_(CheckRun.model_version_id == latest.c.model_version_id,
                               CheckRun.window_label == latest.c.window_label,
                               CheckRun.window_end == latest.c.window_end))
            .where(CheckRun.status.in_(RESULT_STATUSES))
            .order_by(CheckRun.id)
        )
        runs: dict[tuple[int, str], _Run] = {}
        for row in session.execute(query):
            if row.model_version_id not in exported:
                continue
            runs[(row.model_version_id, row.window_label)] = _Run(
                row.id, row.model_version_id, row.window_label, row.n_studies or 0,
                row.health_score)
        return sorted(runs.values(), key=lambda run: run.id)

    def _fill_checks(self, session: Session, families: dict[str, Metric],
                     versions: dict[int, _Version], exported: set[int]) -> None:
        last_success = families["monitor_check_last_success_timestamp_seconds"]
        for version_id, finished in session.execute(
            select(CheckRun.model_version_id, func.max(CheckRun.finished_at))
            .where(CheckRun.status.in_(RESULT_STATUSES))
            .group_by(CheckRun.model_version_id)
        ):
            version = versions.get(version_id)
            stamp = _timestamp(finished)
            if version is not None and stamp is not None:
                last_success.add_metric([version.model, version.version], stamp)

        runs = {run.id: run for run in self._latest_runs(session, exported)}
        for run in runs.values():
            labels = self._window_labels(run, versions)
            families["monitor_check_window_studies"].add_metric(labels, run.n_studies)
            if run.health_score is not None:
                families["monitor_health_score"].add_metric(labels, run.health_score)
        run_ids = sorted(runs)
        subgroups: dict[tuple[int, str, str], list[tuple[str, Any]]] = {}
        for chunk in _chunks(run_ids):
            rows = session.execute(
                select(CheckResult.check_run_id, CheckResult.detector, CheckResult.feature,
                       CheckResult.statistic, CheckResult.p_value, CheckResult.drift,
                       CheckResult.n_current,
                       CheckResult.details["status"].as_string().label("status"))
                .where(CheckResult.check_run_id.in_(chunk))
                .order_by(CheckResult.check_run_id, CheckResult.detector, CheckResult.feature)
            )
            for row in rows:
                run = runs[row.check_run_id]
                if row.detector in NOT_EXPORTED_DETECTORS or row.status == "failed":
                    continue
                if row.detector == SUBGROUP_DETECTOR:
                    parts = split_subgroup_feature(row.feature)
                    if parts is not None and row.p_value is not None:  # tested groups only
                        field, value, metric = parts
                        subgroups.setdefault((run.id, field, metric), []).append((value, row))
                    continue
                self._add_drift(families, self._window_labels(run, versions), row)
            performance = session.execute(
                select(CheckResult.check_run_id, CheckResult.feature, CheckResult.details)
                .where(CheckResult.check_run_id.in_(chunk),
                       CheckResult.detector == PERFORMANCE_DETECTOR)
                .order_by(CheckResult.check_run_id, CheckResult.feature)
            )
            for run_id, metric, details in performance:
                labels = [*self._window_labels(runs[run_id], versions), metric]
                self._add_performance(families, labels, _as_dict(details))
        self._add_subgroups(families, subgroups, runs, versions)

    @staticmethod
    def _window_labels(run: _Run, versions: dict[int, _Version]) -> list[str]:
        version = versions[run.version_id]
        return [version.model, version.version, run.window]

    @staticmethod
    def _add_drift(families: dict[str, Metric], window: list[str], row: Any) -> None:
        family = DETECTOR_FAMILIES.get(row.detector, "other")
        labels = [*window, family, row.detector, row.feature]
        if row.status not in NO_STATISTIC:
            families["monitor_drift_statistic"].add_metric(labels, row.statistic)
        if row.p_value is not None:
            families["monitor_drift_p_value"].add_metric(labels, row.p_value)
        families["monitor_drift_detected"].add_metric(labels, 1.0 if row.drift else 0.0)

    @staticmethod
    def _add_performance(families: dict[str, Metric], labels: list[str],
                         details: dict[str, Any]) -> None:
        current = details.get("current") or {}
        baseline = details.get("baseline") or {}
        for name, value in (
            ("monitor_performance_ratio", current.get("value")),
            ("monitor_performance_ci_lower_ratio",
             current.get("ci_low") if current.get("n") else None),
            ("monitor_performance_ci_upper_ratio",
             current.get("ci_high") if current.get("n") else None),
            ("monitor_performance_baseline_ratio", baseline.get("value")),
            ("monitor_performance_reads", current.get("n")),
        ):
            if value is not None:
                families[name].add_metric(labels, float(value))

    def _add_subgroups(self, families: dict[str, Metric],
                       subgroups: dict[tuple[int, str, str], list[tuple[str, Any]]],
                       runs: dict[int, _Run], versions: dict[int, _Version]) -> None:
        omitted: Tally[tuple[str, ...]] = Tally()
        for (run_id, field, metric), members in sorted(subgroups.items()):
            window = self._window_labels(runs[run_id], versions)
            if len(members) > self.max_subgroup_values:
                members.sort(key=lambda item: (-item[1].n_current, item[0]))
            for value, row in members[: self.max_subgroup_values]:
                labels = [*window, field, value, metric]
                families["monitor_subgroup_gap_ratio"].add_metric(labels, row.statistic)
                if row.drift:
                    families["monitor_subgroup_disparity_detected"].add_metric(labels, 1.0)
            key = (*window, field)
            omitted[key] = max(omitted[key], max(0, len(members) - self.max_subgroup_values))
        for key, n in sorted(omitted.items()):
            families["monitor_subgroup_values_omitted"].add_metric(list(key), n)

    def _fill_alerts(self, session: Session, families: dict[str, Metric],
                     versions: dict[int, _Version]) -> None:
        firing: Tally[tuple[str, str]] = Tally()
        for version in versions.values():
            for severity in SEVERITIES:
                firing[(version.model, severity)] += 0
        for model, severity, n in session.execute(
            select(Alert.model, Alert.severity, func.count())
            .where(Alert.state == "firing").group_by(Alert.model, Alert.severity)
        ):
            firing[(model, severity)] += int(n)
        for (model, severity), n in sorted(firing.items()):
            families["monitor_alerts_firing"].add_metric([model, severity], n)


# --- per-process ingestion metrics --------------------------------------------------------

INGEST_DURATION = "monitor_ingest_request_duration_seconds"
INGEST_KINDS = {"/v1/inferences": "inference", "/v1/overrides": "override"}
REJECT_REASONS = (
    "malformed_json", "invalid_body", "batch_too_large", "body_too_large", "invalid_event",
    "embedding_length", "unauthorized", "forbidden", "server_error", "other",
)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def reject_reason(status: int, body: bytes | None = None) -> str | None:
    """Why an ingestion request was rejected, from its status and (for 422) its JSON body;
    None when it was accepted. Always one of ``REJECT_REASONS``."""
    if status < 400:
        return None
    fixed = {401: "unauthorized", 403: "forbidden", 413: "body_too_large"}
    if status in fixed:
        return fixed[status]
    if status >= 500:
        return "server_error"
    if status != 422:
        return "other"
    try:
        detail = json.loads(body or b"{}").get("detail")
    except (ValueError, AttributeError):
        return "invalid_event"
    problems = detail if isinstance(detail, list) else []
    for problem in problems:
        if not isinstance(problem, dict):
            continue
        field, message = str(problem.get("field")), str(problem.get("message", ""))
        if field == "body":
            if message.startswith("malformed JSON"):
                return "malformed_json"
            if "exceeds the limit" in message:
                return "batch_too_large"
            return "invalid_body"
    for problem in problems:
        if (isinstance(problem, dict) and problem.get("field") == "embedding"
                and "does not match" in str(problem.get("message", ""))):
            return "embedding_length"
    return "invalid_event"


class IngestMetrics:
    """Rejected ingestion requests by reason and ingestion request latency, for one process."""

    def __init__(self, *, registry: CollectorRegistry):
        self.rejected = Counter(
            "monitor_ingest_rejected_batches",
            "Ingestion requests rejected (the whole batch), by event kind and reason.",
            labelnames=("kind", "reason"), registry=registry,
        )
        self.duration = Histogram(
            INGEST_DURATION,
            "Time to validate and commit an ingestion request, by event kind and outcome.",
            labelnames=("kind", "outcome"), buckets=DURATION_BUCKETS, registry=registry,
        )
        for kind in INGEST_KINDS.values():  # export zeros before the first request
            for reason in REJECT_REASONS:
                self.rejected.labels(kind=kind, reason=reason)
            for outcome in ("accepted", "rejected"):
                self.duration.labels(kind=kind, outcome=outcome)

    def observe(self, *, kind: str, status: int, seconds: float, body: bytes | None = None
                ) -> None:
        reason = reject_reason(status, body)
        if reason is not None:
            self.rejected.labels(kind=kind, reason=reason).inc()
        self.duration.labels(kind=kind, outcome="accepted" if reason is None else "rejected"
                             ).observe(seconds)


@dataclass(frozen=True)
class ServiceMetrics:
    """What one API process exports: its registry and the ingestion instruments in it."""

    registry: CollectorRegistry
    store: StoreCollector
    ingest: IngestMetrics


def build_service_metrics(sessions: sessionmaker[Session], *, check_interval_s: float = 0.0,
                          process_metrics: bool = True) -> ServiceMetrics:
    """A fresh registry with the store collector, the ingestion metrics and (by default) the
    standard process, platform and garbage-collector metrics."""
    registry = CollectorRegistry(auto_describe=True)
    store = StoreCollector(sessions, registry=registry, check_interval_s=check_interval_s)
    ingest = IngestMetrics(registry=registry)
    if process_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return ServiceMetrics(registry=registry, store=store, ingest=ingest)
