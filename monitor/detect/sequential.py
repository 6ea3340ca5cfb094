"""Evidence that accumulates over days, with a false-page rate that comes from the method.

A check on one daily window runs some ninety tests. Paging on any of them at alpha = 0.05
would page most days; paging on one day's p-values alone misses a small shift that persists.
This module turns each test into a *stream* of daily p-values and pages on a window-limited
cumulative statistic whose false-alarm rate is stated in advance.

Per stream (``"{detector}/{feature}"``, e.g. ``"CategoricalDrift/vendor"``) and day t:

* ``z_t = probit(1 - p_t)``, clipped to [-3, 8]: N(0, 1) under no shift for a valid p-value
  (stochastically smaller for a conservative one).
* The statistic on day T is ``max over L = 1..28`` of the last L observed days'
  ``sum(z) / sqrt(1' C 1)``, where ``C`` is the null correlation of those days' z-values:
  1 on the diagonal and ``sqrt(rho_t rho_u)`` between two days tested against the same
  reference subset, with ``rho_t = n_t / (n_t + n_ref)``. Every day is compared with the same
  baseline, so a baseline that happened to be lucky moves every day's z the same way; for a
  two-sample statistic that is linear in the data this is exactly the correlation it induces.
  Each standardised sum is then N(0, 1) marginally over baseline draws: the baseline's
  uncertainty is carried by the test, not assumed away.
* Levels: ``page`` at or above the page threshold, ``warning`` at or above the warning
  threshold, else ``quiet``.

Thresholds come from ``UPCROSSINGS``: the mean number of days between upcrossings (a quiet day
followed by a day at or above h) of this statistic under no shift with rho = 0, simulated
(``python -m monitor.detect.sequential`` reproduces it). Positive correlation between days
only makes the statistic smoother and upcrossings rarer (measured: at h = 3.5, one per 1,025
days at rho = 0, one per 1,555 at rho = 0.125, one per 2,938 at rho = 0.4), so the rho = 0
thresholds are conservative. The design rate per model version is split by Bonferroni over
the paging families and over the streams of each family: a stream of a family with m streams
gets ``every_days * len(PAGING_FAMILIES) * m`` days between false upcrossings. Defaults: one
false page per version per 365 days, one false warning per 90 days.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import numpy as np
from scipy.special import ndtri

from monitor.detect.health import AMBER_AT, GREEN_AT, HealthScore, family_of
from monitor.detect.result import DetectionResult
from monitor.vocabulary import HealthStatus

STREAM_DETECTOR = "SequentialEvidence"
PAGING_FAMILIES = ("embedding", "metadata", "prediction", "performance", "bias")
FORMULA_VERSION = "sequential-v1"
Z_RANGE = (-3.0, 8.0)
Level = Literal["quiet", "warning", "page"]

# (threshold h, mean days between upcrossings of h) for max_run_days = 28 at rho = 0: 24 x
# 2,000 simulated streams of 1,000 days, the first 60 days of each left out (burn-in).
UPCROSSINGS: tuple[tuple[float, float], ...] = (
    (2.00, 24), (2.25, 36), (2.50, 59), (2.75, 104), (3.00, 197), (3.25, 400), (3.50, 876),
    (3.75, 2_056), (4.00, 5_226), (4.25, 14_409), (4.50, 42_481), (4.75, 135_759),
    (5.00, 421_234),
)
_TABLE_RUN_DAYS = 28


@dataclass(frozen=True)
class DailyEvidence:
    """One stream's evidence on one day: a p-value and the sample sizes behind it."""

    stream: str
    family: str
    day: date
    p_value: float
    n_current: int
    n_reference: int
    reference: str = "all"  # the reference subset tested against: weekday, weekend or all
    null_correlation: float | None = None  # the detector's own rho, where it states one

    @property
    def z(self) -> float:
        p = min(max(float(self.p_value), 1e-300), 1.0)
        return float(np.clip(ndtri(1.0 - p) if p < 1.0 else Z_RANGE[0], *Z_RANGE))

    @property
    def rho(self) -> float:
        """Null correlation of two days' z-values tested against the same reference: the
        detector's own figure (``details["rho"]``, e.g. a subgroup test without a baseline gap
        shares nothing with the baseline), else ``n_current / (n_current + n_reference)``."""
        if self.null_correlation is not None:
            return min(max(float(self.null_correlation), 0.0), 1.0)
        total = self.n_current + self.n_reference
        return self.n_current / total if total > 0 else 0.0


