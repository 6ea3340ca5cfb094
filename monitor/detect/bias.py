"""Is the model getting worse for some group? Performance and override metrics per subgroup
(vendor, scanner model, site, sex, age band, view), as the group's gap to the rest of the
window, compared with the same group's gap in the baseline.

A gap that was already there when the baseline was taken (a scanner whose images the model
reads less well, the AP view of sicker patients) is a *standing* finding: true, worth showing,
but not a change, so it must not page every day. What pages is a gap that grew beyond its
baseline (a difference in differences) or crossed a clinical tolerance, and only in the
direction in which the metric gets worse.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from monitor.detect.metadata import aligned_groups, as_categories
from monitor.detect.performance import (
    METRICS,
    WORSE_WHEN_HIGHER,
    Metric,
    as_reads,
    metric_outcomes,
)
from monitor.detect.result import DetectionResult
from monitor.detect.stats import benjamini_hochberg, cluster_codes, wilson_interval
from monitor.errors import NotFittedError, ValidationError

DEFAULT_FIELDS = ("vendor", "scanner_model", "site", "sex", "age_band", "view")
DEFAULT_METRICS: tuple[Metric, ...] = ("sensitivity", "specificity", "override_rate")
# Clinical tolerances: how much worse than the rest of the window a group may be (absolute,
# in the metric's own units) before that alone is a finding. Ten points of sensitivity or
# specificity, five points of override rate (about twice the usual rate of 5-8%). PPV and NPV
# have none by default: they follow each group's prevalence, which differs between groups
# (age bands) for reasons that are not the model's.
DEFAULT_TOLERANCES: Mapping[str, float] = {
    "sensitivity": 0.10,
    "specificity": 0.10,
    "override_rate": 0.05,
}
Z_95 = float(stats.norm.ppf(0.975))  # two-sided 95% intervals
Z_ONE_SIDED_95 = float(stats.norm.ppf(0.95))

GAP_CHANGE = "gap change"
TOLERANCE = "tolerance"


@dataclass(frozen=True)
class GroupGap:
    """One group against the rest of one sample for one metric.

    ``gap`` is group minus rest in the metric's units; ``worse_gap`` is the same gap signed so
    that positive means the group does worse (lower sensitivity, higher override rate).
    ``variance`` is the variance of the gap: Agresti–Caffo smoothed proportions (one success
    and one failure added to each side, so that a group at 100% still has a variance) times
    the cluster-robust design effect when patient keys were given.
    """

    n: int
    successes: int
    n_rest: int
    successes_rest: int
    gap: float
    worse_gap: float
    variance: float
    design_effect: float

    @property
    def value(self) -> float:
        return self.successes / self.n

    @property
    def rest_value(self) -> float:
        return self.successes_rest / self.n_rest


@dataclass(frozen=True)
class BaselineGap:
    """A group's gap in the baseline and whether it is a standing finding (worse than the rest
    of the baseline, Benjamini–Hochberg q-value across the baseline's comparisons < fdr)."""

    gap: GroupGap
    p_value: float
    q_value: float
    standing: bool


def group_gap(
    outcome: np.ndarray,
    in_group: np.ndarray,
    *,
    metric: str,
    clusters: np.ndarray | None,
) -> GroupGap:
    """The gap of the studies ``in_group`` against the others, with its variance.

    With ``clusters`` (integer patient codes) the gap is linearised per study, the influences
    are summed per patient, and ``C/(C-1) * sum(u_c**2)`` is the robust variance; its ratio to
    the independent-studies variance is the design effect. Studies of one patient on both
    sides (a PA in the group, a lateral in the rest) enter with opposite signs, so their
    positive correlation lowers the variance of the gap, as it should.
    """
    group, rest = outcome[in_group], outcome[~in_group]
    n, n_rest = group.size, rest.size
    successes, successes_rest = int(group.sum()), int(rest.sum())
    p, q = successes / n, successes_rest / n_rest
    smoothed_p, smoothed_q = (successes + 1) / (n + 2), (successes_rest + 1) / (n_rest + 2)
    smoothed = (smoothed_p * (1 - smoothed_p) / (n + 2)
                + smoothed_q * (1 - smoothed_q) / (n_rest + 2))
    design_effect = 1.0
    if clusters is not None:
        influence = np.where(in_group, (outcome - p) / n, -(outcome - q) / n_rest)
        per_patient = np.bincount(clusters, weights=influence)
        n_patients = int(np.count_nonzero(np.bincount(clusters)))
        independent = p * (1 - p) / n + q * (1 - q) / n_rest
        if n_patients > 1 and independent > 0:
            robust = n_patients / (n_patients - 1) * float(np.sum(per_patient**2))
            design_effect = robust / independent
    gap = p - q
    sign = 1.0 if WORSE_WHEN_HIGHER[metric] else -1.0
    return GroupGap(n, successes, n_rest, successes_rest, gap, sign * gap,
                    smoothed * design_effect, design_effect)


