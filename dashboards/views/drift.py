"""Drift: the sequential evidence per family over days against its warning and page levels
(what pages people); every detector's p-value or statistic per check window with its
threshold, the baseline period and alert episodes marked; what drives the drift of a chosen
window; and the window's Evidently report."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import charts
from dashboards.common import Context, context, fmt_p, fmt_time, query, scope_caption
from monitor.safe_output import markdown_text as md
from monitor.store.dashboard import family_evidence, paging_windows

MAX_DETAIL_CHARTS = 6


def _row_label(frame: pd.DataFrame) -> pd.Series:
    return frame["detector"] + " · " + frame["feature"]


def _default_details(series: pd.DataFrame) -> list[str]:
    """Embedding detectors first, then the rows that drifted most often."""
    labels = _row_label(series)
    drifted = series.assign(row=labels).groupby("row")["drift"].sum().sort_values(
        ascending=False)
    embedding = sorted(set(labels[series["family"] == "embedding"]))
    chosen = [r for r in embedding if r in drifted.index and
              (series.assign(row=labels).query("row == @r")["status"] == "ok").any()]
    chosen += [r for r, n in drifted.items() if n > 0 and r not in chosen]
    return chosen[:MAX_DETAIL_CHARTS]


def detector_section(ctx: Context, series: pd.DataFrame) -> None:
    f = ctx.filters
    baselines = query(ctx.settings, "baseline_periods", f)
    episodes = query(ctx.settings, "alert_episodes", f)
    st.subheader("Detectors over time")
    st.caption("Colour: evidence (−log10 p); ✕: drift found. Bound-only detectors are coloured "
               "by their verdict.")
    st.altair_chart(charts.drift_heatmap(series), width="stretch")
    rows = sorted(_row_label(series).unique())
    chosen = st.multiselect("Detectors to plot", rows, default=_default_details(series),
                            key="drift_detectors",
                            help="Each chart's legend names its line(s) and the threshold; "
                            "red diamonds: windows where the detector found drift. "
                            "Grey: the baseline period; orange: the detector's alert "
                            "episodes (dotted: model-level alerts such as the health score); "
                            "dashed red: the threshold (alpha for p-values).")
    columns = st.columns(2)
    model_level = episodes[episodes["detector"].isna()]
    for i, row in enumerate(chosen):
        one = series[_row_label(series) == row]
        detector, feature = one["detector"].iloc[0], one["feature"].iloc[0]
        own = episodes[(episodes["detector"] == detector) & (episodes["feature"] == feature)]
        with columns[i % 2]:
            st.altair_chart(charts.detector_series(
                one, baselines=baselines, episodes=own, markers=model_level, title=row),
                width="stretch")
    if not baselines.empty:
        latest = baselines.groupby("version").tail(1)
        st.caption("Baselines: " + "; ".join(
            f"{md(r.version)}: {r.window_start:%Y-%m-%d} to {r.window_end:%Y-%m-%d} "
            f"({r.n_studies} studies)" for r in latest.itertuples()
            if pd.notna(r.window_start) and pd.notna(r.window_end)))


def window_label(run: pd.Series) -> str:
    return (f"{run['window_end']:%Y-%m-%d %H:%M} · {run['version']} · {run['window_label']} "
            f"({run['n_studies']} studies, health {run['health_score']:.2f})"
            if pd.notna(run["health_score"]) else
            f"{run['window_end']:%Y-%m-%d %H:%M} · {run['version']} · {run['window_label']}")


def attribution_section(ctx: Context, runs: pd.DataFrame, series: pd.DataFrame) -> None:
    st.subheader("What drives it: attribution for a window")
    if runs.empty:
        st.info("No completed check in this range.")
        return
    runs = runs.sort_values("window_end", ascending=False).reset_index(drop=True)
    drifting = set(series.loc[series["drift"], "run_id"])
    default = next((i for i, run_id in enumerate(runs["run_id"]) if run_id in drifting), 0)
    labels = {int(r.run_id): window_label(runs.loc[i]) for i, r in runs.iterrows()}
    run_id = st.selectbox("Window", list(labels), index=default, format_func=labels.__getitem__,
                          key="drift_window")
    run = runs[runs["run_id"] == run_id].iloc[0]
    ranking = query(ctx.settings, "attribution_ranking", int(run_id))
    window = series[series["run_id"] == run_id]
    found = window[window["drift"]]
    left, right = st.columns([3, 2])
    with left:
        if ranking.empty:
            st.info("No drift to attribute in this window.")
        else:
            basis = ranking["basis"].iloc[0]
            top = ranking.iloc[0]
            where = f" on {md(top['where'])}" if top["where"] else ""
            st.markdown(f"Top driver: **{md(top['field'])} = {md(top['value'])}**{where} "
                        f"({md(basis)} "
                        f"basis; {top['n_current']} studies in the window, "
                        f"{top['n_reference']} in the baseline)")
            st.altair_chart(charts.attribution_bars(ranking[ranking["basis"] == basis]),
                            width="stretch")
            st.dataframe(
                ranking[["basis", "field", "value", "where", "contribution",
                         "explained_share", "own_drift", "n_reference", "n_current",
                         "share_reference", "share_current"]],
                hide_index=True, width="stretch",
                column_config={
                    "contribution": st.column_config.NumberColumn(format="%.4f"),
                    "explained_share": st.column_config.NumberColumn(format="%.2f"),
                    "own_drift": st.column_config.NumberColumn(format="%.3f"),
                    "share_reference": st.column_config.NumberColumn(format="percent"),
                    "share_current": st.column_config.NumberColumn(format="percent"),
                })
    with right:
        st.markdown(f"**Window** {fmt_time(run['window_start'])} to "
                    f"{fmt_time(run['window_end'])}, version {md(run['version'])}, "
                    f"{run['n_studies']} studies")
        if found.empty:
            st.markdown("No detector found drift in this window.")
        else:
            st.markdown("**Findings**")
            st.dataframe(
                pd.DataFrame({"detector": found["detector"], "feature": found["feature"],
                              "p": found["p_value"].map(fmt_p),
                              "statistic": found["statistic"].round(4)}),
                hide_index=True, width="stretch")
        if isinstance(run["report_path"], str) and run["report_path"]:
            # a page link keeps this browser session (and its sign-in); a plain link would not
            st.page_link("views/report.py", label="Open the Evidently report for this window",
                         query_params={"run": str(int(run_id))}, icon=":material/description:",
                         help="Evidently's data-drift view of the window against the "
                         "baseline; the verdicts that page people are this service's own.")
        else:
            st.caption("No Evidently report was written for this window.")


def sequential_section(sequential: pd.DataFrame) -> None:
    st.subheader("Sequential evidence per family")
    if sequential.empty:
        st.info("No daily grid checks yet in this range: sequential evidence accumulates "
                "over the daily checks (window 1d, midnight to midnight in the site's time "
                "zone). Checks of other windows show below, each on its own.")
        return
    st.caption("Each day's p-value of every test (a stream) adds to a cumulative statistic "
               "over up to 28 days; a family's line is its strongest stream, divided by the "
               "page threshold, so 1 (dashed red) pages. Dashed orange: each family's "
               "warning level. By design (the shipped policy) a version with no change gets "
               "one false page a year and one false warning every 90 days.")
    families = family_evidence(sequential)
    versions = sorted(families["version"].dropna().unique())
    columns = st.columns(min(2, len(versions)) or 1)
    for i, version in enumerate(versions):
        with columns[i % len(columns)]:
            st.altair_chart(charts.sequential_evidence(
                families[families["version"] == version], title=f"version {version}"),
                width="stretch")
    newest = sequential[sequential["window_start"] ==
                        sequential.groupby("version")["window_start"].transform("max")]
    raised = newest[newest["level"] != "quiet"].sort_values(
        ["version", "statistic"], ascending=[True, False])
    if raised.empty:
        st.caption("Newest day: every stream below its warning level.")
        return
    st.markdown("**Streams at warning or page on the newest day**")
    st.dataframe(
        pd.DataFrame({"version": raised["version"], "day": raised["window_start"],
                      "stream": raised["stream"], "family": raised["family"],
                      "level": raised["level"], "statistic": raised["statistic"],
                      "page at": raised["page_at"], "since": raised["since"],
                      "days": raised["days"], "today's p": raised["daily_p"].map(fmt_p)}),
        hide_index=True, width="stretch",
        column_config={"day": st.column_config.DateColumn(format="YYYY-MM-DD"),
                       "statistic": st.column_config.NumberColumn(format="%.2f"),
                       "page at": st.column_config.NumberColumn(format="%.2f")})


def render(ctx: Context) -> None:
    st.title("Drift")
    scope_caption(ctx, per_site=False)
    f = ctx.filters
    runs = query(ctx.settings, "health_trend", f)
    labels = sorted(runs["window_label"].dropna().unique()) if len(runs) else []
    chosen_label = None
    if len(labels) > 1:
        choice = st.segmented_control("Window length", ["all", *labels], default="all",
                                      key="drift_window_label")
        chosen_label = None if choice in (None, "all") else choice
    series = query(ctx.settings, "drift_series", f, window_label=chosen_label)
    if chosen_label is not None:
        runs = runs[runs["window_label"] == chosen_label]
    sequential = query(ctx.settings, "sequential_series", f, window_label=chosen_label)
    cols = st.columns([1, 2, 1, 1])  # room for the paging count's label
    cols[0].metric("Check windows", f"{runs['run_id'].nunique() if len(runs) else 0}")
    cols[1].metric("Windows with a paging finding", f"{len(paging_windows(sequential))}",
                   help="Daily windows where at least one stream's sequential statistic "
                   "reached its page threshold (the condition of the sequential-page rule). "
                   "A single small p-value does not page; evidence that persists does. "
                   "Checks off the daily grid store no sequential evidence and never count "
                   "here; the heatmap's ✕ marks each detector's own verdict at its alpha.")
    cols[2].metric("Detector results", f"{len(series):,}")
    failed = int((series["status"] == "failed").sum()) if len(series) else 0
    cols[3].metric("Failed detector runs", f"{failed}")
    if series.empty and sequential.empty:
        st.info("No check results in this range: run `monitor check` (or wait for the "
                "scheduled checks).")
        return
    sequential_section(sequential)
    detector_section(ctx, series)
    attribution_section(ctx, runs, series)


render(context())
