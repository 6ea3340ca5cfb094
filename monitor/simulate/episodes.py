"""Named episodes injected into a simulated deployment.

With the default 30 days from 2026-10-01 the calendar is:

=================  =========  ============================================================
episode            starts     what changes (from its start to the end of the deployment)
=================  =========  ============================================================
(baseline)         day 0      2026-10-01 .. 2026-10-07 (days 0-6) are clean in every run
software-update    day 10     XR-SOUTH-1 (SIEMENS Ysio Max) goes from VF10E to VF12B: its
                              embeddings move by 4.0 x magnitude along the scanner's own
                              direction, the chest protocol goes from 125 kVp / 1.8 mAs to
                              110 kVp / 2.6 mAs, and its scores rise slightly (0.1 logit per
                              unit of shift)
new-vendor         day 14     XR-EAST-3 (FUJIFILM Corporation FDR Smart X) appears at east
                              and takes 40% x magnitude of east's studies
subgroup-drop      day 17     patients aged 80 or over, the age band 80+ (both versions):
                              the model's intercept rises by 1.0 and its separation falls
                              by 1.2 (x magnitude), so false positives and misses rise in
                              that group
override-rise      day 20     version 1.4.0 only: its separation falls linearly to 2.5 x
                              magnitude less by the end, so its sensitivity degrades and
                              radiologists disagree more and more
prevalence-change  day 24     (not in the defaults) pneumothorax prevalence at north rises
                              by a factor 1 + 1.5 x magnitude
=================  =========  ============================================================

An episode whose start is at or after the end of the deployment is left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from monitor.errors import ConfigError
from monitor.simulate.fleet import BASE_FLEET, NEW_VENDOR_SCANNER, SOFTWARE_UPDATE

BASELINE_DAYS = 7
SUBGROUP_MIN_AGE = 80
SUBGROUP_BAND = "80+"  # the age band of exactly the patients aged SUBGROUP_MIN_AGE or over
OVERRIDE_RISE_VERSION = "1.4.0"
PREVALENCE_CHANGE_SITE = "north"


@dataclass(frozen=True)
class EpisodeSpec:
    """Which episode to inject, when (days after the start) and how strongly."""

    name: str
    start_day: float
    end_day: float | None = None
    magnitude: float = 1.0


@dataclass(frozen=True)
class Episode:
    """An episode as it happened in one simulated deployment."""

    name: str
    start: datetime
    end: datetime
    description: str
    magnitude: float = 1.0
    site: str | None = None
    scanner: str | None = None
    model_version: str | None = None
    subgroup: str | None = None

    def log_line(self) -> str:
        return f"episode {self.name} starts {self.start:%Y-%m-%d} ({self.description})"


CATALOGUE: dict[str, EpisodeSpec] = {
    "software-update": EpisodeSpec("software-update", start_day=10),
    "new-vendor": EpisodeSpec("new-vendor", start_day=14),
    "subgroup-drop": EpisodeSpec("subgroup-drop", start_day=17),
    "override-rise": EpisodeSpec("override-rise", start_day=20),
    "prevalence-change": EpisodeSpec("prevalence-change", start_day=24),
}

DEFAULT_EPISODES: tuple[str, ...] = (
    "software-update", "new-vendor", "subgroup-drop", "override-rise",
)


def _describe(spec: EpisodeSpec) -> tuple[str, dict[str, str | None]]:
    m = spec.magnitude
    if spec.name == "software-update":
        old = next(s for s in BASE_FLEET if s.station == SOFTWARE_UPDATE.station)
        return (
            f"{old.station} {old.manufacturer} {old.model} software {old.software_version} -> "
            f"{SOFTWARE_UPDATE.new_version}, {old.kvp:g} kVp -> {SOFTWARE_UPDATE.kvp:g} kVp, "
            f"embedding shift {4.0 * m:g} along the scanner's direction",
            {"site": old.site, "scanner": old.station},
        )
    if spec.name == "new-vendor":
        new = NEW_VENDOR_SCANNER
        return (
            f"{new.station} {new.manufacturer} {new.model} appears at {new.site}, "
            f"taking {100 * min(0.4 * m, 0.9):.0f}% of its studies",
            {"site": new.site, "scanner": new.station},
        )
    if spec.name == "subgroup-drop":
        return (
            f"model performance drops for patients aged {SUBGROUP_MIN_AGE}+ "
            f"(intercept +{1.0 * m:g}, separation -{1.2 * m:g} logit)",
            {"subgroup": f"age_band={SUBGROUP_BAND}"},
        )
    if spec.name == "override-rise":
        return (
            f"{OVERRIDE_RISE_VERSION} sensitivity degrades gradually "
            f"(separation -{2.5 * m:g} logit by the end), radiologist overrides rise",
            {"model_version": OVERRIDE_RISE_VERSION},
        )
    return (
        f"pneumothorax prevalence at {PREVALENCE_CHANGE_SITE} x{1 + 1.5 * m:g}",
        {"site": PREVALENCE_CHANGE_SITE},
    )


def resolve_episodes(
    episodes: Iterable[str | EpisodeSpec], *, start: datetime, days: int
) -> list[Episode]:
    """Turn names or specs into dated episodes, ordered by start, dropping those never reached."""
    resolved: list[Episode] = []
    seen: set[str] = set()
    for item in episodes:
        spec = CATALOGUE.get(item) if isinstance(item, str) else item
        if spec is None or spec.name not in CATALOGUE:
            name = item if isinstance(item, str) else item.name
            raise ConfigError(
                f"episodes has unknown episode {name!r}; known: {', '.join(CATALOGUE)}"
            )
        if spec.name in seen:
            raise ConfigError(f"episodes names {spec.name!r} twice")
        if spec.magnitude < 0:
            raise ConfigError(f"episode {spec.name!r} has magnitude {spec.magnitude}; must be >= 0")
        seen.add(spec.name)
        if spec.start_day >= days:
            continue
        end_day = days if spec.end_day is None else min(spec.end_day, days)
        if end_day <= spec.start_day:
            raise ConfigError(
                f"episode {spec.name!r} has end_day {spec.end_day} not after start_day "
                f"{spec.start_day}"
            )
        description, targets = _describe(spec)
        resolved.append(Episode(
            name=spec.name,
            start=start + timedelta(days=spec.start_day),
            end=start + timedelta(days=end_day),
            description=description,
            magnitude=spec.magnitude,
            **targets,
        ))
    return sorted(resolved, key=lambda e: e.start)


def active(episodes: dict[str, Episode], name: str, time_s: np.ndarray,
           start: datetime) -> np.ndarray:
    """Which times (seconds after ``start``) fall inside the named episode; all False when it
    is not injected."""
    episode = episodes.get(name)
    if episode is None:
        return np.zeros(np.shape(time_s), dtype=bool)
    lo = (episode.start - start).total_seconds()
    hi = (episode.end - start).total_seconds()
    return (time_s >= lo) & (time_s < hi)
