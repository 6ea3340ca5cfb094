"""A seeded, simulated deployment of the chest X-ray triage model ``cxr-triage``.

Defaults: 21,000 studies over 30 days (700 a day: ``n_studies`` scales with ``days`` unless
given) from 2026-10-01T00:00:00Z at three sites (``north``,
``south``, ``east``) on six scanners of four vendors (``monitor.simulate.fleet``). Two model
versions are live side by side for the whole period with a fixed traffic split: ``1.4.0``
(production, 75% of studies) and ``1.3.0`` (the previous version, 25%), so each version has
its own clean baseline and ``1.3.0`` is there to roll back to. Days 0-6 (2026-10-01 to
2026-10-07) are clean in every run; the episodes (``monitor.simulate.episodes``) start later.
``episodes=()`` gives a deployment with no shift at all. Each seed draws its own studies, so
its own baseline week: two seeds give two different samples of the same clean process.

Where each part is modelled:

* ``studies``: who is imaged, when, where, on which unit, true findings; 10% of patients are
  ICU patients with daily AP films (the repeat studies).
* ``latent``: the embedding model, ``x = mean + version + finding + site + scanner +
  software version + view + patient effect + noise``, each effect a scale times a fixed,
  seeded unit direction (``deployment.latent.direction("scanner:XR-SOUTH-1")``).
* ``signals``: the model's scores and the radiologists' reads (about 60% of studies, delayed).
  Draws that only the newer episodes use (which studies arrive inverted, the inverted images'
  direction) come from a fourth seed stream, so every earlier draw is the same with them.
* ``events``: identifiers and the JSON contract's dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np

from monitor.errors import ConfigError
from monitor.simulate import events as ev
from monitor.simulate import signals
from monitor.simulate.episodes import (
    BASELINE_DAYS,
    DEFAULT_EPISODES,
    Episode,
    EpisodeSpec,
    resolve_episodes,
)
from monitor.simulate.fleet import (
    ALL_SCANNERS,
    FINDING,
    MODEL,
    MODEL_VERSIONS,
    THRESHOLD,
    VIEWS,
    Scanner,
)
from monitor.simulate.latent import INVERSION_KEY, LatentModel, build_latent_model, with_direction
from monitor.simulate.studies import SECONDS_PER_DAY, StudyTable, sample_studies
from monitor.simulate.summary import describe

DEFAULT_START = datetime(2026, 10, 1, tzinfo=UTC)
STUDIES_PER_DAY = 700
_TABLE_COLUMNS = ("time_s", "patient", "repeat_patient", "site", "scanner", "view", "female",
                  "age_years", "pneumothorax", "effusion", "new_vendor", "prevalence_raised")


@dataclass
class StudyTruth:
    """Per-study arrays, row ``i`` describing ``inferences[i]``; what tests and demos check.

    ``time_s`` / ``read_time_s`` are seconds after the start (``read_time_s`` NaN where the
    study has no read in the data); ``radiologist_positive`` is False where unread.
    ``affected[name]`` marks the studies inside an injected episode's scope (its unit, site,
    subgroup or version while it runs); every other study is exactly what the same seed gives
    with ``episodes=()``. ``override_study[j]`` is the row of the study ``overrides[j]`` reads.
    """

    study_uid: np.ndarray
    patient: np.ndarray
    patient_id: np.ndarray
    repeat_patient: np.ndarray
    time_s: np.ndarray
    site: np.ndarray
    station: np.ndarray
    manufacturer: np.ndarray
    scanner_model: np.ndarray
    software_version: np.ndarray
    model_version: np.ndarray
    view: np.ndarray
    sex: np.ndarray
    age_years: np.ndarray
    pneumothorax: np.ndarray
    effusion: np.ndarray
    score: np.ndarray
    positive: np.ndarray
    read: np.ndarray
    read_time_s: np.ndarray
    radiologist_positive: np.ndarray
    embeddings: np.ndarray
    affected: dict[str, np.ndarray]
    override_study: np.ndarray

    @property
    def day(self) -> np.ndarray:
        return np.floor(self.time_s / SECONDS_PER_DAY).astype(np.int64)


@dataclass(frozen=True)
class EventBatch:
    """Consecutive events of one kind; ``episodes_started`` lists episodes that begin in it."""

    kind: Literal["inference", "override"]
    events: list[dict[str, Any]]
    first: str
    last: str
    episodes_started: tuple[Episode, ...] = ()


@dataclass
class SimulatedDeployment:
    """Events in the JSON contract plus what is known about them.

    ``inferences`` are sorted by timestamp, ``overrides`` by their own timestamp (the read
    time); both are plain dicts ready to POST. ``episodes`` are those injected, by start;
    ``truth`` has per-study arrays aligned with ``inferences``; ``latent`` the embedding model's
    directions; ``scanners`` the whole fleet, including units that appear only in an episode.
    """

    seed: int
    start: datetime
    days: int
    model: str
    model_versions: tuple[str, ...]
    inferences: list[dict[str, Any]]
    overrides: list[dict[str, Any]]
    episodes: list[Episode]
    truth: StudyTruth
    latent: LatentModel
    scanners: tuple[Scanner, ...] = field(default=ALL_SCANNERS)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)

    @property
    def baseline_start(self) -> datetime:
        return self.start

    @property
    def baseline_end(self) -> datetime:
        """Exclusive end of the clean baseline (start + 7 days)."""
        return self.start + timedelta(days=min(BASELINE_DAYS, self.days))

    def iter_batches(self, batch_size: int = 1000) -> Iterator[EventBatch]:
        """Both event streams in arrival order, ``batch_size`` events per time slice.

        Each slice of the merged timeline yields its inference batch, then its override
        batch, so every override comes after the inference it reads. An episode is reported
        (``episodes_started``) on the first batch of the slice in which it starts, and on no
        other; nothing is logged here (``describe`` lists the calendar, announcing an episode
        is the caller's choice).
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size has value {batch_size}; must be >= 1")
        truth = self.truth
        inf_t = truth.time_s.astype(np.int64)
        ovr_t = truth.read_time_s[truth.override_study].astype(np.int64)
        times = np.concatenate([inf_t, ovr_t])
        kinds = np.concatenate([np.zeros(inf_t.size, np.int8), np.ones(ovr_t.size, np.int8)])
        index = np.concatenate([np.arange(inf_t.size), np.arange(ovr_t.size)])
        order = np.lexsort((index, kinds, times))
        pending = sorted(self.episodes, key=lambda e: e.start)
        for lo in range(0, order.size, batch_size):
            chunk = order[lo : lo + batch_size]
            chunk_end = self.start + timedelta(seconds=int(times[chunk[-1]]))
            started = tuple(e for e in pending if e.start <= chunk_end)
            pending = [e for e in pending if e.start > chunk_end]
            for kind, source in ((0, self.inferences), (1, self.overrides)):
                rows = index[chunk[kinds[chunk] == kind]]
                if rows.size == 0:
                    continue
                events = [source[i] for i in rows.tolist()]
                yield EventBatch(
                    kind="inference" if kind == 0 else "override",
                    events=events,
                    first=events[0]["timestamp"],
                    last=events[-1]["timestamp"],
                    episodes_started=started,
                )
                started = ()

    def describe(self) -> str:
        return describe(self)


def _check(
    *, n_studies: int, days: int, embedding_dim: int, embedding_format: str, read_share: float,
    repeat_patient_share: float,
) -> None:
    if n_studies < 1:
        raise ConfigError(f"n_studies has value {n_studies}; must be >= 1")
    if days < 1:
        raise ConfigError(f"days has value {days}; must be >= 1")
    needed = len(signals.direction_keys()) + 1  # and the inverted images' direction
    if embedding_dim < needed:
        raise ConfigError(f"embedding_dim has value {embedding_dim}; must be >= {needed}")
    if embedding_format not in ("base64", "list"):
        raise ConfigError(f"embedding_format has value {embedding_format!r}; use base64 or list")
    if not 0.0 <= read_share <= 1.0:
        raise ConfigError(f"read_share has value {read_share}; must lie in [0, 1]")
    if not 0.0 <= repeat_patient_share < 1.0:
        raise ConfigError(
            f"repeat_patient_share has value {repeat_patient_share}; must lie in [0, 1)"
        )


def simulate_deployment(
    *,
    seed: int = 0,
    n_studies: int | None = None,
    days: int = 30,
    start: datetime = DEFAULT_START,
    episodes: Iterable[str | EpisodeSpec] = DEFAULT_EPISODES,
    embedding_dim: int = 512,
    embedding_format: ev.EmbeddingFormat = "base64",
    read_share: float = 0.6,
    repeat_patient_share: float = 0.10,
) -> SimulatedDeployment:
    """Generate one deployment; the same arguments always give the same events.

    ``n_studies`` defaults to ``STUDIES_PER_DAY`` (700) per day. ``episodes`` takes names from
    ``monitor.simulate.episodes.CATALOGUE`` or ``EpisodeSpec`` objects (``episode_spec``: own
    start day, end day, magnitude, acceptance); ``()`` gives a deployment with no shift at
    all. A naive ``start`` is read as UTC.
    """
    if n_studies is None:
        n_studies = STUDIES_PER_DAY * max(days, 1)
    _check(n_studies=n_studies, days=days, embedding_dim=embedding_dim,
           embedding_format=embedding_format, read_share=read_share,
           repeat_patient_share=repeat_patient_share)
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    resolved = resolve_episodes(episodes, start=start, days=days)
    by_name = {e.name: e for e in resolved}

    # spawn(4)'s first three streams are spawn(3)'s: the fourth feeds only the newer episodes.
    structure_seq, study_seq, id_seq, episode_seq = np.random.SeedSequence(seed).spawn(4)
    latent = build_latent_model(np.random.default_rng(structure_seq), dim=embedding_dim,
                                direction_keys=signals.direction_keys())
    episode_rng = np.random.default_rng(episode_seq)
    latent = with_direction(latent, INVERSION_KEY, episode_rng)
    rng = np.random.default_rng(study_seq)
    table = sample_studies(rng, n_studies=n_studies, days=days, start=start, episodes=by_name,
                           repeat_patient_share=repeat_patient_share)
    order = np.argsort(np.floor(table.time_s), kind="stable")
    for name in _TABLE_COLUMNS:
        setattr(table, name, getattr(table, name)[order])
    table.time_s = np.floor(table.time_s)
    inversion_draw = episode_rng.random(n_studies)
    return _assemble(rng, np.random.default_rng(id_seq), table=table, latent=latent,
                     episodes=by_name, seed=seed, start=start, days=days,
                     embedding_format=embedding_format, read_share=read_share,
                     inversion_draw=inversion_draw)


def _assemble(
    rng: np.random.Generator,
    id_rng: np.random.Generator,
    *,
    table: StudyTable,
    latent: LatentModel,
    episodes: dict[str, Episode],
    seed: int,
    start: datetime,
    days: int,
    embedding_format: ev.EmbeddingFormat,
    read_share: float,
    inversion_draw: np.ndarray,
) -> SimulatedDeployment:
    n = table.time_s.size
    t = table.time_s
    version_edges = np.cumsum([v.traffic_share for v in MODEL_VERSIONS])
    version = np.minimum(
        np.searchsorted(version_edges / version_edges[-1], rng.random(n), side="right"),
        len(MODEL_VERSIONS) - 1,
    )
    updated = signals.software_updated(table, episodes, start)
    update_magnitude = episodes["software-update"].magnitude if updated.any() else 0.0
    inverted = signals.inverted(table, episodes, start, inversion_draw[:n])
    drift_days = signals.drift_days(table, episodes, start)
    embeddings = signals.embed(rng, table=table, latent=latent, version=version,
                               updated=updated, update_magnitude=update_magnitude,
                               drift_days=drift_days)
    output = signals.model_output(rng, table=table, latent=latent, embeddings=embeddings,
                                  version=version, episodes=episodes, start=start)
    signals.invert(embeddings, inverted, latent)
    reads = signals.radiologist_reads(rng, table=table, read_share=read_share, days=days)
    kvp, mas, spacing, software = signals.acquisition(rng, table=table, updated=updated,
                                                      drift_days=drift_days)

    inference_ids = ev.event_ids(id_rng, n)
    override_ids = ev.event_ids(id_rng, n)
    uids = ev.study_uids(id_rng, n)
    mrns = ev.patient_ids(id_rng, table.n_patients)
    patient_ids = [mrns[p] for p in table.patient.tolist()]
    versions = [MODEL_VERSIONS[v].version for v in version.tolist()]
    units = [ALL_SCANNERS[c] for c in table.scanner.tolist()]
    views = [VIEWS[v] for v in table.view.tolist()]
    sexes = ["F" if f else "M" for f in table.female.tolist()]
    scanner_dicts = [
        {"manufacturer": s.manufacturer, "model": s.model, "station": s.station,
         "site": s.site, "modality": s.modality, "body_part": "CHEST", "view": view,
         "kvp": k, "exposure_mas": m, "pixel_spacing_mm": p, "photometric": "MONOCHROME2",
         "software_version": sw}
        for s, view, k, m, p, sw in zip(units, views, kvp.tolist(), mas.tolist(),
                                        spacing.tolist(), software, strict=True)
    ]
    inferences = ev.inference_events(
        model=MODEL, event_id=inference_ids, model_version=versions,
        timestamp=ev.iso_timestamps(start, t), study_uid=uids, scanners=scanner_dicts,
        patient_id=patient_ids, sex=sexes, age_years=table.age_years.tolist(),
        pneumothorax_score=output.score.tolist(),
        effusion_score=output.effusion_score.tolist(), positive=output.positive.tolist(),
        threshold=THRESHOLD, embeddings=embeddings, embedding_format=embedding_format,
        latency_ms=output.latency_ms.tolist(),
    )

    read_rows = np.flatnonzero(reads.read)
    read_rows = read_rows[np.argsort(reads.read_time_s[read_rows], kind="stable")]
    rows = read_rows.tolist()
    overrides = ev.override_events(
        model=MODEL, finding=FINDING,
        event_id=[override_ids[i] for i in rows],
        study_uid=[uids[i] for i in rows],
        timestamp=ev.iso_timestamps(start, reads.read_time_s[read_rows]),
        radiologist_positive=reads.radiologist_positive[read_rows].tolist(),
        agrees_with_model=(reads.radiologist_positive == output.positive)[read_rows].tolist(),
        reader=[reads.reader[i] for i in rows],
    )

    masks = {"software-update": updated, "new-vendor": table.new_vendor,
             "subgroup-drop": output.subgroup_dropped, "override-rise": output.degraded,
             "prevalence-change": table.prevalence_raised, "photometric-inversion": inverted,
             "gradual-drift": signals.drifting(table, episodes, start)}
    truth = StudyTruth(
        study_uid=np.array(uids), patient=table.patient, patient_id=np.array(patient_ids),
        repeat_patient=table.repeat_patient, time_s=t,
        site=np.array([s.site for s in units]),
        station=np.array([s.station for s in units]),
        manufacturer=np.array([s.manufacturer for s in units]),
        scanner_model=np.array([s.model for s in units]),
        software_version=np.array(software), model_version=np.array(versions),
        view=np.array(views), sex=np.array(sexes), age_years=table.age_years,
        pneumothorax=table.pneumothorax, effusion=table.effusion, score=output.score,
        positive=output.positive, read=reads.read,
        read_time_s=np.where(reads.read, reads.read_time_s, np.nan),
        radiologist_positive=reads.radiologist_positive & reads.read, embeddings=embeddings,
        affected={name: masks[name] for name in episodes}, override_study=read_rows,
    )
    return SimulatedDeployment(
        seed=seed, start=start, days=days, model=MODEL,
        model_versions=tuple(v.version for v in MODEL_VERSIONS), inferences=inferences,
        overrides=overrides, episodes=sorted(episodes.values(), key=lambda e: e.start),
        truth=truth, latent=latent,
    )
