"""The simulated deployment: determinism, counts, the event contract and every episode."""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from monitor.collect.dicom import age_band
from monitor.errors import ConfigError
from monitor.simulate import (
    DEFAULT_EPISODES,
    EFFECT_SCALES,
    SOFTWARE_UPDATE_SHIFT,
    EpisodeSpec,
    SimulatedDeployment,
    decode_embedding,
    describe,
    simulate_deployment,
)

DAY = 86_400
UID = re.compile(r"^1\.2\.826\.0\.1\.3680043\.8\.498\.[1-9]\d*$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
INFERENCE_KEYS = {"event_id", "model", "model_version", "timestamp", "study_uid", "scanner",
                  "patient", "prediction", "embedding", "latency_ms"}
SCANNER_KEYS = {"manufacturer", "model", "station", "site", "modality", "body_part", "view",
                "kvp", "exposure_mas", "pixel_spacing_mm", "photometric", "software_version"}
OVERRIDE_KEYS = {"event_id", "model", "study_uid", "timestamp", "radiologist_positive",
                 "finding", "agrees_with_model", "reader"}


@pytest.fixture(scope="module")
def default() -> SimulatedDeployment:
    return simulate_deployment(seed=0)


@pytest.fixture(scope="module")
def clean() -> SimulatedDeployment:
    return simulate_deployment(seed=0, episodes=())


def _z_two_proportions(x1: int, n1: int, x2: int, n2: int) -> float:
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return (x2 / n2 - x1 / n1) / se


def _override_rate(d: SimulatedDeployment, mask: np.ndarray) -> tuple[int, int]:
    t = d.truth
    rows = mask & t.read
    return int((t.radiologist_positive[rows] != t.positive[rows]).sum()), int(rows.sum())


def test_same_seed_gives_identical_events_and_another_seed_does_not():
    a = simulate_deployment(seed=3, n_studies=2_000)
    b = simulate_deployment(seed=3, n_studies=2_000)
    c = simulate_deployment(seed=4, n_studies=2_000)
    assert a.inferences == b.inferences
    assert a.overrides == b.overrides
    assert np.array_equal(a.truth.embeddings, b.truth.embeddings)
    assert a.inferences != c.inferences
    assert not np.allclose(a.truth.embeddings[:100], c.truth.embeddings[:100])


def test_default_counts(default):
    t = default.truth
    assert len(default.inferences) == 21_000
    assert default.model_versions == ("1.3.0", "1.4.0")
    assert {e["model_version"] for e in default.inferences} == {"1.3.0", "1.4.0"}
    share_13 = float(np.mean(t.model_version == "1.3.0"))
    assert 0.23 < share_13 < 0.27
    assert set(t.site.tolist()) == {"north", "south", "east"}
    before = t.time_s < 14 * DAY
    assert len(set(t.station[before].tolist())) == 6
    assert len(set(t.manufacturer[before].tolist())) >= 3
    assert len(set(t.manufacturer.tolist())) == len(set(t.manufacturer[before].tolist())) + 1
    assert set(t.day.tolist()) == set(range(30))
    assert t.time_s.min() >= 0 and t.time_s.max() < 30 * DAY
    assert 0.55 <= len(default.overrides) / 21_000 <= 0.65


def test_reads_arrive_late_and_in_order(default):
    t = default.truth
    stamps = [o["timestamp"] for o in default.overrides]
    assert stamps == sorted(stamps)
    inference_time = {e["study_uid"]: e["timestamp"] for e in default.inferences}
    assert all(o["timestamp"] > inference_time[o["study_uid"]] for o in default.overrides)
    delay_h = (t.read_time_s - t.time_s)[t.read] / 3600
    assert delay_h.min() >= 2 / 60
    assert 1.0 < np.median(delay_h) < 12.0
    assert np.quantile(delay_h, 0.99) > 24.0
    # the last days are less labelled: long reads fall outside the period
    early, late = t.day < 25, t.day == 29
    assert t.read[late].mean() < t.read[early].mean() - 0.05


def test_repeat_studies_are_icu_films_of_correlated_patients(default):
    t = default.truth
    per_patient = np.bincount(t.patient)
    patients = per_patient > 0
    assert 0.07 <= (per_patient > 1).sum() / patients.sum() <= 0.13
    repeat_rows = per_patient[t.patient] > 1
    assert set(t.view[repeat_rows].tolist()) == {"AP"}
    assert set(t.station[repeat_rows].tolist()) == {"XR-NORTH-2", "XR-SOUTH-2"}
    order = np.lexsort((t.time_s, t.patient))
    same = t.patient[order][1:] == t.patient[order][:-1]
    gaps = np.diff(t.day[order])[same]
    assert set(gaps.tolist()) == {1}

    # Noise projected on a direction orthogonal to every effect: consecutive films of one
    # patient correlate with the documented patient share (0.5); different patients do not.
    effects = np.stack(list(default.latent.directions.values()))
    w = np.random.default_rng(0).standard_normal(effects.shape[1])
    w -= effects.T @ (effects @ w)
    w /= np.linalg.norm(w)
    proj = t.embeddings[order] @ w
    first, second = proj[:-1][same], proj[1:][same]
    assert 0.4 < np.corrcoef(first, second)[0, 1] < 0.6
    shuffled = np.random.default_rng(1).permutation(second)
    assert abs(np.corrcoef(first, shuffled)[0, 1]) < 0.08


def test_demographics_and_views(default):
    t = default.truth
    assert set(t.sex.tolist()) == {"F", "M"}
    assert 0.4 < np.mean(t.sex == "F") < 0.6
    children = t.age_years < 18
    assert set(t.site[children].tolist()) == {"east"}
    assert 0.2 < children[t.site == "east"].mean() < 0.3
    assert 50 < t.age_years[~children].mean() < 70
    assert t.age_years.min() >= 0 and t.age_years.max() <= 100
    assert {"PA", "AP", "LATERAL"} == set(t.view.tolist())


def test_every_event_follows_the_contract(default):
    t = default.truth
    seen_uids, seen_ids = set(), set()
    for i, e in enumerate(default.inferences):
        assert set(e) == INFERENCE_KEYS
        assert e["model"] == "cxr-triage"
        assert TIMESTAMP.match(e["timestamp"])
        assert UID.match(e["study_uid"]) and len(e["study_uid"]) <= 64
        assert uuid.UUID(e["event_id"]).version == 4
        seen_uids.add(e["study_uid"])
        seen_ids.add(e["event_id"])
        s = e["scanner"]
        assert set(s) == SCANNER_KEYS
        assert s["modality"] in ("DX", "CR") and s["body_part"] == "CHEST"
        assert s["view"] in ("PA", "AP", "LATERAL") and s["photometric"] == "MONOCHROME2"
        assert 40 <= s["kvp"] <= 150 and 0 < s["exposure_mas"] < 20
        assert 0.05 < s["pixel_spacing_mm"] < 0.3
        p = e["patient"]
        assert set(p) == {"id", "sex", "age_years"}
        assert re.fullmatch(r"MRN\d{7}", p["id"]) and p["sex"] in ("F", "M")
        assert isinstance(p["age_years"], int)
        pred = e["prediction"]
        scores = pred["scores"]
        assert set(scores) == {"pneumothorax", "effusion"}
        assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in scores.values())
        assert pred["threshold"] == 0.5
        assert pred["positive"] is (scores["pneumothorax"] >= 0.5)
        assert 0 < e["latency_ms"] < 1_000
        if i % 97 == 0:
            vector = decode_embedding(e["embedding"])
            assert vector.shape == (512,) and np.isfinite(vector).all()
            assert np.array_equal(vector, t.embeddings[i])
    assert len(seen_uids) == len(seen_ids) == len(default.inferences)
    assert t.embeddings.dtype == np.float32 and np.isfinite(t.embeddings).all()

    positive = {e["study_uid"]: e["prediction"]["positive"] for e in default.inferences}
    override_ids = set()
    for o in default.overrides:
        assert set(o) == OVERRIDE_KEYS
        assert o["finding"] == "pneumothorax" and o["model"] == "cxr-triage"
        assert re.fullmatch(r"r\d{2}", o["reader"]) and TIMESTAMP.match(o["timestamp"])
        assert o["agrees_with_model"] is (o["radiologist_positive"] == positive[o["study_uid"]])
        override_ids.add(o["event_id"])
    assert len(override_ids) == len(default.overrides)
    assert not override_ids & seen_ids