@dataclass(frozen=True)
class SequentialPolicy:
    """Design rates per model version (days between false pages / warnings)."""

    page_every_days: float = 365.0
    warning_every_days: float = 90.0
    max_run_days: int = 28

    def __post_init__(self) -> None:
        if not 0 < self.warning_every_days <= self.page_every_days:
            raise ValueError("warning_every_days must be positive and at most page_every_days")
        if not 1 <= self.max_run_days <= _TABLE_RUN_DAYS:
            raise ValueError(f"max_run_days must be between 1 and {_TABLE_RUN_DAYS} (the "
                             "thresholds were simulated for runs of up to 28 days)")


def threshold(every_days: float) -> float:
    """The h whose false upcrossings come once per ``every_days`` days (rho = 0, from
    ``UPCROSSINGS``; log-linear interpolation, extrapolated with the last segment's slope,
    which overstates h beyond the table since log ARL is convex in h)."""
    hs = np.array([h for h, _ in UPCROSSINGS])
    logs = np.log([arl for _, arl in UPCROSSINGS])
    target = math.log(max(every_days, 1.0))
    if target <= logs[-1]:
        return float(np.interp(target, logs, hs))
    slope = (hs[-1] - hs[-2]) / (logs[-1] - logs[-2])
    return float(hs[-1] + slope * (target - logs[-1]))


@dataclass(frozen=True)
class StreamState:
    """A stream's statistic on one day and what it means."""

    evidence: DailyEvidence  # today's
    statistic: float
    days: int  # length of the run of days behind the statistic
    since: date  # the first day of that run
    warning_at: float
    page_at: float

    @property
    def stream(self) -> str:
        return self.evidence.stream

    @property
    def family(self) -> str:
        return self.evidence.family

    @property
    def level(self) -> Level:
        if self.statistic >= self.page_at:
            return "page"
        if self.statistic >= self.warning_at:
            return "warning"
        return "quiet"

    def to_result(self) -> DetectionResult:
        detector, _, feature = self.stream.partition("/")
        today = self.evidence
        return DetectionResult(
            detector=STREAM_DETECTOR, feature=self.stream, statistic=self.statistic,
            p_value=None, threshold=self.page_at, drift=self.level == "page",
            n_reference=today.n_reference, n_current=today.n_current,
            details={"family": "sequential", "of_family": self.family, "level": self.level,
                     "warning_at": self.warning_at, "page_at": self.page_at,
                     "days": self.days, "since": self.since.isoformat(),
                     "daily_p": today.p_value, "z": today.z, "rho": today.rho,
                     "reference": today.reference, "detector": detector, "feature": feature,
                     "formula_version": FORMULA_VERSION},
        )


def _no_evidence(result: DetectionResult) -> bool:
    status = result.details.get("status") if result.details else None
    return status in ("insufficient data", "failed") or result.p_value is None


def daily_evidence(results: Iterable[DetectionResult], *, day: date, reference: str = "all"
                   ) -> list[DailyEvidence]:
    """Today's evidence: one entry per p-valued result of a paging family."""
    out = []
    for result in results:
        family = family_of(result)
        if family not in PAGING_FAMILIES or _no_evidence(result):
            continue
        assert result.p_value is not None
        p_value = float(result.p_value)
        if not math.isfinite(p_value):
            continue
        given = result.details.get("rho") if result.details else None
        out.append(DailyEvidence(f"{result.detector}/{result.feature}", family, day,
                                 min(max(p_value, 0.0), 1.0), int(result.n_current),
                                 int(result.n_reference), reference,
                                 None if given is None else float(given)))
    return out


def evidence_from_row(feature: str, details: Mapping[str, Any], n_current: int,
                      n_reference: int, day: date) -> DailyEvidence:
    """The day of evidence behind a stored ``SequentialEvidence`` row."""
    return DailyEvidence(feature, str(details["of_family"]), day, float(details["daily_p"]),
                         int(n_current), int(n_reference), str(details.get("reference", "all")),
                         float(details["rho"]) if details.get("rho") is not None else None)


def _run_statistic(days: Sequence[DailyEvidence]) -> tuple[float, int]:
    """max over L of the standardised sum of the last L days, and the L of the max."""
    best, best_length = -math.inf, 1
    total = 0.0
    sum_root: dict[str, float] = defaultdict(float)  # per reference: sum of sqrt(rho)
    sum_rho: dict[str, float] = defaultdict(float)
    for length, evidence in enumerate(reversed(days), start=1):
        total += evidence.z
        sum_root[evidence.reference] += math.sqrt(evidence.rho)
        sum_rho[evidence.reference] += evidence.rho
        variance = length + sum(sum_root[k] ** 2 - sum_rho[k] for k in sum_root)
        value = total / math.sqrt(variance)
        if value > best:
            best, best_length = value, length
    return best, best_length


