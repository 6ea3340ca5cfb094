"""Alerts: what is firing and what fired recently; acknowledge and silence (operator token)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import actions
from dashboards.common import Context, context, md, query, refresh, runtime_for, show_error
from monitor.errors import MonitorError

ACTIVE_STATES = ("firing", "pending")


def alert_table(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "id": frame["alert_id"],
        "severity": frame["severity"],
        "state": frame["state"],
        "rule": frame["rule"],
        "version": frame["model_version"],
        "summary": frame["summary"],
        "windows": frame["consecutive"],
        "since": frame["fired_at"].fillna(frame["started_at"]),
        "acknowledged by": frame["acknowledged_by"],
        "silenced until": frame["silenced_until"].where(frame["silenced"]),
        "resolved": frame["resolved_at"],
    })


DATE_COLUMNS = {name: st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")
                for name in ("since", "silenced until", "resolved")}


def action_form(ctx: Context, active: pd.DataFrame) -> None:
    st.subheader("Acknowledge or silence")
    if active.empty:
        st.caption("Nothing to act on.")
        return
    labels = {int(r.alert_id): f"#{r.alert_id} {r.severity} {r.rule} ({r.model_version})"
              for r in active.itertuples()}
    with st.form("alert_action", clear_on_submit=False):
        alert_id = st.selectbox("Alert", list(labels), format_func=labels.get,
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
        st.session_state["alert_action_message"] = message
        st.rerun()


def render(ctx: Context) -> None:
    st.title("Alerts")
    every_model = st.toggle("All models", value=False, key="alerts_all_models")
    model = None if every_model else ctx.filters.model
    st.caption(f"model **{md(model or 'all')}**")
    if message := st.session_state.pop("alert_action_message", None):
        st.success(message)
    active = query(ctx.settings, "alerts_frame", model=model, states=ACTIVE_STATES)
    recent = query(ctx.settings, "alerts_frame", model=model, since=ctx.filters.start)
    firing = active[active["state"] == "firing"]
    cols = st.columns(5)
    cols[0].metric("Firing", f"{len(firing)}")
    cols[1].metric("Critical firing", f"{int((firing['severity'] == 'critical').sum())}")
    cols[2].metric("Pending", f"{int((active['state'] == 'pending').sum())}",
                   help="The condition holds but not yet for enough consecutive windows.")
    cols[3].metric("Unacknowledged", f"{int(firing['acknowledged_by'].isna().sum())}")
    cols[4].metric("Silenced", f"{int(active['silenced'].sum())}")

    st.subheader("Firing and pending")
    if active.empty:
        st.success("No alert is firing.")
    else:
        st.dataframe(alert_table(active), hide_index=True, width="stretch",
                     column_config=DATE_COLUMNS)
    action_form(ctx, active)
    st.subheader("Recent alerts")
    resolved = recent[~recent["state"].isin(ACTIVE_STATES)]
    if resolved.empty:
        st.caption("No resolved alert in this range.")
    else:
        st.dataframe(alert_table(resolved), hide_index=True, width="stretch",
                     column_config=DATE_COLUMNS)


render(context())
