"""NoveltyDrift: validity of the leave-one-out conformal p-values, calibration of the window count
(with and without repeat studies, references of 50 to 3,000 studies), and detection of a few
inverted real chest X-rays in a window, on small references too, that a window-level MMD
misses."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import betabinom

from monitor.detect.mmd import MMDDrift
from monitor.detect.novelty import NoveltyDrift, default_novelty_alpha
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
    assert p_values.min() >= 1 / 1001


def test_small_reference_p_values_are_valid():
    """References of 50 studies, 512 dimensions (PCA to 32 on reference and window pooled):
    pooled over 100 references and 100 new studies each, every study calibrating."""
    p_values = []
    for run in range(100):
        windows = independent_windows(np.random.default_rng(run), 50, 512, n_current=100)
        p_values.append(
            NoveltyDrift(seed=run).fit(windows.reference).study_p_values(windows.current)
        )
    p_values = np.concatenate(p_values)
    for t in (0.1, 0.2, 0.5):
        assert t - 0.03 <= np.mean(p_values <= t) <= t + 0.02
    assert p_values.min() == pytest.approx(1 / 51)


@pytest.mark.parametrize(
    ("n_reference", "n_current", "dims"),
    [(50, 100, 64), (200, 100, 64), (1000, 150, 64)],
)
def test_false_alarm_rate_independent_studies_is_nominal(n_reference, n_current, dims):
    """Every reference study calibrates (leave-one-out); novelty_alpha follows the reference
    size (2/51 at 50 studies, 0.01 from 199 up); from 199 up the beyond-every-study count
    joins the novel count. Measured over 300 runs: 0.023 (50 studies, window 100), 0.053
    (200, window 100), 0.023 (1,000, window 150; the discrete counts make it conservative)."""
    rate = alarm_rate(
        lambda rng: independent_windows(rng, n_reference, dims, n_current=n_current),
        runs=300,
        grouped=False,
    )
    assert BAND[0] - 0.005 <= rate <= BAND[1]


@pytest.mark.parametrize(("n_reference", "n_current"), [(100, 100), (3000, 300)])
def test_false_alarm_rate_repeat_studies_by_patient_is_nominal(n_reference, n_current):
    """30 % of patients with 3-6 studies, some followed across the window boundary; a
    calibration study leaves its own patient out, one study per patient calibrates and one per
    patient is counted. Reference 100 studies (about 45 patients) with windows of 100, and
    3,000 (about 1,350 patients) with windows of 300. Measured over 200 runs: 0.035 and 0.045."""

    def make(rng):
        return repeat_study_windows(rng, n_reference, 64, n_current=n_current, repeat_share=0.3)

    rate = alarm_rate(make, runs=200, grouped=True)
    assert BAND[0] <= rate <= BAND[1]


def test_novelty_alpha_follows_the_reference_size():
    rng = np.random.default_rng(0)
    assert default_novelty_alpha(50) == pytest.approx(2 / 51)
    assert default_novelty_alpha(199) == pytest.approx(0.01)
    assert default_novelty_alpha(5000) == 0.01
    detector = NoveltyDrift().fit(rng.normal(size=(50, 8)))
    assert detector.novelty_alpha_ == pytest.approx(2 / 51)
    assert detector.null_beta_ == (1, 50)  # novel only beyond every calibration score
    result = detector.test(rng.normal(size=(40, 8)))
    assert result.details["novelty_alpha"] == pytest.approx(2 / 51)
    assert result.details["n_calibration"] == 50
    groups = np.repeat(np.arange(30), 2)  # 60 studies, 30 patients: 30 calibrate
    grouped = NoveltyDrift().fit(rng.normal(size=(60, 8)), groups=groups)
    assert grouped.n_calibration_ == 30
    assert grouped.novelty_alpha_ == pytest.approx(2 / 31)
    assert NoveltyDrift(novelty_alpha=0.05).fit(rng.normal(size=(50, 8))).novelty_alpha_ == 0.05


def test_calibration_leaves_out_the_own_patient():
    """Each patient has three near-identical studies. Left in, the twins would make every
    calibration score tiny and every new patient novel; left out, a new patient's study is
    scored like a reference patient's, against the other patients."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(40, 8))
    reference = np.repeat(base, 3, axis=0) + 0.01 * rng.normal(size=(120, 8))
    groups = np.repeat(np.arange(40), 3)
    new_patients = rng.normal(size=(200, 8))
    by_study = NoveltyDrift(pca_components=None, k=2).fit(reference)
    by_patient = NoveltyDrift(pca_components=None, k=2).fit(reference, groups=groups)
    assert np.mean(by_study.study_p_values(new_patients) < by_study.novelty_alpha_) > 0.9
    p_values = by_patient.study_p_values(new_patients)
    assert np.mean(p_values < by_patient.novelty_alpha_) < 0.1
    assert 0.3 < np.mean(p_values) < 0.7
    # A known patient's new study is scored against the other patients, not its twins.
    twins = base[:5] + 0.01 * rng.normal(size=(5, 8))
    assert np.all(by_patient.study_p_values(twins) == 1.0)
    assert np.all(by_patient.study_p_values(twins, groups=np.arange(5)) < 1.0)


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
    assert details["expected"] == pytest.approx(60 * 10 / 1001)
    assert details["null"] == "beta-binomial(n=60, a=10, b=991)"
    assert details["p_value_novel"] == pytest.approx(
        betabinom.sf(result.statistic - 1, 60, 10, 991)
    )
    # The two shifted studies lie beyond every calibration score: 2 where 0.06 are expected.
    assert details["n_beyond_reference"] >= 2
    assert details["p_value_beyond_reference"] == pytest.approx(
        betabinom.sf(details["n_beyond_reference"] - 1, 60, 1, 1000)
    )
    smaller = min(details["p_value_novel"], details["p_value_beyond_reference"])
    assert smaller <= result.p_value <= 2 * smaller
    assert result.detector == "NoveltyDrift"
    assert result.n_current == 60 and result.n_reference == 1000


