"""Performance against radiologist reads: override rate, sensitivity, specificity, PPV, NPV.

Reads are partial, delayed labels: only studies with a read count, and every metric is
"against the radiologist", not against ground truth. A read is a study with
``radiologist_positive`` or ``agrees`` known. When one of the two is missing it is derived
from the other and ``model_positive`` (agree = same call); when both are given they are used
as given (``agrees`` for the override rate, ``radiologist_positive`` for the rest).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import pandas as pd

from monitor.detect.metadata import aligned_groups
from monitor.detect.prediction import as_flags
from monitor.detect.result import DetectionResult
from monitor.detect.stats import (
    Alternative,
    cluster_codes,
    clustered_two_proportion_test,
    two_proportion_test,
    wilson_interval,
)
from monitor.errors import NotFittedError, ValidationError

Metric = Literal["override_rate", "sensitivity", "specificity", "ppv", "npv"]
METRICS: tuple[Metric, ...] = ("override_rate", "sensitivity", "specificity", "ppv", "npv")
# The direction in which each metric gets worse.
WORSE_WHEN_HIGHER: dict[str, bool] = {
    "override_rate": True,
    "sensitivity": False,
    "specificity": False,
    "ppv": False,
    "npv": False,
}


@dataclass(frozen=True)
class ReadRecord:
    """One study the model read, with the radiologist's read where there is one."""

    model_positive: bool
    radiologist_positive: bool | None = None
    agrees: bool | None = None
    read_delay_seconds: float | None = None


@dataclass(frozen=True)
class Reads:
    """Column arrays of a record set. ``radiologist_positive`` and ``agrees`` are 1.0/0.0 with
    NaN where unknown, already completed from each other; ``has_read`` marks the reads."""

    model_positive: np.ndarray
    radiologist_positive: np.ndarray
    agrees: np.ndarray
    read_delay_seconds: np.ndarray

    @property
    def has_read(self) -> np.ndarray:
        return np.asarray(~np.isnan(self.radiologist_positive))

    def __len__(self) -> int:
        return int(self.model_positive.size)


Records: TypeAlias = Sequence[ReadRecord] | pd.DataFrame


def as_reads(records: Records) -> Reads:
    """Column arrays from ``ReadRecord``s or a frame with columns ``model_positive``,
    ``radiologist_positive`` and optionally ``agrees`` (or ``agrees_with_model``) and
    ``read_delay_seconds``."""
    if isinstance(records, pd.DataFrame):
        frame = records
        if "model_positive" not in frame.columns:
            raise ValidationError(
                "read records have no column model_positive", field="model_positive"
            )
        n = len(frame)

        def column(*names: str) -> np.ndarray:
            for name in names:
                if name in frame.columns:
                    return np.asarray(frame[name].to_numpy(dtype=object))
            return np.full(n, None, dtype=object)

        model = column("model_positive")
        radiologist = column("radiologist_positive")
        agrees = column("agrees", "agrees_with_model")
        delay = column("read_delay_seconds")
    else:
        model = np.array([r.model_positive for r in records], dtype=object)
        radiologist = np.array([r.radiologist_positive for r in records], dtype=object)
        agrees = np.array([r.agrees for r in records], dtype=object)
        delay = np.array([r.read_delay_seconds for r in records], dtype=object)
    model_flags = as_flags(model, field="model_positive")
    if np.isnan(model_flags).any():
        index = int(np.flatnonzero(np.isnan(model_flags))[0])
        raise ValidationError(
            f"model_positive is missing at position {index}", field="model_positive", index=index
        )
    radiologist_flags = as_flags(radiologist, field="radiologist_positive")
    agree_flags = as_flags(agrees, field="agrees")
    # Complete each of radiologist_positive / agrees from the other.
    only_agrees = np.isnan(radiologist_flags) & ~np.isnan(agree_flags)
    radiologist_flags[only_agrees] = np.where(
        agree_flags[only_agrees] == 1, model_flags[only_agrees], 1 - model_flags[only_agrees]
    )
    only_radiologist = np.isnan(agree_flags) & ~np.isnan(radiologist_flags)
    agree_flags[only_radiologist] = (
        radiologist_flags[only_radiologist] == model_flags[only_radiologist]
    ).astype(float)
    delays = pd.to_numeric(pd.Series(delay, dtype=object), errors="coerce").to_numpy(float)
    return Reads(model_flags == 1, radiologist_flags, agree_flags, delays)


