"""Bias: per subgroup and metric, the group's value with its Wilson interval, its gap to the
rest of the window, and that gap against the group's own gap in the baseline.

Two kinds of finding, shown apart: gaps that *grew* worse than in the baseline (or crossed the
metric's clinical tolerance), which are drift, and *standing* gaps, already present in the
baseline, which are true but not a change. Each is said in words: how many points, which
direction, since when. Groups under the minimum size are shown as "insufficient data", not
dropped; results stored before baseline gaps were kept have no baseline columns and show "–".
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import charts
from dashboards.common import Context, context, fmt_p, fmt_rate, query, scope_caption
from monitor.safe_output import markdown_text as md
from monitor.store.dashboard import BIAS_DETECTOR, Filters

# Columns the page reads beyond the per-window ones (empty for results stored before the
# baseline-gap test, and where the query does not return them).
BASELINE_COLUMNS = {"baseline_gap": float("nan"), "gap_change": float("nan"),
                    "change_low": float("nan"), "change_high": float("nan"),
                    "standing": False, "tolerance": float("nan")}
WORSE_WHEN_HIGHER = {"override_rate"}


def with_baseline_columns(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for name, empty in BASELINE_COLUMNS.items():
        if name not in out.columns:
            out[name] = empty
    out["standing"] = out["standing"].fillna(False).astype(bool)
    return out


def points(gap: float | None) -> str:
    return "–" if gap is None or pd.isna(gap) else f"{100 * gap:+.1f} pp"


def gap_in_words(gap: float, metric: str) -> str:
    """'12.0 points lower sensitivity (worse)' for a gap of -0.12 in sensitivity."""
    name = md(metric.replace("_", " "))
    if pd.isna(gap) or gap == 0:
        return f"no gap to the rest in {name}"
    worse = (gap > 0) == (metric in WORSE_WHEN_HIGHER)
    side = "higher" if gap > 0 else "lower"
    return (f"{abs(100 * gap):.1f} points {side} {name} than the rest "
            f"({'worse' if worse else 'better'})")


def change_in_words(row: pd.Series) -> str:
    """How the gap moved since the baseline, with its interval; or the tolerance crossed."""
    if pd.isna(row["gap_change"]):
        tolerance = ("" if pd.isna(row["tolerance"])
                     else f", judged against the tolerance of {100 * row['tolerance']:.0f} points")
        return f"no baseline gap to compare with{tolerance}"
    interval = ("" if pd.isna(row["change_low"]) else
                f", 95% CI {100 * row['change_low']:+.1f} to {100 * row['change_high']:+.1f}")
    moved = "worse" if row["direction"] == "worse" else "the better way"
    return (f"in the baseline it was {points(row['baseline_gap'])}, so the gap moved "
            f"{abs(100 * row['gap_change']):.1f} points {moved} ({points(row['gap_change'])}"
            f"{interval})")


def status_text(row: pd.Series) -> str:
    if row["status"] != "ok":
        return "insufficient data"
    if row["drift"]:
        return "significant (worse than in the baseline)"
    if row["standing"]:
        return "standing gap (in the baseline)"
    return "no significant change"


def table(frame: pd.DataFrame) -> pd.DataFrame:
    frame = with_baseline_columns(frame)
    return pd.DataFrame({
        "field": frame["field"],
        "group": frame["value"],
        "metric": frame["metric"],
        "n": frame["n"],
        "value (95% CI)": [fmt_rate(v, lo, hi) for v, lo, hi in
                           zip(frame["group_value"], frame["ci_low"], frame["ci_high"],
                               strict=True)],
        "rest": frame["rest_value"].map(fmt_rate),
        "gap": frame["gap"].map(points),
        "baseline gap": frame["baseline_gap"].map(points),
        "change (95% CI)": [
            "–" if pd.isna(c) else
            (points(c) if pd.isna(lo) else f"{points(c)} ({100 * lo:+.1f} to {100 * hi:+.1f})")
            for c, lo, hi in zip(frame["gap_change"], frame["change_low"],
                                 frame["change_high"], strict=True)],
        "q (BH)": frame["q_value"].map(fmt_p),
        "p (one-sided)": frame["p_value"].map(fmt_p),
        "status": [status_text(row) for _, row in frame.iterrows()],
    })


def grown_text(row: pd.Series) -> str:
    return (f"**{md(row['field'])} = {md(row['value'])}**: "
            f"{md(row['metric'].replace('_', ' '))} "
            f"{fmt_rate(row['group_value'], row['ci_low'], row['ci_high'])} against "
            f"{fmt_rate(row['rest_value'])} in the rest, {gap_in_words(row['gap'], row['metric'])}"
            f"; {change_in_words(row)} (q = {fmt_p(row['q_value'])}, n = {row['n']})"
            + (". The group already did worse in the baseline." if row["standing"] else ""))


def standing_text(row: pd.Series) -> str:
    now = ("too few reads in this window to say" if row["status"] != "ok" else
           f"now {points(row['gap'])} ({md(row['metric'].replace('_', ' '))} "
           f"{fmt_rate(row['group_value'], row['ci_low'], row['ci_high'])}, n = {row['n']})")
    return (f"**{md(row['field'])} = {md(row['value'])}**: "
            f"{gap_in_words(row['baseline_gap'], row['metric'])} since the baseline "
            f"({points(row['baseline_gap'])}); {now}. A standing gap, not a change.")


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
                          format_func=labels.__getitem__, key="bias_window")
    frame = query(ctx.settings, "bias_table", int(run_id))
    if frame.empty:
        st.info("This window has no subgroup results.")
        return
    frame = with_baseline_columns(frame)
    fields = sorted(frame["field"].unique())
    chosen = st.multiselect("Fields", fields, default=fields, key="bias_fields")
    frame = frame[frame["field"].isin(chosen)]
    tested = frame[frame["status"] == "ok"]
    grown = frame[frame["drift"]]
    standing = frame[frame["standing"] & ~frame["drift"]]
    cols = st.columns(5)
    cols[0].metric("Subgroup comparisons", f"{len(frame)}")
    cols[1].metric("Tested", f"{len(tested)}")
    cols[2].metric("Gaps that grew (FDR 5%)", f"{len(grown)}",
                   help="Worse than the group's own gap in the baseline, or beyond the "
                        "metric's clinical tolerance; one-sided, Benjamini–Hochberg.")
    cols[3].metric("Standing gaps", f"{len(standing)}",
                   help="Groups already doing worse than the rest in the baseline: shown, "
                        "not drift, as long as the gap does not grow.")
    cols[4].metric("Insufficient data", f"{len(frame) - len(tested)}",
                   help="Groups (or their rest) under the minimum size: shown, not tested.")
    st.subheader("Gaps that grew")
    if grown.empty:
        st.caption("No group does significantly worse than it did in the baseline.")
    for _, row in grown.iterrows():
        st.error(grown_text(row), icon=":material/warning:")
    st.subheader("Standing gaps (present in the baseline)")
    if standing.empty:
        st.caption("No group did significantly worse than the rest in the baseline.")
    for _, row in standing.sort_values(["metric", "baseline_gap"]).iterrows():
        st.warning(standing_text(row), icon=":material/history:")
    # metrics with grown gaps first, so the first tab shows a finding when there is one
    flagged_per_metric = frame.groupby("metric", sort=False)["drift"].sum()
    metrics = sorted(dict.fromkeys(frame["metric"]), key=lambda m: -flagged_per_metric[m])
    tabs = st.tabs([m.replace("_", " ") for m in metrics])
    for tab, metric in zip(tabs, metrics, strict=True):
        with tab:
            st.altair_chart(charts.forest(frame, metric=metric), width="stretch")
    st.subheader("Subgroup table")
    ordered = frame.sort_values(["drift", "standing", "status", "metric", "field", "value"],
                                ascending=[False, False, False, True, True, True])
    st.dataframe(table(ordered), hide_index=True, width="stretch")
    st.caption("Each group's gap to the rest of the window (Wilson 95% intervals for the "
               "values) against the same group's gap in the baseline: a one-sided test that "
               "the gap grew worse (cluster-robust by patient, the baseline's uncertainty "
               "included), and where the metric has a clinical tolerance, that the gap crossed "
               "it; Benjamini–Hochberg q-values across every tested comparison of the window. "
               "A group doing better is never a finding.")


render(context())