def test_list_embeddings_equal_the_base64_ones():
    as_list = simulate_deployment(seed=5, n_studies=300, embedding_format="list")
    as_text = simulate_deployment(seed=5, n_studies=300)
    for a, b in zip(as_list.inferences[:50], as_text.inferences[:50], strict=True):
        assert isinstance(a["embedding"], list) and len(a["embedding"]) == 512
        assert np.array_equal(np.asarray(a["embedding"], dtype=np.float32),
                              decode_embedding(b["embedding"]))


def test_model_and_reads_behave_as_documented_in_the_baseline(clean):
    t = clean.truth
    for version, (sens_lo, spec_lo) in {"1.3.0": (0.6, 0.9), "1.4.0": (0.75, 0.92)}.items():
        m = t.model_version == version
        assert t.positive[m & t.pneumothorax].mean() > sens_lo
        assert 1 - t.positive[m & ~t.pneumothorax].mean() > spec_lo
    assert 0.06 < t.pneumothorax.mean() < 0.12
    read = t.read
    assert t.radiologist_positive[read & t.pneumothorax].mean() > 0.9
    assert t.radiologist_positive[read & ~t.pneumothorax].mean() < 0.03
    disagree, reads = _override_rate(clean, np.ones(t.time_s.size, dtype=bool))
    assert 0.05 < disagree / reads < 0.12