def metric_outcomes(reads: Reads, metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """For one metric: which studies are in its denominator, and which of those count as a
    success (an override for the override rate; a true positive for sensitivity and PPV; a
    true negative for specificity and NPV)."""
    read = reads.has_read
    radiologist = reads.radiologist_positive == 1
    model = reads.model_positive
    if metric == "override_rate":
        return read, read & (reads.agrees == 0)
    if metric == "sensitivity":
        return read & radiologist, read & radiologist & model
    if metric == "specificity":
        return read & ~radiologist, read & ~radiologist & ~model
    if metric == "ppv":
        return read & model, read & model & radiologist
    if metric == "npv":
        return read & ~model, read & ~model & ~radiologist
    raise ValidationError(f"metric {metric!r} is not one of {', '.join(METRICS)}", field="metric")


def _metric_summary(successes: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(successes, n)
    return {
        "value": successes / n if n else None,
        "successes": successes,
        "n": n,
        "ci_low": low,
        "ci_high": high,
    }


def performance_summary(records: Records) -> dict[str, Any]:
    """Read coverage, median read delay and every metric with its Wilson 95% interval.

    ``value`` is None where the metric's denominator is empty (no reads of that kind); the
    interval is then (0, 1).
    """
    reads = as_reads(records)
    read = reads.has_read
    delays = reads.read_delay_seconds[read & ~np.isnan(reads.read_delay_seconds)]
    metrics = {}
    for metric in METRICS:
        denominator, success = metric_outcomes(reads, metric)
        metrics[metric] = _metric_summary(int(success.sum()), int(denominator.sum()))
    return {
        "n_studies": len(reads),
        "n_reads": int(read.sum()),
        "read_coverage": float(read.mean()) if len(reads) else None,
        "median_read_delay_seconds": float(np.median(delays)) if delays.size else None,
        "ci_method": "wilson 95%",
        "metrics": metrics,
    }


class PerformanceDrift:
    """Has one performance metric, measured against radiologist reads, got worse than in the
    baseline?

    Two-proportion z-test of the window's metric against the baseline's (cluster-robust when
    patient keys are given). By default one-sided in the direction in which the metric gets
    worse (override rate up; sensitivity, specificity, PPV, NPV down): this detector pages
    people, and an improvement is not a reason to page; ``alternative="two-sided"`` tests
    both directions. When the window or the baseline holds fewer than ``min_reads`` studies
    in the metric's denominator (reads; radiologist-positive reads for sensitivity; model
    positives with a read for PPV; ...), the result has ``drift=False``, ``p_value=None`` and
    ``details["status"] == "insufficient data"``. ``statistic`` is current − baseline.
    """

    def __init__(
        self,
        *,
        metric: Metric,
        alpha: float = 0.05,
        min_reads: int = 30,
        alternative: Literal["worse", "two-sided"] = "worse",
    ):
        self.metric = metric
        self.alpha = alpha
        self.min_reads = min_reads
        self.alternative = alternative

    def fit(self, reference: Records, *, groups: Any = None) -> PerformanceDrift:
        if self.metric not in METRICS:
            raise ValidationError(
                f"metric {self.metric!r} is not one of {', '.join(METRICS)}", field="metric"
            )
        if self.alternative not in ("worse", "two-sided"):
            raise ValidationError(
                f"alternative {self.alternative!r} is not 'worse' or 'two-sided'",
                field="alternative",
            )
        reads = as_reads(reference)
        ids = aligned_groups(groups, len(reads), field=self.metric)
        denominator, success = metric_outcomes(reads, self.metric)
        self.reference_outcomes_ = success[denominator].astype(float)
        self.reference_groups_ = None if ids is None else ids[denominator]
        return self

    def test(self, current: Records, *, groups: Any = None) -> DetectionResult:
        if not hasattr(self, "reference_outcomes_"):
            raise NotFittedError(f"PerformanceDrift for {self.metric} used before fit")
        reads = as_reads(current)
        ids = aligned_groups(groups, len(reads), field=self.metric)
        denominator, success = metric_outcomes(reads, self.metric)
        cur = success[denominator].astype(float)
        cur_ids = None if ids is None else ids[denominator]
        ref = self.reference_outcomes_
        worse_higher = WORSE_WHEN_HIGHER[self.metric]
        details: dict[str, Any] = {
            "family": "performance",
            "metric": self.metric,
            "baseline": _metric_summary(int(ref.sum()), ref.size),
            "current": _metric_summary(int(cur.sum()), cur.size),
            "read_coverage": float(reads.has_read.mean()) if len(reads) else None,
            "min_reads": self.min_reads,
            "alternative": self.alternative,
            "worse_direction": "higher" if worse_higher else "lower",
            "ci_method": "wilson 95%",
        }
        difference = float(cur.mean() - ref.mean()) if cur.size and ref.size else 0.0
        if cur.size < self.min_reads or ref.size < self.min_reads:
            details["status"] = "insufficient data"
            return DetectionResult(
                "PerformanceDrift",
                self.metric,
                difference,
                None,
                self.alpha,
                False,
                int(ref.size),
                int(cur.size),
                details,
            )
        alternative: Alternative
        if self.alternative == "two-sided":
            alternative = "two-sided"
        else:
            alternative = "greater" if worse_higher else "less"
        clustered = self.reference_groups_ is not None or cur_ids is not None
        if clustered:
            clusters_ref, clusters_cur, _ = cluster_codes(
                self.reference_groups_, ref.size, cur_ids, cur.size
            )
            test = clustered_two_proportion_test(
                ref,
                cur,
                clusters_reference=clusters_ref,
                clusters_current=clusters_cur,
                alternative=alternative,
            )
        else:
            test = two_proportion_test(
                int(ref.sum()), ref.size, int(cur.sum()), cur.size, alternative=alternative
            )
        details.update(
            status="ok",
            z=test.z,
            test=test.method,
            tested_alternative=alternative,
            design_effect=test.design_effect,
            clustered=clustered,
        )
        return DetectionResult(
            detector="PerformanceDrift",
            feature=self.metric,
            statistic=test.difference,
            p_value=test.p_value,
            threshold=self.alpha,
            drift=test.p_value < self.alpha,
            n_reference=int(ref.size),
            n_current=int(cur.size),
            details=details,
        )
