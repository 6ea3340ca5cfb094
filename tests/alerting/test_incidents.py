"""Incidents on stored check runs with hand-built sequential evidence and attribution rows:
findings grouped by cause, one page per incident (and one on escalation), hysteresis,
one-sided subgroup incidents, resolution on rollback and retirement."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from monitor.alerting import engine, rollback
from monitor.alerting.config import AlertingConfig, parse_config
from monitor.alerting.incidents import canonical_cause, group_run
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.incidents import IncidentInfo, get_incident, list_incidents
from monitor.store.models import Incident, Notification
from monitor.store.results import get_check_run
from tests.alerting.support import (
    add_version,
    attribution,
    rank,
    result,
    sequential,
    store_run,
)

NOW = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
WEBHOOK = {"webhooks": [{"url": "http://127.0.0.1:9/never-called"}]}
# XR-SOUTH-1 is the only Ysio Max; SIEMENS has other scanners (more studies).
SOUTH = (rank("station", "XR-SOUTH-1", 30, 0.40, share_current=0.14),
         rank("scanner_model", "Ysio Max", 30, 0.39, share_current=0.14),
         rank("software_version", "VF12B", 29, 0.38, share_current=0.14),
         rank("vendor", "SIEMENS", 90, 0.20, share_current=0.42),
         rank("site", "south", 120, 0.10, share_current=0.55))


def _config(**extra: Any) -> AlertingConfig:
    return parse_config({"notifications": WEBHOOK, **extra})  # the built-in rules


def _evaluate(runtime: Runtime, version: int, day: int, rows: list[dict[str, Any]],
              config: AlertingConfig | None = None) -> engine.EvaluationReport:
    run = store_run(runtime, version, day=day, results=rows)
    return engine.process_check_run(runtime, run, config=config or _config(), deliver=False,
                                    now=NOW + timedelta(days=day))


def _incidents(runtime: Runtime, state: str | None = None) -> list[IncidentInfo]:
    with session_scope(runtime.sessions) as session:
        return [get_incident(session, i.id) for i in list_incidents(session, state=state)]


def _events(runtime: Runtime) -> list[tuple[int | None, str]]:
    with session_scope(runtime.sessions) as session:
        return [tuple(row) for row in session.execute(  # type: ignore[misc]
            select(Notification.incident_id, Notification.event).order_by(Notification.id))]


def test_canonical_cause_names_the_most_specific_field_of_the_same_studies() -> None:
    cause = canonical_cause(list(SOUTH))
    assert cause is not None and (cause.field, cause.value) == ("station", "XR-SOUTH-1")
    assert cause.label == "XR-SOUTH-1 (Ysio Max, software VF12B)"
    assert ("scanner_model", "Ysio Max") in cause.names and cause.share == pytest.approx(0.14)
    vendor = canonical_cause([rank("vendor", "Fujifilm", 40, 0.5),
                              rank("scanner_model", "FDR Smart X", 41, 0.48)])
    assert vendor is not None and vendor.key == ("scanner_model", "FDR Smart X")
    assert vendor.label == "FDR Smart X (Fujifilm)"
    # a vendor with more studies than the scanner is not the same cause; a value that
    # explains little is not either, whatever its size; "(missing)" names nothing
    apart = canonical_cause([rank("scanner_model", "FDR Smart X", 40, 0.5),
                             rank("vendor", "Fujifilm", 60, 0.45),
                             rank("site", "north", 40, 0.01),
                             rank("station", "(missing)", 40, 0.6)])
    assert apart is not None and apart.label == "FDR Smart X"
    assert canonical_cause([rank("view", "AP", 40, 0.5)]) is None


def test_two_detectors_on_one_scanner_are_one_incident(runtime: Runtime) -> None:
    version = add_version(runtime, "1.4.0")
    report = _evaluate(runtime, version, 10, [
        sequential("MMDDrift/embedding", "embedding", "page", since="2026-10-11", daily_p=2e-6),
        sequential("CategoricalDrift/software_version", "metadata", "warning",
                   since="2026-10-10"),
        result("CategoricalDrift", "software_version", p_value=1e-9, family="metadata"),
        attribution(*SOUTH)])
    (incident,) = _incidents(runtime)
    assert report.incidents_opened == (incident.id,)
    assert (incident.cause_field, incident.cause_value) == ("station", "XR-SOUTH-1")
    assert incident.severity == "critical" and incident.state == "open"
    assert incident.first_evidence_day == date(2026, 10, 10)
    assert len(incident.findings) == 2 and {f.incident_id for f in incident.findings} == {
        incident.id}
    assert [e["stream"] for e in incident.evidence] == [
        "MMDDrift/embedding", "CategoricalDrift/software_version"]
    assert incident.summary is not None
    assert incident.summary.startswith("XR-SOUTH-1 (Ysio Max, software VF12B) since "
                                       "2026-10-10: embedding MMD p<1e-4")
    assert incident.summary.endswith("; 14% of studies")
    assert _events(runtime) == [(incident.id, "firing")]  # one page for both findings


def test_a_vendor_and_its_scanner_model_are_one_incident(runtime: Runtime) -> None:
    version = add_version(runtime, "1.4.0")
    _evaluate(runtime, version, 14, [
        sequential("CategoricalDrift/vendor", "metadata", "page"),
        sequential("CategoricalDrift/scanner_model", "metadata", "page"),
        sequential("NumericDrift/pixel_spacing_mm", "metadata", "warning"),
        attribution(rank("vendor", "Fujifilm", 40, 0.5),
                    rank("scanner_model", "FDR Smart X", 41, 0.48), basis="metadata")])
    (incident,) = _incidents(runtime)
    assert incident.cause_label == "FDR Smart X (Fujifilm)" and len(incident.findings) == 3
    assert incident.severity == "critical"


def test_a_new_vendor_after_a_software_update_is_an_incident_of_its_own(
        runtime: Runtime) -> None:
    """The update still leads the day's ranking; the vendor's and scanner model's own
    findings are about the vendor that moved them."""
    version = add_version(runtime, "1.4.0")
    update = rank("software_version", "VF12B", 30, 0.30, share_current=0.15)
    _evaluate(runtime, version, 10, [
        sequential("CategoricalDrift/software_version", "metadata", "page"),
        attribution(update, basis="metadata")])
    report = _evaluate(runtime, version, 14, [
        sequential("CategoricalDrift/software_version", "metadata", "page"),
        sequential("CategoricalDrift/vendor", "metadata", "page"),
        sequential("CategoricalDrift/scanner_model", "metadata", "page"),
        attribution(update, rank("scanner_model", "FDR Smart X", 41, 0.12, share_current=0.2),
                    rank("vendor", "Fujifilm", 40, 0.11, share_current=0.2), basis="metadata")])
    assert len(report.incidents_opened) == 1
    by_cause = {i.cause_label: (sorted(f.labels["feature"] for f in i.findings), i.summary)
                for i in _incidents(runtime)}
    assert set(by_cause) == {"software VF12B", "FDR Smart X (Fujifilm)"}
    assert by_cause["FDR Smart X (Fujifilm)"][0] == ["CategoricalDrift/scanner_model",
                                                     "CategoricalDrift/vendor"]
    assert (by_cause["FDR Smart X (Fujifilm)"][1] or "").endswith("; 20% of studies")


def test_a_novelty_finding_is_about_the_scanner_of_its_novel_studies(
        runtime: Runtime) -> None:
    """A few inverted images barely move the window's mean: the embedding basis names the
    site whose case mix moved that day, the novel studies all come from one station."""
    version = add_version(runtime, "1.4.0")
    _evaluate(runtime, version, 12, [
        sequential("NoveltyDrift/embedding", "embedding", "page"),
        attribution(rank("site", "south", 200, 0.05, share_current=0.5), basis="embedding"),
        attribution(rank("station", "XR-NORTH-1", 8, 12.0, share_current=1.0),
                    rank("scanner_model", "Discovery XR656", 8, 11.0, share_current=1.0),
                    rank("site", "north", 8, 4.0, share_current=1.0), basis="novelty")])
    (incident,) = _incidents(runtime)
    assert (incident.cause_field, incident.cause_value) == ("station", "XR-NORTH-1")


def test_a_scanners_subgroup_finding_joins_its_software_update_incident(
        runtime: Runtime) -> None:
    """After the update, the scanner's specificity falls: its subgroup streams, on the scanner
    model and on its vendor (the vendor's only scanner here), are about the same studies as
    the update, which the day's ranking counts under every name (the reference held no study
    of the new software version)."""
    version = add_version(runtime, "1.4.0")
    south = (rank("software_version", "VF12B", 30, 0.40, share_current=0.14),
             rank("station", "XR-SOUTH-1", 30, 0.39, n_reference=120),
             rank("scanner_model", "Ysio Max", 30, 0.38, n_reference=120),
             rank("vendor", "Siemens", 30, 0.2, n_reference=120),
             rank("site", "south", 120, 0.10, n_reference=480),
             rank("station", "XR-EAST-1", 30, 0.01, n_reference=200))
    _evaluate(runtime, version, 10, [
        sequential("CategoricalDrift/software_version", "metadata", "page"),
        attribution(*south, basis="metadata")])
    _evaluate(runtime, version, 12, [
        sequential("CategoricalDrift/software_version", "metadata", "page"),
        sequential("SubgroupBias/scanner_model=Ysio Max:specificity", "bias", "page",
                   direction="worse"),
        sequential("SubgroupBias/vendor=Siemens:specificity", "bias", "warning",
                   direction="worse"),
        sequential("SubgroupBias/age_band=80+:specificity", "bias", "page",
                   direction="worse"),
        attribution(*south, basis="metadata")])
    by_cause = {(i.cause_field, i.cause_value): sorted(f.labels["feature"] for f in i.findings)
                for i in _incidents(runtime)}
    assert by_cause == {
        ("station", "XR-SOUTH-1"): [
            "CategoricalDrift/software_version",
            "SubgroupBias/scanner_model=Ysio Max:specificity",
            "SubgroupBias/vendor=Siemens:specificity"],
        ("age_band", "80+"): ["SubgroupBias/age_band=80+:specificity"]}


def test_pages_once_escalates_once_and_resolves_after_two_quiet_days(runtime: Runtime) -> None:
    version = add_version(runtime, "1.4.0")
    stream = "MMDDrift/embedding"
    levels = ["warning", "warning", "page", "page", "warning", "quiet", "quiet"]
    opened, escalated, resolved = [], [], []
    for day, level in enumerate(levels, start=10):
        report = _evaluate(runtime, version, day, [sequential(stream, "embedding", level),
                                                   attribution(*SOUTH)])
        opened += report.incidents_opened
        escalated += report.incidents_escalated
        resolved += report.incidents_resolved
    (incident,) = _incidents(runtime, state=None)
    assert opened == escalated == resolved == [incident.id]
    assert _events(runtime) == [(incident.id, "firing"), (incident.id, "escalated"),
                                (incident.id, "resolved")]
    assert incident.state == "resolved" and incident.resolved_reason == "cause gone"
    assert incident.severity == "critical"  # what was paged, kept while it was open
    assert incident.escalated_at is not None and incident.paged_at is not None
    # the warning and the page of one stream are two findings of the one incident
    assert sorted(f.rule for f in incident.findings) == ["sequential-page",
                                                         "sequential-warning"]


def test_one_quiet_day_does_not_resolve_and_a_back_filled_day_does_not_count(
        runtime: Runtime) -> None:
    version = add_version(runtime, "1.4.0")
    rows = [sequential("MMDDrift/embedding", "embedding", "page"), attribution(*SOUTH)]
    quiet = [sequential("MMDDrift/embedding", "embedding", "quiet"), attribution(*SOUTH)]
    _evaluate(runtime, version, 10, rows)
    _evaluate(runtime, version, 11, quiet)
    _evaluate(runtime, version, 12, rows)  # back: the quiet count starts again
    _evaluate(runtime, version, 13, quiet)
    _evaluate(runtime, version, 5, quiet)  # an older window, back-filled: not counted
    (incident,) = _incidents(runtime)
    assert incident.state == "open" and _events(runtime) == [(incident.id, "firing")]
    _evaluate(runtime, version, 14, quiet)
    assert _incidents(runtime, state="resolved")[0].id == incident.id


def test_a_finding_keeps_its_incident_when_the_attribution_moves(runtime: Runtime) -> None:
    version = add_version(runtime, "1.4.0")
    _evaluate(runtime, version, 10, [sequential("MMDDrift/embedding", "embedding", "page"),
                                     attribution(*SOUTH)])
    # the next day the site ranks first; a new finding whose group names the station joins
    site_first = attribution(rank("site", "south", 31, 0.5),
                             rank("station", "XR-SOUTH-1", 30, 0.45))
    report = _evaluate(runtime, version, 11, [
        sequential("MMDDrift/embedding", "embedding", "page"),
        sequential("ClassifierDrift/embedding", "embedding", "page"), site_first])
    assert report.incidents_opened == ()
    (incident,) = _incidents(runtime)
    assert incident.cause_value == "XR-SOUTH-1" and len(incident.findings) == 2


def test_no_attribution_makes_the_version_the_cause(runtime: Runtime) -> None:
    version = add_version(runtime, "1.4.0")
    _evaluate(runtime, version, 10, [
        sequential("PerformanceDrift/sensitivity", "performance", "page"),
        result("PerformanceDrift", "sensitivity", p_value=1e-4, family="performance")])
    (incident,) = _incidents(runtime)
    assert (incident.cause_field, incident.cause_value, incident.cause_label) == (
        "version", "1.4.0", "version 1.4.0")
    assert "; " not in (incident.summary or "")  # no share of studies for the version


def test_a_performance_finding_is_the_versions_whatever_the_attribution(
        runtime: Runtime) -> None:
    """The attribution explains input drift; a metric of the whole version against its reads
    is not the scanner's (an override rise on a day a scanner also changed)."""
    version = add_version(runtime, "1.4.0")
    _evaluate(runtime, version, 20, [
        sequential("MMDDrift/embedding", "embedding", "page"),
        sequential("ScoreDrift/score", "prediction", "page"),
        sequential("PerformanceDrift/override_rate", "performance", "page"),
        attribution(*SOUTH)])
    by_cause = {i.cause_label: sorted(f.labels["feature"] for f in i.findings)
                for i in _incidents(runtime)}
    assert by_cause == {
        "XR-SOUTH-1 (Ysio Max, software VF12B)": ["MMDDrift/embedding", "ScoreDrift/score"],
        "version 1.4.0": ["PerformanceDrift/override_rate"]}


