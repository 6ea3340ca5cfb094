"""Queries on baselines and check results: store a check run with its results, list them.

Functions take a Session and return dataclasses, never rows. Storing a check run is
idempotent per window: a second run of the same (version, window kind, start, end) updates
that window's ``check_run`` row in place (its id stays, so alerts pointing at it stay valid)
and replaces its results.

The daily grid reads two things back: which of a version's day windows are already stored
(``stored_windows``, so each is checked once) and the ``SequentialEvidence`` rows of its
earlier days against the same baseline (``sequential_history``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, exists, insert, select
from sqlalchemy.orm import Session

from monitor.errors import NotFoundError
from monitor.store.db import SelectT
from monitor.store.models import (
    Baseline,
    BaselineMember,
    CheckResult,
    CheckRun,
    ModelVersion,
)


@dataclass(frozen=True)
class BaselineInfo:
    id: int
    model: str
    version: str
    model_version_id: int
    created_at: datetime
    created_by: str | None
    window_start: datetime | None
    window_end: datetime | None
    n_studies: int
    summary: Mapping[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckResultInfo:
    """One stored detector result, with the run it belongs to."""

    id: int
    check_run_id: int
    model: str
    version: str
    window_label: str
    window_start: datetime
    window_end: datetime
    detector: str
    feature: str
    statistic: float
    p_value: float | None
    threshold: float
    drift: bool
    n_reference: int
    n_current: int
    details: Mapping[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckRunInfo:
    id: int
    model: str
    version: str
    model_version_id: int
    baseline_id: int | None
    window_kind: str
    window_label: str
    window_start: datetime
    window_end: datetime
    started_at: datetime
    finished_at: datetime | None
    status: str
    n_studies: int
    health_score: float | None
    health_status: str | None
    report_path: str | None
    error: str | None
    results: tuple[CheckResultInfo, ...] = ()

    def to_dict(self, *, with_results: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not with_results:
            data.pop("results")
        return data


# --- baselines -----------------------------------------------------------------------------


def _baseline_info(row: Baseline, model: str, version: str) -> BaselineInfo:
    return BaselineInfo(row.id, model, version, row.model_version_id, row.created_at,
                        row.created_by, row.window_start, row.window_end, row.n_studies,
                        row.summary)


def insert_baseline(
    session: Session,
    *,
    model_version_id: int,
    created_at: datetime,
    created_by: str | None,
    window_start: datetime | None,
    window_end: datetime | None,
    summary: Mapping[str, Any],
    member_ids: Sequence[int],
    fitted_state: bytes | None = None,
) -> int:
    """Insert a baseline and its member studies; returns its id."""
    row = Baseline(model_version_id=model_version_id, created_at=created_at,
                   created_by=created_by, window_start=window_start, window_end=window_end,
                   n_studies=len(member_ids), summary=dict(summary), fitted_state=fitted_state)
    session.add(row)
    session.flush()
    if member_ids:
        session.execute(insert(BaselineMember), [
            {"baseline_id": row.id, "inference_id": int(i)} for i in member_ids
        ])
    return row.id


def _baselines_query() -> Select[Baseline, str, str]:
    return (select(Baseline, ModelVersion.model, ModelVersion.version)
            .join(ModelVersion, ModelVersion.id == Baseline.model_version_id))


def list_baselines(
    session: Session, *, model: str | None = None, version: str | None = None
) -> list[BaselineInfo]:
    """Baselines, newest first."""
    query = _baselines_query().order_by(Baseline.created_at.desc(), Baseline.id.desc())
    if model is not None:
        query = query.where(ModelVersion.model == model)
    if version is not None:
        query = query.where(ModelVersion.version == version)
    return [_baseline_info(row, m, v) for row, m, v in session.execute(query)]


def newest_baseline(session: Session, model_version_id: int) -> BaselineInfo | None:
    """The baseline checks use: the newest of the version (by creation time, then id)."""
    query = (_baselines_query().where(Baseline.model_version_id == model_version_id)
             .order_by(Baseline.created_at.desc(), Baseline.id.desc()).limit(1))
    found = session.execute(query).first()
    return None if found is None else _baseline_info(*found)


def get_baseline(session: Session, baseline_id: int) -> BaselineInfo:
    found = session.execute(_baselines_query().where(Baseline.id == baseline_id)).first()
    if found is None:
        raise NotFoundError(f"baseline id {baseline_id} not found")
    return _baseline_info(*found)


def has_baseline(session: Session, model_version_id: int) -> bool:
    return bool(session.scalar(select(exists().where(
        Baseline.model_version_id == model_version_id))))


def baseline_version_ids(session: Session) -> set[int]:
    """The ids of the model versions that have a baseline."""
    return set(session.scalars(select(Baseline.model_version_id).distinct()))


def baseline_member_ids(session: Session, baseline_id: int) -> list[int]:
    """Inference ids of the baseline's members, ascending."""
    return list(session.scalars(
        select(BaselineMember.inference_id).where(BaselineMember.baseline_id == baseline_id)
        .order_by(BaselineMember.inference_id)
    ))


