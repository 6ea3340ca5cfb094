"""The one result type every detector returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class DetectionResult:
    """What a detector concluded about one feature (or subgroup) of one window.

    ``threshold`` is alpha when ``p_value`` is set (drift when p < alpha); otherwise it is the
    bound on ``statistic`` (drift when statistic > threshold). ``details`` records every
    auto-chosen parameter (bandwidth, permutations, seed, test used, ...) and what the
    dashboard draws.
    """

    detector: str
    feature: str
    statistic: float
    p_value: float | None
    threshold: float
    drift: bool
    n_reference: int
    n_current: int
    details: Mapping[str, Any] = field(default_factory=dict)


class Detector(Protocol):
    """Fitted on a reference, tested on a current window. ``test`` is pure."""

    def fit(self, reference: Any, *, groups: np.ndarray | None = None) -> Detector: ...

    def test(self, current: Any, *, groups: np.ndarray | None = None) -> DetectionResult: ...


def permutation_p_value(observed: float, permuted: np.ndarray) -> float:
    """(1 + #{permuted >= observed}) / (1 + B): the observed statistic counts as one of the
    permutations, so the p-value is valid (exact under exchangeability) and never 0."""
    permuted = np.asarray(permuted, dtype=float)
    return float((1 + np.count_nonzero(permuted >= observed)) / (1 + permuted.size))
