"""What the Prometheus store collector (``monitor.metrics``) reads at each scrape.

Every function takes the scrape's session and returns values: frozen dataclasses, dicts and
tuples, never ORM rows. Lists of ids go into ``IN (...)`` lists of at most ``IN_CHUNK`` each,
one query per chunk. The collector decides what becomes a series; these only read.
"""

from __future__ import annotations

import json
import threading
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

from sqlalchemy import case, func, inspect, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from monitor.detect.sequential import STREAM_DETECTOR
from monitor.store.db import IN_CHUNK
from monitor.store.models import (
    Alert,
    CheckResult,
    CheckRun,
    Incident,
    Inference,
    ModelVersion,
    Override,
)

# Ingested rows older than this are counted once and remembered (see SettledCount).
SETTLE_SECONDS = 300.0
# Runs that stored results: ``partial`` means some family (or the report) failed.
RESULT_STATUSES = ("ok", "partial")
FAILED_STATUS = "failed"
CATEGORICAL_DETECTOR = "CategoricalDrift"
PERFORMANCE_DETECTOR = "PerformanceDrift"
SUBGROUP_DETECTOR = "SubgroupBias"
NOVELTY_DETECTOR = "NoveltyDrift"


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), IN_CHUNK):
        yield ids[start : start + IN_CHUNK]


def _as_dict(details: Any) -> dict[str, Any]:
    if isinstance(details, str):  # a driver that hands JSON back as text
        details = json.loads(details)
    return details if isinstance(details, dict) else {}


# --- ingestion counts ---------------------------------------------------------------------


