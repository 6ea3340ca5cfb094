"""Overrides: how often radiologists disagree with the model, and sensitivity / specificity
against their reads, per day with Wilson intervals; read coverage and read delay; the most
recent overridden studies (pseudonymised keys only)."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from dashboards import charts
from dashboards.common import Context, context, fmt_rate, query, scope_caption
from monitor.detect.stats import wilson_interval


def rate_metric(column: DeltaGenerator, label: str, frame: pd.DataFrame, successes: str,
                n: str, *, help: str) -> None:
    """A pooled rate over the range, its Wilson 95% interval under it."""
    k, total = int(frame[successes].sum()), int(frame[n].sum())
    if not total:
        column.metric(label, "–", help=help)
        return
    low, high = wilson_interval(k, total)
    column.metric(label, fmt_rate(k / total), delta=f"95% CI {100 * low:.1f}–{100 * high:.1f}",
                  delta_color="off", delta_arrow="off", help=f"{help} n = {total:,}.")


def render(ctx: Context) -> None:
    st.title("Overrides")
    scope_caption(ctx)
    f = ctx.filters
    performance = query(ctx.settings, "read_performance", f)
    daily, delay, histogram = performance.daily, performance.delay, performance.histogram
    if daily.empty:
        st.info("No studies in this range.")
        return
    studies, reads = int(daily["studies"].sum()), int(daily["reads"].sum())
    cols = st.columns(4)
    cols[0].metric("Studies", f"{studies:,}")
    cols[1].metric("Reads", f"{reads:,}", help="Studies with a radiologist read (the latest "
                   "read of each study counts).")
    cols[2].metric("Read coverage", f"{100 * reads / studies:.1f}%" if studies else "–")
    cols[3].metric("Median read delay", "–" if not delay["reads"] else
                   f"{delay['median_delay_h']:.1f} h",
                   delta=None if not delay["reads"] else
                   f"90th percentile {delay['p90_delay_h']:.1f} h",
                   delta_color="off", delta_arrow="off",
                   help="Time from the study to its latest read (hour resolution).")
    cols = st.columns(4)
    rate_metric(cols[0], "Override rate", daily, "overrides", "reads",
                help="Reads that disagree with the model.")
    rate_metric(cols[1], "Sensitivity", daily, "tp", "sens_n",
                help="Against radiologist-positive reads (partial, delayed labels).")
    rate_metric(cols[2], "Specificity", daily, "tn", "spec_n",
                help="Against radiologist-negative reads.")
    rate_metric(cols[3], "PPV", daily, "tp", "ppv_n",
                help="Model positives the radiologist confirmed.")
    st.caption("Reads arrive late: the newest days have low coverage and wide intervals "
               "until their reads come in. Metrics are against the radiologist, not ground "
               "truth.")

    left, right = st.columns(2)
    with left:
        st.altair_chart(charts.rate_over_time(daily, metric="override_rate",
                                              title="Override rate"), width="stretch")
        st.altair_chart(charts.rate_over_time(daily, metric="sensitivity",
                                              title="Sensitivity"), width="stretch")
    with right:
        st.altair_chart(charts.rate_over_time(daily, metric="specificity",
                                              title="Specificity"), width="stretch")
        st.markdown("**Read coverage (bars) and median read delay (line)**")
        st.altair_chart(charts.coverage_and_delay(daily), width="stretch")
    st.markdown("**Read delay (time from the study to its latest read)**")
    st.altair_chart(charts.delay_histogram(histogram), width="stretch")

    st.subheader("Most recent overridden studies")
    recent = query(ctx.settings, "recent_overridden", f, limit=25)
    if recent.empty:
        st.info("No overridden study in this range.")
    else:
        st.dataframe(recent, hide_index=True, width="stretch", column_config={
            "read_at": st.column_config.DatetimeColumn("read at", format="YYYY-MM-DD HH:mm"),
            "study_at": st.column_config.DatetimeColumn("study at", format="YYYY-MM-DD HH:mm"),
            "study_key": st.column_config.TextColumn(
                "study (pseudonymised)", help="Keyed hash of the study UID."),
            "score": st.column_config.NumberColumn(format="%.3f"),
        })


render(context())
