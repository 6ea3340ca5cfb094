"""Alerts: the open incidents, most severe first and then the longest open, each with its
cause, effect and direction and the findings under it; accepting an incident as a validated
change (operator token, reason, a confirming click); resolved and accepted incidents;
findings outside any incident; acknowledging and silencing findings (operator token)."""

from __future__ import annotations

from datetime import date, datetime

import pandas as pd
import streamlit as st

from dashboards import actions
from dashboards.common import (
    Context,
    ask_confirmation,
    confirm_step,
    confirming,
    context,
    done_confirming,
    fmt_day,
    fmt_time,
    query,
    refresh,
    runtime_for,
    show_error,
)
from monitor.alerting.config import load_config
from monitor.errors import MonitorError
from monitor.safe_output import markdown_text as md
from monitor.store.dashboard import (
    ACCEPTABLE_CAUSES,
    CLOSED_INCIDENT_STATES,
    effect_direction,
    evidence_level,
    incident_cause,
    strongest_evidence,
)
from monitor.store.incidents import IncidentInfo

ACTIVE_STATES = ("firing", "pending")
MESSAGE_KEY = "alert_action_message"
SEVERITY_BADGES = {"critical": ":red-badge[critical]", "warning": ":orange-badge[warning]"}


def alert_table(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "id": frame["alert_id"],
        "severity": frame["severity"],
        "state": frame["state"],
        "rule": frame["rule"],
        "version": frame["model_version"],
        "summary": frame["summary"],
        "incident": frame["incident_id"],
        "windows": frame["consecutive"],
        "since": frame["fired_at"].fillna(frame["started_at"]),
        "acknowledged by": frame["acknowledged_by"],
        "silenced until": frame["silenced_until"].where(frame["silenced"]),
        "resolved": frame["resolved_at"],
    })


DATE_COLUMNS = {name: st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")
                for name in ("since", "silenced until", "resolved")}
# incidents: "since" is a day (the first of the evidence), the others times
INCIDENT_COLUMNS = {name: st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")
                    for name in ("opened", "closed")}


# --------------------------------------------------------------------------- incidents


def incident_table(found: list[IncidentInfo]) -> pd.DataFrame:
    """One row per incident, in the order given. Tables draw text, not Markdown: values
    need no escaping here."""
    rows = []
    for info in found:
        top = strongest_evidence(info)
        rows.append({
            "id": info.id, "severity": info.severity, "state": info.state,
            "version": info.model_version, "cause": info.cause_label,
            "since": fmt_day(info.first_evidence_day), "opened": info.opened_at,
            "effect": (top or {}).get("effect") or "", "direction": effect_direction(top),
            "evidence": evidence_level(top), "findings": len(info.findings),
            "summary": info.summary or "",
        })
    return pd.DataFrame(rows, columns=["id", "severity", "state", "version", "cause", "since",
                                       "opened", "effect", "direction", "evidence", "findings",
                                       "summary"])


def evidence_table(info: IncidentInfo) -> pd.DataFrame:
    rows = [{"stream": row.get("stream") or f"{row.get('detector')}/{row.get('feature')}",
             "family": row.get("family"), "level": row.get("level"),
             "statistic": row.get("statistic"), "threshold": row.get("threshold"),
             "since": row.get("since"), "effect": row.get("effect"),
             "direction": effect_direction(row), "rule": row.get("rule")}
            for row in info.evidence if isinstance(row, dict)]
    return pd.DataFrame(rows, columns=["stream", "family", "level", "statistic", "threshold",
                                       "since", "effect", "direction", "rule"])


def findings_table(info: IncidentInfo) -> pd.DataFrame:
    rows = [{"id": a.id, "severity": a.severity, "state": a.state, "rule": a.rule,
             "stream": "/".join(str(a.labels.get(k, "")) for k in ("detector", "feature")),
             "summary": a.summary or "", "since": a.fired_at or a.started_at,
             "windows": a.consecutive, "acknowledged by": a.acknowledged_by,
             "resolved": a.resolved_at}
            for a in info.findings]
    return pd.DataFrame(rows, columns=["id", "severity", "state", "rule", "stream", "summary",
                                       "since", "windows", "acknowledged by", "resolved"])


def incident_title(info: IncidentInfo) -> str:
    """An expander's label (Markdown: every stored value escaped)."""
    since = f" since {fmt_day(info.first_evidence_day)}" if info.first_evidence_day else ""
    return f"#{info.id} {info.severity} · {md(incident_cause(info))}{since}"


