"""What the model and the radiologists make of each study.

Scores, per study with true pneumothorax ``y`` (0/1) on scanner ``c`` served by version ``v``::

    logit = intercept_v + separation_v * y + score_bias_c + 0.1 * s + N(0, 1)

``s`` is the study's embedding projected on its scanner's direction, minus the mean's
projection and the scanner's nominal effect (3.0): noise, plus the software-update shift after
that episode, so the update nudges the scores as well. ``1.4.0``: intercept -1.7, separation
2.8 (sensitivity about 0.87, specificity about 0.95); ``1.3.0``: -1.6, 2.4 (about 0.80, 0.94).
The score is rounded to 6 decimals and ``positive`` is ``score >= 0.5``; an effusion score
(``logit = -1.8 + 2.6 * effusion + N(0, 1)``) rides along. With no episode about 12.5% of
studies are positive and radiologists disagree with the model on about 7.5% of those they read.

Episodes (times their magnitude): ``subgroup-drop`` adds 1.0 to the intercept and takes 1.2
from the separation for patients aged 80+; ``override-rise`` takes 0.25 a day from 1.4.0's
separation for 10 days (2.5 in all), then holds. ``photometric-inversion`` and
``gradual-drift`` move embeddings (and ``gradual-drift`` the kVp), not the model's formula.

Radiologist reads: ``read_share`` of studies (60%) are read by one of their site's readers after
a lognormal delay (median 3 hours, log-sd 1.5, clipped to 2 minutes .. 14 days); reads falling
after the end of the period are not in the data (the last days are partly unlabelled, as in
real life), which leaves about 58-59% read. A reader misses a true pneumothorax with 0.05 and
calls a false one with 0.015.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from monitor.simulate.episodes import (
    GRADUAL_DRIFT_DAYS,
    GRADUAL_DRIFT_KVP_PER_DAY,
    GRADUAL_DRIFT_LATENT_PER_DAY,
    GRADUAL_DRIFT_SITE,
    INVERSION_SHARE,
    INVERSION_STATION,
    OVERRIDE_RISE_RAMP_DAYS,
    OVERRIDE_RISE_VERSION,
    SUBGROUP_MIN_AGE,
    Episode,
    active,
    days_in,
)
from monitor.simulate.fleet import (
    ALL_SCANNERS,
    MODEL_VERSIONS,
    SITES,
    SOFTWARE_UPDATE,
    THRESHOLD,
    VIEWS,
    scanner_index,
    site_index,
)
from monitor.simulate.latent import (
    EFFECT_SCALES,
    INVERSION_KEY,
    INVERSION_SHIFT,
    SOFTWARE_UPDATE_SHIFT,
    LatentModel,
)
from monitor.simulate.studies import SECONDS_PER_DAY, StudyTable

SCORE_EMBEDDING_WEIGHT = 0.1
SCORE_NOISE_SD = 1.0
READ_DELAY_MEDIAN_S = 3 * 3600.0
READ_DELAY_LOG_SD = 1.5
READ_DELAY_MIN_S = 120.0
READ_DELAY_MAX_S = 14 * SECONDS_PER_DAY
READER_MISS_RATE = 0.05
READER_FALSE_CALL_RATE = 0.015
SUBGROUP_INTERCEPT_RISE = 1.0
SUBGROUP_SEPARATION_DROP = 1.2
OVERRIDE_RISE_SEPARATION_DROP = 2.5
LATERAL_KVP_STEP = 10.0
LATERAL_MAS_FACTOR = 1.6
PAEDIATRIC_KVP_STEP = -20.0
PAEDIATRIC_MAS_FACTOR = 0.4


def direction_keys() -> list[str]:
    """Every direction of the latent model, in a fixed order (see ``monitor.simulate.latent``)."""
    keys = ["finding:pneumothorax", "finding:effusion", "paediatric"]
    keys += [f"version:{v.version}" for v in MODEL_VERSIONS]
    keys += [f"site:{s.name}" for s in SITES]
    keys += [f"scanner:{s.station}" for s in ALL_SCANNERS]
    keys += [f"software:{s.station}:{s.software_version}" for s in ALL_SCANNERS]
    keys += [f"software:{SOFTWARE_UPDATE.station}:{SOFTWARE_UPDATE.new_version}"]
    keys += [f"view:{v}" for v in VIEWS]
    return keys


def software_updated(table: StudyTable, episodes: dict[str, Episode],
                     start: datetime) -> np.ndarray:
    on_unit = table.scanner == scanner_index(SOFTWARE_UPDATE.station)
    return np.asarray(on_unit & active(episodes, "software-update", table.time_s, start))


def inverted(table: StudyTable, episodes: dict[str, Episode], start: datetime,
             uniform: np.ndarray) -> np.ndarray:
    """The studies whose pixels arrive inverted: ``INVERSION_SHARE * magnitude`` of the
    station's studies while ``photometric-inversion`` runs (``uniform``: one U(0, 1) draw per
    study from a stream of its own, so the other draws do not depend on it)."""
    episode = episodes.get("photometric-inversion")
    if episode is None:
        return np.zeros(table.time_s.size, dtype=bool)
    on_unit = table.scanner == scanner_index(INVERSION_STATION)
    share = min(INVERSION_SHARE * episode.magnitude, 1.0)
    return np.asarray(on_unit & active(episodes, episode.name, table.time_s, start)
                      & (uniform < share))


def drifting(table: StudyTable, episodes: dict[str, Episode], start: datetime) -> np.ndarray:
    """The studies of ``gradual-drift``'s site while it runs."""
    return np.asarray(active(episodes, "gradual-drift", table.time_s, start)
                      & (table.site == site_index(GRADUAL_DRIFT_SITE)))


