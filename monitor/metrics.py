"""Prometheus metrics. Every metric, its labels and the bound on each label: docs/metrics.md.

Two sources:

* ``StoreCollector`` reads the store on every scrape: rows ingested per model version, the
  scheduled checks (when the newest succeeded or failed; the p-value and effect size of every
  test of the newest, its sequential evidence per family, performance, subgroup gaps and
  health), open incidents, findings firing and the live versions. The queries are
  ``monitor.store.scrape``'s; this module turns what they return into series. ``collect()``
  builds fresh families each time and ``describe()`` answers without touching the store, so
  every API worker over one database reports the same numbers and registering the collector
  costs nothing.
* ``IngestMetrics`` counts rejected ingestion requests and times ingestion requests. Only the
  process that served a request knows these, so each worker exports its own series, told apart
  by Prometheus's ``instance`` label when each worker is scraped (see docs/metrics.md).

A metric measures one kind of quantity: p-values, distances between two distributions,
differences of two proportions, classifier AUCs and shares of novel studies each have their
own name, and test statistics whose scale depends on the test (MMD², chi²) are not exported.
Check-derived metrics come from the *scheduled* checks only (the daily grid by default), so a
series keeps one meaning over time and needs no window label.

Label values come from small sets: model names and versions, detector and feature names,
subgroup fields and their values (sites, vendors, scanner models, sex, age bands, views; at
most ``MAX_SUBGROUP_VALUES`` per field). Study UIDs, patient and reader keys, event IDs,
incident ids and free text never become labels.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
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
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.config import GRID_SCHEDULE
from monitor.detect.health import DETECTOR_FAMILIES
from monitor.detect.sequential import STREAM_DETECTOR
from monitor.grid import GRID_LABEL, grid_day
from monitor.store import scrape
from monitor.store.db import session_scope
from monitor.store.incidents import INCIDENT_SEVERITIES
from monitor.store.registry import monitored_version_ids
from monitor.store.scrape import (
    CATEGORICAL_DETECTOR,
    FAILED_STATUS,
    NOVELTY_DETECTOR,
    PERFORMANCE_DETECTOR,
    SETTLE_SECONDS,
    SUBGROUP_DETECTOR,
    ResultFields,
    VersionStatus,
)

log = logging.getLogger(__name__)
Families = dict[str, Any]  # metric name -> its Counter, Gauge or Info family

# Subgroup values exported per (model version, field, metric): the largest groups.
MAX_SUBGROUP_VALUES = 50
SEVERITIES = ("info", "warning", "critical")
# A model's check results are exported for its live versions (the production alias and
# status active: what scheduled checks cover). A model with no live version falls back to its
# versions not ended, so checks of an unregistered model still show. Ended versions never
# export results: a rolled-back version's last evidence would page forever.
ENDED_STATUSES = frozenset({"retired", "rolled_back"})
# Per version and outcome (results stored, failed), the newest runs looked at to find the
# newest scheduled one: a day's grid run is among them unless more than this many
# unscheduled runs of the same label end after it.
RECENT_RUNS = 8
NOT_EXPORTED_DETECTORS = frozenset({"Attribution", STREAM_DETECTOR})  # not tests
# Result statuses whose statistic means nothing (a failed detector stores 0.0).
NO_STATISTIC = frozenset({"failed", "insufficient data"})
# Effect sizes by kind, and the detectors whose results give them.
DISTRIBUTION_DISTANCE_DETECTORS = frozenset({"NumericDrift", "ScoreDrift",
                                             CATEGORICAL_DETECTOR})
PROPORTION_DIFFERENCE_DETECTORS = frozenset({"PositiveRateDrift", PERFORMANCE_DETECTOR})
CLASSIFIER_DETECTOR = "ClassifierDrift"
UNKNOWN_VERSION = "unknown"  # an override event that names no model version

# ``model_version``, as on the service's incidents and in the Alertmanager configs.
VERSION_LABELS = ("model", "model_version")
TEST_LABELS = (*VERSION_LABELS, "family", "detector", "feature")
PERFORMANCE_LABELS = (*VERSION_LABELS, "metric")
SUBGROUP_LABELS = (*VERSION_LABELS, "field", "value", "metric")


@dataclass(frozen=True)
class FamilySpec:
    """One metric family of the store collector: ``name`` without ``_total`` for counters and
    without ``_info`` for info metrics (the client library adds them)."""

    name: str
    kind: Literal["gauge", "counter", "info"]
    documentation: str
    labels: tuple[str, ...] = ()

    def new(self) -> Any:  # a Counter, Info or Gauge family: each has its own add_metric
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
               "How often the scheduler looks for checks to run (0: scheduler off)."),
    FamilySpec("monitor_check_last_success_timestamp_seconds", "gauge",
               "Time the newest scheduled check of a model version that stored results "
               "finished.", VERSION_LABELS),
    FamilySpec("monitor_check_last_failure_timestamp_seconds", "gauge",
               "Time the newest scheduled check of a model version that failed finished.",
               VERSION_LABELS),
    FamilySpec("monitor_check_window_studies", "gauge",
               "Studies in the window of the newest scheduled check.", VERSION_LABELS),
    FamilySpec("monitor_health_score", "gauge",
               "Health score of the newest scheduled check (1 quiet; amber < 0.8; red < 0.6).",
               VERSION_LABELS),
    FamilySpec("monitor_sequential_evidence", "gauge",
               "Sequential evidence of a detector family in the newest scheduled check: the "
               "largest statistic of its streams divided by the page threshold (1 = at the "
               "page level).", (*VERSION_LABELS, "family")),
    FamilySpec("monitor_test_p_value", "gauge",
               "p-value of each test in the newest scheduled check (absent where the test had "
               "too little data or failed).", TEST_LABELS),
    FamilySpec("monitor_test_distribution_distance_ratio", "gauge",
               "Largest difference, over events, between an event's share in the window and in "
               "the reference: Kolmogorov-Smirnov D for numeric features and scores, total "
               "variation distance for categorical ones (newest scheduled check).",
               TEST_LABELS),
    FamilySpec("monitor_test_proportion_difference_ratio", "gauge",
               "Window proportion minus reference proportion: positive rate, performance "
               "metrics against radiologist reads (newest scheduled check).", TEST_LABELS),
    FamilySpec("monitor_test_classifier_auc_ratio", "gauge",
               "Cross-validated AUC of a classifier telling window from reference embeddings "
               "(0.5: indistinguishable; newest scheduled check).", TEST_LABELS),
    FamilySpec("monitor_test_novel_studies_ratio", "gauge",
               "Share of the window's studies (one per patient) more unusual than the "
               "reference's novelty level (newest scheduled check).", TEST_LABELS),
    FamilySpec("monitor_performance_ratio", "gauge",
               "Performance against radiologist reads in the newest scheduled check window "
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
               "Reads in the metric's denominator in the newest scheduled check window.",
               PERFORMANCE_LABELS),
    FamilySpec("monitor_subgroup_gap_ratio", "gauge",
               "Subgroup's metric minus the rest of the window's, for subgroups large enough "
               "to test (newest scheduled check).", SUBGROUP_LABELS),
    FamilySpec("monitor_subgroup_baseline_gap_ratio", "gauge",
               "The same subgroup's gap in the version's baseline.", SUBGROUP_LABELS),
    FamilySpec("monitor_subgroup_values_omitted", "gauge",
               f"Subgroup values not exported (beyond the {MAX_SUBGROUP_VALUES} largest per "
               "field).", (*VERSION_LABELS, "field")),
    FamilySpec("monitor_open_incidents", "gauge",
               "Incidents (findings of one version that share a cause) now open, by severity.",
               (*VERSION_LABELS, "severity")),
    FamilySpec("monitor_alerts_firing", "gauge",
               "Findings of the service's rules now firing, by model version and severity.",
               (*VERSION_LABELS, "severity")),
)
FAMILY_BY_NAME = {spec.name: spec for spec in FAMILIES}


def exposed_metric_names() -> frozenset[str]:
    """Names as they appear on /metrics (store families and ingestion metrics)."""
    names = {spec.exposed_name for spec in FAMILIES}
    names.add("monitor_ingest_rejected_batches_total")
    names.update(f"{INGEST_DURATION}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return frozenset(names)


# --- which checks are the scheduled ones --------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """The checks the scheduler runs, which /metrics reports on.

    ``window`` is ``Settings.check_window``: ``"grid"`` (the default) for the daily grid, whose
    runs are the ``1d`` windows that cover exactly one local day in ``zone``; or a window
    label (``7d``, ``last:500``), whose runs are those with that label.
    """

    window: str = GRID_SCHEDULE
    zone: tzinfo = UTC

    @property
    def label(self) -> str:
        return GRID_LABEL if self.window == GRID_SCHEDULE else self.window

    def covers(self, start: datetime, end: datetime) -> bool:
        return self.window != GRID_SCHEDULE or grid_day(start, end, self.zone) is not None


# --- the store collector ------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    id: int
    version_id: int
    n_studies: int
    health_score: float | None


@dataclass(frozen=True)
class _ScheduledRuns:
    """Per version: its newest scheduled run with results, and when the newest scheduled runs
    that stored results and that failed finished."""

    latest: dict[int, _Run]
    last_success: dict[int, float]
    last_failure: dict[int, float]


def exported_versions(versions: dict[int, VersionStatus], live: set[int]) -> set[int]:
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


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def split_subgroup_feature(feature: str) -> tuple[str, str, str] | None:
    """``"site=north:sensitivity"`` -> ``("site", "north", "sensitivity")``."""
    field, sep, rest = feature.partition("=")
    value, sep2, metric = rest.rpartition(":")
    if not sep or not sep2 or not field or not metric:
        return None
    return field, value, metric


def total_variation_distance(counts: Mapping[str, Any]) -> float | None:
    """Half the sum of absolute differences between the categories' shares in the window and
    in the reference, from CategoricalDrift's ``details["counts"]`` ({category: {"reference":
    n, "current": n}}): the largest difference in probability of any set of categories. None
    when either side is empty."""
    reference = {c: float(n.get("reference") or 0) for c, n in counts.items()
                 if isinstance(n, Mapping)}
    current = {c: float(n.get("current") or 0) for c, n in counts.items()
               if isinstance(n, Mapping)}
    total_ref, total_cur = sum(reference.values()), sum(current.values())
    if total_ref <= 0 or total_cur <= 0:
        return None
    return 0.5 * sum(abs(current[c] / total_cur - reference[c] / total_ref) for c in reference)


class StoreCollector(Collector):
    """Metrics read from the store at scrape time (docs/metrics.md lists them).

    Parameters
    ----------
    sessions
        The runtime's session factory.
    registry
        Registered there when given (tests pass a fresh ``CollectorRegistry()``).
    check_interval_s
        Exported as ``monitor_check_interval_seconds``: the late-check rules stay quiet when
        the scheduler is off.
    schedule
        Which checks are the scheduled ones (``Settings.check_window`` and ``.zone``).
    clock
        Seconds since the epoch; tests pass a fixed one.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        registry: CollectorRegistry | None = None,
        check_interval_s: float = 0.0,
        schedule: Schedule | None = None,
        settle_seconds: float = SETTLE_SECONDS,
        max_subgroup_values: int = MAX_SUBGROUP_VALUES,
        clock: Callable[[], float] = time.time,
    ):
        self._sessions = sessions
        self.check_interval_s = check_interval_s
        self.schedule = schedule or Schedule()
        self.max_subgroup_values = max_subgroup_values
        self._clock = clock
        self._inferences = scrape.settled_inference_counts(settle_seconds=settle_seconds)
        self._overrides = scrape.settled_override_counts(settle_seconds=settle_seconds)
        self._incident_table_seen = False
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

    def _fill(self, session: Session, families: Families) -> None:
        versions = scrape.model_versions(session)
        now = datetime.fromtimestamp(self._clock(), UTC)
        self._fill_ingestion(session, families, versions, now)
        live = self._fill_registry(session, families, versions)
        exported = exported_versions(versions, live)
        self._fill_checks(session, families, versions, exported)
        self._fill_incidents(session, families, versions, exported)
        self._fill_alerts(session, families, versions, exported)

    def _fill_ingestion(self, session: Session, families: Families,
                        versions: dict[int, VersionStatus], now: datetime) -> None:
        inferences = families["monitor_inferences"]
        for (version_id,), n in sorted(self._inferences.read(session, now=now).items()):
            version = versions.get(version_id)
            if version is not None:
                inferences.add_metric([version.model, version.version], n)
        overrides = families["monitor_overrides"]
        for (model, version), n in sorted(self._overrides.read(session, now=now).items(),
                                          key=lambda item: (item[0][0], item[0][1] or "")):
            overrides.add_metric([model, version or UNKNOWN_VERSION], n)
        last = families["monitor_last_inference_timestamp_seconds"]
        for version_id, ts in scrape.newest_inference_times(session).items():
            stamp = _timestamp(ts)
            if stamp is not None and version_id in versions:
                version = versions[version_id]
                last.add_metric([version.model, version.version], stamp)

    def _fill_registry(self, session: Session, families: Families,
                       versions: dict[int, VersionStatus]) -> set[int]:
        """Export the live versions; return their ids."""
        live = monitored_version_ids(session) & versions.keys()
        info = families["monitor_model_active_version"]
        for version_id in sorted(live, key=lambda i: (versions[i].model, versions[i].version)):
            info.add_metric([versions[version_id].model],
                            {"model_version": versions[version_id].version})
        return live

    def _scheduled_runs(self, session: Session, exported: set[int]) -> _ScheduledRuns:
        """The newest scheduled runs of each exported version, from its ``RECENT_RUNS``
        newest runs (by window end) of the schedule's label that stored results and as many
        that failed."""
        latest: dict[int, _Run] = {}
        last_success: dict[int, float] = {}
        last_failure: dict[int, float] = {}
        for row in scrape.recent_check_runs(session, exported,
                                            window_label=self.schedule.label,
                                            per_outcome=RECENT_RUNS):
            if not self.schedule.covers(row.window_start, row.window_end):
                continue
            finished = _timestamp(row.finished_at or row.started_at)
            version_id = row.model_version_id
            if row.status == FAILED_STATUS:
                if finished is not None:
                    last_failure[version_id] = max(last_failure.get(version_id, finished),
                                                   finished)
                continue
            if finished is not None:
                last_success[version_id] = max(last_success.get(version_id, finished),
                                               finished)
            if version_id not in latest:  # newest window end first
                latest[version_id] = _Run(row.id, version_id, row.n_studies or 0,
                                          row.health_score)
        return _ScheduledRuns(latest, last_success, last_failure)

    def _fill_checks(self, session: Session, families: Families,
                     versions: dict[int, VersionStatus], exported: set[int]) -> None:
        scheduled = self._scheduled_runs(session, exported)
        for name, stamps in (("monitor_check_last_success_timestamp_seconds",
                              scheduled.last_success),
                             ("monitor_check_last_failure_timestamp_seconds",
                              scheduled.last_failure)):
            for version_id, stamp in sorted(stamps.items()):
                families[name].add_metric(self._version_labels(version_id, versions), stamp)
        runs = {run.id: run for run in scheduled.latest.values()}
        for run in sorted(runs.values(), key=lambda r: r.id):
            labels = self._version_labels(run.version_id, versions)
            families["monitor_check_window_studies"].add_metric(labels, run.n_studies)
            if run.health_score is not None:
                families["monitor_health_score"].add_metric(labels, run.health_score)
        subgroups: dict[tuple[int, str, str], list[tuple[str, ResultFields]]] = {}
        evidence: dict[tuple[int, str], float] = {}
        for chunk in scrape.check_results_of_runs(session, runs):
            for row in chunk.results:
                run = runs[row.check_run_id]
                if row.detector == STREAM_DETECTOR:
                    self._note_evidence(evidence, run, row)
                    continue
                if row.detector in NOT_EXPORTED_DETECTORS or row.status == "failed":
                    continue
                if row.detector == SUBGROUP_DETECTOR:
                    parts = split_subgroup_feature(row.feature)
                    if parts is not None and row.p_value is not None:  # tested groups only
                        field, value, metric = parts
                        subgroups.setdefault((run.id, field, metric), []).append((value, row))
                    continue
                self._add_test(families, self._version_labels(run.version_id, versions), row)
            for counted in chunk.categorical_counts:
                distance = total_variation_distance(counted.counts)
                if distance is not None:
                    version = self._version_labels(runs[counted.check_run_id].version_id,
                                                   versions)
                    families["monitor_test_distribution_distance_ratio"].add_metric(
                        [*version, "metadata", CATEGORICAL_DETECTOR, counted.feature], distance)
            for measured in chunk.performance:
                version = self._version_labels(runs[measured.check_run_id].version_id, versions)
                self._add_performance(families, [*version, measured.metric], measured.details)
        for (run_id, family), ratio in sorted(evidence.items()):
            families["monitor_sequential_evidence"].add_metric(
                [*self._version_labels(runs[run_id].version_id, versions), family], ratio)
        self._add_subgroups(families, subgroups, runs, versions)

    @staticmethod
    def _version_labels(version_id: int, versions: dict[int, VersionStatus]) -> list[str]:
        version = versions[version_id]
        return [version.model, version.version]

    @staticmethod
    def _note_evidence(evidence: dict[tuple[int, str], float], run: _Run,
                       row: ResultFields) -> None:
        """Keep the largest statistic / page threshold of each family's streams."""
        family = row.of_family
        statistic, page_at = _finite(row.statistic), _finite(row.threshold)
        if not family or statistic is None or page_at is None or page_at <= 0:
            return
        key = (run.id, str(family))
        ratio = statistic / page_at
        evidence[key] = max(evidence.get(key, ratio), ratio)

    @staticmethod
    def _add_test(families: Families, version: list[str], row: ResultFields) -> None:
        family = DETECTOR_FAMILIES.get(row.detector, "other")
        labels = [*version, family, row.detector, row.feature]
        if row.p_value is not None:
            families["monitor_test_p_value"].add_metric(labels, row.p_value)
        if row.status in NO_STATISTIC:
            return
        effect: tuple[str, float | None] | None = None
        if row.detector in DISTRIBUTION_DISTANCE_DETECTORS:
            if row.detector != CATEGORICAL_DETECTOR:  # from its counts, in _fill_checks
                effect = ("monitor_test_distribution_distance_ratio", _finite(row.ks_statistic))
        elif row.detector in PROPORTION_DIFFERENCE_DETECTORS:
            effect = ("monitor_test_proportion_difference_ratio", _finite(row.statistic))
        elif row.detector == CLASSIFIER_DETECTOR:
            effect = ("monitor_test_classifier_auc_ratio", _finite(row.statistic))
        elif row.detector == NOVELTY_DETECTOR and row.n_counted:
            effect = ("monitor_test_novel_studies_ratio",
                      _finite((row.n_novel_counted or 0) / row.n_counted))
        if effect is not None and effect[1] is not None:
            families[effect[0]].add_metric(labels, effect[1])

    @staticmethod
    def _add_performance(families: Families, labels: list[str],
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
            finite = _finite(value)
            if finite is not None:
                families[name].add_metric(labels, finite)

    def _add_subgroups(self, families: Families,
                       subgroups: dict[tuple[int, str, str], list[tuple[str, ResultFields]]],
                       runs: dict[int, _Run], versions: dict[int, VersionStatus]) -> None:
        omitted: Tally[tuple[str, ...]] = Tally()
        for (run_id, field, metric), members in sorted(subgroups.items()):
            version = self._version_labels(runs[run_id].version_id, versions)
            if len(members) > self.max_subgroup_values:
                members.sort(key=lambda item: (-item[1].n_current, item[0]))
            for value, row in members[: self.max_subgroup_values]:
                labels = [*version, field, value, metric]
                families["monitor_subgroup_gap_ratio"].add_metric(labels, row.statistic)
                if _finite(row.baseline_gap) is not None:
                    families["monitor_subgroup_baseline_gap_ratio"].add_metric(
                        labels, row.baseline_gap)
                families["monitor_test_p_value"].add_metric(
                    [*version, "bias", SUBGROUP_DETECTOR, row.feature], row.p_value)
            key = (*version, field)
            omitted[key] = max(omitted[key], max(0, len(members) - self.max_subgroup_values))
        for key, n in sorted(omitted.items()):
            families["monitor_subgroup_values_omitted"].add_metric(list(key), n)

    def _fill_incidents(self, session: Session, families: Families,
                        versions: dict[int, VersionStatus], exported: set[int]) -> None:
        """Open incidents per version and severity: 0 for every exported version, so a
        query can tell "none open" from "not reported". A database from before the incident
        table (revision 0004) reports none rather than failing the scrape."""
        if not self._incident_table_seen:
            if not scrape.has_incident_table(session):
                return
            self._incident_table_seen = True
        open_now: Tally[tuple[str, str, str]] = Tally()
        for version_id in exported:
            for severity in INCIDENT_SEVERITIES:
                model, version = self._version_labels(version_id, versions)
                open_now[(model, version, severity)] += 0
        for (model, version, severity), n in scrape.open_incident_counts(session).items():
            open_now[(model, version, severity)] += n
        for labels, n in sorted(open_now.items()):
            families["monitor_open_incidents"].add_metric(list(labels), n)

    def _fill_alerts(self, session: Session, families: Families,
                     versions: dict[int, VersionStatus], exported: set[int]) -> None:
        firing: Tally[tuple[str, str, str]] = Tally()
        for version_id in exported:
            for severity in SEVERITIES:
                model, version = self._version_labels(version_id, versions)
                firing[(model, version, severity)] += 0
        for (model, alert_version, severity), n in scrape.firing_alert_counts(session).items():
            firing[(model, alert_version or UNKNOWN_VERSION, severity)] += n
        for labels, n in sorted(firing.items()):
            families["monitor_alerts_firing"].add_metric(list(labels), n)


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
                          schedule: Schedule | None = None,
                          process_metrics: bool = True) -> ServiceMetrics:
    """A fresh registry with the store collector, the ingestion metrics and (by default) the
    standard process, platform and garbage-collector metrics."""
    registry = CollectorRegistry(auto_describe=True)
    store = StoreCollector(sessions, registry=registry, check_interval_s=check_interval_s,
                           schedule=schedule)
    ingest = IngestMetrics(registry=registry)
    if process_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return ServiceMetrics(registry=registry, store=store, ingest=ingest)