def incident_details(ctx: Context, info: IncidentInfo) -> None:
    """Inside an incident's expander: its summary, evidence, findings and, where its cause
    is a stratum, accepting it."""
    badge = SEVERITY_BADGES.get(info.severity, md(info.severity))
    st.markdown(f"{badge} **{md(info.state)}** · {md(info.summary or '')}")
    st.caption(f"Opened {fmt_time(info.opened_at)}; paged {fmt_time(info.paged_at)}; "
               f"cause {md(info.cause_field)} = {md(info.cause_value)}.")
    evidence = evidence_table(info)
    if not evidence.empty:
        st.markdown("**Evidence**")
        st.dataframe(evidence, hide_index=True, width="stretch", column_config={
            "statistic": st.column_config.NumberColumn(format="%.2f"),
            "threshold": st.column_config.NumberColumn(format="%.2f")})
    st.markdown(f"**Findings ({len(info.findings)})**")
    if info.findings:
        st.dataframe(findings_table(info), hide_index=True, width="stretch",
                     column_config=DATE_COLUMNS)
    else:
        st.caption("No finding is attached to this incident.")
    if info.state == "open" and info.cause_field in ACCEPTABLE_CAUSES:
        accept_form(ctx, info)


def _local_today(ctx: Context) -> date:
    return datetime.now(ctx.settings.zone).date()


def _confirm_key(incident_id: int) -> str:
    return f"accept_confirming_{incident_id}"


def _accept(ctx: Context, info: IncidentInfo, *, credential: str, since: date,
            reason: str) -> None:
    runtime = runtime_for(ctx.database_url, ctx.settings)
    try:
        actor, accepted = actions.accept_incident(
            runtime, info.id, credential=credential, since=since, reason=reason,
            config=load_config(ctx.settings), zone=ctx.settings.zone)
    except MonitorError as exc:
        show_error(exc)
        return
    done_confirming(_confirm_key(info.id))
    refresh()
    st.session_state[MESSAGE_KEY] = (
        f"Incident #{info.id} ({md(accepted.cause_label)}) accepted as a validated change "
        f"from {since:%Y-%m-%d} by {md(actor)}: its studies from that day are the baseline "
        "now.")
    st.rerun()


def accept_form(ctx: Context, info: IncidentInfo) -> None:
    """Day, token and reason, then "Accept as validated change…" and a confirming click. No
    st.form: Enter in a field submits nothing."""
    key = info.id
    st.markdown("**Accept as validated change**")
    st.caption(f"When the team has validated this change of {md(info.cause_label)}: its "
               "studies from the chosen day replace its old ones in the version's baseline, "
               "the incident is closed as accepted and stops paging. The audit log records "
               "your name and reason.")
    today = _local_today(ctx)
    first = info.first_evidence_day
    default = min(first, today) if first is not None else today
    since = st.date_input("Validated from (site day)", value=default, max_value=today,
                          key=f"accept_since_{key}")
    credential = st.text_input("Operator token", type="password", key=f"accept_token_{key}",
                               help="A token with the operator role; while the token store "
                               "is empty (the demo), your name.")
    reason = st.text_area("Reason", key=f"accept_reason_{key}", height=68,
                          help="Required: what was validated, by whom; recorded in the "
                          "audit log.")
    if not isinstance(since, date):
        st.caption("Choose the day the validated change took effect.")
        return
    if confirming(_confirm_key(key)):
        confirm_step(
            _confirm_key(key),
            f"accept incident #{key} ({md(info.cause_label)} on {md(info.model_version)}) as "
            f"a validated change from {since:%Y-%m-%d}, with the reason "
            f"\"{md(reason.strip())}\". Its studies from that day become the baseline.",
            label="Confirm accept",
            act=lambda: _accept(ctx, info, credential=credential, since=since, reason=reason))
        return
    if st.button("Accept as validated change…", key=f"accept_start_{key}",
                 help="Asks for a confirmation first."):
        runtime = runtime_for(ctx.database_url, ctx.settings)
        ask_confirmation(_confirm_key(key), lambda: actions.check_acceptance(
            runtime, key, credential=credential, reason=reason))


def open_incidents_section(ctx: Context, found: list[IncidentInfo]) -> None:
    st.subheader("Open incidents")
    st.caption("Most severe first, then the longest open. An incident groups the findings of "
               "one version that share a cause (a scanner, site, software version, subgroup "
               "or the version itself); it notifies when it opens, when it escalates to "
               "critical and when it closes. Since: the first day of its evidence.")
    if not found:
        st.success("No open incident.")
        return
    st.dataframe(incident_table(found), hide_index=True, width="stretch",
                 column_config=INCIDENT_COLUMNS)
    for info in found:
        with st.expander(incident_title(info)):
            incident_details(ctx, info)