class SettledCount:
    """Rows of one table per key, exact on every scrape without counting the table each time.

    A row whose ``received_at`` is more than ``settle_seconds`` old belongs to a committed
    (or abandoned) transaction: it is counted once and remembered, up to a frontier id. Each
    scrape adds the rows settled since the last one and counts the tail beyond the frontier,
    both by primary-key range. The first scrape of a process counts the table once. Rows
    inserted in a transaction that stays open longer than ``settle_seconds`` could be missed;
    ingestion commits one bounded batch per transaction, in well under a second.

    ``settled_inference_counts`` and ``settled_override_counts`` make the two the collector
    keeps.
    """

    def __init__(self, id_column: InstrumentedAttribute[int],
                 received_column: InstrumentedAttribute[datetime],
                 key_columns: Sequence[InstrumentedAttribute[Any]],
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
        """Rows per key now."""
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


def settled_inference_counts(*, settle_seconds: float = SETTLE_SECONDS) -> SettledCount:
    """Inference rows per ``(model_version_id,)``."""
    return SettledCount(Inference.id, Inference.received_at, [Inference.model_version_id],
                        settle_seconds=settle_seconds)


def settled_override_counts(*, settle_seconds: float = SETTLE_SECONDS) -> SettledCount:
    """Override rows per ``(model, model_version)``; the version is None where the read names
    none."""
    return SettledCount(Override.id, Override.received_at,
                        [Override.model, Override.model_version],
                        settle_seconds=settle_seconds)


# --- versions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """A model version's names and its registry status."""

    model: str
    version: str
    status: str


def model_versions(session: Session) -> dict[int, VersionStatus]:
    """Every model version, by id."""
    return {
        row.id: VersionStatus(row.model, row.version, row.status)
        for row in session.execute(
            select(ModelVersion.id, ModelVersion.model, ModelVersion.version,
                   ModelVersion.status))
    }


def newest_inference_times(session: Session) -> dict[int, datetime]:
    """Per model version id, the event time of its newest stored inference (versions with
    none are left out)."""
    newest = (select(func.max(Inference.ts))
              .where(Inference.model_version_id == ModelVersion.id).scalar_subquery())
    return {version_id: ts for version_id, ts in session.execute(select(ModelVersion.id, newest))
            if ts is not None}


# --- check runs and their results ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecentRun:
    """A check run that stored results or failed: its window and when it ran."""

    id: int
    model_version_id: int
    status: str
    window_start: datetime
    window_end: datetime
    started_at: datetime
    finished_at: datetime | None
    n_studies: int
    health_score: float | None


def recent_check_runs(session: Session, version_ids: Iterable[int], *, window_label: str,
                      per_outcome: int) -> list[RecentRun]:
    """Per model version, its ``per_outcome`` newest runs (by window end, then id) labelled
    ``window_label`` that stored results (``RESULT_STATUSES``) and as many that failed. One
    query per chunk of versions (in id order); within a chunk, newest window end first."""
    failed = case((CheckRun.status == FAILED_STATUS, 1), else_=0)
    runs: list[RecentRun] = []
    for chunk in _chunks(sorted(version_ids)):
        ranked = (
            select(CheckRun.id, CheckRun.model_version_id, CheckRun.status,
                   CheckRun.window_start, CheckRun.window_end, CheckRun.started_at,
                   CheckRun.finished_at, CheckRun.n_studies, CheckRun.health_score,
                   func.row_number().over(
                       partition_by=(CheckRun.model_version_id, failed),
                       order_by=(CheckRun.window_end.desc(), CheckRun.id.desc()),
                   ).label("rank"))
            .where(CheckRun.model_version_id.in_(chunk),
                   CheckRun.window_label == window_label,
                   CheckRun.status.in_((*RESULT_STATUSES, FAILED_STATUS)))
            .subquery()
        )
        rows = session.execute(select(ranked).where(ranked.c.rank <= per_outcome)
                               .order_by(ranked.c.window_end.desc(), ranked.c.id.desc()))
        runs.extend(RecentRun(row.id, row.model_version_id, row.status, row.window_start,
                              row.window_end, row.started_at, row.finished_at, row.n_studies,
                              row.health_score)
                    for row in rows)
    return runs


class ResultFields(NamedTuple):
    """A check result's columns and the ``details`` fields its detector stores (None for the
    detectors that do not: see ``_DETAIL_FIELDS``).

    A named tuple rather than a frozen dataclass: a scrape reads one per result of every
    exported version's newest check (tens of thousands), and a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, several times the cost."""

    check_run_id: int
    detector: str
    feature: str
    statistic: float
    p_value: float | None
    threshold: float
    n_current: int
    status: str | None  # every detector but SequentialEvidence
    of_family: str | None  # SequentialEvidence: the detector family of the stream
    ks_statistic: float | None  # NumericDrift, ScoreDrift
    n_novel_counted: float | None  # NoveltyDrift
    n_counted: float | None  # NoveltyDrift
    baseline_gap: float | None  # SubgroupBias


@dataclass(frozen=True, slots=True)
class CategoricalCounts:
    """A tested CategoricalDrift result's ``details["counts"]``: {category: {"reference": n,
    "current": n}}."""

    check_run_id: int
    feature: str
    counts: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PerformanceDetails:
    """A PerformanceDrift result's ``details`` (its ``current`` and ``baseline`` metric)."""

    check_run_id: int
    metric: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunResults:
    """The results of one chunk of check runs, each part ordered by run id and feature (the
    results also by detector)."""

    results: tuple[ResultFields, ...]
    categorical_counts: tuple[CategoricalCounts, ...]
    performance: tuple[PerformanceDetails, ...]


def _detail(key: str, kind: Literal["string", "float"], *, of: Iterable[str] = (),
            not_of: Iterable[str] = ()) -> Any:
    """``details[key]`` of the results of the detectors ``of`` (or all but ``not_of``), NULL
    for the others: the database parses a row's JSON only where the value is used (on
    PostgreSQL each extraction parses the ``json`` text again)."""
    path = CheckResult.details[key]
    value = path.as_string() if kind == "string" else path.as_float()
    selects = (CheckResult.detector.in_(tuple(of)) if of
               else CheckResult.detector.not_in(tuple(not_of)))
    return case((selects, value), else_=None).label(key)


_DETAIL_FIELDS = (
    _detail("status", "string", not_of=(STREAM_DETECTOR,)),
    _detail("of_family", "string", of=(STREAM_DETECTOR,)),
    _detail("ks_statistic", "float", of=("NumericDrift", "ScoreDrift")),
    _detail("n_novel_counted", "float", of=(NOVELTY_DETECTOR,)),
    _detail("n_counted", "float", of=(NOVELTY_DETECTOR,)),
    _detail("baseline_gap", "float", of=(SUBGROUP_DETECTOR,)),
)


def check_results_of_runs(session: Session, run_ids: Iterable[int]) -> Iterator[RunResults]:
    """The results of the runs ``run_ids``, one ``RunResults`` per chunk of runs (in id
    order), read as it is reached: every result with its detail fields, the counts of the
    tested CategoricalDrift results and the details of the PerformanceDrift results (three
    queries a chunk)."""
    for chunk in _chunks(sorted(run_ids)):
        results = tuple(map(ResultFields._make, session.execute(  # columns in field order
            select(CheckResult.check_run_id, CheckResult.detector, CheckResult.feature,
                   CheckResult.statistic, CheckResult.p_value, CheckResult.threshold,
                   CheckResult.n_current, *_DETAIL_FIELDS)
            .where(CheckResult.check_run_id.in_(chunk))
            .order_by(CheckResult.check_run_id, CheckResult.detector, CheckResult.feature)
        )))
        categorical = tuple(
            CategoricalCounts(run_id, feature, _as_dict(counts))
            for run_id, feature, counts in session.execute(
                select(CheckResult.check_run_id, CheckResult.feature,
                       CheckResult.details["counts"].label("counts"))
                .where(CheckResult.check_run_id.in_(chunk),
                       CheckResult.detector == CATEGORICAL_DETECTOR,
                       CheckResult.p_value.is_not(None))
                .order_by(CheckResult.check_run_id, CheckResult.feature)
            )
        )
        performance = tuple(
            PerformanceDetails(run_id, metric, _as_dict(details))
            for run_id, metric, details in session.execute(
                select(CheckResult.check_run_id, CheckResult.feature, CheckResult.details)
                .where(CheckResult.check_run_id.in_(chunk),
                       CheckResult.detector == PERFORMANCE_DETECTOR)
                .order_by(CheckResult.check_run_id, CheckResult.feature)
            )
        )
        yield RunResults(results, categorical, performance)


# --- incidents and alerts -----------------------------------------------------------------


def has_incident_table(session: Session) -> bool:
    """Whether the database has the incident table (a database from before revision 0004
    has not)."""
    return inspect(session.connection()).has_table(Incident.__tablename__)


def open_incident_counts(session: Session) -> dict[tuple[str, str, str], int]:
    """Open incidents per (model, model version, severity)."""
    return {
        (model, version, severity): int(n)
        for model, version, severity, n in session.execute(
            select(Incident.model, Incident.model_version, Incident.severity, func.count())
            .where(Incident.state == "open")
            .group_by(Incident.model, Incident.model_version, Incident.severity)
        )
    }


def firing_alert_counts(session: Session) -> dict[tuple[str, str | None, str], int]:
    """Firing alerts per (model, model version, severity); the version is None where the alert
    names none."""
    return {
        (model, version, severity): int(n)
        for model, version, severity, n in session.execute(
            select(Alert.model, Alert.model_version, Alert.severity, func.count())
            .where(Alert.state == "firing")
            .group_by(Alert.model, Alert.model_version, Alert.severity)
        )
    }
