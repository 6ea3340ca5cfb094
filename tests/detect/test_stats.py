"""The shared statistics against textbook definitions and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from monitor.detect.stats import (
    benjamini_hochberg,
    cluster_codes,
    clustered_two_proportion_test,
    contingency_chi_square,
    permutation_two_sample,
    two_proportion_test,
    wilson_interval,
)
from monitor.errors import InsufficientDataError


def test_wilson_interval_known_values_and_edges():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4)
    assert high == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0
    assert wilson_interval(20, 20)[1] == 1.0
    assert 0 < wilson_interval(0, 20)[1] < 0.2
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_coverage_is_near_nominal():
    # Exact coverage from the binomial distribution, averaged over a grid of true rates.
    n = 60
    coverages = []
    for p in np.linspace(0.05, 0.95, 37):
        k = np.arange(n + 1)
        inside = np.array([lo <= p <= hi for lo, hi in (wilson_interval(i, n) for i in k)])
        coverages.append(stats.binom.pmf(k, n, p)[inside].sum())
    assert 0.935 <= float(np.mean(coverages)) <= 0.965
    assert min(coverages) >= 0.90


def test_two_proportion_z_squared_is_the_uncorrected_chi_square():
    result = two_proportion_test(30, 200, 45, 210)
    table = np.array([[30, 170], [45, 165]])
    chi2 = stats.chi2_contingency(table, correction=False)
    assert result.z**2 == pytest.approx(chi2.statistic)
    assert result.p_value == pytest.approx(chi2.pvalue)
    assert result.difference == pytest.approx(45 / 210 - 30 / 200)
    greater = two_proportion_test(30, 200, 45, 210, alternative="greater")
    less = two_proportion_test(30, 200, 45, 210, alternative="less")
    assert greater.p_value == pytest.approx(result.p_value / 2)
    assert greater.p_value + less.p_value == pytest.approx(1.0)
    with pytest.raises(InsufficientDataError):
        two_proportion_test(0, 0, 3, 10)


def test_clustered_test_with_one_study_per_cluster_is_the_plain_test():
    rng = np.random.default_rng(3)
    y_ref = (rng.random(3000) < 0.2).astype(float)
    y_cur = (rng.random(1000) < 0.23).astype(float)
    c_ref, c_cur, n_clusters = cluster_codes(None, y_ref.size, None, y_cur.size)
    assert n_clusters == 4000
    clustered = clustered_two_proportion_test(
        y_ref, y_cur, clusters_reference=c_ref, clusters_current=c_cur
    )
    plain = two_proportion_test(int(y_ref.sum()), 3000, int(y_cur.sum()), 1000)
    assert clustered.design_effect == pytest.approx(1.0, abs=0.01)
    assert clustered.z == pytest.approx(plain.z, rel=0.01)


def test_clustered_test_sees_the_design_effect_of_whole_clusters():
    # Every patient has 4 identical studies: the variance is 4 times the independent one.
    rng = np.random.default_rng(4)
    y_ref = np.repeat((rng.random(500) < 0.3).astype(float), 4)
    y_cur = np.repeat((rng.random(200) < 0.3).astype(float), 4)
    c_ref, c_cur, _ = cluster_codes(
        np.repeat(np.arange(500), 4), y_ref.size, np.repeat(np.arange(500, 700), 4), y_cur.size
    )
    result = clustered_two_proportion_test(
        y_ref, y_cur, clusters_reference=c_ref, clusters_current=c_cur
    )
    assert 3.3 <= result.design_effect <= 4.7


def test_cluster_codes_share_patients_across_samples_and_split_missing_ids():
    c_ref, c_cur, n = cluster_codes(["a", "b", None, None], 4, ["b", "c"], 2)
    assert c_ref[1] == c_cur[0]
    assert len({*c_ref, *c_cur}) == n == 5
    assert c_ref[2] != c_ref[3]


def test_benjamini_hochberg_matches_scipy():
    rng = np.random.default_rng(5)
    p = np.r_[rng.random(40), rng.random(10) * 1e-3]
    q = benjamini_hochberg(p)
    np.testing.assert_allclose(q, stats.false_discovery_control(p, method="bh"))
    assert np.all(q >= p)
    assert benjamini_hochberg([]).size == 0


def test_chi_square_without_clusters_is_scipys_pearson_test():
    rng = np.random.default_rng(6)
    ref = rng.choice(4, 800, p=[0.4, 0.3, 0.2, 0.1])
    cur = rng.choice(4, 300, p=[0.35, 0.3, 0.2, 0.15])
    result = contingency_chi_square(ref, cur, 4)
    table = np.vstack([np.bincount(ref, minlength=4), np.bincount(cur, minlength=4)])
    expected = stats.chi2_contingency(table, correction=False)
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)


def test_rao_scott_with_one_study_per_cluster_is_close_to_pearson():
    rng = np.random.default_rng(7)
    ref = rng.choice(4, 3000, p=[0.4, 0.3, 0.2, 0.1])
    cur = rng.choice(4, 1000, p=[0.4, 0.3, 0.2, 0.1])
    c_ref, c_cur, _ = cluster_codes(None, ref.size, None, cur.size)
    result = contingency_chi_square(ref, cur, 4, clusters_reference=c_ref, clusters_current=c_cur)
    assert result.scale == pytest.approx(1.0, abs=0.1)
    assert result.df == pytest.approx(3.0, abs=0.3)
    assert result.design_effect == pytest.approx(1.0, abs=0.1)


def test_permutation_ks_agrees_with_scipy_and_handles_ties():
    rng = np.random.default_rng(8)
    ref, cur = rng.normal(size=400), rng.normal(0.15, 1, size=200)
    result = permutation_two_sample(
        ref, cur, statistic="ks", n_permutations=2000, rng=np.random.default_rng(0)
    )
    scipy_result = stats.ks_2samp(ref, cur)
    assert result.statistic == pytest.approx(scipy_result.statistic)
    assert abs(result.p_value - scipy_result.pvalue) < 0.03
    tied_ref, tied_cur = rng.choice([100.0, 110.0, 120.0], 300), rng.choice([110.0, 125.0], 90)
    tied = permutation_two_sample(
        tied_ref, tied_cur, statistic="ks", n_permutations=10, rng=np.random.default_rng(0)
    )
    assert tied.statistic == pytest.approx(stats.ks_2samp(tied_ref, tied_cur).statistic)


def test_permutation_wasserstein_statistic_is_scipys_distance():
    rng = np.random.default_rng(9)
    ref, cur = rng.gamma(2.0, size=300), rng.gamma(2.0, size=120)
    result = permutation_two_sample(
        ref, cur, statistic="wasserstein", n_permutations=50, rng=np.random.default_rng(0)
    )
    assert result.statistic == pytest.approx(stats.wasserstein_distance(ref, cur))
    assert 1 / 51 <= result.p_value <= 1.0


def test_identical_samples_give_p_value_one():
    values = np.arange(50.0)
    result = permutation_two_sample(
        values, values.copy(), statistic="ks", n_permutations=99, rng=np.random.default_rng(0)
    )
    assert result.statistic == pytest.approx(0.0, abs=1e-12)
    assert result.p_value == 1.0
