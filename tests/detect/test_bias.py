"""Subgroup bias against each group's own baseline gap: a gap present in the baseline is a
standing finding and not drift (its false-positive rate measured, with and without repeat
studies), a group doing better never fires, a grown gap and a crossed tolerance are found,
small groups are reported rather than dropped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from monitor.detect.bias import DEFAULT_TOLERANCES, SubgroupBias
from monitor.errors import NotFittedError, ValidationError
from tests.detect.support import patient_index, rate

MANUFACTURERS = {
    "GE Healthcare": ["Optima XR240amx", "Discovery XR656"],
    "Siemens": ["Ysio Max"],
    "Philips": ["DigitalDiagnost"],
    "Carestream": ["DRX-Evolution", "DRX-1"],
}
SITES = np.array(["north", "south", "east"])
AGE_BANDS = np.array(["18-39", "40-59", "60-79", "80+"])
VIEWS = np.array(["PA", "AP", "LATERAL"])
VENDOR_FIELDS = ("vendor", "scanner_model")
SCANNER = ("scanner_model",)
FOCUS = "Optima"  # the group the statistics tests watch


def binomial_bound(alpha: float, runs: int) -> float:
    """Largest rejection rate over ``runs`` seeded runs still consistent (one-sided 99%) with
    a true rate of ``alpha``: a rate above it says the test's level is above ``alpha``."""
    return float(stats.binom.ppf(0.99, runs, alpha)) / runs


def subgroup_window(
    rng: np.random.Generator,
    n: int,
    *,
    repeat_share: float = 0.0,
    lowered: str | None = None,
    sensitivity_drop: float = 0.15,
) -> tuple[pd.DataFrame, np.ndarray]:
    """A window of studies with subgroup columns and reads (80% read, prevalence 25%).

    Sensitivity against reads is 0.85 and specificity 0.90 everywhere, except that studies of
    vendor ``lowered`` lose ``sensitivity_drop``. Scanner, site, sex and age band belong
    to the patient; view and model call to the study.
    """
    patient = patient_index(rng, n, repeat_share=repeat_share)
    n_patients = patient.max() + 1
    vendors = np.array(list(MANUFACTURERS), dtype=object)
    vendor_index = rng.integers(0, vendors.size, n_patients)
    models = np.array([MANUFACTURERS[v] + MANUFACTURERS[v][:1] for v in vendors], dtype=object)
    n_models = np.array([len(MANUFACTURERS[v]) for v in vendors])
    model_index = (rng.random(n_patients) * n_models[vendor_index]).astype(int)
    vendor = vendors[vendor_index]
    scanner = np.array([models[v][m] for v, m in zip(vendor_index, model_index, strict=True)])
    diseased = (rng.random(n_patients) < 0.25)[patient]
    vendor, scanner = vendor[patient], scanner[patient]
    sensitivity = np.where(vendor == lowered, 0.85 - sensitivity_drop, 0.85)
    u = rng.random(n)
    model_positive = np.where(diseased, u < sensitivity, u < 0.10)
    read = rng.random(n) < 0.8
    frame = pd.DataFrame(
        {
            "vendor": vendor,
            "scanner_model": scanner,
            "site": SITES[rng.integers(0, SITES.size, n_patients)][patient],
            "sex": np.array(["F", "M"])[rng.integers(0, 2, n_patients)][patient],
            "age_band": AGE_BANDS[rng.integers(0, AGE_BANDS.size, n_patients)][patient],
            "view": VIEWS[rng.integers(0, VIEWS.size, n)],
            "model_positive": model_positive,
            "radiologist_positive": np.where(read, diseased, None),
        }
    )
    return frame, np.char.add("p", patient.astype(str))


