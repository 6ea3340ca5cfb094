"""Small statistics the detectors share.

Wilson intervals, two-proportion tests (plain and cluster-robust), Benjamini–Hochberg q-values,
a Rao–Scott corrected chi-square for a 2×k table, and a permutation test of the two-sample KS
and Wasserstein statistics that can permute whole patients.

Why clusters: a window holds several studies of one patient (ICU follow-ups, daily films) whose
scanner, view, features and scores are alike. Tests that treat studies as independent then
under-estimate the variance and raise false alarms far above their nominal level. Every test
here takes optional cluster ids (pseudonymised patient keys); without them each study is its
own cluster and the tests reduce to their textbook forms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from monitor.detect.result import permutation_p_value
from monitor.errors import InsufficientDataError

Alternative = Literal["two-sided", "greater", "less"]
TwoSampleStatistic = Literal["ks", "wasserstein"]


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion; (0, 1) when ``n`` is 0.

    Unlike the Wald interval it stays inside [0, 1] and keeps its coverage near 0 and 1,
    where sensitivities and override rates live.
    """
    if n <= 0:
        return (0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half_width = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes <= 0 else max(0.0, float(centre - half_width))
    high = 1.0 if successes >= n else min(1.0, float(centre + half_width))
    return (low, high)


def _p_from_z(z: float, alternative: Alternative) -> float:
    if alternative == "greater":
        return float(stats.norm.sf(z))
    if alternative == "less":
        return float(stats.norm.cdf(z))
    return float(2 * stats.norm.sf(abs(z)))


@dataclass(frozen=True)
class ProportionTest:
    """A comparison of a current proportion with a reference proportion.

    ``z`` is positive when the current rate is higher. ``design_effect`` is the ratio of the
    cluster-robust variance of the difference to its independent-studies variance (1.0 when no
    clusters were given).
    """

    z: float
    p_value: float
    rate_reference: float
    rate_current: float
    design_effect: float
    method: str

    @property
    def difference(self) -> float:
        return self.rate_current - self.rate_reference


def two_proportion_test(
    successes_reference: int,
    n_reference: int,
    successes_current: int,
    n_current: int,
    *,
    alternative: Alternative = "two-sided",
) -> ProportionTest:
    """Pooled two-proportion z-test (the score test): the variance is taken under the null of
    one common rate, which keeps its level better than the Wald form at small counts."""
    if n_reference <= 0 or n_current <= 0:
        raise InsufficientDataError(
            f"two-proportion test needs both samples: n_reference={n_reference}, "
            f"n_current={n_current}"
        )
    p_ref = successes_reference / n_reference
    p_cur = successes_current / n_current
    pooled = (successes_reference + successes_current) / (n_reference + n_current)
    variance = pooled * (1 - pooled) * (1 / n_reference + 1 / n_current)
    z = 0.0 if variance <= 0 else (p_cur - p_ref) / np.sqrt(variance)
    return ProportionTest(
        z=float(z),
        p_value=_p_from_z(float(z), alternative),
        rate_reference=float(p_ref),
        rate_current=float(p_cur),
        design_effect=1.0,
        method="pooled two-proportion z-test",
    )


def cluster_codes(
    clusters_reference: Sequence[object] | np.ndarray | None,
    n_reference: int,
    clusters_current: Sequence[object] | np.ndarray | None,
    n_current: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer cluster codes for both samples in one namespace.

    A patient present in both samples gets one code, so the covariance between the two
    samples' means is part of the variance. A sample without ids, and a study whose id is
    missing, is one cluster per study.
    """

    given = [
        np.asarray(c, dtype=object).ravel()
        for c in (clusters_reference, clusters_current)
        if c is not None
    ]
    shared = pd.factorize(np.concatenate(given))[0] if given else np.empty(0, dtype=np.int64)
    next_code = int(shared.max()) + 1 if shared.size else 0
    missing = shared < 0  # a missing key: a patient of its own
    shared[missing] = next_code + np.arange(int(missing.sum()))
    next_code += int(missing.sum())
    if clusters_reference is None:
        ref = next_code + np.arange(n_reference)
        next_code += n_reference
    else:
        ref = shared[:n_reference]
    if clusters_current is None:
        cur = next_code + np.arange(n_current)
        next_code += n_current
    else:
        cur = shared[shared.size - n_current :]
    return ref.astype(np.int64), cur.astype(np.int64), next_code


def clustered_two_proportion_test(
    outcome_reference: np.ndarray,
    outcome_current: np.ndarray,
    *,
    clusters_reference: np.ndarray,
    clusters_current: np.ndarray,
    alternative: Alternative = "two-sided",
) -> ProportionTest:
    """Two-proportion test with a cluster-robust (sandwich) variance: a first-order Rao–Scott
    correction of the pooled z-test.

    ``clusters_*`` are integer codes from :func:`cluster_codes`. The difference of the two
    means is linearised per study, the influences are summed per cluster, and the variance is
    ``C/(C-1) * sum(u_c**2)``. Its ratio to the independent-studies variance is the design
    effect, which then scales the pooled null variance; with one study per cluster the design
    effect is close to 1 and the test is the pooled z-test.
    """
    y_ref = np.asarray(outcome_reference, dtype=float)
    y_cur = np.asarray(outcome_current, dtype=float)
    n_ref, n_cur = y_ref.size, y_cur.size
    if n_ref == 0 or n_cur == 0:
        raise InsufficientDataError(
            f"two-proportion test needs both samples: n_reference={n_ref}, n_current={n_cur}"
        )
    p_ref, p_cur = float(y_ref.mean()), float(y_cur.mean())
    codes = np.concatenate([clusters_reference, clusters_current])
    influence = np.concatenate([-(y_ref - p_ref) / n_ref, (y_cur - p_cur) / n_cur])
    n_clusters = int(np.unique(codes).size)
    per_cluster = np.bincount(codes, weights=influence)
    robust = (
        n_clusters / (n_clusters - 1) * float(np.sum(per_cluster**2)) if n_clusters > 1 else 0.0
    )
    independent = p_ref * (1 - p_ref) / n_ref + p_cur * (1 - p_cur) / n_cur
    design_effect = robust / independent if independent > 0 else 1.0
    pooled = (y_ref.sum() + y_cur.sum()) / (n_ref + n_cur)
    variance = pooled * (1 - pooled) * (1 / n_ref + 1 / n_cur) * design_effect
    z = 0.0 if variance <= 0 else (p_cur - p_ref) / np.sqrt(variance)
    return ProportionTest(
        z=float(z),
        p_value=_p_from_z(float(z), alternative),
        rate_reference=p_ref,
        rate_current=p_cur,
        design_effect=float(design_effect),
        method="cluster-robust two-proportion z-test (Rao-Scott first order)",
    )


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values (step-up adjusted p-values), in the input order.

    Rejecting every hypothesis with q < fdr keeps the expected share of false findings among
    the findings at most ``fdr`` (for independent or positively dependent tests).
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(q_sorted, 1.0)
    return q


@dataclass(frozen=True)
class ChiSquareTest:
    """A 2×k contingency chi-square. ``statistic`` is always Pearson's X²; with clusters the
    p-value comes from its Rao–Scott second-order (Satterthwaite) null distribution
    ``scale * chi2(df)``."""

    statistic: float
    p_value: float
    df: float
    scale: float
    design_effect: float
    method: str


def contingency_chi_square(
    codes_reference: np.ndarray,
    codes_current: np.ndarray,
    n_categories: int,
    *,
    clusters_reference: np.ndarray | None = None,
    clusters_current: np.ndarray | None = None,
) -> ChiSquareTest:
    """Chi-square test that two samples of category codes (0..k-1) share one distribution.

    Without clusters: Pearson's X² on the 2×k table against chi2(k-1).

    With clusters (patient ids): X² equals ``d' A d`` for the difference of the two category
    share vectors ``d`` and ``A = diag(1/pi) / (1/n_ref + 1/n_cur)``. Under clustering ``d`` has
    the cluster-robust covariance ``V`` (per-study linearisation summed per cluster), so X² is
    distributed as a weighted sum of chi2(1) with weights the eigenvalues of ``A V``. The
    Rao–Scott second-order correction matches its mean and variance with ``c * chi2(nu)``,
    ``c = tr((AV)^2)/tr(AV)``, ``nu = tr(AV)^2/tr((AV)^2)``. ``design_effect`` is the mean
    eigenvalue ``tr(AV)/(k-1)``.
    """
    n_ref, n_cur = codes_reference.size, codes_current.size
    counts_ref = np.bincount(codes_reference, minlength=n_categories).astype(float)
    counts_cur = np.bincount(codes_current, minlength=n_categories).astype(float)
    keep = (counts_ref + counts_cur) > 0
    counts_ref, counts_cur = counts_ref[keep], counts_cur[keep]
    k = int(keep.sum())
    if k < 2 or n_ref == 0 or n_cur == 0:
        return ChiSquareTest(0.0, 1.0, float(max(k - 1, 0)), 1.0, 1.0, "no test (one category)")
    table = np.vstack([counts_ref, counts_cur])
    x2 = float(stats.chi2_contingency(table, correction=False).statistic)
    if clusters_reference is None or clusters_current is None:
        return ChiSquareTest(
            statistic=x2,
            p_value=float(stats.chi2.sf(x2, k - 1)),
            df=float(k - 1),
            scale=1.0,
            design_effect=1.0,
            method="pearson chi-square",
        )
    remap = np.cumsum(keep) - 1
    onehot_ref = np.eye(k)[remap[codes_reference]]
    onehot_cur = np.eye(k)[remap[codes_current]]
    share_ref, share_cur = counts_ref / n_ref, counts_cur / n_cur
    pooled = (counts_ref + counts_cur) / (n_ref + n_cur)
    influence = np.vstack([-(onehot_ref - share_ref) / n_ref, (onehot_cur - share_cur) / n_cur])
    codes = np.concatenate([clusters_reference, clusters_current])
    n_clusters = int(np.unique(codes).size)
    per_cluster = np.zeros((int(codes.max()) + 1, k))
    np.add.at(per_cluster, codes, influence)
    if n_clusters < 2:
        return ChiSquareTest(x2, 1.0, float(k - 1), 1.0, 1.0, "no test (one cluster)")
    covariance = n_clusters / (n_clusters - 1) * per_cluster.T @ per_cluster
    weights = np.diag(1 / pooled) / (1 / n_ref + 1 / n_cur)
    product = weights @ covariance
    trace1 = float(np.trace(product))
    trace2 = float(np.trace(product @ product))
    if trace1 <= 0 or trace2 <= 0:
        return ChiSquareTest(x2, 1.0, float(k - 1), 1.0, 0.0, "rao-scott chi-square (no variance)")
    scale = trace2 / trace1
    df = trace1 * trace1 / trace2
    return ChiSquareTest(
        statistic=x2,
        p_value=float(stats.chi2.sf(x2 / scale, df)),
        df=float(df),
        scale=float(scale),
        design_effect=trace1 / (k - 1),
        method="rao-scott second-order chi-square",
    )


@dataclass(frozen=True)
class PermutationTest:
    """``statistic`` is the raw KS D or Wasserstein distance of the observed samples;
    ``p_value`` compares ``sqrt(n m / (n + m))`` times it with its permutation distribution."""

    statistic: float
    p_value: float
    n_permutations: int
    unit: str


def permutation_two_sample(
    values_reference: np.ndarray,
    values_current: np.ndarray,
    *,
    statistic: TwoSampleStatistic,
    units_reference: np.ndarray | None = None,
    units_current: np.ndarray | None = None,
    n_permutations: int = 1000,
    rng: np.random.Generator,
    chunk: int = 100,
) -> PermutationTest:
    """Permutation test of the KS or Wasserstein-1 statistic, by study or by patient.

    Units (patients) are permuted between the samples with all their studies, so studies of
    one patient stay together and the null distribution carries their correlation. A unit is
    a (sample, patient) pair: a patient seen in both samples brings two units, whose
    positively correlated values make the two samples alike, which can only make the test
    conservative. Sample sizes then vary between permutations, so the statistic compared is
    scaled by ``sqrt(n m / (n + m))``, whose null distribution hardly depends on n and m.

    Sorted once; each permutation is one row of a label matrix whose cumulative sums give both
    empirical distribution functions at every distinct value (ties handled exactly).
    """
    x_ref = np.asarray(values_reference, dtype=float)
    x_cur = np.asarray(values_current, dtype=float)
    n_ref, n_cur = x_ref.size, x_cur.size
    if n_ref == 0 or n_cur == 0:
        raise InsufficientDataError(
            f"permutation test needs both samples: n_reference={n_ref}, n_current={n_cur}"
        )
    # Units of each sample numbered apart (a missing patient key is a unit of its own).
    unit_ref = cluster_codes(units_reference, n_ref, None, 0)[0]
    unit_cur = cluster_codes(units_current, n_cur, None, 0)[0]
    n_units_ref = int(unit_ref.max()) + 1
    n_units_cur = int(unit_cur.max()) + 1
    unit_of_study = np.concatenate([unit_ref, unit_cur + n_units_ref])
    unit_is_current = np.concatenate([np.zeros(n_units_ref, bool), np.ones(n_units_cur, bool)])

    pooled = np.concatenate([x_ref, x_cur])
    order = np.argsort(pooled, kind="stable")
    sorted_values = pooled[order]
    unit_sorted = unit_of_study[order]
    block_end = np.flatnonzero(np.r_[sorted_values[1:] != sorted_values[:-1], True])
    gaps = np.diff(sorted_values[block_end])
    n_total = n_ref + n_cur

    cum_all = (block_end + 1).astype(float)

    def scaled_statistics(is_current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cum_cur = np.cumsum(is_current, axis=1, dtype=np.int32)[:, block_end]
        m = cum_cur[:, -1].astype(float)
        n = n_total - m
        # F_cur - F_ref = c/m - (j - c)/n = c (1/m + 1/n) - j/n at the j-th sorted value.
        diff = np.abs(cum_cur * (1 / m + 1 / n)[:, None] - cum_all[None, :] / n[:, None])
        raw = diff.max(axis=1) if statistic == "ks" else diff[:, :-1] @ gaps
        return raw, raw * np.sqrt(n * m / (n + m))

    observed_raw, observed_scaled = scaled_statistics(unit_is_current[unit_sorted][None, :])
    permuted = []
    remaining = n_permutations
    while remaining > 0:
        size = min(chunk, remaining)
        # A uniformly random set of n_units_cur units per row: the smallest random keys.
        keys = rng.random((size, unit_is_current.size))
        cut = np.partition(keys, n_units_cur - 1, axis=1)[:, n_units_cur - 1 : n_units_cur]
        permuted.append(scaled_statistics((keys <= cut)[:, unit_sorted])[1])
        remaining -= size
    null = np.concatenate(permuted) if permuted else np.empty(0)
    # Relative tolerance: a permutation equal to the observed split must count as >= observed.
    tolerance = 1e-10 * max(1.0, float(observed_scaled[0]))
    return PermutationTest(
        statistic=float(observed_raw[0]),
        p_value=permutation_p_value(float(observed_scaled[0]) - tolerance, null),
        n_permutations=n_permutations,
        unit="patient" if units_reference is not None or units_current is not None else "study",
    )