def drift_days(table: StudyTable, episodes: dict[str, Episode], start: datetime) -> np.ndarray:
    """Per study, days of ``gradual-drift`` at its site so far (at most its 30 days) times
    the magnitude: what the per-day rates multiply. Zero elsewhere."""
    episode = episodes.get("gradual-drift")
    if episode is None:
        return np.zeros(table.time_s.size)
    elapsed = np.minimum(days_in(episodes, episode.name, table.time_s, start), GRADUAL_DRIFT_DAYS)
    return np.where(table.site == site_index(GRADUAL_DRIFT_SITE),
                    elapsed * episode.magnitude, 0.0)


def embed(
    rng: np.random.Generator,
    *,
    table: StudyTable,
    latent: LatentModel,
    version: np.ndarray,
    updated: np.ndarray,
    update_magnitude: float,
    drift_days: np.ndarray | None = None,
) -> np.ndarray:
    """Mean + sum of scaled directions + (patient-correlated) noise; float32 (n, D).
    ``drift_days`` (per study) grow the site's effect by ``GRADUAL_DRIFT_LATENT_PER_DAY``
    each."""
    n = table.time_s.size
    keys = direction_keys()
    col = {key: i for i, key in enumerate(keys)}
    coef = np.zeros((n, len(keys)), dtype=np.float32)
    rows = np.arange(n)
    version_cols = np.array([col[f"version:{v.version}"] for v in MODEL_VERSIONS])
    coef[rows, version_cols[version]] = EFFECT_SCALES["version"]
    coef[:, col["finding:pneumothorax"]] = EFFECT_SCALES["finding"] * table.pneumothorax
    coef[:, col["finding:effusion"]] = EFFECT_SCALES["finding"] * table.effusion
    coef[:, col["paediatric"]] = EFFECT_SCALES["paediatric"] * (table.age_years < 18)
    site_cols = np.array([col[f"site:{s.name}"] for s in SITES])
    site_effect = EFFECT_SCALES["site"] + (0.0 if drift_days is None
                                           else GRADUAL_DRIFT_LATENT_PER_DAY * drift_days)
    coef[rows, site_cols[table.site]] = site_effect
    scanner_cols = np.array([col[f"scanner:{s.station}"] for s in ALL_SCANNERS])
    shift = np.where(updated, SOFTWARE_UPDATE_SHIFT * update_magnitude, 0.0)
    coef[rows, scanner_cols[table.scanner]] = EFFECT_SCALES["scanner"] + shift
    software_cols = np.array([col[f"software:{s.station}:{s.software_version}"]
                              for s in ALL_SCANNERS])[table.scanner]
    new_software = col[f"software:{SOFTWARE_UPDATE.station}:{SOFTWARE_UPDATE.new_version}"]
    coef[rows, np.where(updated, new_software, software_cols)] = EFFECT_SCALES["software"]
    view_cols = np.array([col[f"view:{v}"] for v in VIEWS])
    coef[rows, view_cols[table.view]] = EFFECT_SCALES["view"]
    directions = np.stack([latent.direction(k) for k in keys])

    embeddings = latent.noise(rng, n)
    patient_noise = latent.noise(rng, table.n_repeat_patients)
    rho = latent.patient_share
    repeat = np.flatnonzero(table.repeat_patient)
    embeddings[repeat] = (np.float32(np.sqrt(1.0 - rho)) * embeddings[repeat]
                          + np.float32(np.sqrt(rho)) * patient_noise[table.patient[repeat]])
    embeddings += coef @ directions
    embeddings += latent.mean
    return embeddings


