"""Drift in what the model outputs: the distribution of one finding's score, and the share of
studies called positive."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from monitor.detect.metadata import NumericDrift, aligned_groups
from monitor.detect.result import DetectionResult
from monitor.detect.stats import (
    cluster_codes,
    clustered_two_proportion_test,
    two_proportion_test,
    wilson_interval,
)
from monitor.errors import InsufficientDataError, NotFittedError, ValidationError


def as_flags(values: Sequence[Any] | np.ndarray | pd.Series, *, field: str) -> np.ndarray:
    """Booleans (True/False or 1/0) as floats 1.0/0.0, NaN where missing (None, NaN)."""
    items = np.array(values, dtype=object).ravel()
    missing = pd.isna(items)
    items[missing] = None  # pd.NA == 1 would be NA, which has no truth value
    # Elementwise ==: True == 1 and False == 0, so 1/0, 1.0/0.0 and numpy booleans count too.
    is_true = np.asarray(items == 1, dtype=bool)
    is_false = np.asarray(items == 0, dtype=bool)
    flags = np.where(is_true, 1.0, np.where(is_false, 0.0, np.nan))
    invalid = np.flatnonzero(~missing & ~is_true & ~is_false)
    if invalid.size:
        i = int(invalid[0])
        raise ValidationError(
            f"{field} has value {items[i]!r} at position {i}; expected True/False",
            field=field,
            index=i,
        )
    return flags


class ScoreDrift:
    """KS drift test on the score distribution of one finding (``feature`` names the finding).

    The same test as :class:`monitor.detect.metadata.NumericDrift` with ``method="ks"``
    (scipy's KS p-value for independent, untied scores; a study- or patient-level permutation
    test otherwise), reported under the prediction family.
    """

    def __init__(
        self,
        *,
        feature: str,
        alpha: float = 0.05,
        n_permutations: int = 1000,
        seed: int = 0,
    ):
        self.feature = feature
        self.alpha = alpha
        self.n_permutations = n_permutations
        self.seed = seed

    def fit(self, reference: Any, *, groups: Any = None) -> ScoreDrift:
        self.numeric_ = NumericDrift(
            feature=self.feature,
            alpha=self.alpha,
            method="ks",
            n_permutations=self.n_permutations,
            seed=self.seed,
        ).fit(reference, groups=groups)
        return self

    def test(self, current: Any, *, groups: Any = None) -> DetectionResult:
        if not hasattr(self, "numeric_"):
            raise NotFittedError(f"ScoreDrift for {self.feature} used before fit")
        result = self.numeric_.test(current, groups=groups)
        return dataclasses.replace(
            result, detector="ScoreDrift", details={**result.details, "family": "prediction"}
        )


class PositiveRateDrift:
    """Has the share of studies the model calls positive moved from the baseline?

    Two-sided pooled two-proportion z-test of the current positive rate against the
    reference rate; with patient keys (``groups``) on either side, the cluster-robust
    version (:func:`monitor.detect.stats.clustered_two_proportion_test`). ``statistic`` is
    the difference current − reference; ``details`` carry both rates with Wilson intervals.
    """

    def __init__(self, *, alpha: float = 0.05, feature: str = "positive_rate"):
        self.alpha = alpha
        self.feature = feature

    def fit(self, reference: Any, *, groups: Any = None) -> PositiveRateDrift:
        flags = as_flags(reference, field=self.feature)
        ids = aligned_groups(groups, flags.size, field=self.feature)
        present = ~np.isnan(flags)
        if not present.any():
            raise InsufficientDataError(f"reference for {self.feature} has no predictions")
        self.reference_ = flags[present]
        self.reference_groups_ = None if ids is None else ids[present]
        self.n_missing_reference_ = int(flags.size - present.sum())
        return self

    def test(self, current: Any, *, groups: Any = None) -> DetectionResult:
        if not hasattr(self, "reference_"):
            raise NotFittedError(f"PositiveRateDrift for {self.feature} used before fit")
        flags = as_flags(current, field=self.feature)
        ids = aligned_groups(groups, flags.size, field=self.feature)
        present = ~np.isnan(flags)
        cur = flags[present]
        cur_ids = None if ids is None else ids[present]
        ref = self.reference_
        positives_ref, positives_cur = int(ref.sum()), int(cur.sum())
        details: dict[str, Any] = {
            "family": "prediction",
            "n_missing_reference": self.n_missing_reference_,
            "n_missing_current": int(flags.size - present.sum()),
            "reference_rate": positives_ref / ref.size,
            "reference_ci": wilson_interval(positives_ref, ref.size),
            "ci_method": "wilson 95%",
            "alternative": "two-sided",
        }
        if cur.size == 0:
            details.update(status="insufficient data", current_rate=None, current_ci=None)
            return DetectionResult(
                "PositiveRateDrift",
                self.feature,
                0.0,
                None,
                self.alpha,
                False,
                ref.size,
                0,
                details,
            )
        clustered = self.reference_groups_ is not None or cur_ids is not None
        if clustered:
            clusters_ref, clusters_cur, _ = cluster_codes(
                self.reference_groups_, ref.size, cur_ids, cur.size
            )
            test = clustered_two_proportion_test(
                ref, cur, clusters_reference=clusters_ref, clusters_current=clusters_cur
            )
        else:
            test = two_proportion_test(positives_ref, ref.size, positives_cur, cur.size)
        details.update(
            status="ok",
            current_rate=positives_cur / cur.size,
            current_ci=wilson_interval(positives_cur, cur.size),
            z=test.z,
            test=test.method,
            design_effect=test.design_effect,
            clustered=clustered,
        )
        return DetectionResult(
            detector="PositiveRateDrift",
            feature=self.feature,
            statistic=test.difference,
            p_value=test.p_value,
            threshold=self.alpha,
            drift=test.p_value < self.alpha,
            n_reference=int(ref.size),
            n_current=int(cur.size),
            details=details,
        )
