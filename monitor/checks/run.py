"""Run every detector family over one window of one model version against its baseline, and
store the results (one ``check_run`` and its ``check_result`` rows, in one transaction).

Families and what they test (the baseline's members are the reference; studies that are
baseline members are left out of the window so the two samples are disjoint):

* ``embedding``: kernel MMD (``MMDDrift``), a domain classifier (``ClassifierDrift``) and
  per-study novelty (``NoveltyDrift``) on the model's embeddings, with patient keys as
  ``groups`` so repeat studies of one patient move together. Windows and baselines larger
  than ``CheckOptions.max_embedding_current`` / ``max_embedding_reference`` are subsampled
  (seeded) for MMD and the classifier, whose cost grows with the square of the sample;
  novelty scores every study of the window.
* ``metadata``: chi-square per categorical field (``CATEGORICAL_FIELDS``; a never-seen value
  is a finding on first sight) and KS per numeric field (``NUMERIC_FIELDS``).
* ``prediction``: KS on the primary score, two-proportion test on the positive rate.
* ``performance``: override rate, sensitivity, specificity, PPV, NPV against radiologist
  reads (one-sided: worse than the baseline).
* ``bias``: ``SubgroupBias`` (per vendor, scanner, site, sex, age band, view; BH-corrected).

Grid windows (one local day [midnight, next midnight) in ``Settings.timezone``, label ``1d``;
``monitor.grid.grid_day``) are tested against the baseline members of the same day type
(weekday Mon-Fri or weekend Sat-Sun, local time), or all members when that subset has fewer
than ``CheckOptions.min_day_type_reference`` studies; every result's ``details["reference"]``
says which (``weekday``, ``weekend``, ``all``). Each p-valued result of the five families is
then one day of evidence for its stream (``monitor.detect.sequential``): with the evidence of
the earlier grid days of the same version and baseline (``store.sequential_history``), each
stream gets its window-limited cumulative statistic and level, stored as one
``SequentialEvidence`` row per stream, and the run's health is ``sequential_health`` of those
levels (red at a page, amber at a warning). Any other window (``7d``, ``last:N``, a custom
span) is tested against every member and scored per window (``monitor.detect.health``,
health-v1); it stores no sequential rows.

Then attribution, when embedding or metadata drift is found in the window or an embedding or
metadata stream is at warning or page today (a result row ``Attribution`` / ``embedding`` or
``metadata`` holding the ranking, and the top of it in the drifting MMD or metadata result's
details), and the Evidently report (``monitor.checks.reports``).

Small windows give results with ``details["status"] == "insufficient data"``; a family that
raises is recorded as one result with ``details["status"] == "failed"`` and the error, and
the run's ``status`` is ``partial`` (``failed`` when every family failed). ``health_status``
is green, amber, red, or ``no data`` when the window is empty.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.exc import IntegrityError

from monitor.checks.baselines import (
    Reference,
    load_reference,
    reads_frame,
    require_baseline,
    resolve_version,
)
from monitor.checks.windows import load_window
from monitor.detect.attribution import Attribution, attribute
from monitor.detect.bias import SubgroupBias
from monitor.detect.classifier import ClassifierDrift
from monitor.detect.health import HealthScore, family_of, health_score
from monitor.detect.metadata import CategoricalDrift, NumericDrift
from monitor.detect.mmd import MMDDrift
from monitor.detect.novelty import NoveltyDrift
from monitor.detect.performance import METRICS, PerformanceDrift
from monitor.detect.prediction import PositiveRateDrift, ScoreDrift
from monitor.detect.result import DetectionResult
from monitor.detect.sequential import (
    STREAM_DETECTOR,
    DailyEvidence,
    SequentialPolicy,
    StreamState,
    daily_evidence,
    evaluate,
    evidence_from_row,
    sequential_health,
)
from monitor.errors import InsufficientDataError, ValidationError
from monitor.grid import GRID_LABEL, Window, day_window, grid_day, is_weekend
from monitor.runtime import Runtime
from monitor.store import results as store
from monitor.store.db import session_scope

log = logging.getLogger(__name__)

CATEGORICAL_FIELDS = ("vendor", "scanner_model", "site", "view", "photometric",
                      "software_version", "sex", "age_band")
NUMERIC_FIELDS = ("kvp", "exposure_mas", "pixel_spacing_mm", "age_years")
ATTRIBUTION_FIELDS = ("station", "scanner_model", "software_version", "site", "vendor")
ATTRIBUTION_DETECTOR = "Attribution"
MIN_NOVEL_ATTRIBUTED = 3  # novel studies in the window before their composition is ranked
# Families whose streams at warning or page call for attribution (a cause to name).
ATTRIBUTED_FAMILIES = ("embedding", "metadata")

# Called after a stored check, in order: the service passes the alerting engine's rule
# evaluation (``monitor.alerting.engine.on_check_complete``). A hook that raises is logged and
# does not undo the stored check or stop the hooks after it.
CheckHook = Callable[[Runtime, "CheckOutcome"], object]


@dataclass(frozen=True)
class CheckOptions:
    """Detector settings of a check. ``seed`` seeds every permutation test and subsample."""

    alpha: float = 0.05
    n_permutations: int = 500
    pca_components: int | None = 32
    max_embedding_reference: int = 2_000
    max_embedding_current: int = 2_000
    min_reads: int = 30
    min_group_size: int = 30
    fdr: float = 0.05
    seed: int = 0
    device: str = "auto"
    report: bool = True
    attribution_top: int = 10
    max_listed_novel: int = 200
    # Grid windows: the day-type reference needs this many members, else all are used.
    min_day_type_reference: int = 50
    sequential: SequentialPolicy = field(default_factory=SequentialPolicy)
    # Per-metric clinical tolerances for SubgroupBias (passed on only when given).
    bias_tolerances: Mapping[str, float] | None = None


@dataclass(frozen=True)
class CheckOutcome:
    """What one check found. ``results`` are the stored rows (attribution and failures
    included); ``attribution`` the ranking (embedding basis when embeddings drifted, else
    composition); ``failures`` maps a family to its error; ``timings`` seconds per stage."""

    check_run_id: int
    model: str
    version: str
    model_version_id: int
    baseline_id: int
    window: Window
    n_studies: int
    status: str
    health: HealthScore | None
    results: tuple[DetectionResult, ...]
    attribution: tuple[Attribution, ...]
    report_path: Path | None
    failures: Mapping[str, str] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    replaced: bool = False
    # Grid windows only: the local day checked, the reference subset ("weekday", "weekend"
    # or "all") and the state of every stream with evidence that day.
    day: date | None = None
    reference: str = "all"
    streams: tuple[StreamState, ...] = ()

    @property
    def health_status(self) -> str:
        return self.health.status if self.health is not None else "no data"

    @property
    def findings(self) -> list[DetectionResult]:
        return [r for r in self.results if r.drift]

    @property
    def escalated(self) -> list[StreamState]:
        """Streams at warning or page today, the highest statistic first."""
        return sorted((s for s in self.streams if s.level != "quiet"),
                      key=lambda s: -s.statistic)


@dataclass
class _Context:
    reference: pd.DataFrame
    current: pd.DataFrame
    embeddings_ref: np.ndarray | None
    embeddings_cur: np.ndarray | None
    groups_ref: np.ndarray
    groups_cur: np.ndarray
    options: CheckOptions
    timings: dict[str, float] = field(default_factory=dict)  # "family.detector" -> seconds


def patient_groups(frame: pd.DataFrame) -> np.ndarray:
    """Patient keys, one per study; a study without a patient key is its own group."""
    keys = frame["patient_key"].to_numpy(dtype=object)
    studies = frame["study_key"].to_numpy(dtype=object)
    missing = pd.isna(keys)
    return np.where(missing, np.char.add("study:", studies.astype(str)), keys).astype(str)


def _status_result(detector: str, feature: str, family: str, status: str, message: str,
                   *, alpha: float, n_reference: int = 0, n_current: int = 0
                   ) -> DetectionResult:
    return DetectionResult(detector, feature, 0.0, None, alpha, False, n_reference, n_current,
                           {"family": family, "status": status, "error": message})


def _subsample(n: int, cap: int, seed: int) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _guarded(detector: str, feature: str, family: str, ctx: _Context,
             run: Callable[[], list[DetectionResult]]) -> list[DetectionResult]:
    """Run one detector; too little data or an error becomes a result saying so."""
    alpha = ctx.options.alpha
    clock = time.perf_counter()
    try:
        return run()
    except InsufficientDataError as exc:
        return [_status_result(detector, feature, family, "insufficient data", str(exc),
                               alpha=alpha, n_reference=len(ctx.reference),
                               n_current=len(ctx.current))]
    except Exception as exc:  # a detector's bug must not lose the other families' results
        log.exception("detector %s on %s failed", detector, feature)
        return [_status_result(detector, feature, family, "failed",
                               f"{type(exc).__name__}: {exc}", alpha=alpha,
                               n_reference=len(ctx.reference), n_current=len(ctx.current))]
    finally:
        key = f"{family}.{detector}"
        ctx.timings[key] = ctx.timings.get(key, 0.0) + time.perf_counter() - clock


def _with_embeddings(frame: pd.DataFrame, groups: np.ndarray, embeddings: np.ndarray | None
                     ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The studies that have an embedding: their rows, patient groups and embeddings."""
    if embeddings is None or len(frame) == 0:
        return frame.iloc[:0], groups[:0], np.zeros((0, 0), dtype=np.float32)
    present = ~np.isnan(embeddings).any(axis=1)
    return frame[present].reset_index(drop=True), groups[present], embeddings[present]