def evaluate(history: Iterable[DailyEvidence], *, day: date,
             policy: SequentialPolicy | None = None) -> list[StreamState]:
    """The state of every stream with evidence on ``day``.

    ``history`` holds the evidence of one model version against one baseline: earlier days
    and ``day`` itself (a later day, or a second entry for one day, is ignored / replaces the
    first). The thresholds of a family count its streams over the whole history."""
    policy = policy or SequentialPolicy()
    by_stream: dict[str, dict[date, DailyEvidence]] = defaultdict(dict)
    for evidence in history:
        if evidence.day <= day:
            by_stream[evidence.stream][evidence.day] = evidence
    streams_per_family: dict[str, int] = defaultdict(int)
    for days in by_stream.values():
        streams_per_family[next(iter(days.values())).family] += 1
    states = []
    for _, days in sorted(by_stream.items()):
        if day not in days:
            continue
        recent = [days[d] for d in sorted(days)][-policy.max_run_days:]
        statistic, length = _run_statistic(recent)
        family = days[day].family
        share = len(PAGING_FAMILIES) * streams_per_family[family]
        states.append(StreamState(
            evidence=days[day], statistic=statistic, days=length,
            since=recent[-length].day,
            warning_at=threshold(policy.warning_every_days * share),
            page_at=threshold(policy.page_every_days * share),
        ))
    return states


def _score(state: StreamState) -> float:
    """1 = quiet; [0.8, 1] below warning; [0.6, 0.8) warning; below 0.6 at the page level."""
    z, warn, page = state.statistic, state.warning_at, state.page_at
    if z <= 0:
        return 1.0
    if z < warn:
        return 1.0 - (1.0 - GREEN_AT) * z / warn
    if z < page:
        return GREEN_AT - (GREEN_AT - AMBER_AT) * (z - warn) / (page - warn) - 1e-9
    return max(0.0, AMBER_AT - AMBER_AT * (z - page) / page - 1e-9)


def sequential_health(states: Sequence[StreamState]) -> HealthScore:
    """Green when no stream is at warning, amber at warning, red at the page level; the score
    is the worst stream's place between its thresholds (``_score``)."""
    components: dict[str, float] = {}
    worst: dict[str, StreamState] = {}
    for state in states:
        score = _score(state)
        if score < components.get(state.family, math.inf):
            components[state.family], worst[state.family] = score, state
    score = min(components.values(), default=1.0)
    levels = {state.level for state in states}
    status: HealthStatus = (
        "red" if "page" in levels else "amber" if "warning" in levels else "green")
    return HealthScore(
        score=score, status=status, components=components, formula_version=FORMULA_VERSION,
        details={"families": {family: {"worst_stream": state.stream,
                                        "statistic": state.statistic,
                                        "level": state.level, "since": state.since.isoformat()}
                              for family, state in worst.items()},
                 "n_streams": len(states),
                 "n_warning": sum(1 for s in states if s.level == "warning"),
                 "n_page": sum(1 for s in states if s.level == "page")},
    )


def simulate_upcrossings(thresholds: Sequence[float], *, rho: float = 0.0, runs: int = 2_000,
                         days: int = 1_000, burn_in: int = 60, repeats: int = 24,
                         max_run_days: int = _TABLE_RUN_DAYS, seed: int = 100
                         ) -> list[tuple[float, float]]:
    """Mean days between upcrossings of each threshold under no shift (how ``UPCROSSINGS``
    was made). Days share a baseline: ``z_t = sqrt(rho) B + sqrt(1 - rho) e_t``."""
    ups = np.zeros(len(thresholds))
    counted = 0
    variance = np.array([length + length * (length - 1) * rho
                         for length in range(1, max_run_days + 1)])
    for repeat in range(repeats):
        rng = np.random.default_rng(seed + repeat)
        shared = rng.standard_normal((runs, 1))
        z = math.sqrt(rho) * shared + math.sqrt(1 - rho) * rng.standard_normal((runs, days))
        z = np.clip(z, *Z_RANGE)
        sums = np.concatenate([np.zeros((runs, 1)), np.cumsum(z, axis=1)], axis=1)
        statistic = np.full((runs, days), -np.inf)
        for length in range(1, max_run_days + 1):
            run = (sums[:, length:] - sums[:, :-length]) / math.sqrt(variance[length - 1])
            statistic[:, length - 1:] = np.maximum(statistic[:, length - 1:], run)
        statistic = statistic[:, burn_in:]
        for i, h in enumerate(thresholds):
            above = statistic >= h
            ups[i] += np.count_nonzero(above[:, 1:] & ~above[:, :-1])
        counted += statistic.shape[0] * (statistic.shape[1] - 1)
    return [(float(h), counted / max(u, 1.0)) for h, u in zip(thresholds, ups, strict=True)]


if __name__ == "__main__":
    for h, every in simulate_upcrossings([h for h, _ in UPCROSSINGS]):
        print(f"h = {h:.2f}: one upcrossing per {every:,.0f} days")
