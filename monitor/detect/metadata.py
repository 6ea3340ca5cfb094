"""Drift in DICOM scanner metadata: categorical fields (manufacturer, scanner model, site, view,
photometric interpretation, software version) and numeric fields (kVp, mAs, pixel spacing).

Inputs are 1-d sequences (lists, numpy arrays, pandas Series). Missing values (None, NaN, empty
strings, and for numbers anything that does not parse to a finite number) are left out of the
tests and counted in ``details``. ``groups`` are pseudonymised patient keys aligned with the
values; when given, repeat studies of one patient are treated as one cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

from monitor.detect.result import DetectionResult
from monitor.detect.stats import (
    cluster_codes,
    contingency_chi_square,
    permutation_two_sample,
)
from monitor.errors import InsufficientDataError, NotFittedError, ValidationError

OTHER = "__other__"
PSI_EPSILON = 1e-4


def as_categories(values: Sequence[Any] | np.ndarray | pd.Series, *, field: str) -> np.ndarray:
    """Values as an object array of stripped strings, None where missing."""
    items = np.array(values, dtype=object).ravel()
    codes, uniques = pd.factorize(items)  # missing values get code -1
    cleaned = [str(u).strip() for u in uniques]
    lookup = np.array([c if c else None for c in cleaned] + [None], dtype=object)
    return np.asarray(lookup[codes])


def as_numbers(
    values: Sequence[Any] | np.ndarray | pd.Series, *, field: str
) -> tuple[np.ndarray, int]:
    """Values as floats, NaN where missing; also how many present values did not parse."""
    series = pd.Series(np.asarray(values, dtype=object).ravel(), dtype=object)
    given = ~series.isna().to_numpy()
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    numbers[~np.isfinite(numbers)] = np.nan
    n_invalid = int(np.count_nonzero(given & np.isnan(numbers)))
    return numbers, n_invalid


def aligned_groups(
    groups: Sequence[Any] | np.ndarray | pd.Series | None, n: int, *, field: str
) -> np.ndarray | None:
    """Patient keys as an object array checked to match the values' length."""
    if groups is None:
        return None
    ids = np.asarray(groups, dtype=object).ravel()
    if ids.size != n:
        raise ValidationError(
            f"groups for {field} has length {ids.size}, values have length {n}", field="groups"
        )
    return ids


def new_categories(
    reference_values: Sequence[Any] | np.ndarray | pd.Series,
    current_values: Sequence[Any] | np.ndarray | pd.Series,
) -> dict[str, int]:
    """Values of the current window never seen in the reference, with their counts
    (most frequent first). Missing values are not categories."""
    seen = {v for v in as_categories(reference_values, field="reference") if v is not None}
    current = pd.Series(as_categories(current_values, field="current")).dropna()
    counts = current[~current.isin(seen)].value_counts()
    return {str(k): int(v) for k, v in counts.items()}


def _merge_sparse(
    categories: list[str], counts_ref: np.ndarray, counts_cur: np.ndarray, min_expected: float
) -> tuple[dict[str, int], list[str]]:
    """Column of each category after sparse categories are pooled into ``OTHER``.

    A category is sparse when its expected count in the smaller sample, under the null of one
    distribution, is below ``min_expected``. The pooled ``OTHER`` may stay somewhat sparse
    (Cochran's rule allows a few cells under 5); only while its expected count is below 1
    does the next smallest category join it (or until one other category is left).
    """
    n_ref, n_cur = counts_ref.sum(), counts_cur.sum()
    totals = counts_ref + counts_cur
    expected = totals * min(n_ref, n_cur) / (n_ref + n_cur)
    order = np.argsort(totals, kind="stable")
    merged = [categories[i] for i in order if expected[i] < min_expected]
    kept = [i for i in order if expected[i] >= min_expected]
    other_total = sum(totals[categories.index(c)] for c in merged)
    while merged and other_total * min(n_ref, n_cur) / (n_ref + n_cur) < 1.0:
        if len(kept) <= 1:
            break
        smallest = kept.pop(0)
        merged.append(categories[smallest])
        other_total += totals[smallest]
    columns = {categories[i]: j for j, i in enumerate(kept)}
    for category in merged:
        columns[category] = len(kept)
    return columns, merged