def _embedding_family(ctx: _Context) -> list[DetectionResult]:
    o = ctx.options
    frame_ref, g_ref_all, e_ref = _with_embeddings(ctx.reference, ctx.groups_ref,
                                                   ctx.embeddings_ref)
    frame_cur, g_cur_all, e_cur = _with_embeddings(ctx.current, ctx.groups_cur,
                                                   ctx.embeddings_cur)
    keep_ref = _subsample(len(frame_ref), o.max_embedding_reference, o.seed)
    keep_cur = _subsample(len(frame_cur), o.max_embedding_current, o.seed + 1)
    ref, cur = e_ref[keep_ref], e_cur[keep_cur]
    g_ref, g_cur = g_ref_all[keep_ref], g_cur_all[keep_cur]
    coverage = {"n_reference_without_embedding": len(ctx.reference) - len(frame_ref),
                "n_current_without_embedding": len(ctx.current) - len(frame_cur)}
    subsampled = {**coverage, "reference_subsampled": len(keep_ref) < len(frame_ref),
                  "current_subsampled": len(keep_cur) < len(frame_cur),
                  "n_current_window": len(ctx.current)}

    def mmd() -> list[DetectionResult]:
        detector = MMDDrift(alpha=o.alpha, n_permutations=o.n_permutations,
                            pca_components=o.pca_components, seed=o.seed, device=o.device)
        result = detector.fit(ref, groups=g_ref).test(cur, groups=g_cur)
        return [replace(result, details={**result.details, "family": "embedding",
                                         **subsampled})]

    def classifier() -> list[DetectionResult]:
        detector = ClassifierDrift(alpha=o.alpha, seed=o.seed, device=o.device,
                                   n_permutations=o.n_permutations,
                                   pca_components=o.pca_components)
        result = detector.fit(ref, groups=g_ref).test(cur, groups=g_cur)
        return [replace(result, details={**result.details, "family": "embedding",
                                         **subsampled})]

    def novelty() -> list[DetectionResult]:
        detector = NoveltyDrift(alpha=o.alpha, seed=o.seed, device=o.device,
                                pca_components=o.pca_components)
        detector.fit(e_ref, groups=g_ref_all)
        result = detector.test(e_cur, groups=g_cur_all,
                               keys=frame_cur["study_key"].astype(str).tolist())
        details = _novel_studies(frame_cur, result.details, limit=o.max_listed_novel)
        return [replace(result, details={**details, **coverage})]

    def empty(detector: str) -> list[DetectionResult]:
        return [_status_result(detector, "embedding", "embedding", "insufficient data",
                               "no embeddings in the window or the baseline", alpha=o.alpha,
                               n_reference=len(frame_ref), n_current=len(frame_cur))]

    out: list[DetectionResult] = []
    runs = (("MMDDrift", mmd), ("ClassifierDrift", classifier), ("NoveltyDrift", novelty))
    for name, run in runs:
        if len(frame_ref) == 0 or len(frame_cur) == 0:
            out += empty(name)
        else:
            out += _guarded(name, "embedding", "embedding", ctx, run)
    return out


