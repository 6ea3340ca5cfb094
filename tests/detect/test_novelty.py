"""NoveltyDrift: validity of the conformal p-values, calibration of the window count (with and
without repeat studies), and detection of a few inverted real chest X-rays in a window that a
window-level MMD misses."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.detect.mmd import MMDDrift
from monitor.detect.novelty import NoveltyDrift
from monitor.errors import InsufficientDataError, NotFittedError, ValidationError
from tests.detect.conftest import embed_images, independent_windows, repeat_study_windows

BAND = (0.02, 0.08)


def alarm_rate(make_windows, *, runs: int, grouped: bool) -> float:
    alarms = 0
    for run in range(runs):
        windows = make_windows(np.random.default_rng(30_000 + run))
        detector = NoveltyDrift(seed=run)
        if grouped:
            detector.fit(windows.reference, groups=windows.reference_groups)
            result = detector.test(windows.current, groups=windows.current_groups)
        else:
            result = detector.fit(windows.reference).test(windows.current)
        alarms += result.drift
    return alarms / runs


def test_conformal_p_values_are_valid():
    """Under no shift P(p <= t) <= t: pooled over 40 references and 500 new studies each."""
    p_values = []
    for run in range(40):
        windows = independent_windows(np.random.default_rng(run), 1000, 32, n_current=500)
        p_values.append(
            NoveltyDrift(seed=run).fit(windows.reference).study_p_values(windows.current)
        )
    p_values = np.concatenate(p_values)
    for t in (0.01, 0.05, 0.2, 0.5):
        assert np.mean(p_values <= t) <= t + 0.01
        assert np.mean(p_values <= t) >= t - 0.03
    assert p_values.min() >= 1 / 301


def test_false_alarm_rate_independent_studies_is_nominal():
    """Reference 1,000 (calibration 300), windows of 150, novelty_alpha 0.01: a window alarms
    at >= 5 novel studies, whose beta-binomial tail is 0.044. Measured: 0.033 over 300 runs."""
    rate = alarm_rate(
        lambda rng: independent_windows(rng, 1000, 64, n_current=150), runs=300, grouped=False
    )
    assert BAND[0] <= rate <= BAND[1]


def test_false_alarm_rate_repeat_studies_by_patient_is_nominal():
    """30 % of patients with 3-6 studies; reference 3,000 studies (about 440 calibration
    patients), windows of 300 studies (about 145 patients, one study each counted).
    Measured: 0.03 over 200 runs."""

    def make(rng):
        return repeat_study_windows(rng, 3000, 64, n_current=300, repeat_share=0.3)

    rate = alarm_rate(make, runs=200, grouped=True)
    assert BAND[0] <= rate <= BAND[1]


def test_novel_studies_are_listed_with_keys():
    windows = independent_windows(np.random.default_rng(7), 1000, 16, n_current=60)
    current = windows.current.copy()
    current[[3, 17]] += 12.0
    keys = [f"study-{i}" for i in range(60)]
    result = NoveltyDrift().fit(windows.reference).test(current, keys=keys)
    details = result.details
    assert {3, 17} <= set(details["novel_indices"])
    assert {"study-3", "study-17"} <= set(details["novel_keys"])
    assert all(p < 0.01 for p in details["novel_p_values"])
    assert details["n_novel"] == len(details["novel_indices"]) == result.statistic
    assert details["expected"] == pytest.approx(60 * 3 / 301)
    assert result.detector == "NoveltyDrift"
    assert result.n_current == 60 and result.n_reference == 1000


def test_contract_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(NotFittedError, match="NoveltyDrift is not fitted"):
        NoveltyDrift().test(rng.normal(size=(10, 4)))
    with pytest.raises(NotFittedError):
        NoveltyDrift().study_p_values(rng.normal(size=(10, 4)))
    with pytest.raises(
        InsufficientDataError, match=r"calibration part has 60 studies.*at least 100"
    ):
        NoveltyDrift().fit(rng.normal(size=(200, 4)))
    detector = NoveltyDrift().fit(rng.normal(size=(400, 4)))
    with pytest.raises(ValidationError, match=r"shape \(10, 3\)"):
        detector.test(rng.normal(size=(10, 3)))
    with pytest.raises(ValidationError, match="keys has 2 entries for 10 studies"):
        detector.test(rng.normal(size=(10, 4)), keys=["a", "b"])


# Real images --------------------------------------------------------------------------------


def test_inverted_images_alarm_the_window_where_window_mmd_misses(pneumonia_images):
    """PneumoniaMNIST (real paediatric chest X-rays), untrained conv-net embeddings (512-d).
    Per seed: 3,000 reference images; a window of 100 other images, 5 of them replaced by
    intensity-inverted images (MONOCHROME1 shown as MONOCHROME2). Measured over 30 seeds:
    novelty alarms in 1.0 of windows (and flags all 150 inverted studies), the
    window-level MMD (B = 200) in 0.13."""
    images = pneumonia_images
    embeddings = embed_images(images)
    inverted = embed_images(255 - images)
    runs, novelty_alarms, mmd_alarms, found = 30, 0, 0, 0
    for run in range(runs):
        rng = np.random.default_rng(run)
        order = rng.permutation(len(images))
        reference = embeddings[order[:3000]]
        window = embeddings[order[3000:3100]].copy()
        replaced = rng.choice(100, 5, replace=False)
        window[replaced] = inverted[order[3100:3105]]
        result = NoveltyDrift(seed=run).fit(reference).test(window)
        novelty_alarms += result.drift
        found += len(set(replaced) & set(result.details["novel_indices"]))
        mmd_alarms += MMDDrift(n_permutations=200, seed=run).fit(reference).test(window).drift
    assert novelty_alarms / runs >= 0.8
    assert found / (5 * runs) >= 0.9  # the inverted studies themselves are flagged
    assert mmd_alarms / runs <= 0.5
    assert novelty_alarms / runs - mmd_alarms / runs >= 0.4