def test_episodes_touch_only_the_studies_they_say(default, clean):
    assert [e.name for e in default.episodes] == [
        "software-update", "new-vendor", "subgroup-drop", "override-rise"]
    assert set(default.truth.affected) == set(DEFAULT_EPISODES)
    first = min(e.start for e in default.episodes)
    assert first >= default.baseline_end
    touched = np.zeros(len(default.inferences), dtype=bool)
    for mask in default.truth.affected.values():
        touched |= mask
    assert touched.any()
    assert not touched[default.truth.time_s < (first - default.start).total_seconds()].any()
    for i in np.flatnonzero(~touched):
        assert default.inferences[i] == clean.inferences[i]
    scanner_changed = default.truth.affected["new-vendor"]
    assert (default.truth.station[scanner_changed] != clean.truth.station[scanner_changed]).all()


def test_software_update_moves_its_scanner_along_its_direction(default, clean):
    t = default.truth
    update = next(e for e in default.episodes if e.name == "software-update")
    at = (update.start - default.start).total_seconds()
    unit = t.station == update.scanner
    before, after = unit & (t.time_s < at), unit & (t.time_s >= at)
    assert set(t.software_version[before].tolist()) == {"VF10E"}
    assert set(t.software_version[after].tolist()) == {"VF12B"}
    assert np.array_equal(after, default.truth.affected["software-update"])
    pa = t.view == "PA"
    kvp = np.array([e["scanner"]["kvp"] for e in default.inferences])
    assert abs(kvp[before & pa].mean() - 125) < 1 and abs(kvp[after & pa].mean() - 110) < 1

    direction = default.latent.direction(f"scanner:{update.scanner}")
    proj = t.embeddings @ direction
    shift = proj[after].mean() - proj[before].mean()
    se = math.sqrt(default.latent.noise_variance_along(direction)
                   * (1 / after.sum() + 1 / before.sum()))
    assert abs(shift - SOFTWARE_UPDATE_SHIFT) < 5 * se + 0.05
    # the same rows without the episode do not move, and other units do not move
    proj_clean = clean.truth.embeddings @ direction
    assert abs(proj_clean[after].mean() - proj_clean[before].mean()) < 5 * se + 0.05
    other = t.station == "XR-NORTH-1"
    other_dir = default.latent.direction("scanner:XR-NORTH-1")
    other_proj = t.embeddings[other] @ other_dir
    late = t.time_s[other] >= at
    assert abs(other_proj[late].mean() - other_proj[~late].mean()) < 0.1
    assert abs(np.mean(proj[before]) - default.latent.mean @ direction
               - EFFECT_SCALES["scanner"]) < 0.1


def test_new_vendor_appears_only_after_its_start_and_only_at_its_site(default):
    t = default.truth
    episode = next(e for e in default.episodes if e.name == "new-vendor")
    at = (episode.start - default.start).total_seconds()
    fuji = t.manufacturer == "FUJIFILM Corporation"
    assert fuji.any()
    assert t.time_s[fuji].min() >= at
    assert set(t.site[fuji].tolist()) == {"east"}
    assert set(t.station[fuji].tolist()) == {"XR-EAST-3"}
    east_after = (t.site == "east") & (t.time_s >= at)
    assert 0.35 < fuji[east_after].mean() < 0.45