def _performance(metric: str, *, baseline: float, current: float) -> dict[str, Any]:
    row = result("PerformanceDrift", metric, p_value=1e-4, family="performance")
    row["details"].update(baseline={"value": baseline}, current={"value": current},
                          worse_direction="lower")
    return row


def _group(feature: str, *, now: float, rest: float, baseline: float, baseline_rest: float,
           p_gap_change: float = 1e-4) -> dict[str, Any]:
    group, _, metric = feature.rpartition(":")
    name, _, value = group.partition("=")
    row = result("SubgroupBias", feature, p_value=p_gap_change, family="bias")
    row["details"].update(field=name, value=value, metric=metric, direction="worse",
                          group_value=now, rest_value=rest, gap=now - rest,
                          baseline_value=baseline, baseline_gap=baseline - baseline_rest,
                          gap_change=(now - rest) - (baseline - baseline_rest),
                          p_gap_change=p_gap_change)
    return row


def test_a_performance_drop_that_one_subgroup_explains_is_that_subgroups(
        runtime: Runtime) -> None:
    """The version's specificity fell from 95% to 91% while the patients aged 80+ fell from
    93% to 68% and the rest held at 95%: the page is about the 80+ group, with its own
    finding. The sensitivity fell everywhere (80+ included): that stays the version's."""
    version = add_version(runtime, "1.4.0")
    _evaluate(runtime, version, 18, [
        sequential("PerformanceDrift/specificity", "performance", "page"),
        sequential("PerformanceDrift/sensitivity", "performance", "page"),
        sequential("SubgroupBias/age_band=80+:specificity", "bias", "warning",
                   direction="worse"),
        _performance("specificity", baseline=0.95, current=0.91),
        _performance("sensitivity", baseline=0.80, current=0.50),
        _group("age_band=80+:specificity", now=0.68, rest=0.95, baseline=0.93,
               baseline_rest=0.95),
        _group("age_band=80+:sensitivity", now=0.40, rest=0.52, baseline=0.78,
               baseline_rest=0.80),
        _group("view=AP:specificity", now=0.90, rest=0.92, baseline=0.94, baseline_rest=0.95,
               p_gap_change=0.2)])
    by_cause = {i.cause_label: sorted(f.labels["feature"] for f in i.findings)
                for i in _incidents(runtime)}
    assert by_cause == {
        "age 80+": ["PerformanceDrift/specificity", "SubgroupBias/age_band=80+:specificity"],
        "version 1.4.0": ["PerformanceDrift/sensitivity"]}


