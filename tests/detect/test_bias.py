"""Subgroup bias: a lowered subgroup is found, no subgroup is flagged when none changed (with
and without repeat studies), small groups are reported rather than dropped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitor.detect.bias import SubgroupBias
from monitor.errors import ValidationError
from tests.detect.support import rate

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
    sizes = np.where(rng.random(n) < repeat_share, rng.integers(2, 7, n), 1)
    patient = np.repeat(np.arange(n), sizes)[:n]
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


def test_results_carry_every_comparison_with_intervals_and_q_values():
    rng = np.random.default_rng(0)
    frame, _ = subgroup_window(rng, 3000)
    frame.loc[:4, "site"] = "tiny"  # 5 studies: too few to test, must still be reported
    frame.loc[5:9, "sex"] = None
    results = SubgroupBias(min_group_size=30).test(frame)
    features = {r.feature for r in results}
    assert "vendor=Philips:sensitivity" in features
    assert "view=LATERAL:override_rate" in features
    tiny = [r for r in results if r.feature.startswith("site=tiny:")]
    assert len(tiny) == 3
    assert all(r.p_value is None and not r.drift for r in tiny)
    assert all(r.details["status"] == "insufficient data" for r in tiny)
    assert not any(r.feature.startswith("sex=None") for r in results)
    tested = [r for r in results if r.p_value is not None]
    assert all(r.details["q_value"] >= r.p_value * (1 - 1e-12) for r in tested)
    assert {r.details["n_comparisons"] for r in tested} == {len(tested)}
    one = next(r for r in results if r.feature == "vendor=Siemens:specificity")
    low, high = one.details["ci"]
    assert low < one.details["group_value"] < high
    assert one.statistic == pytest.approx(one.details["group_value"] - one.details["rest_value"])
    assert one.details["baseline_value"] is None
    assert one.threshold == 0.05


def test_fit_stores_baseline_values_and_skips_absent_fields():
    rng = np.random.default_rng(1)
    baseline, _ = subgroup_window(rng, 2000)
    window, _ = subgroup_window(rng, 2000)
    detector = SubgroupBias(fields=("vendor", "not_a_column")).fit(baseline)
    results = detector.test(window)
    assert {r.details["field"] for r in results} == {"vendor"}
    assert all(r.details["baseline_value"] is not None for r in results)
    with pytest.raises(ValidationError):
        SubgroupBias(fields="site").test(window)  # type: ignore[arg-type]


def test_lowered_subgroup_is_found(record_property):
    """Philips studies lose 15 points of sensitivity (0.85 -> 0.70); 6000 studies, so about
    300 radiologist-positive reads per vendor; 66 comparisons under BH at FDR 0.05.

    Findings in site, sex, age band or view are false (those are independent of the vendor);
    their share among a run's findings, averaged over runs, is the false discovery rate.
    """
    found, false_shares = [], []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        frame, _ = subgroup_window(rng, 6000, lowered="Philips")
        results = SubgroupBias().test(frame)
        target = next(r for r in results if r.feature == "vendor=Philips:sensitivity")
        found.append(target.drift and target.details["direction"] == "worse")
        findings = [r for r in results if r.drift]
        false = [r for r in findings if r.details["field"] not in VENDOR_FIELDS]
        false_shares.append(len(false) / max(len(findings), 1))
    # measured: power 1.0, false discovery rate 0.025
    assert rate(record_property, "power", found) >= 0.80
    assert rate(record_property, "false_discovery_rate", false_shares) <= 0.05


def test_no_finding_when_no_subgroup_changed(record_property):
    any_finding = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        frame, _ = subgroup_window(rng, 6000)
        any_finding.append(any(r.drift for r in SubgroupBias().test(frame)))
    # measured: 0.045
    assert rate(record_property, "any_finding_rate", any_finding) <= 0.10


def test_no_finding_when_no_subgroup_changed_with_repeat_studies(record_property):
    """30% of patients have 2-6 studies, sharing scanner, site, sex, age band and finding."""
    any_finding = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        frame, patients = subgroup_window(rng, 6000, repeat_share=0.3)
        any_finding.append(any(r.drift for r in SubgroupBias().test(frame, groups=patients)))
    # measured: 0.05
    assert rate(record_property, "any_finding_rate", any_finding) <= 0.10
