"""Bias: per subgroup and metric, n, the value with its Wilson interval, the gap to the rest
of the window and the Benjamini–Hochberg-adjusted significance, as a table and a forest plot;
groups under the minimum size are shown as "insufficient data", not dropped."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import charts
from dashboards.common import Context, context, fmt_p, fmt_rate, md, query, scope_caption
from monitor.store.dashboard import BIAS_DETECTOR, Filters


def table(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "field": frame["field"],
        "group": frame["value"],
        "metric": frame["metric"],
        "n": frame["n"],
        "value (95% CI)": [fmt_rate(v, lo, hi) for v, lo, hi in
                           zip(frame["group_value"], frame["ci_low"], frame["ci_high"],
                               strict=True)],
        "rest": frame["rest_value"].map(fmt_rate),
        "gap": frame["gap"].map(lambda g: "–" if pd.isna(g) else f"{100 * g:+.1f} pp"),
        "q (BH)": frame["q_value"].map(fmt_p),
        "p": frame["p_value"].map(fmt_p),
        "status": [("insufficient data" if s != "ok" else
                    (f"significant ({d})" if drift else "no significant gap"))
                   for s, drift, d in zip(frame["status"], frame["drift"], frame["direction"],
                                          strict=True)],
    })


def render(ctx: Context) -> None:
    st.title("Bias")
    scope_caption(ctx, per_site=False)
    f = ctx.filters
    version = f.version or ctx.options.active_versions.get(f.model)
    scoped = Filters(model=f.model, version=version, start=f.start, end=f.end)
    runs = query(ctx.settings, "health_trend", scoped)
    latest = query(ctx.settings, "latest_run_with", scoped, BIAS_DETECTOR)
    if latest is None or runs.empty:
        st.info("No subgroup results in this range for this version.")
        return
    runs = runs.sort_values("window_end", ascending=False)
    labels = {int(r.run_id): f"{r.window_end:%Y-%m-%d %H:%M} · {r.version} · "
              f"{r.window_label} ({r.n_studies} studies)" for r in runs.itertuples()}
    ids = list(labels)
    run_id = st.selectbox("Window", ids, index=ids.index(latest) if latest in ids else 0,
                          format_func=labels.get, key="bias_window")
    frame = query(ctx.settings, "bias_table", int(run_id))
    if frame.empty:
        st.info("This window has no subgroup results.")
        return
    fields = sorted(frame["field"].unique())
    chosen = st.multiselect("Fields", fields, default=fields, key="bias_fields")
    frame = frame[frame["field"].isin(chosen)]
    tested = frame[frame["status"] == "ok"]
    flagged = frame[frame["drift"]]
    cols = st.columns(4)
    cols[0].metric("Subgroup comparisons", f"{len(frame)}")
    cols[1].metric("Tested", f"{len(tested)}")
    cols[2].metric("Significant gaps (FDR 5%)", f"{len(flagged)}")
    cols[3].metric("Insufficient data", f"{len(frame) - len(tested)}",
                   help="Groups (or their rest) under the minimum size: shown, not tested.")
    for row in flagged.itertuples():
        text = (f"**{md(row.field)} = {md(row.value)}**: {md(row.metric.replace('_', ' '))} "
                f"{fmt_rate(row.group_value, row.ci_low, row.ci_high)} vs "
                f"{fmt_rate(row.rest_value)} in the rest (gap {100 * row.gap:+.1f} pp, "
                f"q = {fmt_p(row.q_value)}, n = {row.n})")
        if row.direction == "worse":
            st.error(text, icon=":material/warning:")
        else:
            st.info(text)
    # metrics with significant gaps first, so the first tab shows a finding when there is one
    flagged_per_metric = frame.groupby("metric", sort=False)["drift"].sum()
    metrics = sorted(dict.fromkeys(frame["metric"]), key=lambda m: -flagged_per_metric[m])
    tabs = st.tabs([m.replace("_", " ") for m in metrics])
    for tab, metric in zip(tabs, metrics, strict=True):
        with tab:
            st.altair_chart(charts.forest(frame, metric=metric), width="stretch")
    st.subheader("Subgroup table")
    ordered = frame.sort_values(["drift", "status", "metric", "field", "value"],
                                ascending=[False, False, True, True, True])
    st.dataframe(table(ordered), hide_index=True, width="stretch")
    st.caption("Each group against the rest of the window, Wilson 95% intervals; "
               "two-proportion tests (cluster-robust by patient) with Benjamini–Hochberg "
               "q-values across every tested comparison of the window.")


render(context())