def _bias(feature: str, *, direction: str, gap_change: float) -> dict[str, Any]:
    row = result("SubgroupBias", feature, p_value=1e-4 if direction == "worse" else 0.99,
                 family="bias", statistic=gap_change)
    row["details"].update(direction=direction, group_value=0.71, rest_value=0.86,
                          gap=-0.15, gap_change=gap_change,
                          gap_change_ci=[gap_change - 0.06, gap_change + 0.06])
    return row


def test_only_a_subgroup_that_does_worse_opens_an_incident(runtime: Runtime) -> None:
    version = add_version(runtime, "1.4.0")
    _evaluate(runtime, version, 17, [
        sequential("SubgroupBias/age_band=80+:sensitivity", "bias", "page"),
        _bias("age_band=80+:sensitivity", direction="worse", gap_change=-0.13),
        # at the paging level but doing better than the rest today (a group whose statistic
        # has not come down yet): a finding, not an incident
        sequential("SubgroupBias/age_band=0-17:override_rate", "bias", "page"),
        _bias("age_band=0-17:override_rate", direction="better", gap_change=-0.04),
        # a stream that says so itself
        sequential("SubgroupBias/view=AP:specificity", "bias", "page", direction="better"),
        attribution(*SOUTH)])  # a subgroup's cause is the subgroup, not the attribution
    (incident,) = _incidents(runtime)
    assert (incident.cause_field, incident.cause_value, incident.cause_label) == (
        "age_band", "80+", "age 80+")
    (finding,) = incident.findings
    assert finding.labels["feature"] == "SubgroupBias/age_band=80+:sensitivity"
    (row,) = incident.evidence
    assert row["direction"] == "worse" and row["gap_change"] == pytest.approx(-0.13)
    assert ("age_band=80+ sensitivity 71% vs 86% for the rest, gap 13 pts worse than in the "
            "baseline (95% CI +7 to +19)") in (incident.summary or "")
    with session_scope(runtime.sessions) as session:
        firing = engine.list_alerts(session, state="firing")
    assert len(firing) == 3  # all three are findings; one is an incident
    assert sorted(a.incident_id is not None for a in firing) == [False, False, True]