def invert(embeddings: np.ndarray, inverted: np.ndarray, latent: LatentModel) -> None:
    """Move the ``inverted`` studies' embeddings ``INVERSION_SHIFT`` along
    ``directions["inverted"]``, in place. Called after ``model_output``: the scores, like the
    header, are what an upright image gives, so only the embeddings can tell."""
    if inverted.any():
        embeddings[inverted] += np.float32(INVERSION_SHIFT) * latent.direction(INVERSION_KEY)


@dataclass
class ModelOutput:
    score: np.ndarray
    positive: np.ndarray
    effusion_score: np.ndarray
    latency_ms: np.ndarray
    subgroup_dropped: np.ndarray
    degraded: np.ndarray


def model_output(
    rng: np.random.Generator,
    *,
    table: StudyTable,
    latent: LatentModel,
    embeddings: np.ndarray,
    version: np.ndarray,
    episodes: dict[str, Episode],
    start: datetime,
) -> ModelOutput:
    n = table.time_s.size
    t = table.time_s
    scanner_dirs = np.stack([latent.direction(f"scanner:{s.station}") for s in ALL_SCANNERS])
    centred = embeddings @ scanner_dirs.T - latent.mean @ scanner_dirs.T
    scanner_proj = centred[np.arange(n), table.scanner] - EFFECT_SCALES["scanner"]

    intercept = np.array([v.intercept for v in MODEL_VERSIONS])[version]
    separation = np.array([v.separation for v in MODEL_VERSIONS])[version]
    subgroup = active(episodes, "subgroup-drop", t, start) & (table.age_years >= SUBGROUP_MIN_AGE)
    if subgroup.any():
        magnitude = episodes["subgroup-drop"].magnitude
        intercept = intercept + subgroup * SUBGROUP_INTERCEPT_RISE * magnitude
        separation = separation - subgroup * SUBGROUP_SEPARATION_DROP * magnitude
    rising = [v.version for v in MODEL_VERSIONS].index(OVERRIDE_RISE_VERSION)
    degraded = active(episodes, "override-rise", t, start) & (version == rising)
    if degraded.any():
        episode = episodes["override-rise"]
        lo = (episode.start - start).total_seconds()
        ramp = np.clip((t - lo) / (OVERRIDE_RISE_RAMP_DAYS * SECONDS_PER_DAY), 0.0, 1.0)
        drop = OVERRIDE_RISE_SEPARATION_DROP * episode.magnitude
        separation = separation - degraded * ramp * drop
    score_bias = np.array([s.score_bias for s in ALL_SCANNERS])[table.scanner]
    logit = (intercept + separation * table.pneumothorax + score_bias
             + SCORE_EMBEDDING_WEIGHT * scanner_proj + SCORE_NOISE_SD * rng.standard_normal(n))
    score = np.round(1.0 / (1.0 + np.exp(-logit)), 6)
    effusion_logit = -1.8 + 2.6 * table.effusion + rng.standard_normal(n)
    latency_median = np.array([v.latency_median_ms for v in MODEL_VERSIONS])[version]
    return ModelOutput(
        score=score,
        positive=score >= THRESHOLD,
        effusion_score=np.round(1.0 / (1.0 + np.exp(-effusion_logit)), 6),
        latency_ms=np.round(latency_median * np.exp(rng.normal(0.0, 0.25, n)), 1),
        subgroup_dropped=subgroup,
        degraded=degraded,
    )