def _novel_studies(current: pd.DataFrame, details: Mapping[str, Any], *, limit: int
                   ) -> dict[str, Any]:
    """Novelty details with the novel studies listed for review (pseudonymised study and
    patient keys, scanner, site, time; at most ``limit``, most novel first)."""
    out = {**details, "family": "embedding"}
    indices = list(details.get("novel_indices", []))
    p_values = list(details.get("novel_p_values", []))
    order = sorted(range(len(indices)), key=lambda i: p_values[i] if i < len(p_values) else 1)
    listed = []
    for i in order[:limit]:
        row = current.iloc[int(indices[i])]
        listed.append({
            "study_key": row["study_key"], "patient_key": row["patient_key"],
            "ts": pd.Timestamp(row["ts"]).isoformat(), "site": row["site"],
            "station": row["station"], "scanner_model": row["scanner_model"],
            "software_version": row["software_version"], "view": row["view"],
            "p_value": p_values[i] if i < len(p_values) else None,
        })
    out["novel_studies"] = listed
    out["novel_listed_truncated"] = len(indices) > limit
    for name in ("novel_indices", "novel_p_values", "novel_keys"):
        out.pop(name, None)
    return out


def _metadata_family(ctx: _Context) -> list[DetectionResult]:
    o = ctx.options
    out: list[DetectionResult] = []
    for name in CATEGORICAL_FIELDS:
        def categorical(name: str = name) -> list[DetectionResult]:
            detector = CategoricalDrift(feature=name, alpha=o.alpha)
            detector.fit(ctx.reference[name], groups=ctx.groups_ref)
            return [detector.test(ctx.current[name], groups=ctx.groups_cur)]

        out += _guarded("CategoricalDrift", name, "metadata", ctx, categorical)
    for name in NUMERIC_FIELDS:
        def numeric(name: str = name) -> list[DetectionResult]:
            detector = NumericDrift(feature=name, alpha=o.alpha, method="ks",
                                    n_permutations=o.n_permutations, seed=o.seed)
            detector.fit(ctx.reference[name], groups=ctx.groups_ref)
            return [detector.test(ctx.current[name], groups=ctx.groups_cur)]

        out += _guarded("NumericDrift", name, "metadata", ctx, numeric)
    return out


