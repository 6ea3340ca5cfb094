"""Helpers the statistical tests share."""

from __future__ import annotations

from typing import Any

import numpy as np


def rate(record_property: Any, name: str, outcomes: list[bool]) -> float:
    """Share of runs with the outcome, kept in the test report (``--junitxml``)."""
    value = float(np.mean(outcomes))
    record_property(name, value)
    return value


def patient_index(
    rng: np.random.Generator, n: int, *, repeat_share: float, max_repeats: int = 6
) -> np.ndarray:
    """Patient number of each of n studies: a share of patients has 2..max_repeats studies."""
    sizes = np.where(rng.random(n) < repeat_share, rng.integers(2, max_repeats + 1, n), 1)
    return np.repeat(np.arange(n), sizes)[:n]