class CategoricalDrift:
    """Chi-square drift test for one categorical metadata field, with first-sight alarms.

    ``statistic`` is Pearson's X² of the 2×k table of reference counts against current counts,
    categories with an expected count below ``min_expected`` pooled into one ``__other__``
    column; ``p_value`` is its chi-square p-value. With patient keys (``groups``) on either
    side the p-value comes from the Rao–Scott second-order correction
    (:func:`monitor.detect.stats.contingency_chi_square`), so repeat studies of one patient,
    which share scanner and view, do not inflate the false-alarm rate.

    A category never seen in the reference (a new scanner model, software version or
    photometric value) is a finding on its own: the result's ``drift`` is True on first
    sight even when the chi-square is not significant, because one study from an unknown
    device is already something to look at. ``details["reason"]`` says which rule fired
    ("new_category" first, then "distribution"; None when neither did). Jensen–Shannon
    distance (base 2, in [0, 1]) and PSI (bins = categories, shares floored at 1e-4) are
    effect sizes in ``details``; ``psi_threshold`` only marks a large PSI there.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> reference = rng.choice(["GE", "Siemens", "Philips"], size=500)
    >>> current = np.r_[rng.choice(["GE", "Siemens", "Philips"], size=300), ["Canon"] * 3]
    >>> result = CategoricalDrift(feature="manufacturer").fit(reference).test(current)
    >>> result.drift, result.details["reason"], result.details["new_categories"]
    (True, 'new_category', {'Canon': 3})
    """

    def __init__(
        self,
        *,
        feature: str,
        alpha: float = 0.05,
        min_expected: float = 5.0,
        psi_threshold: float = 0.2,
    ):
        self.feature = feature
        self.alpha = alpha
        self.min_expected = min_expected
        self.psi_threshold = psi_threshold

    def fit(self, reference: Any, *, groups: Any = None) -> CategoricalDrift:
        values = as_categories(reference, field=self.feature)
        ids = aligned_groups(groups, values.size, field=self.feature)
        present = pd.notna(values)
        if not present.any():
            raise InsufficientDataError(f"reference for {self.feature} has no non-missing values")
        self.reference_ = values[present]
        self.reference_groups_ = None if ids is None else ids[present]
        self.n_missing_reference_ = int(values.size - present.sum())
        return self

    def test(self, current: Any, *, groups: Any = None) -> DetectionResult:
        if not hasattr(self, "reference_"):
            raise NotFittedError(f"CategoricalDrift for {self.feature} used before fit")
        values = as_categories(current, field=self.feature)
        ids = aligned_groups(groups, values.size, field=self.feature)
        present = pd.notna(values)
        cur = values[present]
        cur_ids = None if ids is None else ids[present]
        ref = self.reference_
        details: dict[str, Any] = {
            "family": "metadata",
            "n_missing_reference": self.n_missing_reference_,
            "n_missing_current": int(values.size - present.sum()),
            "min_expected": self.min_expected,
            "psi_threshold": self.psi_threshold,
            "psi_epsilon": PSI_EPSILON,
        }
        if cur.size == 0:
            details.update(status="insufficient data", new_categories={}, reason=None)
            return DetectionResult(
                "CategoricalDrift",
                self.feature,
                0.0,
                None,
                self.alpha,
                False,
                ref.size,
                0,
                details,
            )

        categories = sorted(set(ref) | set(cur))
        index = {c: i for i, c in enumerate(categories)}
        codes_ref = np.fromiter((index[v] for v in ref), dtype=np.int64, count=ref.size)
        codes_cur = np.fromiter((index[v] for v in cur), dtype=np.int64, count=cur.size)
        counts_ref = np.bincount(codes_ref, minlength=len(categories))
        counts_cur = np.bincount(codes_cur, minlength=len(categories))
        share_ref = counts_ref / ref.size
        share_cur = counts_cur / cur.size

        columns, merged = _merge_sparse(categories, counts_ref, counts_cur, self.min_expected)
        column_of = np.array([columns[c] for c in categories], dtype=np.int64)
        clustered = self.reference_groups_ is not None or cur_ids is not None
        clusters_ref = clusters_cur = None
        if clustered:
            clusters_ref, clusters_cur, _ = cluster_codes(
                self.reference_groups_, ref.size, cur_ids, cur.size
            )
        chi2 = contingency_chi_square(
            column_of[codes_ref],
            column_of[codes_cur],
            int(column_of.max()) + 1,
            clusters_reference=clusters_ref,
            clusters_current=clusters_cur,
        )

        unseen = {c: int(counts_cur[index[c]]) for c in categories if counts_ref[index[c]] == 0}
        unseen = dict(sorted(unseen.items(), key=lambda item: -item[1]))
        floored_ref = np.maximum(share_ref, PSI_EPSILON)
        floored_cur = np.maximum(share_cur, PSI_EPSILON)
        psi = float(np.sum((floored_cur - floored_ref) * np.log(floored_cur / floored_ref)))
        significant = chi2.p_value < self.alpha
        reason = "new_category" if unseen else ("distribution" if significant else None)
        details.update(
            status="ok",
            test=chi2.method,
            df=chi2.df,
            chi2_scale=chi2.scale,
            design_effect=chi2.design_effect,
            clustered=clustered,
            merged_categories=merged,
            jensen_shannon=float(jensenshannon(share_ref, share_cur, base=2)),
            psi=psi,
            psi_exceeds_threshold=psi > self.psi_threshold,
            new_categories=unseen,
            chi2_significant=significant,
            reason=reason,
            counts={
                c: {"reference": int(counts_ref[i]), "current": int(counts_cur[i])}
                for i, c in enumerate(categories)
            },
        )
        return DetectionResult(
            detector="CategoricalDrift",
            feature=self.feature,
            statistic=chi2.statistic,
            p_value=chi2.p_value,
            threshold=self.alpha,
            drift=bool(unseen) or significant,
            n_reference=int(ref.size),
            n_current=int(cur.size),
            details=details,
        )