def test_override_rise_raises_disagreement_for_its_version_only():
    d = simulate_deployment(seed=1, episodes=("override-rise",))
    t = d.truth
    baseline = t.time_s < 7 * DAY
    last = t.time_s >= 25 * DAY
    for version, rises in (("1.4.0", True), ("1.3.0", False)):
        m = t.model_version == version
        x1, n1 = _override_rate(d, m & baseline)
        x2, n2 = _override_rate(d, m & last)
        z = _z_two_proportions(x1, n1, x2, n2)
        if rises:
            assert x2 / n2 - x1 / n1 > 0.05 and z > 4
        else:
            assert abs(z) < 3
    # the rise is gradual: 1.4.0 overrides are higher in the episode's second half
    m = t.model_version == "1.4.0"
    x1, n1 = _override_rate(d, m & (t.day >= 20) & (t.day < 25))
    x2, n2 = _override_rate(d, m & (t.day >= 25))
    assert _z_two_proportions(x1, n1, x2, n2) > 2


def test_subgroup_drop_hits_the_old_patients_only():
    d = simulate_deployment(seed=2, episodes=("subgroup-drop",))
    t = d.truth
    at = 17 * DAY
    old = t.age_years >= 80
    x1, n1 = _override_rate(d, old & (t.time_s < at))
    x2, n2 = _override_rate(d, old & (t.time_s >= at))
    assert x2 / n2 - x1 / n1 > 0.1
    y1, m1 = _override_rate(d, ~old & (t.time_s < at))
    y2, m2 = _override_rate(d, ~old & (t.time_s >= at))
    assert abs(_z_two_proportions(y1, m1, y2, m2)) < 3
    # the group is exactly one age band, the one the episode names, so the bias check can
    # see it undiluted
    (episode,) = d.episodes
    assert episode.subgroup == "age_band=80+"
    bands = np.array([age_band(age) for age in t.age_years])
    assert np.array_equal(d.truth.affected["subgroup-drop"], (bands == "80+") & (t.time_s >= at))


def test_prevalence_change_raises_north_prevalence():
    d = simulate_deployment(seed=3, episodes=("prevalence-change",))
    t = d.truth
    north_ordinary = (t.site == "north") & ~t.repeat_patient
    before = t.pneumothorax[north_ordinary & (t.time_s < 24 * DAY)].mean()
    after = t.pneumothorax[north_ordinary & (t.time_s >= 24 * DAY)].mean()
    assert 1.8 < after / before < 3.5
    south = t.site == "south"
    assert abs(t.pneumothorax[south & (t.time_s >= 24 * DAY)].mean()
               - t.pneumothorax[south & (t.time_s < 24 * DAY)].mean()) < 0.03


def test_episode_spec_sets_start_and_magnitude():
    d = simulate_deployment(
        seed=4, n_studies=8_000, episodes=(EpisodeSpec("software-update", 12, magnitude=0.5),))
    (episode,) = d.episodes
    assert episode.start == d.start + timedelta(days=12)
    t = d.truth
    unit = t.station == "XR-SOUTH-1"
    direction = d.latent.direction("scanner:XR-SOUTH-1")
    proj = t.embeddings @ direction
    after = unit & (t.time_s >= 12 * DAY)
    before = unit & (t.time_s < 12 * DAY)
    assert abs(proj[after].mean() - proj[before].mean() - 0.5 * SOFTWARE_UPDATE_SHIFT) < 0.2


