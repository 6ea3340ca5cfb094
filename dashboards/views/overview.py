"""Overview: every model and its active version at a glance, then the chosen model's health
trend and ingestion volume."""

from __future__ import annotations

import streamlit as st

from dashboards import charts
from dashboards.common import (
    QUERY_TTL_S,
    RAG_COLOURS,
    Context,
    context,
    fmt_ago,
    fmt_time,
    query,
    rag_badge,
    scope_caption,
)
from monitor.config import Settings
from monitor.safe_output import markdown_text as md
from monitor.store.dashboard import Filters, GridProgress, ModelStatus


def model_card(status: ModelStatus) -> None:
    with st.container(border=True):
        colour = RAG_COLOURS[status.rag]
        head = st.columns([1, 40])
        head[0].markdown(f"<div style='background:{colour}; width:10px; height:2.2em; "
                         "border-radius:3px'></div>", unsafe_allow_html=True)
        head[1].markdown(f"#### {md(status.model)} &nbsp; {rag_badge(status.rag)}")
        cols = st.columns(6)
        cols[0].metric("Active version", status.active_version or "–")
        cols[1].metric("Health (latest check)",
                       "–" if status.health_score is None else f"{status.health_score:.2f}",
                       help="1 = every detector family quiet; green ≥ 0.8, amber ≥ 0.6, "
                       "red below. The line: the active version's recent checks.",
                       chart_data=list(status.health_history) or None, chart_type="area")
        cols[2].metric("Open incidents", f"{status.incidents_open}",
                       delta=f"{status.critical_incidents} critical"
                       if status.critical_incidents else None, delta_color="inverse",
                       help=f"Findings of one version that share a cause form one incident; "
                       f"{status.alerts_firing} finding(s) firing. The Alerts page lists "
                       "them.")
        cols[3].metric("Studies", f"{status.studies:,}", help="Inferences logged in the "
                       "chosen time range, every version and site.")
        cols[4].metric("Last check", fmt_ago(status.last_check_at),
                       help=f"{fmt_time(status.last_check_at)}: when the newest check of any "
                       "version finished.")
        aliases = ", ".join(f"{md(a)} → {md(v)}" for a, v in sorted(status.aliases.items()))
        cols[5].metric("Versions", f"{len(status.versions)}", help=aliases or None)
        if status.reasons:  # incidents' causes and effects come from the data: escaped
            st.caption("Why:  \n" + "  \n".join(md(reason) for reason in status.reasons))


@st.fragment(run_every=QUERY_TTL_S)
def checks_banner(settings: Settings) -> None:
    """While daily grid windows wait for their check (``monitor demo`` fills them in behind
    the served dashboard; a new version or an outage leaves a backlog), say how far they are;
    nothing once every window is checked. Redrawn on its own every ``QUERY_TTL_S``."""
    progress: GridProgress = query(settings, "grid_progress", timezone=settings.timezone)
    if progress.filling_in:
        st.info(f"Checks are still filling in: {progress.checked} of {progress.expected} "
                "daily windows checked. Health, drift and alerts show the days checked so "
                "far.", icon=":material/hourglass_top:")


def render(ctx: Context) -> None:
    st.title("Overview")
    checks_banner(ctx.settings)
    f = ctx.filters
    statuses = query(ctx.settings, "model_statuses", start=f.start, end=f.end)
    st.subheader("Models")
    for status in statuses:
        model_card(status)

    st.subheader(f"{md(f.model)}: health and volume")
    scope_caption(ctx)
    trend = query(ctx.settings, "health_trend", Filters(model=f.model, version=f.version,
                                                         start=f.start, end=f.end))
    volume = query(ctx.settings, "daily_volume", f)
    n_studies = int(volume["studies"].sum()) if len(volume) else 0
    cols = st.columns(4)
    cols[0].metric("Studies in view", f"{n_studies:,}")
    cols[1].metric("Positive rate", "–" if not n_studies
                   else f"{100 * volume['positives'].sum() / n_studies:.1f}%")
    cols[2].metric("Check runs", f"{len(trend):,}")
    latest = trend.dropna(subset=["health_score"]).tail(1)
    cols[3].metric("Latest health", "–" if latest.empty else
                   f"{latest['health_score'].iloc[0]:.2f} ({latest['health_status'].iloc[0]})")
    left, right = st.columns(2)
    with left:
        st.markdown("**Health score per check window**")
        labels = sorted(trend["window_label"].dropna().unique()) if len(trend) else []
        if len(labels) > 1:
            label = st.segmented_control("Window", labels, default=labels[0],
                                         key="overview_window") or labels[0]
            trend = trend[trend["window_label"] == label]
        st.altair_chart(charts.health_trend(trend), width="stretch")
    with right:
        st.markdown("**Ingestion volume (studies per day)**")
        st.altair_chart(charts.volume(volume), width="stretch")


render(context())