# --- check runs ----------------------------------------------------------------------------


def store_check_run(
    session: Session,
    *,
    run: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
) -> tuple[int, bool]:
    """Write one check run and its results in the caller's transaction.

    ``run`` holds the ``check_run`` columns (model_version_id, window_kind, window_start,
    window_end, ...); ``results`` the ``check_result`` columns without ``check_run_id``.
    Returns (run id, whether an earlier run of the same window was replaced).
    """
    existing = session.scalar(select(CheckRun).where(
        CheckRun.model_version_id == run["model_version_id"],
        CheckRun.window_kind == run["window_kind"],
        CheckRun.window_start == run["window_start"],
        CheckRun.window_end == run["window_end"],
    ))
    if existing is None:
        row = CheckRun(**run)
        session.add(row)
        session.flush()
        replaced = False
    else:
        row = existing
        for name, value in run.items():
            setattr(row, name, value)
        session.execute(delete(CheckResult).where(CheckResult.check_run_id == row.id))
        session.flush()
        replaced = True
    if results:
        session.execute(insert(CheckResult), [
            {**result, "check_run_id": row.id} for result in results
        ])
    return row.id, replaced


def _runs_query() -> Select[CheckRun, str, str]:
    return (select(CheckRun, ModelVersion.model, ModelVersion.version)
            .join(ModelVersion, ModelVersion.id == CheckRun.model_version_id))


def _run_info(row: CheckRun, model: str, version: str,
              results: tuple[CheckResultInfo, ...] = ()) -> CheckRunInfo:
    return CheckRunInfo(
        row.id, model, version, row.model_version_id, row.baseline_id, row.window_kind,
        row.window_label, row.window_start, row.window_end, row.started_at, row.finished_at,
        row.status, row.n_studies, row.health_score, row.health_status, row.report_path,
        row.error, results,
    )


def _result_info(row: CheckResult, run: CheckRun, model: str, version: str) -> CheckResultInfo:
    return CheckResultInfo(
        row.id, row.check_run_id, model, version, run.window_label, run.window_start,
        run.window_end, row.detector, row.feature, row.statistic, row.p_value, row.threshold,
        row.drift, row.n_reference, row.n_current, row.details,
    )


def get_check_run(session: Session, check_run_id: int, *, with_results: bool = True
                  ) -> CheckRunInfo:
    found = session.execute(_runs_query().where(CheckRun.id == check_run_id)).first()
    if found is None:
        raise NotFoundError(f"check run id {check_run_id} not found")
    run, model, version = found
    results: tuple[CheckResultInfo, ...] = ()
    if with_results:
        rows = session.scalars(select(CheckResult).where(CheckResult.check_run_id == run.id)
                               .order_by(CheckResult.id))
        results = tuple(_result_info(r, run, model, version) for r in rows)
    return _run_info(run, model, version, results)