def _patient_permutation_p(d: SimulatedDeployment, *, permutations: int = 300) -> float:
    """p-value of ||mean(last week) - mean(first week)||² against patient-level relabelling."""
    t = d.truth
    first, last = t.day < 7, t.day >= d.days - 7
    rows = first | last
    patients, inverse = np.unique(t.patient[rows], return_inverse=True)
    sums = np.zeros((patients.size, t.embeddings.shape[1]))
    np.add.at(sums, inverse, t.embeddings[rows].astype(float))
    counts = np.bincount(inverse).astype(float)
    in_last = np.zeros(patients.size, dtype=bool)
    in_last[inverse[last[rows]]] = True
    assert not (in_last[inverse] != last[rows]).any()  # no patient spans both weeks

    def statistic(groups: np.ndarray) -> np.ndarray:
        g = groups.astype(float)
        m1 = g @ sums / (g @ counts)[:, None]
        m0 = (1 - g) @ sums / ((1 - g) @ counts)[:, None]
        return ((m1 - m0) ** 2).sum(axis=1)

    rng = np.random.default_rng(0)
    observed = statistic(in_last[None, :])[0]
    null = statistic(np.stack([rng.permutation(in_last) for _ in range(permutations)]))
    return (1 + int((null >= observed).sum())) / (1 + permutations)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_episodes_nothing_changes_over_time(seed, clean):
    d = clean if seed == 0 else simulate_deployment(seed=seed, episodes=())
    assert d.episodes == [] and all(not m.any() for m in d.truth.affected.values())
    assert _patient_permutation_p(d) > 0.01
    t = d.truth
    first, last = t.day < 7, t.day >= 23
    for flag in (t.positive, t.pneumothorax, t.station == "XR-SOUTH-1", t.view == "AP"):
        z = _z_two_proportions(int(flag[first].sum()), int(first.sum()),
                               int(flag[last].sum()), int(last.sum()))
        assert abs(z) < 3.5
    x1, n1 = _override_rate(d, first)
    x2, n2 = _override_rate(d, last)
    assert abs(_z_two_proportions(x1, n1, x2, n2)) < 3.5
    assert set(t.manufacturer.tolist()) == set(t.manufacturer[first].tolist())


def test_the_same_check_sees_the_default_episodes(default):
    assert _patient_permutation_p(default) < 0.01


def test_describe_and_batches(default):
    text = describe(default)
    assert "21000 studies" in text and "2026-10-01" in text
    assert "episode software-update starts 2026-10-11 (XR-SOUTH-1" in text
    assert "episode override-rise starts 2026-10-21" in text
    assert default.describe() == text
    assert "no episodes" in describe(simulate_deployment(seed=0, n_studies=500, episodes=()))

    batches = list(default.iter_batches(batch_size=1_000))
    assert all(0 < len(b.events) <= 1_000 for b in batches)
    inferences = [e for b in batches if b.kind == "inference" for e in b.events]
    overrides = [e for b in batches if b.kind == "override" for e in b.events]
    assert inferences == default.inferences and overrides == default.overrides
    seen: set[str] = set()
    last = {"inference": "", "override": ""}
    for k, b in enumerate(batches):
        if b.kind == "inference":
            seen.update(e["study_uid"] for e in b.events)
        else:
            assert all(e["study_uid"] in seen for e in b.events)
        assert last[b.kind] <= b.first <= b.last
        last[b.kind] = b.last
        for episode in b.episodes_started:
            stamp = f"{episode.start:%Y-%m-%dT%H:%M:%SZ}"
            assert all(earlier.last < stamp for earlier in batches[:k])
            assert max(later.last for later in batches[k : k + 2]) >= stamp
    started = [e.name for b in batches for e in b.episodes_started]
    assert started == [e.name for e in default.episodes]


def test_short_runs_drop_episodes_never_reached_and_accept_naive_start():
    d = simulate_deployment(seed=0, n_studies=1_000, days=8, start=datetime(2027, 1, 4))
    assert d.episodes == []
    assert d.start == datetime(2027, 1, 4, tzinfo=UTC)
    assert d.inferences[0]["timestamp"].startswith("2027-01-04")
    assert d.baseline_end == d.start + timedelta(days=7)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"episodes": ("firmware-glitch",)}, "episodes"),
        ({"episodes": ("new-vendor", "new-vendor")}, "episodes"),
        ({"n_studies": 0}, "n_studies"),
        ({"days": 0}, "days"),
        ({"embedding_dim": 8}, "embedding_dim"),
        ({"embedding_format": "hex"}, "embedding_format"),
        ({"read_share": 1.5}, "read_share"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        simulate_deployment(n_studies=kwargs.pop("n_studies", 100), **kwargs)
    with pytest.raises(ConfigError, match="batch_size"):
        next(simulate_deployment(n_studies=50, episodes=()).iter_batches(batch_size=0))
