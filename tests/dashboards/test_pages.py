"""Every dashboard page, run with Streamlit's AppTest over the small simulated deployment:
it runs without an exception and shows the numbers the database and the simulator's ground
truth say it should; the actions (acknowledge, silence, approve, reject) change the store
only for an operator with a reason; with tokens in the store every page asks for a read
token first."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from dashboards.actions import authenticate_operator
from dashboards.guard import LOGIN_FIELD_KEY, TOKEN_KEY
from dashboards.views.report import report_file
from monitor.api.errors import Forbidden, Unauthorized
from monitor.safe_output import markdown_text
from monitor.store import dashboard as q
from monitor.store.db import session_scope
from monitor.store.incidents import IncidentInfo, list_incidents
from monitor.store.models import (
    Alert,
    AuditEntry,
    Baseline,
    CheckResult,
    Incident,
    Inference,
    ModelAlias,
    ModelVersion,
    RollbackRecommendation,
)
from monitor.store.results import store_check_run
from monitor.store.tokens import revoke_token
from tests.conftest import open_runtime
from tests.dashboards.conftest import (
    APP,
    INGEST_TOKEN,
    OPERATOR,
    OPERATOR_TOKEN,
    VIEWER,
    VIEWER_TOKEN,
    DashboardData,
    add_tokens,
)
from tests.simdb import MODEL, PREVIOUS, PRODUCTION

TIMEOUT_S = 120


def open_page(page: str | None = None, *, token: str | None = VIEWER_TOKEN,
              **query: str) -> AppTest:
    """The app signed in with ``token`` (None: not signed in), on ``page``."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    if token is not None:
        at.session_state[TOKEN_KEY] = token
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page is not None:
        at.switch_page(f"views/{page}.py")
        at.query_params.update(query)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert found, f"no metric {label!r}; have {[m.label for m in at.metric]}"
    return found[0]


def texts(elements: object) -> str:
    return "\n".join(str(e.value) for e in elements)  # type: ignore[attr-defined]


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The first table on the page with ``column``."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, f"no table with a {column!r} column"
    return found[0]


def button(at: AppTest, label: str, index: int = 0):  # type: ignore[no-untyped-def]
    found = [b for b in at.button if b.label == label]
    assert len(found) > index, f"no button {label!r}"
    return found[index]


def scalar(data: DashboardData, query):  # type: ignore[no-untyped-def]
    with session_scope(data.runtime.sessions) as session:
        return session.scalar(query)


def rows(data: DashboardData, query) -> list:  # type: ignore[no-untyped-def]
    with session_scope(data.runtime.sessions) as session:
        return [tuple(row) for row in session.execute(query)]


def test_overview_shows_every_study_and_the_red_status(dashboard_env: DashboardData) -> None:
    at = open_page()
    n_studies = scalar(dashboard_env, select(func.count()).select_from(Inference))
    assert n_studies == len(dashboard_env.template.deployment.inferences)
    assert metric(at, "Studies") == f"{n_studies:,}"
    assert metric(at, "Active version") == PRODUCTION
    firing = scalar(dashboard_env, select(func.count()).select_from(Alert).where(
        Alert.state == "firing"))
    assert firing > 0
    open_incidents = scalar(dashboard_env, select(func.count()).select_from(Incident).where(
        Incident.state == "open"))
    assert metric(at, "Open incidents") == str(open_incidents)
    # the latest check of 1.4.0 (the late window: subgroup drop and override rise) is red
    assert ":red-badge[" in texts(at.markdown)
    assert "Why:" in texts(at.caption)
    production = dashboard_env.template.deployment.truth.model_version == PRODUCTION
    assert metric(at, "Studies in view") == f"{int(production.sum()):,}"


def _open_incidents_in_order(data: DashboardData) -> list[IncidentInfo]:
    """The model's open incidents, most severe first, then the oldest: sorted here, from the
    store's rows, not by the query the page uses."""
    with session_scope(data.runtime.sessions) as session:
        found = list_incidents(session, model=MODEL, state="open")
    rank = {"critical": 0, "warning": 1}
    return sorted(found, key=lambda i: (rank[i.severity], i.opened_at, i.id))


def test_overview_names_the_top_incidents_in_words(evidence_env: DashboardData) -> None:
    at = open_page()
    why = next(c.value for c in at.caption if str(c.value).startswith("Why:"))
    top = _open_incidents_in_order(evidence_env)[:3]
    named = [markdown_text(q.incident_headline(info)) for info in top]
    positions = [why.find(text) for text in named]
    assert -1 not in positions and positions == sorted(positions), (why, named)
    ids = evidence_env.incident_ids
    headline = q.incident_headline(next(i for i in top if i.id == ids["software-update"]))
    assert headline == ("critical: XR-SOUTH-1 (SIEMENS Ysio Max, software VF12B) on "
                        f"{PREVIOUS} since 2026-10-11 - embedding MMD p<1e-4")
    assert metric(at, "Open incidents") == str(len(_open_incidents_in_order(evidence_env)))