def test_a_pending_finding_waits_and_severity_follows_the_firing_ones(
        runtime: Runtime) -> None:
    config = parse_config({"rules": [
        {"name": "perf-slow", "family": "performance", "condition": "p_value < 0.01",
         "for": 2, "severity": "critical"},
        {"name": "drift-now", "family": "embedding", "condition": "p_value < 0.01",
         "severity": "warning"}], "notifications": WEBHOOK})
    version = add_version(runtime, "1.4.0")
    perf = result("PerformanceDrift", "sensitivity", p_value=1e-3, family="performance")
    _evaluate(runtime, version, 10, [perf], config)
    assert _incidents(runtime) == []  # pending: no incident yet
    emb = result("MMDDrift", "embedding", p_value=1e-3, family="embedding")
    _evaluate(runtime, version, 11, [perf, emb], config)
    (incident,) = _incidents(runtime)
    assert incident.severity == "critical" and len(incident.findings) == 2


def test_a_silence_on_its_findings_silences_the_incident(runtime: Runtime) -> None:
    version = add_version(runtime, "1.4.0")
    _evaluate(runtime, version, 10, [sequential("MMDDrift/embedding", "embedding", "warning"),
                                     attribution(*SOUTH)])
    (incident,) = _incidents(runtime)
    (finding,) = incident.findings
    with session_scope(runtime.sessions) as session:
        engine.silence(session, finding.id, actor="bob", reason="known, fix on Monday",
                       until=NOW + timedelta(days=30))
    for day in (11, 12):
        _evaluate(runtime, version, day, [sequential("MMDDrift/embedding", "embedding",
                                                     "quiet"), attribution(*SOUTH)])
    (after,) = _incidents(runtime, state=None)
    assert after.state == "resolved"
    assert _events(runtime) == [(incident.id, "firing")]  # its end was not notified