def _filtered(query: SelectT, *, model: str | None, version: str | None,
              start: datetime | None, end: datetime | None) -> SelectT:
    if model is not None:
        query = query.where(ModelVersion.model == model)
    if version is not None:
        query = query.where(ModelVersion.version == version)
    if start is not None:
        query = query.where(CheckRun.window_end > start)
    if end is not None:
        query = query.where(CheckRun.window_end <= end)
    return query


def list_check_runs(
    session: Session,
    *,
    model: str | None = None,
    version: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[CheckRunInfo]:
    """Check runs (without their results) whose window ends in (start, end], newest first."""
    query = _filtered(_runs_query(), model=model, version=version, start=start, end=end)
    query = query.order_by(CheckRun.window_end.desc(), CheckRun.id.desc()).limit(limit)
    return [_run_info(run, m, v) for run, m, v in session.execute(query.offset(offset))]


def list_check_results(
    session: Session,
    *,
    model: str | None = None,
    version: str | None = None,
    detector: str | None = None,
    feature: str | None = None,
    drift: bool | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    check_run_id: int | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> list[CheckResultInfo]:
    """Stored results filtered by model, version, detector, feature, verdict and the time
    their window ends ((start, end]); newest window first."""
    query = (select(CheckResult, CheckRun, ModelVersion.model, ModelVersion.version)
             .join(CheckRun, CheckRun.id == CheckResult.check_run_id)
             .join(ModelVersion, ModelVersion.id == CheckRun.model_version_id))
    query = _filtered(query, model=model, version=version, start=start, end=end)
    if detector is not None:
        query = query.where(CheckResult.detector == detector)
    if feature is not None:
        query = query.where(CheckResult.feature == feature)
    if drift is not None:
        query = query.where(CheckResult.drift.is_(drift))
    if check_run_id is not None:
        query = query.where(CheckResult.check_run_id == check_run_id)
    query = query.order_by(CheckRun.window_end.desc(), CheckResult.id).limit(limit).offset(offset)
    return [_result_info(r, run, m, v) for r, run, m, v in session.execute(query)]


# --- the daily grid ------------------------------------------------------------------------


def stored_windows(
    session: Session, model_version_id: int, *, label: str, start: datetime, end: datetime
) -> set[tuple[datetime, datetime]]:
    """[start, end) of the version's stored runs with window ``label`` that lie within
    [start, end) (UTC datetimes)."""
    query = (select(CheckRun.window_start, CheckRun.window_end)
             .where(CheckRun.model_version_id == model_version_id,
                    CheckRun.window_kind == "time", CheckRun.window_label == label,
                    CheckRun.window_start >= start, CheckRun.window_end <= end))
    return {(row.window_start, row.window_end) for row in session.execute(query)}


def sequential_history(
    session: Session,
    *,
    model_version_id: int,
    baseline_id: int,
    detector: str,
    label: str,
    start: datetime,
    end: datetime,
) -> list[CheckResultInfo]:
    """The ``detector`` rows (``SequentialEvidence``) of the version's runs with window
    ``label`` against ``baseline_id`` whose windows lie within [start, end), oldest window
    first. A run against another baseline is not history: its p-values were tested against
    other studies."""
    query = (select(CheckResult, CheckRun, ModelVersion.model, ModelVersion.version)
             .join(CheckRun, CheckRun.id == CheckResult.check_run_id)
             .join(ModelVersion, ModelVersion.id == CheckRun.model_version_id)
             .where(CheckRun.model_version_id == model_version_id,
                    CheckRun.baseline_id == baseline_id,
                    CheckRun.window_kind == "time", CheckRun.window_label == label,
                    CheckRun.window_start >= start, CheckRun.window_end <= end,
                    CheckResult.detector == detector)
             .order_by(CheckRun.window_start, CheckResult.id))
    return [_result_info(r, run, m, v) for r, run, m, v in session.execute(query)]
