"""Named episodes injected into a simulated deployment, each with its ground truth.

With the default 30 days from 2026-10-01 the calendar is:

=====================  =========  ========================================================
episode                starts     what changes (from its start to the end of the deployment)
=====================  =========  ========================================================
(baseline)             day 0      2026-10-01 .. 2026-10-07 (days 0-6) are clean in every run
software-update        day 10     XR-SOUTH-1 (SIEMENS Ysio Max) goes from VF10E to VF12B: its
                                  embeddings move by 4.0 x magnitude along the scanner's own
                                  direction, the chest protocol goes from 125 kVp / 1.8 mAs
                                  to 110 kVp / 2.6 mAs, and its scores rise slightly (0.1
                                  logit per unit of shift)
gradual-drift          day 10     (not in the defaults) south's protocol drifts for 30 days,
                                  then stays: kVp falls by 0.5 x magnitude per day and the
                                  site's latent effect grows by 0.1 x magnitude per day
photometric-inversion  day 12     (not in the defaults) 5% x magnitude of XR-NORTH-1's
                                  studies arrive with their pixels inverted upstream while
                                  the header still says MONOCHROME2: their embeddings move
                                  by 16 along a fixed direction of their own (where inverted
                                  images lie); metadata and scores are unchanged
new-vendor             day 14     XR-EAST-3 (FUJIFILM Corporation FDR Smart X) appears at
                                  east and takes 40% x magnitude of east's studies
subgroup-drop          day 17     patients aged 80 or over, the age band 80+ (both
                                  versions): the model's intercept rises by 1.0 and its
                                  separation falls by 1.2 (x magnitude), so false positives
                                  and misses rise in that group
override-rise          day 20     version 1.4.0 only: its separation falls by 0.25 x
                                  magnitude per day for 10 days (2.5 x magnitude in all),
                                  then stays, so its sensitivity degrades and radiologists
                                  disagree more and more
prevalence-change      day 24     (not in the defaults) pneumothorax prevalence at north
                                  rises by a factor 1 + 1.5 x magnitude
=====================  =========  ========================================================

Ramps run at a fixed rate per day whatever the deployment's length, so an episode of a given
magnitude is the same episode in a 30-day demo and a 90-day benchmark. An episode whose start
is at or after the end of the deployment is left out.

Ground truth. Every episode knows the cause an incident about it should name (``cause``: a
field and value, such as ``station=XR-SOUTH-1``, ``site=south``, ``subgroup=age_band=80+`` or
``version=1.4.0``), the other names of the same studies (``same_studies``: the scanner model
of a station that is the only one of its model, its vendor when the vendor has no other unit
in the fleet, its new software version) and the model versions it reaches. ``episode_spec``
sets a catalogue episode's magnitude, start and, for the accepted-change scenario, the day
an operator accepts it as a validated change (``accepted_after_days``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np

from monitor.errors import ConfigError
from monitor.simulate.fleet import (
    ALL_SCANNERS,
    BASE_FLEET,
    MODEL_VERSIONS,
    NEW_VENDOR_SCANNER,
    SOFTWARE_UPDATE,
    Scanner,
)

BASELINE_DAYS = 7
SUBGROUP_MIN_AGE = 80
SUBGROUP_BAND = "80+"  # the age band of exactly the patients aged SUBGROUP_MIN_AGE or over
OVERRIDE_RISE_VERSION = "1.4.0"
OVERRIDE_RISE_RAMP_DAYS = 10.0  # the separation falls at 2.5 / 10 per day, then stays
PREVALENCE_CHANGE_SITE = "north"
INVERSION_STATION = "XR-NORTH-1"
INVERSION_SHARE = 0.05  # of the station's studies, times the magnitude
GRADUAL_DRIFT_SITE = "south"
GRADUAL_DRIFT_DAYS = 30.0
GRADUAL_DRIFT_KVP_PER_DAY = -0.5
GRADUAL_DRIFT_LATENT_PER_DAY = 0.1
ALL_VERSIONS = tuple(v.version for v in MODEL_VERSIONS)


@dataclass(frozen=True)
class Cause:
    """What an incident should name: ``station``, ``scanner_model``, ``software_version``,
    ``vendor``, ``site``, ``subgroup`` (value ``age_band=80+``) or ``version``."""

    field: str
    value: str

    def __str__(self) -> str:
        return f"{self.field}={self.value}"


@dataclass(frozen=True)
class EpisodeSpec:
    """Which episode to inject, when (days after the start) and how strongly.

    ``accepted_after_days``: an operator accepts the episode's incident as a validated change
    this many days after it starts (the accepted-change scenario); the simulator records the
    date (``Episode.accepted_at``), what acts on it is the benchmark or the test."""

    name: str
    start_day: float
    end_day: float | None = None
    magnitude: float = 1.0
    accepted_after_days: float | None = None


@dataclass(frozen=True)
class Episode:
    """An episode as it happened in one simulated deployment, with its ground truth:
    ``cause`` (what an incident about it should name), ``same_studies`` (other names of the
    very same studies, also right) and ``versions`` (the model versions it reaches)."""

    name: str
    start: datetime
    end: datetime
    description: str
    magnitude: float = 1.0
    site: str | None = None
    scanner: str | None = None
    model_version: str | None = None
    subgroup: str | None = None
    cause: Cause | None = None
    same_studies: tuple[Cause, ...] = ()
    versions: tuple[str, ...] = ALL_VERSIONS
    accepted_at: datetime | None = None

    @property
    def causes(self) -> tuple[Cause, ...]:
        """Every name that is right for this episode: its cause, then ``same_studies``."""
        return ((self.cause,) if self.cause else ()) + self.same_studies

    def names_cause(self, field: str, value: str, version: str | None = None) -> bool:
        """Whether an incident on ``version`` naming ``field=value`` names this episode."""
        if version is not None and version not in self.versions:
            return False
        return any(c.field == field and c.value == value for c in self.causes)

    def log_line(self) -> str:
        return f"episode {self.name} starts {self.start:%Y-%m-%d} ({self.description})"


CATALOGUE: dict[str, EpisodeSpec] = {
    "software-update": EpisodeSpec("software-update", start_day=10),
    "new-vendor": EpisodeSpec("new-vendor", start_day=14),
    "subgroup-drop": EpisodeSpec("subgroup-drop", start_day=17),
    "override-rise": EpisodeSpec("override-rise", start_day=20),
    "prevalence-change": EpisodeSpec("prevalence-change", start_day=24),
    "photometric-inversion": EpisodeSpec("photometric-inversion", start_day=12),
    "gradual-drift": EpisodeSpec("gradual-drift", start_day=10),
}

DEFAULT_EPISODES: tuple[str, ...] = (
    "software-update", "new-vendor", "subgroup-drop", "override-rise",
)
# The accepted-change scenario: the firmware update, accepted as validated 8 days after it
# starts, re-baselined from its first day: a re-baselined stratum needs a baseline's span (7
# days) of its new studies.
ACCEPTED_CHANGE = EpisodeSpec("software-update", start_day=10, accepted_after_days=8)


def episode_spec(name: str, *, magnitude: float = 1.0, start_day: float | None = None,
                 end_day: float | None = None,
                 accepted_after_days: float | None = None) -> EpisodeSpec:
    """A catalogue episode at ``magnitude`` (1.0 the default, 0.5 half of it), starting on
    its catalogue day unless ``start_day`` is given."""
    spec = CATALOGUE.get(name)
    if spec is None:
        raise ConfigError(f"episodes has unknown episode {name!r}; known: {', '.join(CATALOGUE)}")
    return replace(spec, magnitude=magnitude,
                   start_day=spec.start_day if start_day is None else start_day,
                   end_day=end_day, accepted_after_days=accepted_after_days)


def _unit(station: str) -> Scanner:
    return next(s for s in ALL_SCANNERS if s.station == station)


def _unit_names(unit: Scanner, software_version: str | None = None) -> tuple[Cause, ...]:
    """The other names of exactly one unit's studies: its model, vendor and software version
    where no other unit of the fleet shares them."""
    software = software_version or unit.software_version
    others = [s for s in ALL_SCANNERS if s.station != unit.station]
    names = []
    if all(s.model != unit.model for s in others):
        names.append(Cause("scanner_model", unit.model))
    if all(s.software_version != software for s in others):
        names.append(Cause("software_version", software))
    if all(s.manufacturer != unit.manufacturer for s in others):
        names.append(Cause("vendor", unit.manufacturer))
    return tuple(names)


def _site_names(site: str) -> tuple[Cause, ...]:
    """A vendor whose base units are exactly the site's is another name for the site."""
    units = {s.station for s in BASE_FLEET if s.site == site}
    return tuple(Cause("vendor", vendor) for vendor in sorted({s.manufacturer for s in BASE_FLEET})
                 if {s.station for s in BASE_FLEET if s.manufacturer == vendor} == units)