def _production(runtime: Runtime) -> tuple[int, int]:
    old, new = add_version(runtime, "1.3.0"), add_version(runtime, "1.4.0")
    with session_scope(runtime.sessions) as session:
        rollback.promote(session, model="cxr-triage", version="1.3.0", actor="alice",
                         reason="initial release")
        rollback.promote(session, model="cxr-triage", version="1.4.0", actor="alice",
                         reason="better AUC")
    return old, new


def test_a_rollback_resolves_the_versions_incidents(runtime: Runtime) -> None:
    _, new = _production(runtime)
    _evaluate(runtime, new, 10, [sequential("PerformanceDrift/sensitivity", "performance",
                                            "page")])
    (incident,) = _incidents(runtime)
    with session_scope(runtime.sessions) as session:
        rollback.rollback(session, model="cxr-triage", actor="alice", reason="sensitivity",
                          config=_config())
    (after,) = _incidents(runtime, state=None)
    assert (after.state, after.resolved_reason) == ("resolved", "rolled back")
    assert all(f.state == "resolved" for f in after.findings)
    assert _events(runtime) == [(incident.id, "firing"), (incident.id, "resolved")]
    # a later check of the rolled-back version cannot reopen it for the same findings
    with session_scope(runtime.sessions) as session:
        assert list_incidents(session, version="1.4.0") == []