def _prediction_family(ctx: _Context) -> list[DetectionResult]:
    o = ctx.options

    def score() -> list[DetectionResult]:
        detector = ScoreDrift(feature="score", alpha=o.alpha, n_permutations=o.n_permutations,
                              seed=o.seed)
        detector.fit(ctx.reference["score"], groups=ctx.groups_ref)
        return [detector.test(ctx.current["score"], groups=ctx.groups_cur)]

    def positive_rate() -> list[DetectionResult]:
        detector = PositiveRateDrift(alpha=o.alpha)
        detector.fit(ctx.reference["positive"], groups=ctx.groups_ref)
        return [detector.test(ctx.current["positive"], groups=ctx.groups_cur)]

    return (_guarded("ScoreDrift", "score", "prediction", ctx, score)
            + _guarded("PositiveRateDrift", "positive_rate", "prediction", ctx, positive_rate))


def _with_prediction(frame: pd.DataFrame, groups: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    known = frame["positive"].notna().to_numpy()
    return frame[known].reset_index(drop=True), groups[known]


def _performance_family(ctx: _Context) -> list[DetectionResult]:
    o = ctx.options
    ref, g_ref = _with_prediction(ctx.reference, ctx.groups_ref)
    cur, g_cur = _with_prediction(ctx.current, ctx.groups_cur)
    out: list[DetectionResult] = []
    for metric in METRICS:
        def performance(metric: Any = metric) -> list[DetectionResult]:
            detector = PerformanceDrift(metric=metric, alpha=o.alpha, min_reads=o.min_reads)
            detector.fit(reads_frame(ref), groups=g_ref)
            return [detector.test(reads_frame(cur), groups=g_cur)]

        out += _guarded("PerformanceDrift", metric, "performance", ctx, performance)
    return out


def _bias_family(ctx: _Context) -> list[DetectionResult]:
    o = ctx.options
    ref, g_ref = _with_prediction(ctx.reference, ctx.groups_ref)
    cur, g_cur = _with_prediction(ctx.current, ctx.groups_cur)

    def with_reads(frame: pd.DataFrame) -> pd.DataFrame:
        reads = reads_frame(frame)
        return frame.assign(model_positive=reads["model_positive"].to_numpy(),
                            agrees=reads["agrees"].to_numpy())

    def bias() -> list[DetectionResult]:
        tolerances: dict[str, Any] = ({} if o.bias_tolerances is None
                                      else {"tolerances": dict(o.bias_tolerances)})
        detector = SubgroupBias(min_group_size=o.min_group_size, fdr=o.fdr, **tolerances)
        detector.fit(with_reads(ref), groups=g_ref)
        return detector.test(with_reads(cur), groups=g_cur)

    return _guarded("SubgroupBias", "*", "bias", ctx, bias)


FAMILIES: dict[str, Callable[[_Context], list[DetectionResult]]] = {
    "embedding": _embedding_family,
    "metadata": _metadata_family,
    "prediction": _prediction_family,
    "performance": _performance_family,
    "bias": _bias_family,
}


def _status(result: DetectionResult) -> str | None:
    return result.details.get("status") if result.details else None


def _attribution(ctx: _Context, results: list[DetectionResult],
                 escalated: frozenset[str] = frozenset()
                 ) -> tuple[list[DetectionResult], tuple[Attribution, ...]]:
    """Attribution rows for the drift found in the window or for the families with a stream
    at warning or page (``escalated``): embedding basis first, then composition, then the
    novel studies' composition against the whole window's (basis ``novelty``: a few studies
    unlike the reference barely move the window's mean, but they share their scanner)."""
    o = ctx.options
    embedding_drift = "embedding" in escalated or any(
        r.drift and family_of(r) == "embedding" and _status(r) != "failed" for r in results)
    metadata_drift = "metadata" in escalated or any(
        r.drift and family_of(r) == "metadata" for r in results)
    rows: list[DetectionResult] = []
    ranking: tuple[Attribution, ...] = ()
    bases: list[tuple[str, pd.DataFrame, pd.DataFrame, dict[str, Any]]] = []
    if embedding_drift:
        frame_ref, _, e_ref = _with_embeddings(ctx.reference, ctx.groups_ref, ctx.embeddings_ref)
        frame_cur, _, e_cur = _with_embeddings(ctx.current, ctx.groups_cur, ctx.embeddings_cur)
        if len(frame_ref) and len(frame_cur):
            bases.append(("embedding", frame_ref, frame_cur,
                          {"embeddings_ref": e_ref, "embeddings_cur": e_cur}))
    if metadata_drift:
        bases.append(("metadata", ctx.reference, ctx.current, {}))
    novel = _novel_frame(ctx.current, results) if embedding_drift else None
    if novel is not None:
        bases.append(("novelty", ctx.current, novel, {}))
    for basis, reference, current, extra in bases:
        ranked = attribute(reference, current, fields=ATTRIBUTION_FIELDS, **extra)
        if not ranked:
            continue
        ranking = ranking or tuple(ranked[: o.attribution_top])
        top = ranked[0]
        rows.append(DetectionResult(
            detector=ATTRIBUTION_DETECTOR, feature=basis, statistic=float(top.contribution),
            p_value=None, threshold=0.0, drift=False, n_reference=len(ctx.reference),
            n_current=len(ctx.current),
            details={"family": "attribution", "basis": ranked[0].basis,
                     "top": f"{top.field}={top.value}",
                     "ranking": [vars(a) for a in ranked[: o.attribution_top]]},
        ))
    return rows, ranking


def _novel_frame(current: pd.DataFrame, results: list[DetectionResult]) -> pd.DataFrame | None:
    """The window's studies beyond every reference study when there are
    ``MIN_NOVEL_ATTRIBUTED`` of them, else its novel studies (as the novelty test listed
    them; the chance ones blur the picture), or None when there are fewer than that."""
    novelty = next((r for r in results if r.detector == "NoveltyDrift"
                    and _status(r) != "failed"), None)
    details = (novelty.details or {}) if novelty is not None else {}
    listed = details.get("novel_studies", [])
    smallest = 1.0 / (1.0 + float(details.get("n_calibration") or 0.0))
    beyond = {s["study_key"] for s in listed if (s.get("p_value") or 1.0) <= smallest * 1.000001}
    keys = beyond if len(beyond) >= MIN_NOVEL_ATTRIBUTED else {s["study_key"] for s in listed}
    if len(keys) < MIN_NOVEL_ATTRIBUTED:
        return None
    return current[current["study_key"].isin(keys)]


def _with_attribution_summary(results: list[DetectionResult], rows: list[DetectionResult]
                              ) -> list[DetectionResult]:
    """Put the top three of each attribution into the drifting results it explains."""
    tops = {row.feature: row.details["ranking"][:3] for row in rows}
    out = []
    for result in results:
        basis = family_of(result)
        if result.drift and basis in tops and result.detector in ("MMDDrift",
                                                                  "CategoricalDrift"):
            result = replace(result, details={**result.details, "attribution": tops[basis]})
        out.append(result)
    return out


def jsonable(value: Any) -> Any:
    """Details as JSON: numpy scalars to Python, tuples to lists, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | np.ndarray):
        return [jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray)
                                      else value)]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def _finite(value: float | None, default: float | None) -> float | None:
    if value is None:
        return default
    number = float(value)
    return number if math.isfinite(number) else default


def _result_rows(results: list[DetectionResult]) -> list[dict[str, Any]]:
    """Column dicts, with unique (detector, feature) pairs."""
    rows, seen = [], set()
    for r in results:
        feature, suffix = r.feature[:256], 2
        while (r.detector, feature) in seen:
            feature, suffix = f"{r.feature[:250]}#{suffix}", suffix + 1
        seen.add((r.detector, feature))
        rows.append({
            "detector": r.detector[:64], "feature": feature,
            "statistic": _finite(r.statistic, 0.0), "p_value": _finite(r.p_value, None),
            "threshold": _finite(r.threshold, 0.0), "drift": bool(r.drift),
            "n_reference": int(r.n_reference), "n_current": int(r.n_current),
            "details": jsonable(dict(r.details or {})),
        })
    return rows


def day_type(day: date) -> str:
    """``weekend`` for Saturday and Sunday, else ``weekday``."""
    return "weekend" if is_weekend(day) else "weekday"


def day_type_reference(reference: Reference, day: date, zone: tzinfo, *, minimum: int
                       ) -> tuple[pd.DataFrame, np.ndarray | None, str]:
    """The baseline members of ``day``'s day type (local time), their embeddings and the
    subset's key; all members (key ``all``) when the subset has fewer than ``minimum``.

    A weekend's case mix (more emergency and ICU studies, fewer outpatients) differs from a
    weekday's, and a daily window holds only one of them, so a day tested against a whole
    baseline week finds the week's mix rather than drift."""
    frame = reference.frame
    if frame.empty:
        return frame, reference.embeddings, "all"
    local = pd.to_datetime(frame["ts"], utc=True).dt.tz_convert(zone)
    wanted = local.dt.dayofweek.to_numpy() >= 5 if is_weekend(day) else (
        local.dt.dayofweek.to_numpy() < 5)
    if int(wanted.sum()) < minimum:
        return frame, reference.embeddings, "all"
    embeddings = None if reference.embeddings is None else reference.embeddings[wanted]
    return frame[wanted].reset_index(drop=True), embeddings, day_type(day)


def _history(runtime: Runtime, *, version_id: int, baseline_id: int, day: date, zone: tzinfo,
             policy: SequentialPolicy) -> list[DailyEvidence]:
    """The evidence of the version's earlier grid days against the same baseline, from the
    ``SequentialEvidence`` rows stored with them: twice ``policy.max_run_days`` days back, so
    a stream with gaps still has its ``max_run_days`` most recent observed days."""
    today = day_window(day, zone)
    first = day - timedelta(days=2 * policy.max_run_days)
    with session_scope(runtime.sessions) as session:
        rows = store.sequential_history(
            session, model_version_id=version_id, baseline_id=baseline_id,
            detector=STREAM_DETECTOR, label=GRID_LABEL,
            start=day_window(first, zone).start, end=today.start)
    history = []
    for row in rows:
        # A run that is not a grid day in this zone (the zone was changed) is not history.
        earlier = grid_day(row.window_start, row.window_end, zone)
        details = row.details or {}
        if earlier is None or details.get("daily_p") is None or "of_family" not in details:
            continue
        history.append(evidence_from_row(row.feature, details, row.n_current,
                                         row.n_reference, earlier))
    return history


def report_file(model: str, version: str, window: Window) -> Path:
    """Where a window's Evidently report goes, relative to ``Settings.reports_dir`` (stable
    per window, so a re-run overwrites it). ``CheckRun.report_path`` stores this relative
    path, so the reports folder can move with its database."""
    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", text)

    name = (f"{window.kind}-{safe(window.label)}-{window.start:%Y%m%dT%H%M%S%f}-"
            f"{window.end:%Y%m%dT%H%M%S%f}.html")
    return Path(safe(model)) / safe(version) / name


def resolve_report_path(reports_dir: Path, stored: str) -> Path:
    """The file of a stored ``report_path`` (relative to ``reports_dir`` unless absolute)."""
    path = Path(stored)
    return path if path.is_absolute() else Path(reports_dir) / path


def run_check(
    runtime: Runtime,
    *,
    model: str,
    version: str | None = None,
    window: str | None = "1d",
    start: datetime | None = None,
    end: datetime | None = None,
    now: datetime | None = None,
    day: date | None = None,
    options: CheckOptions | None = None,
    hooks: Sequence[CheckHook] = (),
) -> CheckOutcome:
    """Run every detector family over a window of a model version and store the results.

    ``version`` defaults to the version the ``production`` alias points at, else the newest
    active one. ``window`` is a label (``1d``, ``7d``, ``last:500``; ``monitor.checks.windows``)
    ending at ``now`` (default: just after the version's newest inference), or give ``start``
    and ``end``, or ``day`` (a local date: that day's grid window in ``Settings.timezone``).
    A window that covers exactly one local day is a grid window, however it was given: it is
    labelled ``1d`` and scored by the sequential layer (module docstring). Re-running a window
    replaces its stored results. After storing, calls each of ``hooks`` with the outcome.
    """
    options = options or CheckOptions()
    zone = runtime.settings.zone
    if day is not None:
        if start is not None or end is not None or now is not None:
            raise ValidationError("give a day, or a window (start and end, or now), not both",
                                  field="day")
        grid = day_window(day, zone)
        start, end, window = grid.start, grid.end, None
    timings: dict[str, float] = {}
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    with session_scope(runtime.sessions) as session:
        info = resolve_version(session, model, version)
        baseline = require_baseline(session, info)
        resolved, frame, embeddings = load_window(session, info.id, window=window, start=start,
                                                  end=end, now=now)
        reference: Reference = load_reference(session, baseline)
    timings["load"] = time.perf_counter() - clock
    checked_day = (grid_day(resolved.start, resolved.end, zone) if resolved.kind == "time"
                   else None)
    reference_key = "all"
    reference_frame, reference_embeddings = reference.frame, reference.embeddings
    if checked_day is not None:
        resolved = replace(resolved, label=GRID_LABEL)
        reference_frame, reference_embeddings, reference_key = day_type_reference(
            reference, checked_day, zone, minimum=options.min_day_type_reference)
    n_studies = len(frame)
    members = set(reference.frame["id"].astype(int).tolist())
    outside = ~frame["id"].astype(int).isin(members).to_numpy()
    current = frame[outside].reset_index(drop=True)
    embeddings_cur = None if embeddings is None else embeddings[outside]
    ctx = _Context(reference=reference_frame, current=current,
                   embeddings_ref=reference_embeddings, embeddings_cur=embeddings_cur,
                   groups_ref=patient_groups(reference_frame), groups_cur=patient_groups(current),
                   options=options)

    found: list[DetectionResult] = []
    failures: dict[str, str] = {}
    fully_failed: set[str] = set()
    for name, family in FAMILIES.items():
        clock = time.perf_counter()
        produced = family(ctx)
        failed = [r for r in produced if _status(r) == "failed"]
        if failed and len(failed) == len(produced):
            fully_failed.add(name)
        if failed:
            failures[name] = "; ".join(f"{r.detector}/{r.feature}: {r.details['error']}"
                                       for r in failed)
        found.extend(produced)
        timings[name] = time.perf_counter() - clock
    if checked_day is not None:
        found = [replace(r, details={**(r.details or {}), "reference": reference_key})
                 for r in found]

    streams: list[StreamState] = []
    if checked_day is not None and len(current):
        clock = time.perf_counter()
        today = daily_evidence(found, day=checked_day, reference=reference_key)
        history = _history(runtime, version_id=info.id, baseline_id=baseline.id,
                           day=checked_day, zone=zone, policy=options.sequential)
        streams = evaluate([*history, *today], day=checked_day, policy=options.sequential)
        timings["sequential"] = time.perf_counter() - clock
    escalated = frozenset(s.family for s in streams if s.level != "quiet")

    clock = time.perf_counter()
    try:
        attribution_rows, ranking = _attribution(ctx, found, escalated & set(ATTRIBUTED_FAMILIES))
    except Exception as exc:
        log.exception("attribution failed")
        failures["attribution"] = f"{type(exc).__name__}: {exc}"
        attribution_rows, ranking = [], ()
    found = _with_attribution_summary(found, attribution_rows)
    timings["attribution"] = time.perf_counter() - clock

    health: HealthScore | None
    if not len(current):
        health = None
    elif checked_day is not None:
        health = sequential_health(streams)
    else:
        health = health_score([r for r in found if _status(r) != "failed"])

    report_path: Path | None = None
    stored_report: Path | None = None
    if options.report:
        clock = time.perf_counter()
        try:
            from monitor.checks.reports import write_drift_report

            stored_report = report_file(info.model, info.version, resolved)
            report_path = write_drift_report(
                reference_frame, current,
                path=Path(runtime.settings.reports_dir) / stored_report,
                title=f"{info.model} {info.version}: window {resolved.label} "
                f"[{resolved.start.isoformat()}, {resolved.end.isoformat()})",
            )
        except Exception as exc:
            log.exception("Evidently report failed")
            failures["report"] = f"{type(exc).__name__}: {exc}"
        timings["report"] = time.perf_counter() - clock

    all_results = found + attribution_rows + [state.to_result() for state in streams]
    if not failures:
        status = "ok"
    elif fully_failed == set(FAMILIES):
        status = "failed"
    else:
        status = "partial"
    run = {
        "model_version_id": info.id, "baseline_id": baseline.id,
        "window_kind": resolved.kind, "window_label": resolved.label,
        "window_start": resolved.start, "window_end": resolved.end,
        "started_at": started_at, "finished_at": datetime.now(UTC), "status": status,
        "n_studies": n_studies,
        "health_score": None if health is None else float(health.score),
        "health_status": "no data" if health is None else health.status,
        "report_path": None if report_path is None or stored_report is None
        else stored_report.as_posix(),
        "error": "; ".join(f"{k}: {v}" for k, v in failures.items())[:4000] or None,
    }
    clock = time.perf_counter()
    rows = _result_rows(all_results)
    try:
        with session_scope(runtime.sessions) as session:
            run_id, replaced = store.store_check_run(session, run=run, results=rows)
    except IntegrityError:
        # The same window was stored by a concurrent check between our read and our insert:
        # replace its results as a re-run would.
        with session_scope(runtime.sessions) as session:
            run_id, replaced = store.store_check_run(session, run=run, results=rows)
    timings["store"] = time.perf_counter() - clock
    timings.update(ctx.timings)
    escalated_streams = sorted((s for s in streams if s.level != "quiet"),
                               key=lambda s: -s.statistic)
    log.info("check %s %s window %s [%s, %s): %d studies, health %s (%s), %d findings%s%s",
             info.model, info.version, resolved.label, resolved.start.isoformat(),
             resolved.end.isoformat(), n_studies,
             "n/a" if health is None else f"{health.score:.2f}", run["health_status"],
             sum(1 for r in found if r.drift),
             "".join(f"; {s.stream} {s.level} (Z {s.statistic:.2f} over {s.days} days)"
                     for s in escalated_streams[:3]),
             " (replaced)" if replaced else "")
    outcome = CheckOutcome(
        check_run_id=run_id, model=info.model, version=info.version,
        model_version_id=info.id, baseline_id=baseline.id, window=resolved,
        n_studies=n_studies, status=status, health=health, results=tuple(all_results),
        attribution=ranking, report_path=report_path, failures=failures, timings=timings,
        replaced=replaced, day=checked_day, reference=reference_key, streams=tuple(streams),
    )
    for hook in hooks:
        try:
            hook(runtime, outcome)
        except Exception:
            log.exception("check hook %r failed on check run %d", hook, run_id)
    return outcome
