"""One health number per model version and window, so one number can page someone.

Two formulas. A daily grid window (one local day, the scheduler's default) takes its health
from the sequential layer (``monitor.detect.sequential.sequential_health``, formula
``sequential-v1``): red when a stream is at the page level, amber at warning, else green,
with a false-page rate designed per version. Every other window (``7d``, ``last:N``, a
custom span) is scored on its own, with the per-window formula below (``health-v1``); a lone
window has no history, so this score has no stated false-alarm rate over time (on no-shift
windows it is green about 77% of the time: five families, each at alpha).

In the spirit of CheXstray's multi-modal concordance metric (Soin et al., 2022): every family
of drift evidence (embeddings, metadata, predictions, performance, bias) is put on a common
scale by normalising it against its own baseline behaviour, and the families are combined with
weights. Here a p-value *is* that normalisation: it says how unusual the window's statistic is
against what the detector's reference (the version's baseline) produces by chance.

Formula (``FORMULA_VERSION``):

1. Per result, an effective p-value: ``details["q_value"]`` where the detector already
   corrected for its own multiplicity (subgroup bias), else the p-value times the number of
   p-valued results of its family (Bonferroni within the family), capped at 1.
2. Per result, a severity in [0, 1]:

   - 0 when the effective p-value is at least the result's threshold (alpha);
   - else ``FLOOR + (1 - FLOOR) * clip(log10(alpha / p) / log10(alpha / P_FLOOR), 0, 1)``:
     a step to ``FLOOR`` (0.4) as soon as the family is beyond its alpha, rising to 1 when
     p reaches ``P_FLOOR`` (1e-4, about what a 1000-permutation test can show after a small
     family correction);
   - a result flagged ``drift`` while its p-value is not below alpha (a never-seen category
     is a finding on first sight) gets ``FLOOR``; a flagged result without a p-value (a bound
     on its statistic) gets ``FLOOR + (1 - FLOOR) * clip(statistic / threshold - 1, 0, 1)``;
   - results with ``details["status"] == "insufficient data"`` carry no evidence: 0.

3. Family severity ``s_f`` = the largest severity of its results; component ``1 - s_f``.
4. ``health = 1 - (PEAK_WEIGHT * max_f (w_f / w_max) s_f + (1 - PEAK_WEIGHT) * sum_f w_f s_f
   / sum_f w_f)`` over the families present, with PEAK_WEIGHT 0.5. The weighted mean is the
   CheXstray-style concordance term (how broadly the families agree on drift); the peak term
   keeps one strongly drifting family from being averaged away by four quiet ones.

Thresholds: green >= 0.8, amber 0.6 to 0.8, red < 0.6. Green means no family beyond its alpha
(any family beyond it makes the peak term at least 0.2 and the mean term positive, so health
< 0.8). With five equally weighted families, one family alone turns red when its severity
exceeds 2/3 (effective p below about alpha / 16, i.e. 3e-3 at alpha 0.05); several families
beyond alpha together turn red sooner. Families without results are left out, not counted as
quiet: with fewer families present the mean term weighs each more (a lone family beyond its
alpha is amber at most 0.6, i.e. on the edge of red). All quiet gives 1.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.detect.result import DetectionResult
from monitor.vocabulary import HealthStatus

FORMULA_VERSION = "health-v1"
FLOOR = 0.4
P_FLOOR = 1e-4
PEAK_WEIGHT = 0.5
GREEN_AT = 0.8
AMBER_AT = 0.6

# Families of rows that carry no evidence of their own: sequential rows restate the others'
# p-values over days, attribution rows rank causes. The per-window score leaves them out.
NOT_EVIDENCE = frozenset({"sequential", "attribution"})
# Family of each detector name; a result's own details["family"] takes precedence.
DETECTOR_FAMILIES: dict[str, str] = {
    "MMDDrift": "embedding",
    "ClassifierDrift": "embedding",
    "NoveltyDrift": "embedding",
    "CategoricalDrift": "metadata",
    "NumericDrift": "metadata",
    "ScoreDrift": "prediction",
    "PositiveRateDrift": "prediction",
    "PerformanceDrift": "performance",
    "SubgroupBias": "bias",
}


@dataclass(frozen=True)
class HealthScore:
    """``components`` maps each family to ``1 - severity`` (1 = quiet); ``details`` has, per
    family, its weight, severity, number of results, number flagged and the worst feature."""

    score: float
    status: HealthStatus
    components: Mapping[str, float]
    formula_version: str = FORMULA_VERSION
    details: Mapping[str, Any] = field(default_factory=dict)


def family_of(result: DetectionResult) -> str:
    family = result.details.get("family") if result.details else None
    return str(family) if family else DETECTOR_FAMILIES.get(result.detector, result.detector)


def _severity_from_p(p: float, alpha: float) -> float:
    if p >= alpha:
        return 0.0
    span = math.log10(alpha / P_FLOOR)
    rise = math.log10(alpha / max(p, 1e-300)) / span if span > 0 else 1.0
    return FLOOR + (1 - FLOOR) * min(1.0, max(0.0, rise))


def result_severity(result: DetectionResult, *, family_size: int) -> float:
    """Severity in [0, 1] of one result (step 2 of the module's formula)."""
    if result.details and result.details.get("status") == "insufficient data":
        return 0.0
    if result.p_value is None:
        if not result.drift:
            return 0.0
        excess = result.statistic / result.threshold - 1 if result.threshold > 0 else 1.0
        return FLOOR + (1 - FLOOR) * min(1.0, max(0.0, excess))
    q_value = result.details.get("q_value") if result.details else None
    effective = q_value if q_value is not None else min(1.0, result.p_value * family_size)
    severity = _severity_from_p(float(effective), result.threshold)
    raw = q_value if q_value is not None else result.p_value
    flagged_without_p = result.drift and raw >= result.threshold
    return max(severity, FLOOR) if flagged_without_p else severity


def status_of(score: float) -> HealthStatus:
    if score >= GREEN_AT:
        return "green"
    if score >= AMBER_AT:
        return "amber"
    return "red"


def health_score(
    results: Sequence[DetectionResult], *, weights: Mapping[str, float] | None = None
) -> HealthScore:
    """Combine one window's detection results into one health score (formula in the module
    docstring). ``weights`` maps family names to weights (default 1.0 each; 0 leaves a family
    out). With no usable result the score is 1.0 and ``details["n_results"]`` is 0. Rows of
    ``NOT_EVIDENCE`` families are left out, so a run's stored rows can be scored as they are.
    """
    results = [r for r in results if family_of(r) not in NOT_EVIDENCE]
    by_family: dict[str, list[DetectionResult]] = defaultdict(list)
    for result in results:
        by_family[family_of(result)].append(result)
    chosen = dict(weights or {})
    severities: dict[str, float] = {}
    family_details: dict[str, dict[str, Any]] = {}
    for family, members in sorted(by_family.items()):
        family_size = sum(1 for r in members if r.p_value is not None)
        scored = [(result_severity(r, family_size=family_size), r) for r in members]
        worst_severity, worst = max(scored, key=lambda item: item[0])
        severities[family] = worst_severity
        family_details[family] = {
            "weight": float(chosen.get(family, 1.0)),
            "severity": worst_severity,
            "n_results": len(members),
            "n_drift": sum(1 for r in members if r.drift),
            "worst_feature": worst.feature if worst_severity > 0 else None,
        }
    weighted = {f: family_details[f]["weight"] for f in severities}
    total_weight = sum(weighted.values())
    if total_weight <= 0:
        score = 1.0
    else:
        max_weight = max(weighted.values())
        mean_term = sum(weighted[f] * s for f, s in severities.items()) / total_weight
        peak_term = max(weighted[f] / max_weight * s for f, s in severities.items())
        score = 1.0 - (PEAK_WEIGHT * peak_term + (1 - PEAK_WEIGHT) * mean_term)
    return HealthScore(
        score=score,
        status=status_of(score),
        components={f: 1.0 - s for f, s in severities.items()},
        details={
            "families": family_details,
            "n_results": len(results),
            "peak_weight": PEAK_WEIGHT,
            "p_floor": P_FLOOR,
            "severity_floor": FLOOR,
            "thresholds": {"green": GREEN_AT, "amber": AMBER_AT},
        },
    )