def closed_incidents_section(found: list[IncidentInfo]) -> None:
    st.subheader("Resolved and accepted incidents")
    if not found:
        st.caption("No incident resolved or accepted in this range.")
        return
    table = incident_table(found)
    table["closed"] = [i.resolved_at or i.accepted_at for i in found]
    table["why"] = [i.resolved_reason or "" for i in found]
    table["accepted by"] = [i.accepted_by or "" for i in found]
    table["accept reason"] = [i.accept_reason or "" for i in found]
    st.dataframe(table[["id", "state", "severity", "version", "cause", "since", "opened",
                        "closed", "why", "accepted by", "accept reason", "effect",
                        "findings"]],
                 hide_index=True, width="stretch", column_config=INCIDENT_COLUMNS)


# --------------------------------------------------------------------------- findings


def action_form(ctx: Context, active: pd.DataFrame) -> None:
    st.subheader("Acknowledge or silence a finding")
    if active.empty:
        st.caption("Nothing to act on.")
        return
    labels = {int(r.alert_id): f"#{r.alert_id} {r.severity} {r.rule} ({r.model_version})"
              for r in active.itertuples()}
    with st.form("alert_action", clear_on_submit=False):
        alert_id = st.selectbox("Finding", list(labels), format_func=labels.__getitem__,
                                key="alert_action_id")
        action = st.radio("Action", ["acknowledge", "silence"], horizontal=True,
                          key="alert_action_kind")
        hours = st.number_input("Silence for (hours)", min_value=0.0,
                                max_value=float(actions.MAX_SILENCE_HOURS), value=4.0,
                                step=1.0, key="alert_action_hours",
                                help="Only for silence; 0 lifts a silence.")
        credential = st.text_input("Operator token", type="password", key="alert_action_token",
                                   help="A token with the operator role; while the token store "
                                   "is empty (the demo), your name.")
        reason = st.text_input("Reason", key="alert_action_reason",
                               help="Required to silence; recorded in the audit log.")
        submitted = st.form_submit_button("Apply", type="primary")
    if submitted:
        runtime = runtime_for(ctx.database_url, ctx.settings)
        try:
            if action == "acknowledge":
                actor = actions.acknowledge_alert(runtime, int(alert_id),
                                                  credential=credential, reason=reason)
                message = f"Alert #{alert_id} acknowledged by {md(actor)}."
            else:
                actor = actions.silence_alert(runtime, int(alert_id), credential=credential,
                                              reason=reason, hours=float(hours))
                message = f"Alert #{alert_id} silenced for {hours:g} h by {md(actor)}."
        except MonitorError as exc:
            show_error(exc)
            return
        refresh()
        st.session_state[MESSAGE_KEY] = message
        st.rerun()


def render(ctx: Context) -> None:
    st.title("Alerts")
    every_model = st.toggle("All models", value=False, key="alerts_all_models")
    model = None if every_model else ctx.filters.model
    st.caption(f"model **{md(model or 'all')}**")
    if message := st.session_state.pop(MESSAGE_KEY, None):
        st.success(message)
    opened = query(ctx.settings, "incidents", model=model)
    closed = query(ctx.settings, "incidents", model=model, states=CLOSED_INCIDENT_STATES,
                   closed_since=ctx.filters.start)
    active = query(ctx.settings, "alerts_frame", model=model, states=ACTIVE_STATES)
    recent = query(ctx.settings, "alerts_frame", model=model, since=ctx.filters.start)
    firing = active[active["state"] == "firing"]
    cols = st.columns(6)
    cols[0].metric("Open incidents", f"{len(opened)}")
    cols[1].metric("Critical incidents",
                   f"{sum(1 for i in opened if i.severity == 'critical')}")
    cols[2].metric("Findings firing", f"{len(firing)}",
                   help="Alerts: the state of one rule on one evidence stream; the findings "
                   "of one cause form an incident.")
    cols[3].metric("Pending", f"{int((active['state'] == 'pending').sum())}",
                   help="The condition holds but not yet for enough consecutive windows.")
    cols[4].metric("Unacknowledged", f"{int(firing['acknowledged_by'].isna().sum())}")
    cols[5].metric("Silenced", f"{int(active['silenced'].sum())}")

    open_incidents_section(ctx, opened)
    closed_incidents_section(closed)
    outside = active[active["incident_id"].isna()]
    if not outside.empty:
        st.subheader("Findings outside any incident")
        st.caption("Firing or pending findings not grouped into an incident (model-level "
                   "rules such as the health score, or findings from before incidents).")
        st.dataframe(alert_table(outside), hide_index=True, width="stretch",
                     column_config=DATE_COLUMNS)
    action_form(ctx, active)
    st.subheader("Recent findings")
    resolved = recent[~recent["state"].isin(ACTIVE_STATES)]
    if resolved.empty:
        st.caption("No resolved finding in this range.")
    else:
        st.dataframe(alert_table(resolved), hide_index=True, width="stretch",
                     column_config=DATE_COLUMNS)


render(context())
