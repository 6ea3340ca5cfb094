"""ClassifierDrift: calibration under no shift (with and without repeat studies), power on a
subspace mean shift, the exactness of the refitted permutation null, and the API contract."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.detect.classifier import ClassifierDrift
from monitor.errors import InsufficientDataError, NotFittedError, ValidationError
from tests.detect.conftest import independent_windows, repeat_study_windows, subspace_shift

RUNS = 200
BAND = (0.02, 0.08)


def alarm_rate(make_windows, *, runs: int, grouped: bool) -> float:
    alarms = 0
    for run in range(runs):
        windows = make_windows(np.random.default_rng(20_000 + run))
        detector = ClassifierDrift(n_permutations=200, seed=run)
        if grouped:
            detector.fit(windows.reference, groups=windows.reference_groups)
            result = detector.test(windows.current, groups=windows.current_groups)
        else:
            result = detector.fit(windows.reference).test(windows.current)
        alarms += result.drift
    return alarms / runs


def test_false_alarm_rate_independent_studies_is_nominal():
    """Measured: 0.055 at n = 150 per side, d = 64, PCA 32, 5 folds, B = 200."""
    rate = alarm_rate(lambda rng: independent_windows(rng, 150, 64), runs=RUNS, grouped=False)
    assert BAND[0] <= rate <= BAND[1]


def test_false_alarm_rate_repeat_studies_by_patient_is_nominal():
    """Folds and permutations by patient on windows with repeat studies. Measured: 0.06."""
    rate = alarm_rate(lambda rng: repeat_study_windows(rng, 150, 64), runs=RUNS, grouped=True)
    assert BAND[0] <= rate <= BAND[1]


def test_without_patient_keys_repeat_studies_over_alarm():
    """Study-level folds put a patient's studies on both sides of a split. Measured: 0.94."""
    rate = alarm_rate(lambda rng: repeat_study_windows(rng, 150, 64), runs=100, grouped=False)
    assert rate > 0.3


def test_power_on_subspace_mean_shift():
    """Mean shift of length 0.8 over 8 of 64 coordinates, n = 200 per side: measured power
    0.94 over 100 runs; target >= 0.9."""
    detections = 0
    for run in range(100):
        windows = independent_windows(np.random.default_rng(run), 200, 64)
        detector = ClassifierDrift(n_permutations=200, seed=run).fit(windows.reference)
        detections += detector.test(subspace_shift(windows.current, size=0.8)).drift
    assert detections / 100 >= 0.9


def test_separable_samples_give_auc_one_and_smallest_p():
    windows = independent_windows(np.random.default_rng(1), 100, 16)
    result = ClassifierDrift(n_permutations=99).fit(windows.reference).test(windows.current + 5.0)
    assert result.statistic == pytest.approx(1.0)
    assert result.p_value == pytest.approx(1 / 100)
    assert result.drift
    assert result.detector == "ClassifierDrift" and result.feature == "embedding"
    assert result.details["auc"] == result.statistic
    assert result.details["folds"] == 5 and result.details["permutation_unit"] == "study"


def test_no_shift_auc_near_half_and_score_matches_test():
    windows = independent_windows(np.random.default_rng(2), 300, 32)
    detector = ClassifierDrift(n_permutations=100, seed=3).fit(windows.reference)
    result = detector.test(windows.current)
    assert abs(result.statistic - 0.5) < 0.06
    assert detector.score(windows.current) == pytest.approx(result.statistic)
    assert not result.drift


def test_grouped_folds_keep_patients_together():
    from monitor.detect.classifier import _folds

    windows = repeat_study_windows(np.random.default_rng(3), 200, 8)
    groups = np.r_[windows.reference_groups, windows.current_groups]
    labels = np.r_[np.zeros(len(windows.reference), bool), np.ones(len(windows.current), bool)]
    folds = _folds(labels, groups, n_folds=5, seed=0)
    for patient in np.unique(groups):
        assert np.unique(folds[groups == patient]).size == 1
    for fold in range(5):
        share = labels[folds == fold].mean()
        assert 0.3 < share < 0.7


def test_contract_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(NotFittedError, match="ClassifierDrift is not fitted"):
        ClassifierDrift().test(rng.normal(size=(20, 4)))
    detector = ClassifierDrift().fit(rng.normal(size=(50, 4)))
    with pytest.raises(ValidationError, match=r"shape \(30, 5\)"):
        detector.test(rng.normal(size=(30, 5)))
    with pytest.raises(InsufficientDataError, match="current has 6 studies"):
        detector.test(rng.normal(size=(6, 4)))
    with pytest.raises(InsufficientDataError, match="patients cannot fill 5 folds"):
        ClassifierDrift().fit(rng.normal(size=(20, 4)), groups=["a", "b"] * 10).test(
            rng.normal(size=(20, 4)), groups=["a", "b"] * 10
        )