def test_overview_follows_the_version_and_site_filters(dashboard_env: DashboardData) -> None:
    at = open_page()
    truth = dashboard_env.template.deployment.truth
    at.selectbox(key=f"filter_version_{MODEL}").set_value(PREVIOUS)
    at.selectbox(key="filter_site").set_value("east")
    at.run()
    assert not at.exception
    expected = int(((truth.model_version == PREVIOUS) & (truth.site == "east")).sum())
    assert metric(at, "Studies in view") == f"{expected:,}"


def test_drift_page_attributes_the_software_update_to_its_scanner(
        dashboard_env: DashboardData) -> None:
    at = open_page("drift")
    template = dashboard_env.template
    assert metric(at, "Check windows") == str(len(template.check_run_ids))
    n_results = scalar(dashboard_env, select(func.count()).select_from(CheckResult).where(
        CheckResult.detector.not_in(("SubgroupBias", "Attribution", "SequentialEvidence"))))
    assert metric(at, "Detector results") == f"{n_results:,}"
    at.selectbox(key="drift_window").set_value(template.check_run_ids["software-update"])
    at.run()
    assert not at.exception
    # the software update of XR-SOUTH-1 (SIEMENS Ysio Max, VF10E -> VF12B) drives the drift
    assert ("Top driver: **software\\_version = VF12B** on SIEMENS Ysio Max XR-SOUTH-1"
            in texts(at.markdown))
    ranking = frame_with(at, "contribution")
    assert ranking["value"].iloc[0] == "VF12B"
    links = [link.proto for link in at.get("page_link")]
    assert [(link.label, link.query_string) for link in links] == [
        ("Open the Evidently report for this window",
         f"run={template.check_run_ids['software-update']}")], links
    # a week later the embeddings have moved: the same scanner leads the embedding ranking
    at.selectbox(key="drift_window").set_value(template.check_run_ids["late"])
    at.run()
    ranking = frame_with(at, "contribution")
    assert ranking["basis"].iloc[0] == "embedding"
    assert {"VF12B", "XR-SOUTH-1", "Ysio Max"} <= set(ranking["value"].head(4))


def _paging_windows(data: DashboardData) -> set[int]:
    """Windows with a sequential evidence row at the page level, read from the store."""
    found = rows(data, select(CheckResult.check_run_id, CheckResult.details).where(
        CheckResult.detector == "SequentialEvidence"))
    return {run_id for run_id, details in found if (details or {}).get("level") == "page"}


def _windows_below(data: DashboardData, level: float) -> set[int]:
    """Windows with a usable per-window detector result below ``level``."""
    found = rows(data, select(CheckResult.check_run_id, CheckResult.details).where(
        CheckResult.p_value < level,
        CheckResult.detector.not_in(("SubgroupBias", "Attribution", "SequentialEvidence"))))
    return {run_id for run_id, details in found
            if (details or {}).get("status", "ok") == "ok"}


def vega_specs(at: AppTest) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]


def legend_names(spec: dict) -> list[str]:  # type: ignore[type-arg]
    """The names a chart's colour legend shows (its colour scale's domain)."""
    names: list[str] = []
    for layer in spec.get("layer", [spec]):
        scale = layer.get("encoding", {}).get("color", {}).get("scale", {})
        names += [n for n in scale.get("domain", []) if n not in names]
    return names


def test_drift_page_counts_windows_with_a_paging_finding(evidence_env: DashboardData) -> None:
    at = open_page("drift")
    expected = _paging_windows(evidence_env)
    daily = evidence_env.daily_run_ids
    assert metric(at, "Windows with a paging finding") == str(len(expected))
    # the seeded embedding family pages from its third day on
    assert set(daily[2:]) <= expected and daily[0] not in expected
    # the second day has a small p-value (MMD z = 2.6, p = 0.005) but does not page: one
    # small p-value is not a paging finding, evidence that persists is
    assert daily[1] in _windows_below(evidence_env, 0.01) and daily[1] not in expected
    assert not [m for m in at.metric if m.label.startswith("Windows with a paging-level")]


