"""The simulated deployment: determinism, counts, the event contract and every episode."""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from monitor_client.dicom import age_band

from monitor.errors import ConfigError
from monitor.simulate import (
    ACCEPTED_CHANGE,
    CATALOGUE,
    DEFAULT_EPISODES,
    EFFECT_SCALES,
    INVERSION_SHIFT,
    SOFTWARE_UPDATE_SHIFT,
    Cause,
    EpisodeSpec,
    SimulatedDeployment,
    decode_embedding,
    describe,
    episode_spec,
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


def test_batches_report_each_episode_once_and_log_nothing(default, caplog):
    """The caller announces an episode (or not); ``describe`` lists the calendar. A log line
    here as well printed each episode's line twice or three times in `monitor demo`."""
    caplog.set_level("DEBUG")
    batches = list(default.iter_batches(batch_size=500))
    assert caplog.records == []
    started = [e.name for b in batches for e in b.episodes_started]
    assert sorted(started) == sorted(e.name for e in default.episodes) and len(set(started)) == 4


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
        ({"episodes": (episode_spec("software-update", accepted_after_days=-1),)},
         "accepted_after_days"),
        ({"episodes": (episode_spec("gradual-drift", magnitude=-0.5),)}, "magnitude"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        simulate_deployment(n_studies=kwargs.pop("n_studies", 100), **kwargs)
    with pytest.raises(ConfigError, match="batch_size"):
        next(simulate_deployment(n_studies=50, episodes=()).iter_batches(batch_size=0))


# --- long deployments, magnitudes, the newer episodes and their ground truth ----------------


def test_ninety_days_scale_the_studies_and_keep_every_day_and_the_catalogue():
    d = simulate_deployment(seed=6, days=90, embedding_dim=32, episodes=tuple(CATALOGUE))
    assert len(d.inferences) == 700 * 90
    assert set(d.truth.day.tolist()) == set(range(90))
    assert sorted(e.name for e in d.episodes) == sorted(CATALOGUE)
    # the weekly rhythm holds over the whole period: weekends carry fewer studies
    per_day = np.bincount(d.truth.day, minlength=90)
    weekend = np.array([(d.start + timedelta(days=k)).weekday() >= 5 for k in range(90)])
    assert per_day[weekend].mean() < 0.8 * per_day[~weekend].mean()
    assert 0.55 <= len(d.overrides) / len(d.inferences) <= 0.65


def test_each_seed_draws_its_own_baseline_week():
    weeks = []
    for seed in (10, 11, 10):
        d = simulate_deployment(seed=seed, days=10, embedding_dim=32, episodes=())
        week = d.truth.time_s < d.baseline_end.timestamp() - d.start.timestamp()
        weeks.append((int(week.sum()), int(d.truth.positive[week].sum()),
                      d.truth.embeddings[week].mean(axis=0)))
    (n_a, pos_a, mean_a), (n_b, pos_b, mean_b), (n_c, pos_c, mean_c) = weeks
    assert (n_a, pos_a) == (n_c, pos_c) and np.array_equal(mean_a, mean_c)
    assert (n_a, pos_a) != (n_b, pos_b)
    assert not np.allclose(mean_a, mean_b, atol=1e-3)


def _positive_logit_by_day(d: SimulatedDeployment, version: str) -> np.ndarray:
    """Mean logit of the score of truly positive studies of ``version``, per day."""
    t = d.truth
    rows = (t.model_version == version) & t.pneumothorax
    score = np.clip(t.score[rows], 1e-6, 1 - 1e-6)
    logit = np.log(score / (1 - score))
    sums = np.bincount(t.day[rows], weights=logit, minlength=d.days)
    counts = np.bincount(t.day[rows], minlength=d.days)
    return sums / np.maximum(counts, 1)


@pytest.mark.parametrize("magnitude", [1.0, 0.5])
def test_override_rise_ramps_at_a_fixed_rate_per_day_then_holds(magnitude):
    """1.4.0's separation falls 0.25 x magnitude a day for 10 days and then stays, in a
    60-day run as in the 30-day demo: not stretched to the end of the deployment."""
    d = simulate_deployment(seed=7, days=60, n_studies=36_000, embedding_dim=32,
                            episodes=(episode_spec("override-rise", magnitude=magnitude,
                                                   start_day=10),))
    clean = simulate_deployment(seed=7, days=60, n_studies=36_000, embedding_dim=32,
                                episodes=())
    drop = _positive_logit_by_day(clean, "1.4.0") - _positive_logit_by_day(d, "1.4.0")
    days = np.arange(60)
    ramp = (days >= 10) & (days < 20)
    # each day's mean elapsed time is k + 0.5 days after the start
    slope = np.polyfit(days[ramp] + 0.5, drop[ramp], 1)[0]
    assert abs(slope - 0.25 * magnitude) < 0.06 * magnitude + 0.02
    assert abs(drop[:10].mean()) < 1e-9  # the same studies, untouched before the start
    held_early, held_late = drop[21:35].mean(), drop[45:].mean()
    assert abs(held_early - 2.5 * magnitude) < 0.25
    assert abs(held_late - held_early) < 0.25
    assert np.allclose(_positive_logit_by_day(d, "1.3.0"), _positive_logit_by_day(clean, "1.3.0"))


def test_photometric_inversion_moves_only_a_share_of_one_scanner_and_no_header():
    spec = episode_spec("photometric-inversion", start_day=6)
    d = simulate_deployment(seed=8, days=20, embedding_dim=64, episodes=(spec,))
    clean = simulate_deployment(seed=8, days=20, embedding_dim=64, episodes=())
    (episode,) = d.episodes
    t = d.truth
    hit = t.affected["photometric-inversion"]
    unit_after = (t.station == "XR-NORTH-1") & (t.time_s >= 6 * DAY)
    assert not (hit & ~unit_after).any()
    n, k = int(unit_after.sum()), int(hit.sum())
    assert abs(k / n - 0.05) < 4 * math.sqrt(0.05 * 0.95 / n)
    # the header and every other field are what they would have been; only the embedding moves
    for i in range(len(d.inferences)):
        a, b = dict(d.inferences[i]), dict(clean.inferences[i])
        assert a.pop("embedding") == b.pop("embedding") or hit[i]
        assert a == b
        assert a["scanner"]["photometric"] == "MONOCHROME2"
    direction = d.latent.direction("inverted")
    moved = t.embeddings[hit] - clean.truth.embeddings[hit]
    assert np.allclose(moved, INVERSION_SHIFT * direction, atol=1e-3)
    assert np.array_equal(t.embeddings[~hit], clean.truth.embeddings[~hit])
    others = np.stack([v for key, v in d.latent.directions.items() if key != "inverted"])
    assert np.abs(others @ direction).max() < 1e-5
    assert episode.cause == Cause("station", "XR-NORTH-1")
    assert Cause("scanner_model", "Discovery XR656") in episode.same_studies

    half = simulate_deployment(seed=8, days=20, embedding_dim=64,
                               episodes=(episode_spec("photometric-inversion", start_day=6,
                                                      magnitude=0.5),))
    k_half = int(half.truth.affected["photometric-inversion"].sum())
    assert abs(k_half / n - 0.025) < 4 * math.sqrt(0.025 * 0.975 / n)
    assert not (half.truth.affected["photometric-inversion"] & ~hit).any()  # nested draws


@pytest.mark.parametrize("magnitude", [1.0, 0.5])
def test_gradual_drift_moves_one_sites_protocol_at_a_fixed_rate_for_30_days(magnitude):
    spec = episode_spec("gradual-drift", start_day=5, magnitude=magnitude)
    d = simulate_deployment(seed=9, days=45, n_studies=9_000, embedding_dim=32,
                            episodes=(spec,))
    clean = simulate_deployment(seed=9, days=45, n_studies=9_000, embedding_dim=32,
                                episodes=())
    (episode,) = d.episodes
    t = d.truth
    south = t.site == "south"
    drifting = t.affected["gradual-drift"]
    assert np.array_equal(drifting, south & (t.time_s >= 5 * DAY))
    elapsed = np.clip((t.time_s - 5 * DAY) / DAY, 0.0, 30.0) * magnitude
    kvp = np.array([e["scanner"]["kvp"] for e in d.inferences])
    kvp_clean = np.array([e["scanner"]["kvp"] for e in clean.inferences])
    expected_kvp = np.where(drifting, np.round(-0.5 * elapsed), 0.0)
    assert np.array_equal(kvp - kvp_clean, expected_kvp)
    assert (kvp - kvp_clean)[drifting & (t.time_s >= 36 * DAY)].max() == np.round(-15 * magnitude)
    site = d.latent.direction("site:south")
    moved = t.embeddings - clean.truth.embeddings
    expected = np.where(drifting, 0.1 * elapsed, 0.0)[:, None] * site[None, :]
    assert np.allclose(moved, expected, atol=1e-4)
    assert not moved[~drifting].any()
    for i in np.flatnonzero(~drifting)[::50]:
        assert d.inferences[i] == clean.inferences[i]
    assert episode.cause == Cause("site", "south") and episode.same_studies == ()


def test_accepted_change_records_when_the_operator_accepts():
    assert ACCEPTED_CHANGE.name == "software-update"
    d = simulate_deployment(seed=1, n_studies=3_000, embedding_dim=32,
                            episodes=(ACCEPTED_CHANGE,))
    (episode,) = d.episodes
    assert episode.accepted_at == episode.start + timedelta(days=8)
    assert episode.accepted_at < d.end
    plain = simulate_deployment(seed=1, n_studies=3_000, embedding_dim=32,
                                episodes=("software-update",))
    assert plain.episodes[0].accepted_at is None
    assert plain.inferences == d.inferences  # accepting changes what the team does, not data


_TRUTH_FIELDS = {"station": "station", "scanner_model": "scanner_model",
                 "software_version": "software_version", "vendor": "manufacturer",
                 "site": "site", "version": "model_version"}


def _studies_named(d: SimulatedDeployment, cause: Cause) -> np.ndarray:
    t = d.truth
    if cause.field == "subgroup":
        field, value = cause.value.split("=", 1)
        assert field == "age_band"
        return np.array([age_band(int(a)) for a in t.age_years]) == value
    return getattr(t, _TRUTH_FIELDS[cause.field]) == cause.value


def test_every_episode_knows_the_cause_an_incident_should_name():
    d = simulate_deployment(seed=2, days=40, n_studies=12_000, embedding_dim=32,
                            episodes=tuple(CATALOGUE))
    expected = {
        "software-update": ("station", "XR-SOUTH-1"),
        "new-vendor": ("station", "XR-EAST-3"),
        "subgroup-drop": ("subgroup", "age_band=80+"),
        "override-rise": ("version", "1.4.0"),
        "prevalence-change": ("site", "north"),
        "photometric-inversion": ("station", "XR-NORTH-1"),
        "gradual-drift": ("site", "south"),
    }
    for episode in d.episodes:
        assert episode.cause == Cause(*expected[episode.name])
        affected = d.truth.affected[episode.name]
        assert affected.any(), episode.name
        after = d.truth.time_s >= (episode.start - d.start).total_seconds()
        # every affected study is one the cause and each of its other names pick out ...
        for cause in episode.causes:
            named = _studies_named(d, cause)
            assert named[affected].all(), (episode.name, cause)
            assert episode.names_cause(cause.field, cause.value)
            # ... and the other names pick out the same studies while the episode runs
            if cause != episode.cause and episode.cause.field != "subgroup":
                assert np.array_equal(named & after, _studies_named(d, episode.cause) & after)
        assert set(episode.versions) == set(d.truth.model_version[affected].tolist())
    update = next(e for e in d.episodes if e.name == "software-update")
    assert {str(c) for c in update.same_studies} == {
        "scanner_model=Ysio Max", "software_version=VF12B", "vendor=SIEMENS"}
    assert not update.names_cause("site", "south")
    rise = next(e for e in d.episodes if e.name == "override-rise")
    assert rise.names_cause("version", "1.4.0", version="1.4.0")
    assert not rise.names_cause("version", "1.4.0", version="1.3.0")
    prevalence = next(e for e in d.episodes if e.name == "prevalence-change")
    assert prevalence.same_studies == (Cause("vendor", "GE Healthcare"),)


def test_episode_spec_takes_a_catalogue_episode_at_a_chosen_magnitude():
    for name, spec in CATALOGUE.items():
        half = episode_spec(name, magnitude=0.5)
        assert (half.name, half.start_day, half.magnitude) == (name, spec.start_day, 0.5)
    assert episode_spec("new-vendor", start_day=3).start_day == 3
    with pytest.raises(ConfigError, match="episodes"):
        episode_spec("firmware-glitch")
    d = simulate_deployment(seed=3, days=20, n_studies=6_000, embedding_dim=32,
                            episodes=(episode_spec("new-vendor", magnitude=0.5, start_day=8),))
    t = d.truth
    east_after = (t.site == "east") & (t.time_s >= 8 * DAY)
    share = (t.station[east_after] == "XR-EAST-3").mean()
    assert abs(share - 0.2) < 4 * math.sqrt(0.2 * 0.8 / east_after.sum())