def test_a_retired_version_is_no_longer_live(runtime: Runtime) -> None:
    _, new = _production(runtime)
    _evaluate(runtime, new, 10, [sequential("MMDDrift/embedding", "embedding", "page")])
    add_version(runtime, "1.5.0")
    with session_scope(runtime.sessions) as session:
        rollback.promote(session, model="cxr-triage", version="1.5.0", actor="alice",
                         reason="fixes sensitivity", config=_config())
    (after,) = _incidents(runtime, state=None)
    assert (after.model_version, after.resolved_reason) == ("1.4.0", "no longer live")
    assert [event for _, event in _events(runtime)] == ["firing", "resolved"]


def test_one_open_incident_per_cause_even_when_grouping_runs_twice(runtime: Runtime) -> None:
    """Grouping the same run again (a repeated hook call) adds nothing."""
    version = add_version(runtime, "1.4.0")
    report = _evaluate(runtime, version, 10, [
        sequential("MMDDrift/embedding", "embedding", "page"), attribution(*SOUTH)])
    with session_scope(runtime.sessions) as session:
        run = get_check_run(session, report.check_run_id)
        again = group_run(session, run, _config(), now=NOW)
        assert again.opened == [] and again.notifications_queued == 0
        assert len(list(session.scalars(select(Incident)))) == 1