def scanner_window(
    rng: np.random.Generator,
    n: int,
    *,
    focus_share: float = 0.2,
    specificity_gap: float = 0.0,
    sensitivity_drop: float = 0.0,
    repeat_share: float = 0.0,
    shared_error: float = 0.0,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Studies on three scanners, every study read, prevalence 25%: sensitivity 0.85 and
    specificity 0.90, except on scanner ``FOCUS`` (``focus_share`` of the patients), whose
    specificity is ``0.90 + specificity_gap`` and sensitivity ``0.85 - sensitivity_drop``.

    ``repeat_share`` of patients have 2-6 studies; for a patient's study the model's error
    draw is the patient's own with probability ``shared_error`` (hard images are hard on every
    study), so the model is right or wrong on a patient's studies together.
    """
    patient = patient_index(rng, n, repeat_share=repeat_share)
    n_patients = patient.max() + 1
    others = np.where(rng.random(n_patients) < 0.5, "Ysio", "DRX")
    scanner = np.where(rng.random(n_patients) < focus_share, FOCUS, others)[patient]
    diseased = (rng.random(n_patients) < 0.25)[patient]
    focus = scanner == FOCUS
    sensitivity = np.where(focus, 0.85 - sensitivity_drop, 0.85)
    specificity = np.where(focus, 0.90 + specificity_gap, 0.90)
    u = np.where(rng.random(n) < shared_error, rng.random(n_patients)[patient], rng.random(n))
    model_positive = np.where(diseased, u < sensitivity, u >= specificity)
    frame = pd.DataFrame({"scanner_model": scanner, "model_positive": model_positive,
                          "radiologist_positive": diseased})
    return frame, np.char.add("p", patient.astype(str))


def focus_result(results, metric: str):  # type: ignore[no-untyped-def]
    return next(r for r in results if r.feature == f"scanner_model={FOCUS}:{metric}")


# --------------------------------------------------------------------------- results


def test_results_carry_every_comparison_with_intervals_and_q_values():
    rng = np.random.default_rng(0)
    baseline, _ = subgroup_window(rng, 3000)
    frame, _ = subgroup_window(rng, 3000)
    frame.loc[:4, "site"] = "tiny"  # 5 studies: too few to test, must still be reported
    frame.loc[5:9, "sex"] = None
    results = SubgroupBias(min_group_size=30).fit(baseline).test(frame)
    features = {r.feature for r in results}
    assert "vendor=Philips:sensitivity" in features
    assert "view=LATERAL:override_rate" in features
    tiny = [r for r in results if r.feature.startswith("site=tiny:")]
    assert len(tiny) == 3
    assert all(r.p_value is None and not r.drift for r in tiny)
    assert all(r.details["status"] == "insufficient data" for r in tiny)
    assert all("window" in r.details["reason"] for r in tiny)
    assert not any(r.feature.startswith("sex=None") for r in results)
    tested = [r for r in results if r.p_value is not None]
    assert all(r.details["q_value"] >= r.p_value * (1 - 1e-12) for r in tested)
    assert {r.details["n_comparisons"] for r in tested} == {len(tested)}
    one = next(r for r in results if r.feature == "vendor=Siemens:specificity")
    details = one.details
    low, high = details["ci"]
    assert low < details["group_value"] < high
    assert one.statistic == pytest.approx(details["group_value"] - details["rest_value"])
    assert details["gap"] == pytest.approx(one.statistic)
    assert details["gap_change"] == pytest.approx(details["gap"] - details["baseline_gap"])
    change_low, change_high = details["gap_change_ci"]
    assert change_low < details["gap_change"] < change_high
    gap_low, gap_high = details["baseline_gap_ci"]
    assert gap_low < details["baseline_gap"] < gap_high
    assert details["baseline_value"] is not None and details["baseline_n"] == one.n_reference
    assert details["tolerance"] == DEFAULT_TOLERANCES["specificity"]
    assert details["tests"] == ["gap change", "tolerance"]  # no gap in the baseline
    assert details["standing"] is False
    assert 0 < details["rho"] < 1
    assert one.threshold == 0.05


def test_fit_skips_absent_fields_and_parameters_are_checked():
    rng = np.random.default_rng(1)
    baseline, _ = subgroup_window(rng, 2000)
    window, _ = subgroup_window(rng, 2000)
    detector = SubgroupBias(fields=("vendor", "not_a_column")).fit(baseline)
    results = detector.test(window)
    assert {r.details["field"] for r in results} == {"vendor"}
    assert all(r.details["baseline_value"] is not None for r in results)
    with pytest.raises(NotFittedError):
        SubgroupBias().test(window)
    with pytest.raises(ValidationError) as fields_error:
        SubgroupBias(fields="site").fit(baseline)  # type: ignore[arg-type]
    assert fields_error.value.field == "fields"
    for tolerances in ({"sensitivty": 0.1}, {"sensitivity": -0.1}, {"sensitivity": np.nan}):
        with pytest.raises(ValidationError) as tolerance_error:
            SubgroupBias(tolerances=tolerances).fit(baseline)
        assert tolerance_error.value.field == "tolerances"


def test_a_group_missing_from_the_baseline_is_judged_by_the_tolerance_alone():
    """A scanner new since the baseline has no baseline gap: only the tolerance test applies,
    and without a tolerance for the metric it is reported as insufficient data."""
    rng = np.random.default_rng(2)
    baseline, _ = scanner_window(rng, 3000, focus_share=0.0)
    window, _ = scanner_window(rng, 3000, focus_share=0.3, specificity_gap=-0.30)
    results = SubgroupBias(fields=SCANNER).fit(baseline).test(window)
    new = focus_result(results, "specificity")
    assert new.details["tests"] == ["tolerance"] and new.n_reference == 0
    assert new.details["baseline_gap"] is None and new.details["rho"] == 0.0
    assert new.drift and new.details["direction"] == "worse"
    untolerated = SubgroupBias(fields=SCANNER, tolerances={}).fit(baseline).test(window)
    insufficient = focus_result(untolerated, "specificity")
    assert insufficient.p_value is None and not insufficient.drift
    assert insufficient.details["status"] == "insufficient data"
    assert "no baseline gap" in insufficient.details["reason"]


def test_a_standing_gap_is_marked_and_a_gap_beyond_tolerance_is_judged_by_its_change():
    rng = np.random.default_rng(3)
    baseline, _ = scanner_window(rng, 4000, specificity_gap=-0.15)
    window, _ = scanner_window(rng, 1500, specificity_gap=-0.15)
    standing = focus_result(SubgroupBias(fields=SCANNER).fit(baseline).test(window),
                            "specificity")
    assert standing.details["standing"] and standing.details["standing_q"] < 0.05
    assert standing.details["gap_direction"] == "worse"
    assert standing.details["baseline_gap"] < -0.10  # beyond the 0.10 tolerance already
    assert standing.details["tests"] == ["gap change"]
    assert not standing.drift


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(("gap", "tests"), [(-0.12, ["gap change"]),
                                            (-0.04, ["gap change", "tolerance"])])
def test_false_positive_rate_with_a_standing_gap(gap, tests, record_property):
    """Specificity 0.90 - |gap| on one scanner (20% of patients) in the baseline (3000
    studies) and in the window (1000 studies) alike: no change. A gap of 0.12 lies beyond the
    0.10 tolerance (gap-change test only); one of 0.04 within it (both tests)."""
    runs = 400
    rejected = []
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        baseline, _ = scanner_window(rng, 3000, specificity_gap=gap)
        window, _ = scanner_window(rng, 1000, specificity_gap=gap)
        result = focus_result(SubgroupBias(fields=SCANNER).fit(baseline).test(window),
                              "specificity")
        rejected.append(result.p_value < 0.05)
    assert result.details["tests"] == tests
    # measured: 0.0425 (gap 0.12), 0.02 (gap 0.04: two tests, Bonferroni); bound 0.0725
    assert rate(record_property, "false_positive_rate", rejected) <= binomial_bound(0.05, runs)


def test_repeat_studies_do_not_inflate_the_false_positive_rate(record_property):
    """Half of the patients have 2-6 studies, and 80% of a patient's studies share the model's
    error draw. With patient keys the rate stays at the level; ignoring them (each study its
    own patient) it does not, which shows the simulated clustering matters."""
    runs = 400
    corrected, naive = [], []
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        shape = {"specificity_gap": -0.12, "repeat_share": 0.5, "shared_error": 0.8}
        baseline, patients_ref = scanner_window(rng, 3000, **shape)
        window, patients = scanner_window(rng, 1000, **shape)
        detector = SubgroupBias(fields=SCANNER)
        with_keys = detector.fit(baseline, groups=patients_ref).test(window, groups=patients)
        corrected.append(focus_result(with_keys, "specificity").p_value < 0.05)
        without = detector.fit(baseline).test(window)
        naive.append(focus_result(without, "specificity").p_value < 0.05)
    # measured: 0.0525 with patient keys (bound 0.0725), 0.175 without
    assert rate(record_property, "false_positive_rate", corrected) <= binomial_bound(0.05, runs)
    assert rate(record_property, "naive_false_positive_rate", naive) > binomial_bound(0.05, runs)


def test_a_group_doing_better_never_fires(record_property):
    """Specificity on one scanner 0.90 in the baseline, 0.98 in the window: p near 1, never a
    finding. A scanner better than the rest from the start (0.98 throughout) is no standing
    finding."""
    improved_p, standing_better_p = [], []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        baseline, _ = scanner_window(rng, 3000)
        window, _ = scanner_window(rng, 1000, specificity_gap=0.08)
        improved = focus_result(SubgroupBias(fields=SCANNER).fit(baseline).test(window),
                                "specificity")
        assert not improved.drift and improved.details["direction"] == "better"
        improved_p.append(improved.p_value)
        baseline, _ = scanner_window(rng, 3000, specificity_gap=0.08)
        window, _ = scanner_window(rng, 1000, specificity_gap=0.08)
        better = focus_result(SubgroupBias(fields=SCANNER).fit(baseline).test(window),
                              "specificity")
        assert not better.details["standing"] and better.details["gap_direction"] == "better"
        standing_better_p.append(better.p_value)
    # measured: smallest p 1.0 when improved (both tests, capped); a group better from the
    # start and unchanged is a no-change case, under the level like any other (0.03)
    record_property("smallest_p_improved", min(improved_p))
    assert min(improved_p) > 0.5
    assert rate(record_property, "standing_better_p_below_0.05",
                [p < 0.05 for p in standing_better_p]) <= binomial_bound(0.05, 200)


def test_power_on_a_sensitivity_drop_in_a_group_of_150_reads(record_property):
    """Sensitivity 0.85 -> 0.70 on one scanner (30% of patients): a window of 2000 studies
    holds about 150 of its radiologist-positive reads, the baseline (a week against a day)
    five times as many. Power is the share of runs with p < 0.05 (the daily evidence); the
    per-window verdict (q < 0.05 across the call's 9 comparisons) is recorded alongside."""
    found, flagged, reads = [], [], []
    for seed in range(300):
        rng = np.random.default_rng(seed)
        baseline, _ = scanner_window(rng, 10_000, focus_share=0.3)
        window, _ = scanner_window(rng, 2000, focus_share=0.3, sensitivity_drop=0.15)
        result = focus_result(SubgroupBias(fields=SCANNER).fit(baseline).test(window),
                              "sensitivity")
        found.append(result.p_value < 0.05 and result.details["direction"] == "worse")
        flagged.append(result.drift)
        reads.append(result.n_current)
    assert 140 <= np.mean(reads) <= 160
    rate(record_property, "per_window_drift_rate", flagged)
    # measured: 0.923 (per-window drift 0.697)
    assert rate(record_property, "power", found) >= 0.85


def test_lowered_subgroup_is_found(record_property):
    """Philips studies lose 15 points of sensitivity (0.85 -> 0.70) in the window, not in the
    baseline; 6000 studies each, about 300 radiologist-positive reads per vendor; 66
    comparisons under BH at FDR 0.05.

    Findings in site, sex, age band or view are false (those are independent of the vendor);
    their share among a run's findings, averaged over runs, is the false discovery rate.
    """
    found, evidence, false_shares = [], [], []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        baseline, _ = subgroup_window(rng, 6000)
        frame, _ = subgroup_window(rng, 6000, lowered="Philips")
        results = SubgroupBias().fit(baseline).test(frame)
        target = next(r for r in results if r.feature == "vendor=Philips:sensitivity")
        found.append(target.drift and target.details["direction"] == "worse")
        evidence.append(target.p_value < 0.05)
        findings = [r for r in results if r.drift]
        false = [r for r in findings if r.details["field"] not in VENDOR_FIELDS]
        false_shares.append(len(false) / max(len(findings), 1))
    # measured: p < 0.05 in 0.98 of runs, q < 0.05 in 0.81 (the baseline's variance and the
    # tolerance test's Bonferroni factor against one in 66), false discovery rate 0.012
    assert rate(record_property, "evidence_power", evidence) >= 0.90
    assert rate(record_property, "power", found) >= 0.70
    assert rate(record_property, "false_discovery_rate", false_shares) <= 0.05


@pytest.mark.parametrize("repeat_share", [0.0, 0.3])
def test_no_finding_when_no_subgroup_changed(repeat_share, record_property):
    """Any finding among a call's 66 comparisons; with repeat studies 30% of patients have
    2-6 studies, sharing scanner, site, sex, age band and finding."""
    any_finding = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        baseline, patients_ref = subgroup_window(rng, 6000, repeat_share=repeat_share)
        frame, patients = subgroup_window(rng, 6000, repeat_share=repeat_share)
        detector = SubgroupBias().fit(baseline, groups=patients_ref)
        any_finding.append(any(r.drift for r in detector.test(frame, groups=patients)))
    # measured: 0.02 and 0.02
    assert rate(record_property, "any_finding_rate", any_finding) <= 0.10