def test_contract_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(NotFittedError, match="NoveltyDrift is not fitted"):
        NoveltyDrift().test(rng.normal(size=(10, 4)))
    with pytest.raises(NotFittedError):
        NoveltyDrift().study_p_values(rng.normal(size=(10, 4)))
    with pytest.raises(InsufficientDataError, match=r"60 calibration studies.*at least 100"):
        NoveltyDrift(novelty_alpha=0.01).fit(rng.normal(size=(60, 4)))
    with pytest.raises(InsufficientDataError, match=r"19 studies.*at least 20"):
        NoveltyDrift().fit(rng.normal(size=(19, 4)))
    crowded = ["a"] * 40 + [f"p{i}" for i in range(29)]
    with pytest.raises(InsufficientDataError, match=r"29 studies outside its largest patient"):
        NoveltyDrift(k=30).fit(rng.normal(size=(69, 4)), groups=crowded)
    with pytest.warns(DeprecationWarning, match="calibration_fraction"):
        NoveltyDrift(calibration_fraction=0.3)
    detector = NoveltyDrift().fit(rng.normal(size=(50, 4)))
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


def inverted_window_outcomes(
    embeddings, inverted, *, n_reference: int, runs: int, groups=None
) -> tuple[float, float]:
    """Per seed: a reference of ``n_reference`` images, a window of 100 others with 5 of them
    replaced by their inverted versions. Returns the share of alarmed windows and the share
    of inverted studies flagged novel."""
    alarms = found = 0
    for run in range(runs):
        rng = np.random.default_rng(run)
        order = rng.permutation(len(embeddings))
        reference, window_rows = order[:n_reference], order[n_reference : n_reference + 100]
        window = embeddings[window_rows].copy()
        replaced = rng.choice(100, 5, replace=False)
        window[replaced] = inverted[window_rows[replaced]]
        g_ref = None if groups is None else groups[reference]
        g_win = None if groups is None else groups[window_rows]
        result = NoveltyDrift(seed=run).fit(embeddings[reference], groups=g_ref)
        result = result.test(window, groups=g_win)
        alarms += result.drift
        found += len(set(replaced) & set(result.details["novel_indices"]))
    return alarms / runs, found / (5 * runs)


