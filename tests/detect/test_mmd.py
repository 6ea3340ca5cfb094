"""MMDDrift: exact arithmetic of the batched permutations, calibration under no shift (with and
without repeat studies), power on a subspace mean shift, and the API contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monitor.detect._torch import SidePermuter
from monitor.detect.mmd import MMDDrift
from monitor.errors import ConfigError, InsufficientDataError, NotFittedError, ValidationError
from tests.detect.conftest import independent_windows, repeat_study_windows, subspace_shift

RUNS = 200  # no-shift windows per calibration test
BAND = (0.02, 0.08)  # false-alarm rate band at alpha = 0.05 over 200 runs (binomial sd 0.015)


def alarm_rate(make_windows, *, runs: int, grouped: bool, **options) -> float:
    alarms = 0
    for run in range(runs):
        windows = make_windows(np.random.default_rng(10_000 + run))
        detector = MMDDrift(n_permutations=200, seed=run, **options)
        if grouped:
            detector.fit(windows.reference, groups=windows.reference_groups)
            result = detector.test(windows.current, groups=windows.current_groups)
        else:
            result = detector.fit(windows.reference).test(windows.current)
        alarms += result.drift
    return alarms / runs


def naive_unbiased_mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    def kernel(a, b):
        sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-sq / (2 * bandwidth**2))

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    n, m = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * kxy.mean()
    )


# Arithmetic ---------------------------------------------------------------------------------


def test_batched_permutation_statistics_equal_direct_mmd_on_permuted_samples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = rng.normal(size=(30, 5)).astype(np.float32) + 0.3
    detector = MMDDrift(pca_components=None, bandwidth=1.5, device="cpu").fit(x)
    pooled = detector._pooled_kernel(y)
    side = np.r_[np.ones(40, bool), np.zeros(30, bool)]
    block = next(SidePermuter(side).chunks(5, generator=torch.Generator().manual_seed(1)))
    batched = MMDDrift._mmd2(pooled, block).numpy()
    z = np.concatenate([x, y]) - np.concatenate([x, y]).mean(axis=0)
    for column in range(block.shape[1]):
        members = block[:, column].numpy().astype(bool)
        expected = naive_unbiased_mmd2(z[members], z[~members], 1.5)
        assert batched[column] == pytest.approx(expected, abs=1e-5)
    assert detector.score(y) == pytest.approx(naive_unbiased_mmd2(z[:40], z[40:], 1.5), abs=1e-5)


def test_patient_permutation_moves_whole_patients_and_keeps_split_patients_split():
    side = np.array([1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0], dtype=bool)
    patients = np.array(["a", "a", "a", "b", "b", "c", "d", "d", "e", "e", "e", "f"])
    permuter = SidePermuter(side, clusters=patients)
    block = next(permuter.chunks(300, generator=torch.Generator().manual_seed(0)))
    block = block.numpy().astype(bool)
    assert (block[:, 0] == side).all()
    for patient in ("a", "b", "c", "d", "f"):  # on one side only: move as a whole
        rows = block[patients == patient]
        assert (rows == rows[0]).all()
    # "e" has 2 reference studies and 1 current study: that split is kept, its order shuffled.
    e_rows = block[patients == "e"]
    assert (e_rows.sum(axis=0) == 2).all()
    assert len({tuple(column) for column in e_rows.T}) == 3
    # Among whole patients, 2 of 5 are on the reference side in every permutation.
    whole = ["a", "b", "c", "d", "f"]
    on_reference = np.array([block[patients == p][0] for p in whole]).sum(axis=0)
    assert (on_reference == 2).all()
    assert permuter.unit == "patient"


# Calibration and power ----------------------------------------------------------------------


def test_false_alarm_rate_independent_studies_is_nominal():
    """Measured: 0.07 (14 / 200) at n = 150 per side, d = 64, PCA 32, B = 200 (0.056 over
    1,000 runs)."""
    rate = alarm_rate(lambda rng: independent_windows(rng, 150, 64), runs=RUNS, grouped=False)
    assert BAND[0] <= rate <= BAND[1]


def test_false_alarm_rate_repeat_studies_permuting_patients_is_nominal():
    """Half of the patients have 3-6 studies sharing a patient effect, a tenth of those span
    both windows. Measured: 0.06 at about 150 studies per side."""
    rate = alarm_rate(lambda rng: repeat_study_windows(rng, 150, 64), runs=RUNS, grouped=True)
    assert BAND[0] <= rate <= BAND[1]


def test_study_level_permutation_over_alarms_on_repeat_studies():
    """The same windows tested without patient keys: the study-level permutation treats a
    patient's correlated studies as independent evidence. Measured: 0.98."""
    rate = alarm_rate(lambda rng: repeat_study_windows(rng, 150, 64), runs=100, grouped=False)
    assert rate > 0.3


