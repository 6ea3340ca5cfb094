"""The combined health score: quiet is green, strong drift is red, monotone in p-values; a grid
day's health follows its streams' sequential levels."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest
from scipy.stats import norm

from monitor.detect.health import (
    AMBER_AT,
    FORMULA_VERSION,
    GREEN_AT,
    HealthScore,
    family_of,
    health_score,
)
from monitor.detect.result import DetectionResult
from monitor.detect.sequential import DailyEvidence, StreamState, evaluate, sequential_health

FAMILY_DETECTORS = {
    "embedding": "MMDDrift",
    "metadata": "CategoricalDrift",
    "prediction": "ScoreDrift",
    "performance": "PerformanceDrift",
    "bias": "SubgroupBias",
}


def result(
    detector: str,
    p_value: float | None,
    *,
    feature: str = "f",
    drift: bool | None = None,
    alpha: float = 0.05,
    statistic: float = 0.0,
    **details: object,
) -> DetectionResult:
    flagged = (p_value is not None and p_value < alpha) if drift is None else drift
    return DetectionResult(detector, feature, statistic, p_value, alpha, flagged, 500, 200, details)


def window(p_values: dict[str, float]) -> list[DetectionResult]:
    return [result(FAMILY_DETECTORS[family], p) for family, p in p_values.items()]


def test_all_quiet_is_green_and_one():
    score = health_score(window(dict.fromkeys(FAMILY_DETECTORS, 0.4)))
    assert score.score == 1.0 and score.status == "green"
    assert set(score.components) == set(FAMILY_DETECTORS)
    assert score.formula_version == FORMULA_VERSION


def test_one_strong_drift_is_red_and_a_moderate_one_amber():
    quiet = dict.fromkeys(FAMILY_DETECTORS, 0.5)
    strong = health_score(window({**quiet, "embedding": 1e-6}))
    assert strong.status == "red"
    assert strong.components["embedding"] == 0.0
    assert strong.details["families"]["embedding"]["worst_feature"] == "f"
    moderate = health_score(window({**quiet, "metadata": 0.01}))
    assert moderate.status == "amber"
    just_beyond = health_score(window({**quiet, "prediction": 0.049}))
    assert just_beyond.score < 0.8


def test_several_families_beyond_alpha_are_worse_than_one():
    quiet = dict.fromkeys(FAMILY_DETECTORS, 0.5)
    one = health_score(window({**quiet, "metadata": 0.01}))
    three = health_score(window({**quiet, "metadata": 0.01, "prediction": 0.01, "bias": 0.01}))
    assert three.score < one.score
    assert three.status == "red"


def test_score_is_monotone_in_every_p_value():
    rng = np.random.default_rng(0)
    for _ in range(300):
        p_values = dict(zip(FAMILY_DETECTORS, 10 ** rng.uniform(-7, 0, 5), strict=True))
        before = health_score(window(p_values)).score
        family = str(rng.choice(list(FAMILY_DETECTORS)))
        smaller = {**p_values, family: p_values[family] * rng.uniform(0.0, 1.0)}
        assert health_score(window(smaller)).score <= before + 1e-12
        assert 0.0 <= before <= 1.0


def test_multiplicity_within_a_family_is_corrected():
    # One of ten metadata features at p = 0.02 is what chance gives: Bonferroni makes it 0.2.
    results = [result("NumericDrift", 0.5, feature=f"x{i}") for i in range(9)]
    results.append(result("NumericDrift", 0.02, feature="kvp"))
    assert health_score(results).status == "green"
    assert health_score(results[-1:]).status != "green"


def test_new_category_without_significance_is_not_green():
    new_vendor = result("CategoricalDrift", 0.6, drift=True, new_categories={"Canon": 2})
    score = health_score([new_vendor, *window({"embedding": 0.5, "prediction": 0.5})])
    assert score.status == "amber"


def test_bias_uses_q_values_and_insufficient_data_is_no_evidence():
    flagged = result("SubgroupBias", 1e-4, drift=True, q_value=0.003)
    insufficient = result("PerformanceDrift", None, drift=False, status="insufficient data")
    score = health_score([flagged, insufficient, *window({"embedding": 0.5})])
    assert score.details["families"]["bias"]["severity"] > 0.4
    assert score.components["performance"] == 1.0


def test_statistic_bound_results_and_family_precedence():
    bound = result("classifier_auc", None, drift=True, statistic=0.9, alpha=0.6, family="embedding")
    assert family_of(bound) == "embedding"
    assert family_of(result("MMDDrift", 0.5)) == "embedding"
    assert family_of(result("SomethingNew", 0.5)) == "SomethingNew"
    assert health_score([bound]).components["embedding"] < 0.6


def test_weights_zero_leaves_a_family_out():
    quiet = dict.fromkeys(FAMILY_DETECTORS, 0.5)
    drifting = window({**quiet, "bias": 1e-8})
    assert health_score(drifting).status == "red"
    assert health_score(drifting, weights={"bias": 0.0}).status == "green"
    assert health_score([]).score == 1.0


def test_status_rates_on_windows_without_drift():
    """Five families, each with uniform null p-values (ten metadata and three prediction
    results, one result elsewhere): most windows are green, red is rare."""
    rng = np.random.default_rng(1)
    sizes = {"embedding": 1, "metadata": 10, "prediction": 3, "performance": 1, "bias": 1}
    statuses = []
    for _ in range(1000):
        results = [
            result(FAMILY_DETECTORS[family], float(p), feature=f"{family}{i}")
            for family, size in sizes.items()
            for i, p in enumerate(rng.random(size))
        ]
        statuses.append(health_score(results).status)
    statuses_array = np.array(statuses)
    assert np.mean(statuses_array == "green") >= 0.70  # about 0.95**5 = 0.77
    assert np.mean(statuses_array == "red") <= 0.03
    assert pytest.approx(1.0) == sum(
        np.mean(statuses_array == s) for s in ("green", "amber", "red")
    )


def test_sequential_and_attribution_rows_are_not_scored_per_window():
    """A run's stored rows can be scored as they are: the sequential rows restate the
    families' p-values and attribution rows rank causes, so neither counts again."""
    quiet = window(dict.fromkeys(FAMILY_DETECTORS, 0.5))
    paging_stream = DetectionResult(
        "SequentialEvidence", "MMDDrift/embedding", 6.0, None, 4.5, True, 700, 300,
        {"family": "sequential", "of_family": "embedding", "level": "page"})
    ranking = DetectionResult("Attribution", "metadata", 0.4, None, 0.0, False, 700, 300,
                              {"family": "attribution", "ranking": []})
    score = health_score([*quiet, paging_stream, ranking])
    assert score.status == "green" and score.score == 1.0
    assert set(score.components) == set(FAMILY_DETECTORS)
    assert score.details["n_results"] == len(quiet)