class SubgroupBias:
    """Per subgroup and metric: has the group's gap to the rest of the window grown worse than
    it was in the baseline, or beyond a clinical tolerance?

    ``fit(reference)`` records each group's gap to the rest of the baseline (group minus rest)
    with its variance, for groups and rests of at least ``min_group_size``, and marks a gap as
    *standing* where the baseline already shows the group doing significantly worse
    (one-sided, Benjamini–Hochberg across the baseline's comparisons at ``fdr``).

    ``test(current)`` gives, per group and metric, a one-sided p-value that the group does
    worse now than it did:

    * **gap change** (difference in differences): z = (worse gap now − worse gap in the
      baseline) / sqrt(variance now + variance in the baseline). The baseline is a sample
      too, so its variance is part of the test; a patient seen in both periods is ignored as
      a covariance, which can only make the test conservative.
    * **tolerance**, for a metric in ``tolerances``: z = (worse gap now − tolerance) /
      sqrt(variance now). It applies where the baseline lacks the group (under
      ``min_group_size``; then it is the only test) or where the baseline gap lies
      significantly within the tolerance (its one-sided 95% upper bound below it), so that the
      test finds a group *crossing* the tolerance. A group already beyond it in the baseline
      is a standing finding, judged by its gap change alone.
    * Both: ``p = min(1, 2 * min(p_gap_change, p_tolerance))`` (Bonferroni over the two).

    A group doing better than its baseline gets p near 1 and is never a finding. The check
    makes many comparisons, so the per-window verdict uses Benjamini–Hochberg q-values across
    the call: ``drift = q < fdr`` and the change is worse (``threshold`` is ``fdr``).
    ``p_value`` is the raw one-sided p, the daily evidence of the stream
    ``SubgroupBias/{field}={value}:{metric}``.

    A group or rest of the window under ``min_group_size``, or a group with no baseline gap and
    no tolerance for the metric, is reported with ``p_value=None`` and ``details["status"] ==
    "insufficient data"`` (``details["reason"]`` says which), never dropped, and takes no part
    in the correction.

    ``statistic`` is the gap now (group − rest of the window). ``n_current`` is the group's
    reads now and ``n_reference`` its reads in the baseline (0 when no baseline gap is used):
    the correlation that the shared baseline gap induces between two windows' tests is
    ``details["rho"]`` = baseline variance / (baseline + window variance), which
    ``n_current / (n_current + n_reference)`` approximates. Fields missing from a frame are
    skipped; rows with a missing field value belong to no group of that field but count in
    the rest. ``feature`` is ``"{field}={value}:{metric}"``.

    ``tolerances``: metric -> absolute tolerance; ``None`` takes ``DEFAULT_TOLERANCES``
    (sensitivity 0.10, specificity 0.10, override rate 0.05), ``{}`` turns tolerance tests off.
    """

    def __init__(
        self,
        *,
        fields: Sequence[str] = DEFAULT_FIELDS,
        metrics: Sequence[Metric] = DEFAULT_METRICS,
        min_group_size: int = 30,
        fdr: float = 0.05,
        tolerances: Mapping[str, float] | None = None,
    ):
        self.fields = fields
        self.metrics = metrics
        self.min_group_size = min_group_size
        self.fdr = fdr
        self.tolerances = tolerances

    def fit(self, reference: pd.DataFrame, *, groups: Any = None) -> SubgroupBias:
        self._check_parameters()
        gaps: dict[tuple[str, str, str], GroupGap] = {}
        values: dict[tuple[str, str, str], float] = {}
        for key, outcome, in_group, clusters in self._comparisons(reference, groups):
            n = int(in_group.sum())
            if n:
                values[key] = float(outcome[in_group].mean())
            if self._large_enough(n, outcome.size - n):
                gaps[key] = group_gap(outcome, in_group, metric=key[2], clusters=clusters)
        keys = list(gaps)
        p_values = [_upper_p(gaps[k].worse_gap, gaps[k].variance) for k in keys]
        q_values = benjamini_hochberg(p_values)
        self.baseline_values_ = values
        self.baseline_gaps_ = {
            k: BaselineGap(gaps[k], p, float(q), bool(q < self.fdr))
            for k, p, q in zip(keys, p_values, q_values, strict=True)
        }
        return self

    def test(self, frame: pd.DataFrame, *, groups: Any = None) -> list[DetectionResult]:
        self._check_parameters()
        if not hasattr(self, "baseline_gaps_"):
            raise NotFittedError("SubgroupBias used before fit")
        rows = [
            self._compare(key, outcome, in_group, clusters)
            for key, outcome, in_group, clusters in self._comparisons(frame, groups)
        ]
        tested = [i for i, row in enumerate(rows) if row["p_value"] is not None]
        q_values = benjamini_hochberg([rows[i]["p_value"] for i in tested])
        for i, q in zip(tested, q_values, strict=True):
            rows[i]["q_value"] = float(q)
        return [self._result(row, n_comparisons=len(tested)) for row in rows]

    # ------------------------------------------------------------------ internals

    def _tolerances(self) -> Mapping[str, float]:
        return DEFAULT_TOLERANCES if self.tolerances is None else self.tolerances

    def _check_parameters(self) -> None:
        if isinstance(self.fields, str):
            raise ValidationError(
                f"fields {self.fields!r} must be a sequence of column names", field="fields"
            )
        for metric, tolerance in self._tolerances().items():
            if metric not in METRICS:
                raise ValidationError(
                    f"tolerances names {metric!r}, not one of {', '.join(METRICS)}",
                    field="tolerances",
                )
            if not (isinstance(tolerance, int | float) and math.isfinite(tolerance)
                    and tolerance >= 0):
                raise ValidationError(
                    f"tolerances[{metric!r}] is {tolerance!r}; it must be a number >= 0",
                    field="tolerances",
                )

    def _large_enough(self, n: int, n_rest: int) -> bool:
        return n >= self.min_group_size and n_rest >= self.min_group_size

    def _comparisons(
        self, frame: pd.DataFrame, groups: Any
    ) -> Iterator[tuple[tuple[str, str, str], np.ndarray, np.ndarray, np.ndarray | None]]:
        """Per field present, metric and value (sorted): the key, the metric's outcomes over
        its denominator, which of them are in the group, and their patient codes."""
        reads = as_reads(frame)
        ids = aligned_groups(groups, len(reads), field="subgroups")
        # Integer patient codes once for the whole frame (a missing key is its own patient).
        codes = None if ids is None else cluster_codes(ids, len(reads), None, 0)[0]
        outcomes = {metric: metric_outcomes(reads, metric) for metric in self.metrics}
        for field in self.fields:
            if field not in frame.columns:
                continue
            labels = as_categories(frame[field], field=field)
            value_codes, values = pd.factorize(labels)  # missing: -1, in no group
            for metric in self.metrics:
                denominator, success = outcomes[metric]
                outcome = success[denominator].astype(float)
                in_denominator = value_codes[denominator]
                clusters = None if codes is None else codes[denominator]
                for code in np.argsort(values.astype(str)):
                    yield ((field, str(values[code]), metric), outcome,
                           in_denominator == code, clusters)

    def _compare(
        self,
        key: tuple[str, str, str],
        outcome: np.ndarray,
        in_group: np.ndarray,
        clusters: np.ndarray | None,
    ) -> dict[str, Any]:
        field, value, metric = key
        n = int(in_group.sum())
        n_rest = outcome.size - n
        successes, successes_rest = int(outcome[in_group].sum()), int(outcome[~in_group].sum())
        baseline = self.baseline_gaps_.get(key)
        tolerance = self._tolerances().get(metric)
        row: dict[str, Any] = {
            "field": field,
            "value": value,
            "metric": metric,
            "n": n,
            "successes": successes,
            "group_value": successes / n if n else None,
            "ci": wilson_interval(successes, n),
            "n_rest": n_rest,
            "rest_value": successes_rest / n_rest if n_rest else None,
            "rest_ci": wilson_interval(successes_rest, n_rest),
            "gap": (successes / n - successes_rest / n_rest) if n and n_rest else 0.0,
            "baseline": baseline,
            "baseline_value": self.baseline_values_.get(key),
            "tolerance": None if tolerance is None else float(tolerance),
            "p_value": None,
        }
        if not self._large_enough(n, n_rest):
            row.update(status="insufficient data",
                       reason=f"group or rest under {self.min_group_size} reads in the window")
            return row
        now = group_gap(outcome, in_group, metric=metric, clusters=clusters)
        row.update(now=now, design_effect=now.design_effect)
        tests: dict[str, float] = {}
        if baseline is not None:
            change = now.worse_gap - baseline.gap.worse_gap
            change_variance = now.variance + baseline.gap.variance
            tests[GAP_CHANGE] = _upper_p(change, change_variance)
            row.update(
                change_sd=math.sqrt(change_variance),
                rho=baseline.gap.variance / change_variance if change_variance > 0 else 0.0,
            )
        if tolerance is not None and (
            baseline is None
            or baseline.gap.worse_gap + Z_ONE_SIDED_95 * math.sqrt(baseline.gap.variance)
            < tolerance
        ):
            tests[TOLERANCE] = _upper_p(now.worse_gap - tolerance, now.variance)
        if not tests:
            row.update(status="insufficient data",
                       reason=f"no baseline gap (group under {self.min_group_size} reads in "
                              f"the baseline) and no tolerance for {metric}")
            return row
        p_value = min(1.0, len(tests) * min(tests.values()))
        row.update(status="ok", p_value=p_value, tests=tests)
        return row

    def _result(self, row: dict[str, Any], *, n_comparisons: int) -> DetectionResult:
        metric = row["metric"]
        gap = float(row["gap"])
        baseline: BaselineGap | None = row["baseline"]
        sign = 1.0 if WORSE_WHEN_HIGHER[metric] else -1.0
        change = None if baseline is None else gap - baseline.gap.gap
        change_ci = None
        if change is not None and "change_sd" in row:
            half = Z_95 * row["change_sd"]
            change_ci = (change - half, change + half)
        # The direction of what is tested: the change in gap where there is a baseline gap,
        # else the gap itself (group against the rest now).
        moved = change if change is not None else gap
        direction = "worse" if sign * moved > 0 else "better"
        q_value = row.get("q_value")
        drift = q_value is not None and q_value < self.fdr and direction == "worse"
        tests = row.get("tests", {})
        details = {
            "family": "bias",
            "field": row["field"],
            "value": row["value"],
            "metric": metric,
            "status": row["status"],
            "reason": row.get("reason"),
            "n": row["n"],
            "successes": row["successes"],
            "group_value": row["group_value"],
            "ci": row["ci"],
            "n_rest": row["n_rest"],
            "rest_value": row["rest_value"],
            "rest_ci": row["rest_ci"],
            "gap": gap,
            "gap_direction": "worse" if sign * gap > 0 else "better",
            "baseline_value": row["baseline_value"],
            "baseline_n": None if baseline is None else baseline.gap.n,
            "baseline_gap": None if baseline is None else baseline.gap.gap,
            "baseline_gap_ci": None if baseline is None else _interval(baseline.gap),
            "standing": bool(baseline is not None and baseline.standing),
            "standing_q": None if baseline is None else baseline.q_value,
            "gap_change": change,
            "gap_change_ci": change_ci,
            "direction": direction,
            "tolerance": row["tolerance"],
            "tests": sorted(tests),
            "p_gap_change": tests.get(GAP_CHANGE),
            "p_tolerance": tests.get(TOLERANCE),
            "q_value": q_value,
            "rho": row.get("rho", 0.0) if row["status"] == "ok" else None,
            "design_effect": row.get("design_effect"),
            "test": "one-sided: gap change against the baseline gap (difference in "
                    "differences) and/or the gap against the tolerance; Bonferroni over both",
            "min_group_size": self.min_group_size,
            "fdr": self.fdr,
            "n_comparisons": n_comparisons,
            "multiple_testing": "benjamini-hochberg",
            "ci_method": "wilson 95% (values); normal 95% (gaps)",
        }
        return DetectionResult(
            detector="SubgroupBias",
            feature=f"{row['field']}={row['value']}:{metric}",
            statistic=gap,
            p_value=row["p_value"],
            threshold=self.fdr,
            drift=drift,
            n_reference=0 if baseline is None else int(baseline.gap.n),
            n_current=int(row["n"]),
            details=details,
        )


def _upper_p(excess: float, variance: float) -> float:
    """One-sided p-value that ``excess`` (positive: worse) is above 0."""
    if variance <= 0:
        return 0.5
    return float(stats.norm.sf(excess / math.sqrt(variance)))


def _interval(gap: GroupGap) -> tuple[float, float]:
    half = Z_95 * math.sqrt(gap.variance)
    return (gap.gap - half, gap.gap + half)