def _describe(spec: EpisodeSpec) -> tuple[str, dict[str, object]]:
    """The episode's description and its targets and ground truth."""
    m = spec.magnitude
    if spec.name == "software-update":
        old = _unit(SOFTWARE_UPDATE.station)
        return (
            f"{old.station} {old.manufacturer} {old.model} software {old.software_version} -> "
            f"{SOFTWARE_UPDATE.new_version}, {old.kvp:g} kVp -> {SOFTWARE_UPDATE.kvp:g} kVp, "
            f"embedding shift {4.0 * m:g} along the scanner's direction",
            {"site": old.site, "scanner": old.station, "cause": Cause("station", old.station),
             "same_studies": _unit_names(old, SOFTWARE_UPDATE.new_version)},
        )
    if spec.name == "new-vendor":
        new = NEW_VENDOR_SCANNER
        return (
            f"{new.station} {new.manufacturer} {new.model} appears at {new.site}, "
            f"taking {100 * min(0.4 * m, 0.9):.0f}% of its studies",
            {"site": new.site, "scanner": new.station, "cause": Cause("station", new.station),
             "same_studies": _unit_names(new)},
        )
    if spec.name == "subgroup-drop":
        subgroup = f"age_band={SUBGROUP_BAND}"
        return (
            f"model performance drops for patients aged {SUBGROUP_MIN_AGE}+ "
            f"(intercept +{1.0 * m:g}, separation -{1.2 * m:g} logit)",
            {"subgroup": subgroup, "cause": Cause("subgroup", subgroup)},
        )
    if spec.name == "override-rise":
        return (
            f"{OVERRIDE_RISE_VERSION} sensitivity degrades gradually "
            f"(separation -{2.5 * m / OVERRIDE_RISE_RAMP_DAYS:g} logit a day for "
            f"{OVERRIDE_RISE_RAMP_DAYS:g} days), radiologist overrides rise",
            {"model_version": OVERRIDE_RISE_VERSION,
             "cause": Cause("version", OVERRIDE_RISE_VERSION),
             "versions": (OVERRIDE_RISE_VERSION,)},
        )
    if spec.name == "photometric-inversion":
        unit = _unit(INVERSION_STATION)
        return (
            f"{100 * min(INVERSION_SHARE * m, 1.0):g}% of {unit.station} {unit.manufacturer} "
            f"{unit.model} studies arrive with inverted pixels, header still MONOCHROME2",
            {"site": unit.site, "scanner": unit.station, "cause": Cause("station", unit.station),
             "same_studies": _unit_names(unit)},
        )
    if spec.name == "gradual-drift":
        return (
            f"{GRADUAL_DRIFT_SITE}'s protocol drifts for {GRADUAL_DRIFT_DAYS:g} days: "
            f"{GRADUAL_DRIFT_KVP_PER_DAY * m:+g} kVp and "
            f"{GRADUAL_DRIFT_LATENT_PER_DAY * m:+g} site effect a day",
            {"site": GRADUAL_DRIFT_SITE, "cause": Cause("site", GRADUAL_DRIFT_SITE),
             "same_studies": _site_names(GRADUAL_DRIFT_SITE)},
        )
    return (
        f"pneumothorax prevalence at {PREVALENCE_CHANGE_SITE} x{1 + 1.5 * m:g}",
        {"site": PREVALENCE_CHANGE_SITE, "cause": Cause("site", PREVALENCE_CHANGE_SITE),
         "same_studies": _site_names(PREVALENCE_CHANGE_SITE)},
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
        if spec.accepted_after_days is not None and spec.accepted_after_days < 0:
            raise ConfigError(f"episode {spec.name!r} has accepted_after_days "
                              f"{spec.accepted_after_days}; must be >= 0")
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
        begins = start + timedelta(days=spec.start_day)
        accepted_at = (None if spec.accepted_after_days is None
                       else begins + timedelta(days=spec.accepted_after_days))
        resolved.append(Episode(
            name=spec.name,
            start=begins,
            end=start + timedelta(days=end_day),
            description=description,
            magnitude=spec.magnitude,
            accepted_at=accepted_at,
            **targets,  # type: ignore[arg-type]
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


def days_in(episodes: dict[str, Episode], name: str, time_s: np.ndarray,
            start: datetime) -> np.ndarray:
    """Days since the named episode started at each time (0 before it and after its end):
    what a ramp at a fixed rate per day multiplies."""
    episode = episodes.get(name)
    if episode is None:
        return np.zeros(np.shape(time_s))
    lo = (episode.start - start).total_seconds()
    elapsed = (np.asarray(time_s, dtype=float) - lo) / 86_400.0
    return np.where(active(episodes, name, time_s, start), elapsed, 0.0)
