"""Who is imaged, when, where, on which unit, and what they truly have.

Two streams of studies fill ``n_studies``:

* ICU stays (``repeat_patient_share`` of patients, 10% by default) at ``north`` (60%) and
  ``south`` (40%): ``2 + Poisson(2.5)`` daily AP films on the site's mobile unit around 06:00,
  on consecutive days. Stays may begin before the window or run past its end (only films inside
  it are kept), so the ICU load is the same on every day. Pneumothorax follows a per-stay Markov
  chain (present on the first film with 0.12; stays present with 0.75; appears with 0.06), so
  repeat films agree with each other as well as looking alike.
* Ordinary studies, one per patient: days weighted 1.0 on weekdays and 0.55 at weekends, hours
  by a day-time profile; site by ``Site.study_share``; unit by ``Scanner.site_share``; view PA
  75% / LATERAL 18% / AP 7% on fixed rooms and AP on mobile units (paediatric: PA 40%, AP 50%,
  LATERAL 10%). Pneumothorax prevalence 0.07 (0.03 in children), effusion 0.15 (ICU 0.30).

Adults are ``18 + 80 * Beta(2.2, 1.9)`` years (mean about 60); ``east`` has a 25% paediatric
share (0-17 years). Every random draw is made whatever the episodes, so one seed gives the same
studies with and without episodes up to the episodes' own effects.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from monitor.simulate.episodes import PREVALENCE_CHANGE_SITE, Episode, active
from monitor.simulate.fleet import (
    ALL_SCANNERS,
    BASE_FLEET,
    NEW_VENDOR_EAST_SHARE,
    NEW_VENDOR_SCANNER,
    SITES,
    VIEWS,
    scanner_index,
    site_index,
)

SECONDS_PER_DAY = 86_400
HOUR_WEIGHTS = np.array(
    [0.25, 0.2, 0.2, 0.2, 0.25, 0.35, 0.6, 0.9, 1.4, 1.7, 1.7, 1.6,
     1.4, 1.5, 1.6, 1.5, 1.3, 1.1, 0.9, 0.8, 0.6, 0.5, 0.4, 0.3]
)
WEEKEND_WEIGHT = 0.55
ICU_FILM_HOUR = 6.0
ICU_FILM_SD_MINUTES = 40.0
ICU_EXTRA_FILMS_MEAN = 2.5
PNEUMOTHORAX_PREVALENCE = 0.07
PAEDIATRIC_PNEUMOTHORAX_PREVALENCE = 0.03
EFFUSION_PREVALENCE = 0.15
ICU_EFFUSION_PREVALENCE = 0.30
ICU_CHAIN = (0.12, 0.75, 0.06)  # P(first film positive), P(stay positive), P(become positive)
FIXED_ROOM_VIEWS = (0.75, 0.07, 0.18)  # PA, AP, LATERAL
PAEDIATRIC_VIEWS = (0.40, 0.50, 0.10)


@dataclass
class StudyTable:
    """One row per study (unsorted); ``patient`` indexes ``n_patients`` patients."""

    time_s: np.ndarray
    patient: np.ndarray
    n_patients: int
    n_repeat_patients: int
    repeat_patient: np.ndarray
    site: np.ndarray
    scanner: np.ndarray
    view: np.ndarray
    female: np.ndarray
    age_years: np.ndarray
    pneumothorax: np.ndarray
    effusion: np.ndarray
    new_vendor: np.ndarray
    prevalence_raised: np.ndarray


def _adult_ages(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.asarray(np.minimum(18 + np.floor(80 * rng.beta(2.2, 1.9, n)), 100), dtype=np.int64)


def _icu_stays(
    rng: np.random.Generator, *, n_studies: int, days: int, repeat_patient_share: float
) -> dict[str, np.ndarray]:
    n_cand = max(n_studies, 16)
    films = 2 + rng.poisson(ICU_EXTRA_FILMS_MEAN, n_cand)
    first_day = rng.integers(-films + 1, days)
    in_window = np.minimum(first_day + films, days) - np.maximum(first_day, 0)
    site = np.where(rng.random(n_cand) < SITES[0].icu_share, site_index("north"),
                    site_index("south"))
    female = rng.random(n_cand) < 0.42
    age = _adult_ages(rng, n_cand)
    kmax = int(films.max())
    u = rng.random((n_cand, kmax))
    p_first, p_stay, p_new = ICU_CHAIN
    chain = np.empty((n_cand, kmax), dtype=bool)
    chain[:, 0] = u[:, 0] < p_first
    for j in range(1, kmax):
        chain[:, j] = np.where(chain[:, j - 1], u[:, j] < p_stay, u[:, j] < p_new)

    # Smallest number of stays whose patients make up repeat_patient_share of all patients
    # once ordinary one-study patients fill the remaining studies.
    count = np.arange(1, n_cand + 1)
    used = np.cumsum(in_window)
    fits = used <= n_studies
    enough = fits & (count >= repeat_patient_share * (count + n_studies - used))
    if repeat_patient_share <= 0 or not fits[0]:
        n_stays = 0
    elif enough.any():
        n_stays = int(np.argmax(enough)) + 1
    else:
        n_stays = int(np.flatnonzero(fits)[-1]) + 1

    stay = np.repeat(np.arange(n_stays), films[:n_stays])
    offsets = np.repeat(np.cumsum(films[:n_stays]) - films[:n_stays], films[:n_stays])
    film_index = np.arange(stay.size) - offsets
    day = first_day[stay] + film_index
    keep = (day >= 0) & (day < days)
    hour = ICU_FILM_HOUR + rng.normal(0.0, ICU_FILM_SD_MINUTES / 60, stay.size)
    hour = np.clip(hour, 4.0, 9.0)
    effusion = rng.random(stay.size) < ICU_EFFUSION_PREVALENCE
    return {
        "n_stays": np.asarray(n_stays),
        "stay": stay[keep],
        "time_s": (day[keep] * 24 + hour[keep]) * 3600.0,
        "site": site[stay[keep]],
        "female": female[stay[keep]],
        "age": age[stay[keep]],
        "pneumothorax": chain[stay[keep], film_index[keep]],
        "effusion": effusion[keep],
    }


def sample_studies(
    rng: np.random.Generator,
    *,
    n_studies: int,
    days: int,
    start: datetime,
    episodes: dict[str, Episode],
    repeat_patient_share: float,
) -> StudyTable:
    icu = _icu_stays(rng, n_studies=n_studies, days=days,
                     repeat_patient_share=repeat_patient_share)
    n_icu = icu["time_s"].size
    n_reg = n_studies - n_icu

    weekday = np.array([(start.weekday() + d) % 7 for d in range(days)])
    day_weights = np.where(weekday >= 5, WEEKEND_WEIGHT, 1.0)
    day = rng.choice(days, size=n_reg, p=day_weights / day_weights.sum())
    hour = rng.choice(24, size=n_reg, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    time_s = (day * 24 + hour + rng.random(n_reg)) * 3600.0

    site_shares = np.array([s.study_share for s in SITES])
    site = rng.choice(len(SITES), size=n_reg, p=site_shares / site_shares.sum())
    paed_share = np.array([s.paediatric_share for s in SITES])[site]
    paediatric = rng.random(n_reg) < paed_share
    female = rng.random(n_reg) < 0.5
    age = np.where(paediatric, rng.integers(0, 18, n_reg), _adult_ages(rng, n_reg))

    # Unit: cumulative site_share over the site's base scanners; the new vendor's unit takes a
    # separate uniform draw so the studies it does not take keep their unit.
    u_unit = rng.random(n_reg)
    u_new = rng.random(n_reg)
    scanner = np.empty(n_reg, dtype=np.int64)
    for s_idx, s in enumerate(SITES):
        units = [u for u in BASE_FLEET if u.site == s.name]
        edges = np.cumsum([u.site_share for u in units])
        pick = np.minimum(np.searchsorted(edges / edges[-1], u_unit, side="right"),
                          len(units) - 1)
        ids = np.array([scanner_index(u.station) for u in units])
        scanner = np.where(site == s_idx, ids[pick], scanner)
    new_vendor = active(episodes, "new-vendor", time_s, start)
    if "new-vendor" in episodes:
        share = min(NEW_VENDOR_EAST_SHARE * episodes["new-vendor"].magnitude, 0.9)
        new_vendor &= (site == site_index(NEW_VENDOR_SCANNER.site)) & (u_new < share)
    scanner = np.where(new_vendor, scanner_index(NEW_VENDOR_SCANNER.station), scanner)

    mobile = np.array([u.mobile for u in ALL_SCANNERS])[scanner]
    u_view = rng.random(n_reg)
    fixed_view = np.searchsorted(np.cumsum(FIXED_ROOM_VIEWS), u_view, side="right")
    paed_view = np.searchsorted(np.cumsum(PAEDIATRIC_VIEWS), u_view, side="right")
    view = np.where(paediatric, paed_view, fixed_view)
    view = np.minimum(np.where(mobile, VIEWS.index("AP"), view), len(VIEWS) - 1)

    prevalence = np.where(paediatric, PAEDIATRIC_PNEUMOTHORAX_PREVALENCE,
                          PNEUMOTHORAX_PREVALENCE)
    raised = active(episodes, "prevalence-change", time_s, start)
    raised &= site == site_index(PREVALENCE_CHANGE_SITE)
    if "prevalence-change" in episodes:
        factor = 1.0 + 1.5 * episodes["prevalence-change"].magnitude
        prevalence = np.where(raised, np.minimum(prevalence * factor, 1.0), prevalence)
    pneumothorax = rng.random(n_reg) < prevalence
    effusion = rng.random(n_reg) < EFFUSION_PREVALENCE

    n_stays = int(icu["n_stays"])
    mobile_of_site = {
        site_index(u.site): scanner_index(u.station) for u in BASE_FLEET if u.mobile
    }
    icu_scanner = np.array([mobile_of_site[s] for s in icu["site"]], dtype=np.int64)
    return StudyTable(
        time_s=np.concatenate([icu["time_s"], time_s]),
        patient=np.concatenate([icu["stay"], n_stays + np.arange(n_reg)]),
        n_patients=n_stays + n_reg,
        n_repeat_patients=n_stays,
        repeat_patient=np.concatenate([np.ones(n_icu, bool), np.zeros(n_reg, bool)]),
        site=np.concatenate([icu["site"], site]),
        scanner=np.concatenate([icu_scanner, scanner]),
        view=np.concatenate([np.full(n_icu, VIEWS.index("AP")), view]),
        female=np.concatenate([icu["female"], female]),
        age_years=np.concatenate([icu["age"], age]),
        pneumothorax=np.concatenate([icu["pneumothorax"], pneumothorax]),
        effusion=np.concatenate([icu["effusion"], effusion]),
        new_vendor=np.concatenate([np.zeros(n_icu, bool), new_vendor]),
        prevalence_raised=np.concatenate([np.zeros(n_icu, bool), raised]),
    )