def test_drift_page_draws_the_sequential_evidence_with_its_legend(
        evidence_env: DashboardData) -> None:
    at = open_page("drift")
    assert "Sequential evidence per family" in texts(at.subheader)
    specs = [spec for spec in vega_specs(at)
             if spec.get("title") == f"version {PRODUCTION}"]
    assert len(specs) == 1, [spec.get("title") for spec in vega_specs(at)]
    names = legend_names(specs[0])
    assert names[-2:] == ["warning level", "page level"]
    assert {"embedding", "metadata", "prediction", "bias"} <= set(names)
    # the newest day's raised streams, strongest first
    table = frame_with(at, "stream")
    assert table["stream"].iloc[0] == "MMDDrift/embedding"
    assert set(table["level"]) <= {"warning", "page"}


def test_drift_page_without_daily_grid_checks_says_so(evidence_env: DashboardData) -> None:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    at.session_state[TOKEN_KEY] = VIEWER_TOKEN
    at.session_state["drift_window_label"] = "7d"  # the late window: no grid day
    at.run()
    at.switch_page("views/drift.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "No daily grid checks yet" in texts(at.info)
    assert metric(at, "Windows with a paging finding") == "0"
    assert metric(at, "Check windows") == "1"
    assert "Detectors over time" in texts(at.subheader)


def test_drift_page_lists_a_windows_findings(dashboard_env: DashboardData) -> None:
    at = open_page("drift")
    run_id = dashboard_env.template.check_run_ids["clean"]
    at.selectbox(key="drift_window").set_value(run_id)
    at.run()
    assert not at.exception
    flagged = rows(dashboard_env, select(CheckResult.detector, CheckResult.feature).where(
        CheckResult.check_run_id == run_id, CheckResult.drift.is_(True),
        CheckResult.detector.not_in(("SubgroupBias", "Attribution"))))
    shown = [d.value for d in at.dataframe if "detector" in d.value.columns]
    if flagged:
        assert sorted(zip(shown[0]["detector"], shown[0]["feature"], strict=True)) == sorted(
            flagged)
    else:
        assert not shown and "No detector found drift in this window." in texts(at.markdown)


def test_report_page_serves_the_windows_evidently_report(dashboard_env: DashboardData) -> None:
    run_id = dashboard_env.template.check_run_ids["software-update"]
    at = open_page("report", run=str(run_id))
    assert not at.warning, texts(at.warning)
    assert any(b.label == "Download the HTML report" for b in at.get("download_button"))
    missing = open_page("report", run="999999")
    assert "check run 999999 not found" in texts(missing.error)


def test_report_file_refuses_paths_outside_the_reports_folder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    reports = tmp_path / "reports"
    (reports / "m").mkdir(parents=True)
    (reports / "m" / "r.html").write_text("<html></html>")
    (tmp_path / "secret.html").write_text("no")
    assert report_file(reports, "m/r.html") == (reports / "m" / "r.html").resolve()
    assert report_file(reports, str(reports / "m" / "r.html")) is not None
    assert report_file(reports, "../secret.html") is None
    assert report_file(reports, str(tmp_path / "secret.html")) is None
    assert report_file(reports, "m/missing.html") is None


def test_scanner_page_flags_the_new_scanner_and_software_with_their_dates(
        dashboard_env: DashboardData) -> None:
    at = open_page("fleet")
    truth = dashboard_env.template.deployment.truth
    start = dashboard_env.template.start
    production = truth.model_version == PRODUCTION

    def first_day(mask: np.ndarray) -> str:
        return f"{start + timedelta(seconds=float(truth.time_s[mask & production].min())):%Y-%m-%d}"

    warnings = texts(at.warning)
    assert "software **VF12B** on SIEMENS Ysio Max, first seen " + first_day(
        truth.software_version == "VF12B") in warnings
    assert "scanner **FUJIFILM Corporation FDR Smart X**, first seen " + first_day(
        truth.scanner_model == "FDR Smart X") in warnings
    assert "Ysio Max**" not in warnings and "VF10E" not in warnings
    assert metric(at, "New since baseline") == "4"  # vendor, scanner, two software versions
    assert metric(at, "Sites") == "3"


def test_bias_page_lists_the_injected_subgroup(dashboard_env: DashboardData) -> None:
    at = open_page("bias")
    # subgroup-drop: patients aged 80+ (the age band 80+) get worse calls in the late window
    findings = texts(at.error)
    assert "**age\\_band = 80+**" in findings
    late = dashboard_env.template.check_run_ids["late"]
    n_results = scalar(dashboard_env, select(func.count()).select_from(CheckResult).where(
        CheckResult.check_run_id == late, CheckResult.detector == "SubgroupBias"))
    assert metric(at, "Subgroup comparisons") == str(n_results)
    table = at.dataframe[0].value
    assert len(table) == n_results
    assert (table["status"] == "insufficient data").any()
    row = table[(table["field"] == "age_band") & (table["group"] == "80+")
                & table["status"].str.startswith("significant")]
    assert not row.empty
    assert int(metric(at, "Insufficient data")) == int(
        (table["status"] == "insufficient data").sum())


def test_overrides_page_matches_the_reads_in_the_store(dashboard_env: DashboardData) -> None:
    at = open_page("overrides")
    truth = dashboard_env.template.deployment.truth
    production = truth.model_version == PRODUCTION
    read = truth.read & production
    assert metric(at, "Studies") == f"{int(production.sum()):,}"
    assert metric(at, "Reads") == f"{int(read.sum()):,}"
    overridden = read & (truth.radiologist_positive != truth.positive)
    assert metric(at, "Override rate") == f"{100 * overridden.sum() / read.sum():.1f}%"
    positives = read & truth.radiologist_positive
    assert metric(at, "Sensitivity") == (
        f"{100 * (positives & truth.positive).sum() / positives.sum():.1f}%")
    recent = at.dataframe[0].value
    assert len(recent) == 25
    assert recent["study_key"].str.fullmatch(r"[0-9a-f]{32}").all()
    assert not set(recent["study_key"]) & set(truth.study_uid.tolist())
    assert (recent["model_positive"] != recent["radiologist_positive"]).all()


def _alert_form(at: AppTest, alert_id: int, *, action: str, token: str, reason: str,
                hours: float = 4.0) -> AppTest:
    at.selectbox(key="alert_action_id").set_value(alert_id)
    at.radio(key="alert_action_kind").set_value(action)
    at.number_input(key="alert_action_hours").set_value(hours)
    at.text_input(key="alert_action_token").input(token)
    at.text_input(key="alert_action_reason").input(reason)
    button(at, "Apply").click()
    return at.run()


def test_alerts_page_acknowledges_and_silences_for_operators_only(
        dashboard_env: DashboardData) -> None:
    at = open_page("alerts")
    firing = scalar(dashboard_env, select(func.count()).select_from(Alert).where(
        Alert.model == MODEL, Alert.state == "firing"))
    assert metric(at, "Findings firing") == str(firing)
    alert_id = scalar(dashboard_env, select(Alert.id).where(Alert.state == "firing",
                                                            Alert.severity == "critical"))

    _alert_form(at, alert_id, action="acknowledge", token=VIEWER_TOKEN, reason="looking")
    assert "not an operator" in texts(at.error)
    _alert_form(at, alert_id, action="acknowledge", token="wrong", reason="looking")
    assert "valid operator token" in texts(at.error)
    assert scalar(dashboard_env, select(Alert.acknowledged_by).where(Alert.id == alert_id)) \
        is None

    _alert_form(at, alert_id, action="acknowledge", token=OPERATOR_TOKEN, reason="on it")
    assert not at.exception
    assert f"acknowledged by {OPERATOR}" in texts(at.success)
    assert scalar(dashboard_env, select(Alert.acknowledged_by).where(Alert.id == alert_id)) \
        == OPERATOR

    _alert_form(at, alert_id, action="silence", token=OPERATOR_TOKEN, reason="", hours=2)
    assert "reason is required" in texts(at.error)
    before = datetime.now(UTC)
    _alert_form(at, alert_id, action="silence", token=OPERATOR_TOKEN, reason="known cause",
                hours=2)
    until = scalar(dashboard_env, select(Alert.silenced_until).where(Alert.id == alert_id))
    assert before + timedelta(hours=2) <= until <= datetime.now(UTC) + timedelta(hours=2)
    assert metric(at, "Silenced") == "1"
    audited = rows(dashboard_env, select(AuditEntry.action, AuditEntry.reason).where(
        AuditEntry.alert_id == alert_id, AuditEntry.actor == OPERATOR))
    assert sorted(audited) == [("acknowledge_alert", "on it"),
                               ("silence_alert", "known cause")]


def test_alerts_page_lists_incidents_by_severity_then_age(evidence_env: DashboardData
                                                         ) -> None:
    at = open_page("alerts")
    expected = _open_incidents_in_order(evidence_env)
    table = frame_with(at, "cause")
    assert table["id"].tolist() == [i.id for i in expected]
    assert metric(at, "Open incidents") == str(len(expected))
    assert metric(at, "Critical incidents") == str(
        sum(1 for i in expected if i.severity == "critical"))
    ids = evidence_env.incident_ids
    seeded = [ids[name] for name in ("software-update", "version", "subgroup-80+",
                                     "new-vendor")]
    # critical before warning; within each, the oldest first (not the ids' order)
    assert [i for i in table["id"] if i in seeded] == seeded
    assert seeded != sorted(seeded)
    rows = table.set_index("id")
    assert rows.loc[ids["software-update"], "since"] == "2026-10-11"
    assert rows.loc[ids["software-update"], "effect"] == "embedding MMD p<1e-4"
    assert rows.loc[ids["software-update"], "direction"] == "shifted"
    assert rows.loc[ids["software-update"], "evidence"] == "page (Z 6.2, pages at 3.9)"
    assert rows.loc[ids["software-update"], "findings"] == 2
    assert "gap 11 pts worse" in rows.loc[ids["subgroup-80+"], "effect"]
    assert rows.loc[ids["subgroup-80+"], "direction"] == "worse"
    assert rows.loc[ids["version"], "direction"] == "lower"
    # one expander per incident, in the same order, holding its findings
    expanders = [e for e in at.expander if str(e.label).startswith("#")]
    assert [int(str(e.label)[1:].split(" ")[0]) for e in expanders] == table["id"].tolist()
    with session_scope(evidence_env.runtime.sessions) as session:
        for expander, info in zip(expanders, expected, strict=True):
            alerts = sorted(session.scalars(select(Alert.id).where(
                Alert.incident_id == info.id)))
            shown = [d.value for d in expander.dataframe if "rule" in d.value.columns
                     and "stream" in d.value.columns and "id" in d.value.columns]
            assert sorted(shown[0]["id"]) == alerts if alerts else not shown
    # resolved and accepted ones in their own section
    closed = frame_with(at, "closed").set_index("id")
    assert closed.loc[ids["accepted-firmware"], "state"] == "accepted"
    assert closed.loc[ids["accepted-firmware"], "accepted by"] == "olivia"
    assert closed.loc[ids["site-south"], "why"] == "cause gone"
    assert not set(closed.index) & set(table["id"])


def test_alerts_page_offers_accepting_only_for_a_stratum(evidence_env: DashboardData) -> None:
    at = open_page("alerts")
    ids = evidence_env.incident_ids
    offered = {int(b.key.rsplit("_", 1)[1]) for b in at.button
               if b.key and b.key.startswith("accept_start_")}
    assert {ids["software-update"], ids["new-vendor"]} <= offered
    assert not offered & {ids["version"], ids["subgroup-80+"], ids["site-south"],
                          ids["accepted-firmware"]}


def _accept(at: AppTest, incident_id: int, *, token: str, reason: str) -> AppTest:
    at.text_input(key=f"accept_token_{incident_id}").input(token)
    at.text_area(key=f"accept_reason_{incident_id}").input(reason)
    [start] = [b for b in at.button if b.key == f"accept_start_{incident_id}"]
    start.click()
    return at.run()


def test_alerts_page_accepts_a_validated_change_after_a_confirming_click(
        evidence_env: DashboardData) -> None:
    incident_id = evidence_env.incident_ids["software-update"]

    def state() -> tuple[str, str | None]:
        return rows(evidence_env, select(Incident.state, Incident.accepted_by).where(
            Incident.id == incident_id))[0]

    baselines = scalar(evidence_env, select(func.count()).select_from(Baseline))
    at = open_page("alerts")
    _accept(at, incident_id, token=VIEWER_TOKEN, reason="validated")
    assert "not an operator" in texts(at.error)
    _accept(at, incident_id, token=OPERATOR_TOKEN, reason="  ")
    assert "reason is required" in texts(at.error)
    reason = "VF12B validated by the physics team on phantoms"
    _accept(at, incident_id, token=OPERATOR_TOKEN, reason=reason)
    assert not at.error, texts(at.error)
    assert state() == ("open", None)  # the first click changes nothing
    assert f"accept incident #{incident_id}" in texts(at.info)
    assert "2026-10-11" in texts(at.info)  # from the first day of its evidence by default
    button(at, "Confirm accept").click()
    at.run()
    assert not at.exception and not at.error, texts(at.error)
    assert f"Incident #{incident_id}" in texts(at.success)
    assert state() == ("accepted", OPERATOR)
    assert rows(evidence_env, select(Incident.accept_reason, Incident.accepted_since).where(
        Incident.id == incident_id)) == [(reason, date(2026, 10, 11))]
    assert scalar(evidence_env, select(func.count()).select_from(Baseline)) == baselines + 1
    audited = rows(evidence_env, select(AuditEntry.actor, AuditEntry.reason).where(
        AuditEntry.actor == OPERATOR))
    assert (OPERATOR, reason) in audited
    # it left the open incidents for the closed ones
    assert incident_id not in frame_with(at, "cause")["id"].tolist()
    assert incident_id in frame_with(at, "closed")["id"].tolist()


def test_alerts_page_escapes_stored_text(evidence_env: DashboardData) -> None:
    hostile = "XR-1 **bold** [link](http://x.example) :red[alarm] <b>html</b>"
    with session_scope(evidence_env.runtime.sessions) as session:
        incident = session.get(Incident, evidence_env.incident_ids["new-vendor"])
        incident.cause_label = hostile
        incident.summary = hostile
    at = open_page("alerts")
    labels = [str(e.label) for e in at.expander]
    assert any(markdown_text(hostile) in label for label in labels)
    assert not any(hostile in label for label in labels)
    assert not [m for m in at.markdown if hostile in str(m.value)]


def _fill(at: AppTest, rec_id: int, *, token: str, reason: str) -> None:
    at.text_input(key=f"decide_token_{rec_id}").input(token)
    at.text_area(key=f"decide_reason_{rec_id}").input(reason)


def _decide(at: AppTest, rec_id: int, *, token: str, reason: str, approve: bool) -> AppTest:
    """Fill token and reason, then Reject, or "Approve rollback…" and (when the page asks
    for it) Confirm."""
    _fill(at, rec_id, token=token, reason=reason)
    button(at, "Approve rollback…" if approve else "Reject").click()
    at.run()
    if approve and any(b.label == "Confirm" for b in at.button):
        button(at, "Confirm").click()
        at.run()
    return at


def _production(data: DashboardData) -> str:
    return scalar(data, select(ModelVersion.version).join(
        ModelAlias, ModelAlias.model_version_id == ModelVersion.id).where(
        ModelAlias.model == MODEL, ModelAlias.alias == "production"))


def test_versions_page_approves_a_rollback_with_token_and_reason(
        dashboard_env: DashboardData) -> None:
    rec_id = dashboard_env.recommendation_id
    at = open_page("versions")
    assert metric(at, "Pending rollbacks") == "1"
    assert metric(at, "Production") == PRODUCTION
    _decide(at, rec_id, token=OPERATOR_TOKEN, reason="", approve=True)
    assert "reason is required" in texts(at.error)
    _decide(at, rec_id, token=VIEWER_TOKEN, reason="sensitivity dropped", approve=True)
    assert "not an operator" in texts(at.error)
    assert _production(dashboard_env) == PRODUCTION

    _decide(at, rec_id, token=OPERATOR_TOKEN, reason="sensitivity dropped", approve=True)
    assert not at.exception
    assert _production(dashboard_env) == PREVIOUS
    assert f"production now points at {PREVIOUS}" in texts(at.success)
    assert metric(at, "Production") == PREVIOUS and metric(at, "Pending rollbacks") == "0"
    audit = at.dataframe[-1].value
    top = audit.iloc[0]
    assert (top["actor"], top["action"], top["reason"]) == (OPERATOR, "rollback",
                                                            "sensitivity dropped")


def test_versions_page_approval_waits_for_the_confirming_click(
        dashboard_env: DashboardData) -> None:
    rec_id = dashboard_env.recommendation_id
    at = open_page("versions")
    assert not at.get("form")  # no form: Enter in a field submits nothing
    _fill(at, rec_id, token=OPERATOR_TOKEN, reason="sensitivity dropped")
    at.run()  # what Enter in a field does: a rerun with the values, no button clicked
    assert not at.exception and _production(dashboard_env) == PRODUCTION
    assert not any(b.label == "Confirm" for b in at.button)

    button(at, "Approve rollback…").click()
    at.run()
    assert not at.exception and not at.error
    assert _production(dashboard_env) == PRODUCTION  # the first click moves nothing
    assert scalar(dashboard_env, select(RollbackRecommendation.status).where(
        RollbackRecommendation.id == rec_id)) == "pending"
    assert (f"move production of {MODEL} from {PRODUCTION} to {PREVIOUS}"
            in texts(at.info).replace("\\", ""))
    assert {b.label for b in at.button} >= {"Confirm", "Cancel"}
    assert not any(b.label in ("Approve rollback…", "Reject") for b in at.button)

    button(at, "Cancel").click()
    at.run()
    assert _production(dashboard_env) == PRODUCTION
    assert not any(b.label == "Confirm" for b in at.button)
    assert any(b.label == "Approve rollback…" for b in at.button)

    button(at, "Approve rollback…").click()
    at.run()
    button(at, "Confirm").click()
    at.run()
    assert not at.exception
    assert _production(dashboard_env) == PREVIOUS
    assert f"production now points at {PREVIOUS}" in texts(at.success)
    assert scalar(dashboard_env, select(func.count()).select_from(AuditEntry).where(
        AuditEntry.action == "rollback")) == 1


def _store_previous_check(data: DashboardData, *, status: str, score: float) -> None:
    """A check of the rollback target (1.3.0) with two findings and one quiet result."""
    start = datetime(2026, 9, 1, tzinfo=UTC)
    results = [
        {"detector": "MMDDrift", "feature": "embedding", "statistic": 0.02, "p_value": 4e-4,
         "threshold": 0.05, "drift": True, "n_reference": 300, "n_current": 80,
         "details": {"family": "embedding"}},
        {"detector": "CategoricalDrift", "feature": "view", "statistic": 9.0, "p_value": 0.004,
         "threshold": 0.05, "drift": True, "n_reference": 300, "n_current": 80,
         "details": {"family": "metadata"}},
        {"detector": "NumericDrift", "feature": "kvp", "statistic": 0.1, "p_value": 0.6,
         "threshold": 0.05, "drift": False, "n_reference": 300, "n_current": 80,
         "details": {"family": "metadata"}},
    ]
    with session_scope(data.runtime.sessions) as session:
        version_id = session.scalar(select(ModelVersion.id).where(
            ModelVersion.model == MODEL, ModelVersion.version == PREVIOUS))
        store_check_run(session, run={
            "model_version_id": version_id, "window_kind": "time", "window_label": "1d",
            "window_start": start, "window_end": start + timedelta(days=1),
            "started_at": start, "finished_at": start, "status": "ok", "n_studies": 80,
            "health_score": score, "health_status": status}, results=results)


def test_versions_page_warns_when_the_target_version_is_amber_or_red(
        dashboard_env: DashboardData) -> None:
    at = open_page("versions")
    # the simulated deployment never checked 1.3.0: no warning, its health is unknown
    assert not at.warning
    assert f"Target {PREVIOUS} has no completed check" in texts(at.caption)
    _store_previous_check(dashboard_env, status="amber", score=0.71)
    button(at, "Refresh now").click()  # past the query cache
    at.run()
    warning = texts(at.warning).replace("\\", "")
    assert f"The target version {PREVIOUS} is itself **amber** (health 0.71)" in warning
    assert "MMDDrift · embedding (p=4.0e-04); CategoricalDrift · view (p=0.004)" in warning
    assert "kvp" not in warning
    # the warning stands before the confirmation, and the confirmation still works
    _fill(at, dashboard_env.recommendation_id, token=OPERATOR_TOKEN, reason="known risk")
    button(at, "Approve rollback…").click()
    at.run()
    assert "is itself **amber**" in texts(at.warning)
    assert _production(dashboard_env) == PRODUCTION


def test_versions_page_rejects_and_compares(dashboard_env: DashboardData) -> None:
    rec_id = dashboard_env.recommendation_id
    at = open_page("versions")
    _decide(at, rec_id, token=OPERATOR_TOKEN, reason="a data problem, not the model",
            approve=False)
    decision = rows(dashboard_env, select(RollbackRecommendation.status,
                                          RollbackRecommendation.decided_by)
                    .where(RollbackRecommendation.id == rec_id))
    assert decision == [("rejected", OPERATOR)]
    assert _production(dashboard_env) == PRODUCTION
    comparison = next(d.value for d in at.dataframe if "metric" in d.value.columns)
    assert list(comparison.columns) == ["metric", PRODUCTION, PREVIOUS]
    truth = dashboard_env.template.deployment.truth
    studies = comparison[comparison["metric"] == "studies"].iloc[0]
    assert studies[PREVIOUS] == f"{int((truth.model_version == PREVIOUS).sum()):,}"


def test_operator_check_accepts_a_name_only_while_the_store_is_empty(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runtime = open_runtime(f"sqlite:///{tmp_path / 'tokens.db'}", tmp_path)
    try:
        assert authenticate_operator(runtime, "  dr. who\u202e ") == "dr. who"
        with pytest.raises(Unauthorized):
            authenticate_operator(runtime, "   ")
        add_tokens(runtime)
        assert authenticate_operator(runtime, OPERATOR_TOKEN) == OPERATOR
        for token in (VIEWER_TOKEN, INGEST_TOKEN):
            with pytest.raises(Forbidden, match="operator role"):
                authenticate_operator(runtime, token)
        with pytest.raises(Unauthorized):
            authenticate_operator(runtime, OPERATOR)  # a name is no longer enough
        with session_scope(runtime.sessions) as session:
            revoke_token(session, name=OPERATOR, actor="tests")
        with pytest.raises(Unauthorized):
            authenticate_operator(runtime, OPERATOR_TOKEN)
    finally:
        runtime.close()


def test_pages_ask_for_a_read_token(dashboard_env: DashboardData) -> None:
    at = open_page(token=None)
    assert not at.metric and [t.label for t in at.text_input] == ["Read token"]
    for token, message in (("mtk_not-a-token-at-all-0123456789abcdefgh", "not a valid token"),
                           (INGEST_TOKEN, "needs the read role")):
        at.text_input(key=LOGIN_FIELD_KEY).input(token)
        button(at, "Sign in").click()
        at.run()
        assert message in texts(at.error) and not at.metric
    at.text_input(key=LOGIN_FIELD_KEY).input(VIEWER_TOKEN)
    button(at, "Sign in").click()
    at.run()
    assert not at.exception and metric(at, "Studies in view")
    assert f"Signed in as **{VIEWER}**" in texts(at.sidebar.caption)
    with session_scope(dashboard_env.runtime.sessions) as session:
        revoke_token(session, name=VIEWER, actor="tests")
    at.run()
    assert "no longer valid" in texts(at.warning) and not at.metric


def test_operator_token_is_also_a_read_token(dashboard_env: DashboardData) -> None:
    at = open_page("alerts", token=OPERATOR_TOKEN)
    assert metric(at, "Findings firing")


def test_empty_database_says_what_to_do(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    runtime = open_runtime(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path)
    runtime.close()
    monkeypatch.setenv("MONITOR_DATABASE_URL", runtime.settings.database_url)
    monkeypatch.setenv("MONITOR_SECRET_KEY", runtime.settings.secret_key.get_secret_value())
    at = open_page()
    assert "No model has logged inferences yet" in texts(at.info)
    at = open_page("drift")
    assert "No model has logged inferences yet" in texts(at.info)


def test_unmigrated_database_is_refused_with_the_fix(tmp_path,  # type: ignore[no-untyped-def]
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_DATABASE_URL", f"sqlite:///{tmp_path / 'new.db'}")
    monkeypatch.setenv("MONITOR_SECRET_KEY", "k" * 40)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert "monitor init" in texts(at.error)


def test_dashboard_command_runs_streamlit_headless_on_loopback() -> None:
    import argparse

    from monitor.commands.dashboard import add_commands, cmd_dashboard, streamlit_command

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["dashboard", "--port", "8765"])
    assert (args.func, args.port, args.address) == (cmd_dashboard, 8765, "127.0.0.1")
    command = streamlit_command(app=APP, address=args.address, port=args.port)
    flags = dict(zip(command[5::2], command[6::2], strict=True))
    assert command[1:5] == ["-m", "streamlit", "run", str(APP)]
    assert flags["--server.headless"] == "true"
    assert (flags["--server.address"], flags["--server.port"]) == ("127.0.0.1", "8765")
    assert flags["--browser.gatherUsageStats"] == "false"


def test_dashboard_refuses_a_public_address_while_the_store_is_empty(
        tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from monitor.commands.dashboard import check_address
    from monitor.errors import ConfigError

    runtime = open_runtime(f"sqlite:///{tmp_path / 'open.db'}", tmp_path)
    try:
        settings = runtime.settings
        check_address("127.0.0.1", settings, insecure_open=False)
        check_address("localhost", settings, insecure_open=False)
        with pytest.raises(ConfigError, match=r"refusing to serve the dashboard on 0\.0\.0\.0"):
            check_address("0.0.0.0", settings, insecure_open=False)
        check_address("0.0.0.0", settings, insecure_open=True)
        assert "INSECURE" in capsys.readouterr().err
        add_tokens(runtime)
        check_address("0.0.0.0", settings, insecure_open=False)
    finally:
        runtime.close()


def test_dashboard_command_says_one_line_and_exits_2(
        tmp_path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
        capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.cli import main

    runtime = open_runtime(f"sqlite:///{tmp_path / 'open.db'}", tmp_path)
    runtime.close()
    monkeypatch.setenv("MONITOR_DATABASE_URL", runtime.settings.database_url)
    monkeypatch.setenv("MONITOR_SECRET_KEY_FILE", str(runtime.settings.secret_key_file))
    monkeypatch.setenv("MONITOR_SECRET_KEY", runtime.settings.secret_key.get_secret_value())
    assert main(["dashboard", "--address", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing to serve the dashboard on 0.0.0.0" in err[0]


def test_overview_says_how_far_the_daily_checks_are(dashboard_env: DashboardData) -> None:
    with session_scope(dashboard_env.runtime.sessions) as session:
        progress = q.grid_progress(session, timezone="UTC")
    assert progress.filling_in and progress.expected > 0
    at = open_page()
    banners = [str(i.value) for i in at.info if "filling in" in str(i.value)]
    assert banners == [f"Checks are still filling in: {progress.checked} of "
                       f"{progress.expected} daily windows checked. Health, drift and alerts "
                       "show the days checked so far."]


def test_the_checks_banner_is_gone_once_every_window_is_checked(
        dashboard_env: DashboardData, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(q, "grid_progress",
                        lambda session, **_: q.GridProgress(expected=46, checked=46))
    at = open_page()
    assert not [i for i in at.info if "filling in" in str(i.value)]
    assert metric(at, "Active version") == PRODUCTION  # the rest of the page is there