@pytest.mark.parametrize("n_reference", [200, 500])
def test_inverted_images_alarm_the_window_on_small_references(pneumonia_images, n_reference):
    """PneumoniaMNIST, references of 200 and 500 images, windows of 100 with 5 inverted.
    Measured over 100 seeds: alarms in 0.98 (200) and 1.0 (500) of windows, flagging 0.99 and
    1.0 of the inverted studies."""
    embeddings = embed_images(pneumonia_images)
    inverted = embed_images(255 - pneumonia_images)
    power, found = inverted_window_outcomes(embeddings, inverted, n_reference=n_reference, runs=100)
    assert power >= 0.8
    assert found >= 0.9


def test_inverted_nih_images_with_repeat_patients(nih_images):
    """NIH ChestX-ray14 (264 patients, up to 66 studies each), reference 500 studies (about
    185 patients), windows of 100 studies (about 60 patients, one study each counted, so
    about 3 of the 5 inverted studies count). Measured over 100 seeds: alarms in 0.81 of
    windows (0.66 with 200-study references), 0.99 of the inverted studies flagged."""
    images, patients = nih_images
    power, found = inverted_window_outcomes(
        embed_images(images),
        embed_images(255 - images),
        n_reference=500,
        runs=100,
        groups=patients,
    )
    assert power >= 0.7
    assert found >= 0.9


def test_combined_count_p_value_is_valid_under_its_model():
    """Draw the masses the calibration scores leave above them from their Dirichlet law, then
    the window's counts. The smaller of the two counts' p-values, referred to its null law, is
    a valid p-value (P(p <= t) <= t, less where the counts are discrete: 150 studies against
    1,000 calibration scores expect 0.15 beyond them); the plain minimum would not be (0.27 at
    t = 0.2 in 1,500 draws, against 0.17 here, 0.08 for 2 x min)."""
    from monitor.detect.novelty import _min_p_value

    rng = np.random.default_rng(11)
    n, n_cal, most_above = 150, 1000, 9
    combined, plain = [], []
    for _ in range(600):
        q_beyond, q_between, _ = rng.dirichlet([1, most_above, n_cal - most_above])
        beyond, between, _ = rng.multinomial(n, [q_beyond, q_between, 1 - q_beyond - q_between])
        p_novel = betabinom.sf(beyond + between - 1, n, most_above + 1, n_cal - most_above)
        p_beyond = betabinom.sf(beyond - 1, n, 1, n_cal)
        plain.append(min(p_novel, p_beyond))
        combined.append(_min_p_value(plain[-1], n, n_cal, most_above=most_above))
    combined, plain = np.array(combined), np.array(plain)
    assert np.mean(combined <= 0.05) <= 0.05 + 0.025
    assert 0.12 <= np.mean(combined <= 0.2) <= 0.2 + 0.04
    assert np.mean(plain <= 0.2) > np.mean(combined <= 0.2)


def test_a_few_studies_off_every_principal_axis_lie_beyond_the_reference():
    """Three shifted studies among 1,300 carry too little variance to earn one of the 16
    principal axes, so in the principal coordinates alone none of them lies beyond the
    reference (0 to 1 of 3 found novel over 5 seeds). The distance from the principal
    subspace, one more coordinate of the score, puts all three beyond every calibration
    study, and the beyond count alarms where 0.3 are expected."""
    rng = np.random.default_rng(2)
    dims = 256
    scales = np.concatenate([np.full(16, 3.0), np.full(dims - 16, 0.5)])
    reference = rng.normal(size=(1000, dims)) * scales
    current = rng.normal(size=(300, dims)) * scales
    current[:3, -1] += 20.0
    result = NoveltyDrift(pca_components=16).fit(reference).test(current)
    assert {0, 1, 2} <= set(result.details["novel_indices"])
    assert result.details["n_beyond_reference"] >= 3
    assert result.p_value < 0.05 and result.drift
