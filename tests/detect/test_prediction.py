"""Prediction drift: score distributions and positive rate, calibrated with and without
repeat studies, and their power on a prevalence change."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.detect.prediction import PositiveRateDrift, ScoreDrift, as_flags
from monitor.errors import NotFittedError, ValidationError
from tests.detect.support import patient_index, rate


def scored_window(
    rng: np.random.Generator, n: int, *, prefix: str, repeat_share: float, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Scores with a patient-level random effect on the logit (ICC 0.85 between a patient's
    studies); about 20% of studies score above 0.5. Returns scores and patient keys."""
    patient = patient_index(rng, n, repeat_share=repeat_share)
    effect = rng.normal(0.0, 1.2, patient.max() + 1)[patient]
    logit = -1.1 + shift + effect + rng.normal(0.0, 0.5, n)
    return 1 / (1 + np.exp(-logit)), np.char.add(prefix, patient.astype(str))


def test_detectors_require_fit_and_validate_flags():
    with pytest.raises(NotFittedError):
        ScoreDrift(feature="pneumothorax").test([0.1])
    with pytest.raises(NotFittedError):
        PositiveRateDrift().test([True])
    with pytest.raises(ValidationError) as error:
        PositiveRateDrift().fit([True, False, "yes"])
    assert error.value.index == 2 and "yes" in str(error.value)
    np.testing.assert_array_equal(as_flags([True, 0, None, 1.0], field="x"), [1, 0, np.nan, 1])


def test_score_drift_is_ks_under_the_prediction_family():
    rng = np.random.default_rng(0)
    detector = ScoreDrift(feature="pneumothorax").fit(rng.beta(2, 5, 500))
    result = detector.test(np.r_[rng.beta(2, 5, 200), [np.nan, None]])
    assert result.detector == "ScoreDrift" and result.feature == "pneumothorax"
    assert result.details["family"] == "prediction"
    assert result.details["n_missing_current"] == 2
    assert result.n_current == 200


def test_positive_rate_details_and_missing_predictions():
    detector = PositiveRateDrift().fit([True] * 20 + [False] * 80 + [None] * 5)
    result = detector.test([True] * 30 + [False] * 70)
    assert result.details["reference_rate"] == pytest.approx(0.2)
    assert result.details["current_rate"] == pytest.approx(0.3)
    assert result.statistic == pytest.approx(0.1)
    low, high = result.details["current_ci"]
    assert low < 0.3 < high
    assert result.details["n_missing_reference"] == 5
    assert result.details["test"] == "pooled two-proportion z-test"
    empty = detector.test([None, None])
    assert empty.p_value is None and empty.details["status"] == "insufficient data"


def test_score_drift_false_alarm_rate_independent(record_property):
    rejections = []
    for seed in range(400):
        rng = np.random.default_rng(seed)
        reference, _ = scored_window(rng, 1000, prefix="r", repeat_share=0.0)
        current, _ = scored_window(rng, 300, prefix="c", repeat_share=0.0)
        rejections.append(ScoreDrift(feature="f").fit(reference).test(current).drift)
    # measured: 0.050
    assert 0.02 <= rate(record_property, "false_alarm_rate", rejections) <= 0.08


def test_score_drift_false_alarm_rate_with_repeat_studies(record_property):
    corrected, naive = [], []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        reference, groups_ref = scored_window(rng, 1000, prefix="r", repeat_share=0.3)
        current, groups_cur = scored_window(rng, 300, prefix="c", repeat_share=0.3)
        detector = ScoreDrift(feature="f", n_permutations=199, seed=seed)
        detector.fit(reference, groups=groups_ref)
        corrected.append(detector.test(current, groups=groups_cur).drift)
        naive.append(ScoreDrift(feature="f").fit(reference).test(current).drift)
    # measured: 0.055 patient-level, 0.255 study-level
    assert 0.02 <= rate(record_property, "false_alarm_rate", corrected) <= 0.08
    assert rate(record_property, "naive_false_alarm_rate", naive) > 0.10


def test_score_drift_power_on_a_logit_shift(record_property):
    """Every score's logit moves up by 0.6 (under half its spread); reference 1000,
    window 300 studies, 30% repeat patients."""
    detected = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        reference, groups_ref = scored_window(rng, 1000, prefix="r", repeat_share=0.3)
        current, groups_cur = scored_window(rng, 300, prefix="c", repeat_share=0.3, shift=0.6)
        detector = ScoreDrift(feature="f", n_permutations=199, seed=seed)
        detector.fit(reference, groups=groups_ref)
        detected.append(detector.test(current, groups=groups_cur).drift)
    # measured: 0.97
    assert rate(record_property, "power", detected) >= 0.90


def test_positive_rate_false_alarm_rate_independent(record_property):
    rejections = []
    for seed in range(400):
        rng = np.random.default_rng(seed)
        detector = PositiveRateDrift().fit(rng.random(2000) < 0.2)
        rejections.append(detector.test(rng.random(500) < 0.2).drift)
    # measured: 0.0525
    assert 0.02 <= rate(record_property, "false_alarm_rate", rejections) <= 0.08


def test_positive_rate_false_alarm_rate_with_repeat_studies(record_property):
    """Positive = score above 0.5 with the patient-level effect above: the plain
    two-proportion test alarms in about a fifth of windows, the cluster-robust one at 5%."""
    corrected, naive = [], []
    for seed in range(400):
        rng = np.random.default_rng(seed)
        reference, groups_ref = scored_window(rng, 2000, prefix="r", repeat_share=0.3)
        current, groups_cur = scored_window(rng, 500, prefix="c", repeat_share=0.3)
        detector = PositiveRateDrift().fit(reference > 0.5, groups=groups_ref)
        corrected.append(detector.test(current > 0.5, groups=groups_cur).drift)
        naive.append(PositiveRateDrift().fit(reference > 0.5).test(current > 0.5).drift)
    # measured: 0.065 cluster-robust, 0.2175 plain
    assert 0.02 <= rate(record_property, "false_alarm_rate", corrected) <= 0.08
    assert rate(record_property, "naive_false_alarm_rate", naive) > 0.12


def test_positive_rate_power_on_a_prevalence_change(record_property):
    """Positive rate 0.20 -> 0.28; reference 2000 studies, window 500, independent studies."""
    detected = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        detector = PositiveRateDrift().fit(rng.random(2000) < 0.20)
        detected.append(detector.test(rng.random(500) < 0.28).drift)
    # measured: 0.975
    assert rate(record_property, "power", detected) >= 0.85