def robust_scale(values: np.ndarray) -> tuple[float, str]:
    """Spread used to express a Wasserstein distance in reference units: the interquartile
    range, or the standard deviation when the IQR is 0 (a field with one dominant value),
    or 1.0 when the reference is constant."""
    q25, q75 = np.percentile(values, [25, 75])
    if q75 > q25:
        return float(q75 - q25), "iqr"
    std = float(np.std(values))
    if std > 0:
        return std, "std"
    return 1.0, "none"


class NumericDrift:
    """Two-sample drift test for one numeric field (kVp, mAs, pixel spacing, a score).

    ``method="ks"``: the statistic is the two-sample Kolmogorov–Smirnov D. Its p-value comes
    from scipy's ``ks_2samp`` when studies are independent and values have no ties; otherwise
    from a permutation test: by study when values tie (kVp and pixel spacing take few distinct
    values, where the classical KS p-value is conservative), by patient when ``groups`` are
    given (see :func:`monitor.detect.stats.permutation_two_sample`).

    ``method="wasserstein"``: the statistic is the Wasserstein-1 distance divided by the
    reference spread (:func:`robust_scale`: IQR, else standard deviation), so 0.5 means the
    distribution moved by about half an interquartile range; its p-value always comes from
    the permutation test. Both distances are in ``details`` whichever method tests.
    The test used, the permutations and the seed are recorded in ``details``.
    """

    def __init__(
        self,
        *,
        feature: str,
        alpha: float = 0.05,
        method: Literal["ks", "wasserstein"] = "ks",
        n_permutations: int = 1000,
        seed: int = 0,
    ):
        self.feature = feature
        self.alpha = alpha
        self.method = method
        self.n_permutations = n_permutations
        self.seed = seed

    def fit(self, reference: Any, *, groups: Any = None) -> NumericDrift:
        if self.method not in ("ks", "wasserstein"):
            raise ValidationError(
                f"NumericDrift method {self.method!r} is not 'ks' or 'wasserstein'",
                field="method",
            )
        values, n_invalid = as_numbers(reference, field=self.feature)
        ids = aligned_groups(groups, values.size, field=self.feature)
        present = ~np.isnan(values)
        if not present.any():
            raise InsufficientDataError(f"reference for {self.feature} has no numeric values")
        self.reference_ = values[present]
        self.reference_groups_ = None if ids is None else ids[present]
        self.n_missing_reference_ = int(values.size - present.sum())
        self.n_invalid_reference_ = n_invalid
        self.scale_, self.scale_method_ = robust_scale(self.reference_)
        return self

    def test(self, current: Any, *, groups: Any = None) -> DetectionResult:
        if not hasattr(self, "reference_"):
            raise NotFittedError(f"NumericDrift for {self.feature} used before fit")
        values, n_invalid = as_numbers(current, field=self.feature)
        ids = aligned_groups(groups, values.size, field=self.feature)
        present = ~np.isnan(values)
        cur = values[present]
        cur_ids = None if ids is None else ids[present]
        ref = self.reference_
        details: dict[str, Any] = {
            "family": "metadata",
            "method": self.method,
            "n_missing_reference": self.n_missing_reference_,
            "n_missing_current": int(values.size - present.sum()),
            "n_invalid_reference": self.n_invalid_reference_,
            "n_invalid_current": n_invalid,
            "scale": self.scale_,
            "scale_method": self.scale_method_,
            "reference_quantiles": _quantiles(ref),
        }
        if cur.size == 0:
            details.update(status="insufficient data")
            return DetectionResult(
                "NumericDrift", self.feature, 0.0, None, self.alpha, False, ref.size, 0, details
            )

        clustered = self.reference_groups_ is not None or cur_ids is not None
        has_ties = np.unique(np.concatenate([ref, cur])).size < ref.size + cur.size
        ks = stats.ks_2samp(ref, cur)
        wasserstein = float(stats.wasserstein_distance(ref, cur))
        if self.method == "ks" and not clustered and not has_ties:
            p_value = float(ks.pvalue)
            p_value_method = "scipy ks_2samp"
        else:
            permutation = permutation_two_sample(
                ref,
                cur,
                statistic=self.method,
                units_reference=self.reference_groups_ if clustered else None,
                units_current=cur_ids if clustered else None,
                n_permutations=self.n_permutations,
                rng=np.random.default_rng(self.seed),
            )
            p_value = permutation.p_value
            p_value_method = f"{permutation.unit}-level permutation"
            details.update(n_permutations=self.n_permutations, seed=self.seed)
        statistic = float(ks.statistic) if self.method == "ks" else wasserstein / self.scale_
        details.update(
            status="ok",
            p_value_method=p_value_method,
            clustered=clustered,
            has_ties=bool(has_ties),
            ks_statistic=float(ks.statistic),
            wasserstein=wasserstein,
            wasserstein_normalised=wasserstein / self.scale_,
            current_quantiles=_quantiles(cur),
        )
        return DetectionResult(
            detector="NumericDrift",
            feature=self.feature,
            statistic=statistic,
            p_value=p_value,
            threshold=self.alpha,
            drift=p_value < self.alpha,
            n_reference=int(ref.size),
            n_current=int(cur.size),
            details=details,
        )


def _quantiles(values: np.ndarray) -> dict[str, float]:
    q = np.percentile(values, [5, 25, 50, 75, 95])
    return {f"p{p}": float(v) for p, v in zip((5, 25, 50, 75, 95), q, strict=True)}
