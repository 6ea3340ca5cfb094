"""Evidently reports: written per check, and on the same columns our verdicts agree with
Evidently's DataDriftPreset on clear shifts and on no shift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitor.checks.reports import (
    ReportError,
    inert_value,
    inline_scripts,
    report_policy,
    run_drift_preset,
    script_hash,
    with_policy,
    write_drift_report,
)
from monitor.checks.run import resolve_report_path
from monitor.detect.metadata import CategoricalDrift, NumericDrift
from monitor.errors import InsufficientDataError
from monitor.runtime import Runtime
from monitor.store import results
from monitor.store.db import session_scope
from tests.simdb import SimulatedTemplate

pytest_plugins = ["tests.simdb"]

NUMERIC = ("kvp", "score")
CATEGORICAL = ("site", "view")
SITES = np.array(["north", "south", "east"])
VIEWS = np.array(["PA", "AP", "LATERAL"])


def frame(rng: np.random.Generator, n: int, *, kvp_shift: float = 0.0, score_shift: float = 0.0,
          site_p: tuple[float, ...] = (0.5, 0.3, 0.2),
          view_p: tuple[float, ...] = (0.75, 0.07, 0.18)) -> pd.DataFrame:
    return pd.DataFrame({
        "kvp": rng.normal(115.0 + kvp_shift, 8.0, n),
        "score": 1 / (1 + np.exp(-(rng.normal(-1.5 + score_shift, 1.2, n)))),
        "site": rng.choice(SITES, size=n, p=site_p),
        "view": rng.choice(VIEWS, size=n, p=view_p),
    })


def our_verdicts(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, bool]:
    verdicts = {}
    for column in NUMERIC:
        detector = NumericDrift(feature=column, method="ks").fit(reference[column])
        verdicts[column] = detector.test(current[column]).drift
    for column in CATEGORICAL:
        detector = CategoricalDrift(feature=column).fit(reference[column])
        verdicts[column] = detector.test(current[column]).drift
    return verdicts


def evidently_verdicts(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, bool]:
    _, columns = run_drift_preset(reference, current, numeric=NUMERIC, categorical=CATEGORICAL)
    assert {c.column for c in columns} == set(NUMERIC + CATEGORICAL)
    assert all(c.is_p_value for c in columns)  # under 1,000 reference rows: KS, chi-square
    return {c.column: c.drift for c in columns}


def test_verdicts_agree_with_evidently_without_shift() -> None:
    """12 seeded no-shift windows x 4 columns, 1,000 reference and 150 current rows.

    On numbers both sides run scipy's two-sample KS. On categories Evidently's chi-square is
    a goodness-of-fit test that takes the reference shares as known, ours the two-sample
    contingency test: Evidently's statistic is larger by about 1 + n_current / n_reference,
    so it over-alarms unless the reference is much larger than the window (here 1.15:
    about 0.07 against 0.05 with three categories; at 600 vs 300 rows it is about 0.13).
    With this 1:0.15 split at most 3 of the 48 verdicts may differ (expected about 0.75;
    1 of 80 in a longer run), and each side calls drift in at most 7 (nominal 0.05 gives
    2.4, Evidently's inflated categorical rate about 2.9; P(> 7) < 0.02)."""
    agree = ours_drift = theirs_drift = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        reference, current = frame(rng, 1_000), frame(rng, 150)
        ours, theirs = our_verdicts(reference, current), evidently_verdicts(reference, current)
        agree += sum(ours[c] == theirs[c] for c in ours)
        ours_drift += sum(ours.values())
        theirs_drift += sum(theirs.values())
    assert agree >= 45
    assert ours_drift <= 7 and theirs_drift <= 7


def test_verdicts_agree_with_evidently_on_clear_shifts() -> None:
    """kVp moved by 1 SD, the score logit by 1, the site mix reversed: every shifted column
    is drift for both in all 5 seeds; the unshifted view column agrees in >= 4 of 5."""
    view_agree = 0
    for seed in range(5):
        rng = np.random.default_rng(100 + seed)
        reference = frame(rng, 1_000)
        current = frame(rng, 150, kvp_shift=8.0, score_shift=1.0, site_p=(0.2, 0.3, 0.5))
        ours, theirs = our_verdicts(reference, current), evidently_verdicts(reference, current)
        for column in ("kvp", "score", "site"):
            assert ours[column] and theirs[column], (seed, column)
        view_agree += ours["view"] == theirs["view"]
    assert view_agree >= 4


def test_distance_methods_are_read_in_their_direction() -> None:
    """Above 1,000 reference rows Evidently reports distances (drift when >= threshold)."""
    rng = np.random.default_rng(7)
    reference = frame(rng, 2_000)
    _, same = run_drift_preset(reference, frame(rng, 2_000), numeric=NUMERIC,
                               categorical=CATEGORICAL)
    _, moved = run_drift_preset(reference, frame(rng, 2_000, kvp_shift=16.0), numeric=NUMERIC,
                                categorical=CATEGORICAL)
    kvp_same = next(c for c in same if c.column == "kvp")
    kvp_moved = next(c for c in moved if c.column == "kvp")
    assert not kvp_same.is_p_value and not kvp_moved.is_p_value
    assert not kvp_same.drift and kvp_same.value < kvp_same.threshold
    assert kvp_moved.drift and kvp_moved.value >= kvp_moved.threshold


def test_report_is_written_as_html(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    path = write_drift_report(frame(rng, 200), frame(rng, 100, kvp_shift=8.0),
                              path=tmp_path / "a" / "report.html", title="cxr <1.4.0>")
    page = path.read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith(("<!doctype html", "<html"))
    assert "cxr &lt;1.4.0&gt;" in page and "kvp" in page
    assert not list(tmp_path.glob("a/*.tmp"))
    with pytest.raises(InsufficientDataError, match="current 0"):
        write_drift_report(frame(rng, 50), frame(rng, 0), path=tmp_path / "b.html")


def test_every_checked_window_links_its_report(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    with session_scope(simulated_runtime.sessions) as session:
        runs = [results.get_check_run(session, run_id, with_results=False)
                for run_id in simulated_template.check_run_ids.values()]
    paths = {run.id: resolve_report_path(simulated_runtime.settings.reports_dir,
                                         run.report_path or "") for run in runs}
    assert len(set(paths.values())) == len(runs)
    for run in runs:
        assert run.report_path is not None and not Path(run.report_path).is_absolute()
        assert paths[run.id].is_file()
        assert paths[run.id].is_relative_to(simulated_runtime.settings.reports_dir)
        assert f"window {run.window_label}" in paths[run.id].read_text(encoding="utf-8")


HOSTILE = ("</script><script>window.__xss=1</script>", "<img src=x onerror=alert(1)>",
           "javascript:alert(1)", "&lt;script&gt;", "\u202eexe.txt", "'\"><svg onload=x>")


def test_event_values_reach_evidently_inert(tmp_path: Path) -> None:
    """Hostile category values leave no tag, no script and no bidi override in the page;
    the page has Evidently's four scripts and a policy that names exactly their hashes."""
    rng = np.random.default_rng(5)
    reference, current = frame(rng, 300), frame(rng, 120)
    reference["site"] = rng.choice(HOSTILE, size=len(reference))
    current["view"] = rng.choice(HOSTILE, size=len(current))
    path = write_drift_report(reference, current, path=tmp_path / "r.html")
    page = path.read_text(encoding="utf-8")
    scripts = inline_scripts(page)
    assert len(scripts) == 4
    data = scripts[0]  # the bundle (scripts[2]) has its own "<svg" and "<img" strings
    assert "<" not in data and "\u202e" not in page
    assert "&lt;/script&gt;&lt;script&gt;window.__xss=1" in data
    assert "&amp;lt;script&amp;gt;" in data  # an entity in a value stays text, not markup
    policy = report_policy(path)
    assert policy is not None and "default-src 'none'" in policy
    assert sorted(policy.split("script-src ")[1].split(";")[0].split()) == sorted(
        script_hash(s) for s in scripts)


def test_inert_value_escapes_and_strips() -> None:
    assert inert_value("<b>&\"'") == "&lt;b&gt;&amp;&quot;&#x27;"
    assert inert_value("a\u202eb\u200bc\x00d\te") == "abcd e"
    assert inert_value("a<b") != inert_value("a&lt;b")


def test_a_page_with_an_extra_script_is_refused(tmp_path: Path) -> None:
    """If a value ever broke out of Evidently's data script, the page is not written."""
    rng = np.random.default_rng(6)
    snapshot, _ = run_drift_preset(frame(rng, 200), frame(rng, 100), numeric=NUMERIC,
                                   categorical=CATEGORICAL)
    page = snapshot.get_html_str(as_iframe=False)
    assert "<meta http-equiv=\"Content-Security-Policy\"" in with_policy(page)
    broken = page.replace('"north"', '"</script><script>alert(1)</script>"', 1)
    with pytest.raises(ReportError, match="holds 5 scripts"):
        with_policy(broken)


def test_a_report_without_a_policy_has_none(tmp_path: Path) -> None:
    old = tmp_path / "old.html"
    old.write_text("<!DOCTYPE html><html><head></head><body></body></html>")
    assert report_policy(old) is None


def test_served_with_its_policy_or_as_an_attachment(tmp_path: Path) -> None:
    """A report with its policy renders inline under it (plus no framing, a sandbox); one
    written without a policy is an attachment in which nothing runs."""
    from monitor.api.checks import report_headers

    rng = np.random.default_rng(8)
    path = write_drift_report(frame(rng, 200), frame(rng, 100), path=tmp_path / "r.html")
    headers = report_headers(path, 7)
    policy = headers["Content-Security-Policy"]
    assert policy.startswith(report_policy(path) or "-")
    assert "frame-ancestors 'none'" in policy and "sandbox allow-scripts" in policy
    assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
    assert headers["Content-Disposition"] == 'inline; filename="check-7-report.html"'
    assert headers["X-Content-Type-Options"] == "nosniff"
    old = tmp_path / "old.html"
    old.write_text("<!DOCTYPE html><html><head></head><body><script>1</script></body></html>")
    headers = report_headers(old, 8)
    assert headers["Content-Disposition"].startswith("attachment;")
    assert "default-src 'none'; sandbox;" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