@dataclass
class Reads:
    read: np.ndarray
    read_time_s: np.ndarray
    radiologist_positive: np.ndarray
    reader: list[str]


def radiologist_reads(
    rng: np.random.Generator, *, table: StudyTable, read_share: float, days: int
) -> Reads:
    n = table.time_s.size
    chosen = rng.random(n) < read_share
    delay = np.exp(rng.normal(np.log(READ_DELAY_MEDIAN_S), READ_DELAY_LOG_SD, n))
    read_time = np.floor(table.time_s + np.clip(delay, READ_DELAY_MIN_S, READ_DELAY_MAX_S))
    u_reader = rng.random(n)
    u_error = rng.random(n)
    positive = np.where(table.pneumothorax, u_error >= READER_MISS_RATE,
                        u_error < READER_FALSE_CALL_RATE)
    pool_sizes = np.array([len(s.readers) for s in SITES])[table.site]
    slot = np.floor(u_reader * pool_sizes).astype(np.int64)
    return Reads(
        read=chosen & (read_time < days * SECONDS_PER_DAY),
        read_time_s=read_time,
        radiologist_positive=positive,
        reader=[SITES[s].readers[k] for s, k in zip(table.site.tolist(), slot.tolist(),
                                                    strict=True)],
    )


def acquisition(
    rng: np.random.Generator, *, table: StudyTable, updated: np.ndarray,
    drift_days: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Per-study kVp, mAs, pixel spacing and software version from the unit's protocol.

    kVp is the protocol's plus 10 for a lateral, minus 20 for a child, plus a rounded
    N(0, 1.5²) kV, plus the rounded ``gradual-drift`` offset (``GRADUAL_DRIFT_KVP_PER_DAY``
    per ``drift_days``); mAs the protocol's times lognormal(0, 0.2), x1.6 lateral, x0.4 child.
    """
    n = table.time_s.size
    nominal_kvp = np.array([s.kvp for s in ALL_SCANNERS])[table.scanner]
    nominal_mas = np.array([s.exposure_mas for s in ALL_SCANNERS])[table.scanner]
    spacing = np.array([s.pixel_spacing_mm for s in ALL_SCANNERS])[table.scanner]
    nominal_kvp = np.where(updated, SOFTWARE_UPDATE.kvp, nominal_kvp)
    nominal_mas = np.where(updated, SOFTWARE_UPDATE.exposure_mas, nominal_mas)
    spacing = np.where(updated, SOFTWARE_UPDATE.pixel_spacing_mm, spacing)
    lateral = table.view == VIEWS.index("LATERAL")
    child = table.age_years < 18
    kvp = (nominal_kvp + LATERAL_KVP_STEP * lateral + PAEDIATRIC_KVP_STEP * child
           + np.round(rng.normal(0.0, 1.5, n)))
    if drift_days is not None:
        kvp = kvp + np.round(GRADUAL_DRIFT_KVP_PER_DAY * drift_days)
    mas = nominal_mas * np.exp(rng.normal(0.0, 0.2, n))
    mas *= np.where(lateral, LATERAL_MAS_FACTOR, 1.0) * np.where(child, PAEDIATRIC_MAS_FACTOR, 1.0)
    base_software = [s.software_version for s in ALL_SCANNERS]
    software = [SOFTWARE_UPDATE.new_version if u else base_software[c]
                for c, u in zip(table.scanner.tolist(), updated.tolist(), strict=True)]
    return kvp.astype(float), np.round(mas, 2), spacing, software
