"""Versions: the registry and its aliases, two versions' metrics side by side, pending
rollback recommendations to approve or reject (operator token and reason; an approval takes
a second, confirming click, and the page warns when the target version is itself amber or
red), and the audit log."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from dashboards import actions, charts
from dashboards.common import (
    Context,
    ask_confirmation,
    confirm_step,
    confirming,
    context,
    done_confirming,
    fmt_day,
    fmt_p,
    fmt_rate,
    fmt_time,
    query,
    refresh,
    runtime_for,
    show_error,
)
from monitor.errors import MonitorError
from monitor.safe_output import markdown_text as md
from monitor.vocabulary import PRODUCTION

MAX_FINDINGS_SHOWN = 5
COMPARED_RATES = ("override_rate", "sensitivity", "specificity", "ppv", "positive_rate")


def comparison(ctx: Context, versions: list[str]) -> None:
    st.subheader("Compare two versions")
    f = ctx.filters
    st.caption(f"Same studies' time range and site for both: {fmt_day(f.start)} to "
               f"{fmt_day(f.end - timedelta(days=1) if f.end else None)}, site "
               f"**{md(f.site or 'all')}**. Rates with Wilson 95% intervals.")
    if len(versions) < 2:
        st.caption("Only one version is registered.")
        return
    active = ctx.options.active_versions.get(ctx.filters.model)
    first = versions.index(active) if active in versions else len(versions) - 1
    cols = st.columns(2)
    a = cols[0].selectbox("Version A", versions, index=first, key="compare_a")
    others = [v for v in versions if v != a]
    b = cols[1].selectbox("Version B", others, index=len(others) - 1, key="compare_b")
    metrics = query(ctx.settings, "version_metrics", ctx.filters, (a, b))
    rates = metrics[metrics["metric"].isin(COMPARED_RATES)]
    st.altair_chart(charts.version_comparison(rates), width="stretch")
    rows = []
    for metric in dict.fromkeys(metrics["metric"]):
        row: dict[str, object] = {"metric": metric.replace("_", " ")}
        for version in (a, b):
            hit = metrics[(metrics["metric"] == metric) & (metrics["version"] == version)]
            if hit.empty:
                row[version] = "–"
                continue
            item = hit.iloc[0]
            if metric in COMPARED_RATES or metric == "read_coverage":
                row[version] = fmt_rate(item["value"], item["low"], item["high"])
                if metric in COMPARED_RATES:
                    row[version] = f"{row[version]}, n={item['n']:,}"
            elif pd.isna(item["value"]):
                row[version] = "–"
            elif metric in ("studies", "reads"):
                row[version] = f"{int(item['value']):,}"
            else:
                row[version] = f"{item['value']:.3g}"
        rows.append(row)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 height=36 * (len(rows) + 1) + 4)


def _confirm_key(rec_id: int) -> str:
    return f"decide_confirming_{rec_id}"


def _what_moves(rec: pd.Series) -> str:
    return (f"move {md(rec['alias'])} of {md(rec['model'])} from {md(rec['from_version'])} "
            f"to {md(rec['to_version'])}")


def target_health(ctx: Context, rec: pd.Series) -> None:
    """Warn when the rollback target is itself amber or red in its newest check, naming the
    findings behind it; otherwise one line on its health."""
    target = str(rec["to_version"])
    health = query(ctx.settings, "version_health", str(rec["model"]), target)
    if health is None:
        st.caption(f"Target {md(target)} has no completed check: its health is unknown.")
        return
    score = "–" if health.health_score is None else f"{health.health_score:.2f}"
    window = f"{fmt_time(health.window_start)} to {fmt_time(health.window_end)}"
    if health.health_status not in ("amber", "red"):
        st.caption(f"Target {md(target)}: health {md(health.health_status or 'no data')} "
                   f"({score}) in its newest check, window {window}.")
        return
    shown = health.findings[:MAX_FINDINGS_SHOWN]
    findings = "; ".join(f"{md(d)} · {md(f)}" + ("" if p is None else f" (p={fmt_p(p)})")
                         for d, f, p in shown)
    more = len(health.findings) - len(shown)
    because = (f" Findings: {findings}" + (f" and {more} more" if more else "") + "."
               if findings else "")
    st.warning(f"The target version {md(target)} is itself **{md(health.health_status)}** "
               f"(health {score}) in its newest check, window {window}.{because} Rolling "
               "back puts production on a version with findings of its own.",
               icon=":material/warning:")


def _decide(ctx: Context, rec: pd.Series, *, approve: bool, credential: str,
            reason: str) -> None:
    rec_id = int(rec["recommendation_id"])
    runtime = runtime_for(ctx.database_url, ctx.settings)
    try:
        info = actions.decide_rollback(runtime, rec_id, approve=approve,
                                       credential=credential, reason=reason)
    except MonitorError as exc:
        show_error(exc)
        return
    done_confirming(_confirm_key(rec_id))
    refresh()
    verdict = ("approved: " + f"{md(info.alias)} now points at {md(info.to_version)}"
               if approve else "rejected")
    hook = f" (deploy hook {md(info.hook_status)})" if info.hook_status else ""
    st.session_state["versions_message"] = (
        f"Recommendation #{rec_id} {verdict}{hook}, by {md(info.decided_by)}.")
    st.rerun()


def recommendation_form(ctx: Context, rec: pd.Series) -> None:
    """Token and reason, then "Approve rollback…" (which asks for a confirmation) or
    "Reject". No st.form: Enter in a field submits nothing, only a button click acts."""
    rec_id = int(rec["recommendation_id"])
    with st.container(border=True):
        st.markdown(f"**#{rec_id}: roll {md(rec['model'])} {md(rec['alias'])} back from "
                    f"{md(rec['from_version'])} to {md(rec['to_version'])}**")
        st.caption(f"Policy {md(rec['policy'])}, alert #{rec['alert_id']}, recommended "
                   f"{fmt_time(rec['created_at'])}. {md(rec['reason'] or '')}")
        target_health(ctx, rec)
        credential = st.text_input("Operator token", type="password",
                                   key=f"decide_token_{rec_id}",
                                   help="A token with the operator role; while the token "
                                   "store is empty (the demo), your name.")
        reason = st.text_area("Reason", key=f"decide_reason_{rec_id}", height=68,
                              help="Required; recorded in the audit log.")
        if confirming(_confirm_key(rec_id)):
            confirm_step(
                _confirm_key(rec_id),
                f"{_what_moves(rec)}, with the reason \"{md(reason.strip())}\". The audit "
                "log records it under your name.",
                label="Confirm",
                act=lambda: _decide(ctx, rec, approve=True, credential=credential,
                                    reason=reason))
            return
        cols = st.columns([1, 1, 4])
        if cols[0].button("Approve rollback…", type="primary", key=f"decide_approve_{rec_id}",
                          help=f"Asks for a confirmation, then will {_what_moves(rec)}."):
            runtime = runtime_for(ctx.database_url, ctx.settings)
            ask_confirmation(_confirm_key(rec_id), lambda: actions.check_decision(
                runtime, rec_id, approve=True, credential=credential, reason=reason))
        if cols[1].button("Reject", key=f"decide_reject_{rec_id}"):
            _decide(ctx, rec, approve=False, credential=credential, reason=reason)


def render(ctx: Context) -> None:
    st.title("Versions")
    model = ctx.filters.model
    if message := st.session_state.pop("versions_message", None):
        st.success(message)
    registry = query(ctx.settings, "registry_frame", model)
    aliases = query(ctx.settings, "model_aliases", model)
    pending = query(ctx.settings, "rollback_recommendations", model=model, status="pending")
    cols = st.columns(4)
    cols[0].metric("Versions", f"{len(registry)}")
    cols[1].metric("Production", aliases.get(PRODUCTION, "–"))
    cols[2].metric("Pending rollbacks", f"{len(pending)}")
    cols[3].metric("Aliases", f"{len(aliases)}",
                   help=", ".join(f"{md(k)} → {md(v)}" for k, v in aliases.items()) or None)
    st.subheader(f"Registry: {md(model)}")
    st.dataframe(registry, hide_index=True, width="stretch", column_config={
        name: st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")
        for name in ("first_ts", "last_ts", "baseline_start", "baseline_end", "created_at")})

    st.subheader("Rollback recommendations")
    if pending.empty:
        st.caption("No pending recommendation.")
    for _, rec in pending.iterrows():
        recommendation_form(ctx, rec)
    decided = query(ctx.settings, "rollback_recommendations", model=model)
    decided = decided[decided["status"] != "pending"]
    if not decided.empty:
        with st.expander(f"Decided recommendations ({len(decided)})"):
            st.dataframe(decided, hide_index=True, width="stretch")

    comparison(ctx, registry["version"].tolist())

    st.subheader("Audit log")
    audit = query(ctx.settings, "audit_log", model=model, limit=200)
    if audit.empty:
        st.caption("No audited action yet.")
    else:
        st.dataframe(audit, hide_index=True, width="stretch", column_config={
            "ts": st.column_config.DatetimeColumn("time", format="YYYY-MM-DD HH:mm:ss")})


render(context())