def stream_days(p_values: list[float], *, stream: str = "CategoricalDrift/vendor",
                family: str = "metadata") -> list[DailyEvidence]:
    first = date(2026, 10, 8)
    return [DailyEvidence(stream, family, first + timedelta(days=i), p, 100, 700, "weekday")
            for i, p in enumerate(p_values)]


def test_grid_health_follows_the_worst_stream_level():
    """Health of a grid day: green while every stream is quiet, amber once one is at warning,
    red once one pages, with scores in the same bands as the per-window formula."""
    day = date(2026, 10, 8) + timedelta(days=5)
    background = [e for family, detector in FAMILY_DETECTORS.items()
                  for e in stream_days([0.5] * 6, stream=f"{detector}/f", family=family)]

    def vendor_and_health(p_values: list[float]) -> tuple[StreamState, HealthScore]:
        states = evaluate([*background, *stream_days(p_values)], day=day)
        score = sequential_health(states)
        assert score.formula_version == "sequential-v1"
        return next(s for s in states if s.stream == "CategoricalDrift/vendor"), score

    def health(p_values: list[float]) -> tuple[str, float, str]:
        vendor, score = vendor_and_health(p_values)
        return score.status, score.score, vendor.level

    status, score, level = health([0.5] * 6)
    assert (status, level) == ("green", "quiet") and GREEN_AT <= score <= 1.0
    vendor, _ = vendor_and_health([0.5] * 6)
    assert vendor.warning_at + 0.2 < vendor.page_at
    # One day whose z sits between the thresholds: amber.
    p_warn = float(norm.sf(vendor.warning_at + 0.2))
    status, score, level = health([0.5] * 5 + [p_warn])
    assert (status, level) == ("amber", "warning") and AMBER_AT <= score < GREEN_AT
    status, score, level = health([0.5] * 5 + [1e-12])
    assert (status, level) == ("red", "page") and score < AMBER_AT
    # A week of moderate evidence (p = 0.01 a day, never a finding alone) pages too.
    status, _, level = health([0.01] * 6)
    assert (status, level) == ("red", "page")