def test_power_on_subspace_mean_shift():
    """Mean shift of length 0.8 (noise sd 1 per coordinate) spread over 8 of 64 coordinates,
    n = 200 per side, B = 200: measured power 0.99 over 100 runs; target >= 0.9."""
    detections = 0
    for run in range(100):
        windows = independent_windows(np.random.default_rng(run), 200, 64)
        detector = MMDDrift(n_permutations=200, seed=run).fit(windows.reference)
        detections += detector.test(subspace_shift(windows.current, size=0.8)).drift
    assert detections / 100 >= 0.9


# Contract -----------------------------------------------------------------------------------


def test_result_fields_and_details():
    windows = independent_windows(np.random.default_rng(3), 120, 48)
    detector = MMDDrift(n_permutations=99, seed=5).fit(windows.reference)
    result = detector.test(subspace_shift(windows.current, size=3.0))
    assert result.detector == "MMDDrift" and result.feature == "embedding"
    assert result.drift and result.p_value == pytest.approx(1 / 100)  # never 0
    assert result.threshold == 0.05
    assert (result.n_reference, result.n_current) == (120, 120)
    details = result.details
    assert details["n_permutations"] == 99 and details["seed"] == 5
    assert details["pca_components"] == 32 and 0 < details["explained_variance_ratio"] < 1
    assert details["bandwidth"] > 0 and details["permutation_unit"] == "study"
    assert details["device"] == "cpu" and "unbiased" in details["estimator"]
    assert result.statistic == pytest.approx(  # float32: BLAS kernels may round differently
        detector.score(subspace_shift(windows.current, size=3.0)), rel=1e-5
    )


def test_same_seed_same_p_value_and_grouped_details():
    windows = repeat_study_windows(np.random.default_rng(4), 100, 16)
    detector = MMDDrift(n_permutations=100, seed=1).fit(
        windows.reference, groups=windows.reference_groups
    )
    first = detector.test(windows.current, groups=windows.current_groups)
    second = detector.test(windows.current, groups=windows.current_groups)
    assert first.p_value == second.p_value
    assert first.details["permutation_unit"] == "patient"
    assert first.details["n_groups"] == len(
        np.unique(np.r_[windows.reference_groups, windows.current_groups])
    )


def test_max_reference_subsamples():
    windows = independent_windows(np.random.default_rng(5), 300, 8, n_current=50)
    result = (
        MMDDrift(n_permutations=50, max_reference=100).fit(windows.reference).test(windows.current)
    )
    assert result.n_reference == 100


def test_test_before_fit_raises_not_fitted():
    with pytest.raises(NotFittedError, match=r"MMDDrift is not fitted.*fit\(reference\)"):
        MMDDrift().test(np.zeros((20, 4)))


def test_wrong_dimension_names_the_shape():
    detector = MMDDrift().fit(np.random.default_rng(0).normal(size=(50, 8)))
    with pytest.raises(
        ValidationError, match=r"embedding length 6 \(shape \(40, 6\)\).*reference has 8"
    ):
        detector.test(np.zeros((40, 6)))
    with pytest.raises(ValidationError, match=r"2-D array.*shape \(8,\)"):
        detector.test(np.zeros(8))


def test_too_few_studies_raise_insufficient_data():
    with pytest.raises(InsufficientDataError, match="reference has 5 studies"):
        MMDDrift().fit(np.zeros((5, 4)))
    detector = MMDDrift().fit(np.random.default_rng(0).normal(size=(50, 4)))
    with pytest.raises(InsufficientDataError, match="current has 3 studies"):
        detector.test(np.zeros((3, 4)))


def test_groups_on_one_side_only_and_bad_options_are_rejected():
    rng = np.random.default_rng(0)
    detector = MMDDrift().fit(rng.normal(size=(50, 4)), groups=np.arange(50))
    with pytest.raises(ValidationError, match="reference sample only"):
        detector.test(rng.normal(size=(50, 4)))
    with pytest.raises(ValidationError, match="one patient key per study"):
        MMDDrift().fit(rng.normal(size=(50, 4)), groups=np.arange(10))
    with pytest.raises(ConfigError, match="alpha"):
        MMDDrift(alpha=1.5).fit(rng.normal(size=(50, 4)))
    with pytest.raises(ValidationError, match="NaN"):
        MMDDrift().fit(np.full((50, 4), np.nan))
