"""Altair charts of the query layer's frames. Pure functions: a frame in, a chart out."""

from __future__ import annotations

from typing import TypeAlias

import altair as alt
import numpy as np
import pandas as pd

from monitor.detect.health import AMBER_AT, GREEN_AT

P_FLOOR_DISPLAY = 1e-6  # p-values below this are drawn at it (log axis)
HEIGHT = 260
# Line colours of a chart's series (the threshold is always red).
SERIES_COLOURS = ("#1565c0", "#6a1b9a", "#00838f", "#5d4037")
# One colour per detector family on the sequential evidence chart (red and orange are the
# page and warning levels').
FAMILY_COLOURS = {"embedding": "#1565c0", "metadata": "#00838f", "prediction": "#6a1b9a",
                  "performance": "#5d4037", "bias": "#ad1457"}
WARNING_LEVEL, PAGE_LEVEL = "warning level", "page level"
# Drawn as SVG, so the legend is text: readable by a screen reader and a browser test.
SVG = {"embedOptions": {"renderer": "svg"}}
# What the builders return: altair composes charts into layers and facets.
Chart: TypeAlias = alt.Chart | alt.LayerChart | alt.FacetChart


def _empty(message: str) -> Chart:
    return alt.Chart(pd.DataFrame({"text": [message]})).mark_text(size=14, color="#777").encode(
        text="text:N").properties(height=80)


def _time(field: str, title: str = "") -> alt.X:
    return alt.X(f"{field}:T", title=title, axis=alt.Axis(format="%b %d"))


def health_bands(x_min: pd.Timestamp, x_max: pd.Timestamp) -> Chart:
    """Red, amber and green backgrounds (fixed colours: no colour scale shared with the
    lines drawn over them)."""
    layers = []
    for low, high, colour in ((0.0, AMBER_AT, "#c62828"), (AMBER_AT, GREEN_AT, "#ef8f00"),
                              (GREEN_AT, 1.0, "#2e7d32")):
        band = pd.DataFrame({"start": [x_min], "end": [x_max], "low": [low], "high": [high]})
        layers.append(alt.Chart(band).mark_rect(opacity=0.10, color=colour).encode(
            x="start:T", x2="end:T", y="low:Q", y2="high:Q"))
    return alt.layer(*layers)


def health_trend(frame: pd.DataFrame, *, height: int = HEIGHT) -> Chart:
    """Health score per window end and version over red/amber/green bands."""
    if frame.empty:
        return _empty("no completed checks in this range")
    data = frame.dropna(subset=["health_score"])
    if data.empty:
        return _empty("no health scores in this range")
    line = alt.Chart(data).mark_line(point=alt.OverlayMarkDef(size=60)).encode(
        x=_time("window_end", "window end"),
        y=alt.Y("health_score:Q", title="health score", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("version:N", title="version"),
        tooltip=["version", "window_label", alt.Tooltip("window_end:T", format="%Y-%m-%d %H:%M"),
                 alt.Tooltip("health_score:Q", format=".2f"), "health_status", "n_studies"],
    )
    x_min, x_max = data["window_end"].min(), data["window_end"].max()
    if x_min == x_max:
        x_min, x_max = x_min - pd.Timedelta(days=1), x_max + pd.Timedelta(days=1)
    return alt.layer(health_bands(x_min, x_max), line).properties(height=height)


def volume(frame: pd.DataFrame, *, height: int = HEIGHT) -> Chart:
    """Studies per day, stacked by version."""
    if frame.empty:
        return _empty("no studies in this range")
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("yearmonthdate(day):T", title="day", axis=alt.Axis(format="%b %d")),
        y=alt.Y("studies:Q", title="studies", stack=True),
        color=alt.Color("version:N", title="version"),
        tooltip=[alt.Tooltip("day:T", format="%Y-%m-%d"), "version", "studies", "positives"],
    ).properties(height=height)


def drift_heatmap(frame: pd.DataFrame) -> Chart:
    """Every detector (row) by window (column): colour -log10 p (or drift for bound-only
    detectors), a cross where drift was found, grey where the detector failed or had too
    little data."""
    if frame.empty:
        return _empty("no detector results in this range")
    data = frame.copy()
    data["row"] = data["detector"] + " · " + data["feature"]
    data = data.sort_values(["window_end", "window_label"])
    data["window"] = data["window_end"].dt.strftime("%b %d %H:%M") + " (" + data[
        "window_label"] + ")"
    p = data["p_value"].clip(lower=P_FLOOR_DISPLAY)
    data["evidence"] = np.where(data["p_value"].notna(), -np.log10(p),
                                np.where(data["drift"], 3.0, 0.0))
    data["verdict"] = np.where(data["drift"], "drift",
                               np.where(data["status"] == "ok", "no drift", data["status"]))
    base = alt.Chart(data).encode(
        x=alt.X("window:O", title="window (end, length)", sort=None,
                axis=alt.Axis(labelAngle=-30)),
        y=alt.Y("row:N", title=None, sort=sorted(data["row"].unique()),
                axis=alt.Axis(labelLimit=320)),
        tooltip=["detector", "feature", alt.Tooltip("window_end:T", format="%Y-%m-%d %H:%M"),
                 alt.Tooltip("statistic:Q", format=".3g"), alt.Tooltip("p_value:Q", format=".2g"),
                 alt.Tooltip("threshold:Q", format=".3g"), "verdict", "n_current"],
    )
    cells = base.mark_rect().encode(color=alt.condition(
        alt.datum.status == "ok",
        alt.Color("evidence:Q", title="-log10 p", scale=alt.Scale(
            scheme="orangered", domain=[0, 6], clamp=True)),
        alt.value("#e0e0e0")))
    marks = base.transform_filter(alt.datum.drift).mark_text(text="✕", color="black")
    return (cells + marks).properties(height=alt.Step(20))


def detector_series(series: pd.DataFrame, *, baselines: pd.DataFrame, episodes: pd.DataFrame,
                    markers: pd.DataFrame | None = None, title: str,
                    height: int = 220) -> Chart:
    """One detector's p-value (log axis) or statistic per window, its threshold as a dashed
    red line, the baseline period shaded grey, the detector's own alert episodes shaded
    orange (fired until resolved), and model-level alerts (``markers``, e.g. the health
    score) as orange rules where they fired."""
    if series.empty:
        return _empty("no results")
    data = series.copy()
    kind = data["kind"].iloc[-1]
    if kind == "p-value":
        data["shown"] = data["p_value"].clip(lower=P_FLOOR_DISPLAY)
        y = alt.Y("shown:Q", title="p-value (log)", scale=alt.Scale(type="log"))
    else:
        data["shown"] = data["statistic"]
        y = alt.Y("shown:Q", title="statistic")
    data["verdict"] = np.where(data["drift"], "drift", "no drift")
    x_min, x_max = data["window_start"].min(), data["window_end"].max()
    layers: list[alt.Chart] = []
    shade = baselines.dropna(subset=["window_start", "window_end"]).copy()
    if not shade.empty:
        shade["label"] = "baseline " + shade["version"].astype(str)
        layers.append(alt.Chart(shade).mark_rect(color="#9e9e9e", opacity=0.25).encode(
            x="window_start:T", x2="window_end:T",
            tooltip=["label", alt.Tooltip("window_start:T", format="%Y-%m-%d"),
                     alt.Tooltip("window_end:T", format="%Y-%m-%d"), "n_studies"]))
        x_min = min(x_min, shade["window_start"].min())
    if not episodes.empty:
        spans = episodes.copy()
        spans["ended_at"] = spans["ended_at"].fillna(max(x_max, spans["started_at"].max()))
        tooltip = ["rule", "severity", "state", "summary",
                   alt.Tooltip("started_at:T", format="%Y-%m-%d %H:%M"),
                   alt.Tooltip("ended_at:T", format="%Y-%m-%d %H:%M")]
        layers.append(alt.Chart(spans).mark_rect(color="#ef8f00", opacity=0.15).encode(
            x="started_at:T", x2="ended_at:T", tooltip=tooltip))
        layers.append(alt.Chart(spans).mark_rule(color="#ef8f00", strokeWidth=2).encode(
            x="started_at:T", tooltip=tooltip))
    if markers is not None and not markers.empty:
        layers.append(alt.Chart(markers).mark_rule(color="#ef8f00", strokeDash=[2, 2]).encode(
            x="started_at:T", tooltip=["rule", "severity", "state", "summary",
                                       alt.Tooltip("started_at:T", format="%Y-%m-%d %H:%M")]))
    threshold = float(data["threshold"].iloc[-1])
    data["series"] = _series_labels(data, title)
    threshold_label = (f"threshold (alpha {threshold:g})" if kind == "p-value"
                       else f"threshold ({threshold:.3g})")
    names = list(dict.fromkeys(data["series"]))
    colours = alt.Scale(domain=[*names, threshold_label],
                        range=[*(SERIES_COLOURS[i % len(SERIES_COLOURS)]
                                 for i in range(len(names))), "#c62828"])
    legend = alt.Legend(title=None, orient="top", labelLimit=360, symbolType="stroke")
    line = alt.Chart(data).mark_line().encode(
        x=alt.X("window_end:T", title=None, scale=alt.Scale(domain=[x_min, x_max]),
                axis=alt.Axis(format="%b %d")), y=y,
        color=alt.Color("series:N", scale=colours, legend=legend), detail="version:N")
    points = alt.Chart(data).mark_point(filled=True, size=70, opacity=1).encode(
        x="window_end:T", y=alt.Y("shown:Q"),
        color=alt.condition(alt.datum.drift, alt.value("#c62828"),
                            alt.Color("series:N", scale=colours, legend=legend)),
        shape=alt.Shape("verdict:N", scale=alt.Scale(domain=["no drift", "drift"],
                                                     range=["circle", "diamond"]),
                        legend=None),  # red diamonds: named in the page's help
        tooltip=["version", "window_label", alt.Tooltip("window_end:T", format="%Y-%m-%d %H:%M"),
                 alt.Tooltip("statistic:Q", format=".4g"), alt.Tooltip("p_value:Q", format=".3g"),
                 alt.Tooltip("threshold:Q", format=".3g"), "verdict", "status", "n_reference",
                 "n_current"],
    )
    rule = alt.Chart(pd.DataFrame({
        "threshold": [max(threshold, P_FLOOR_DISPLAY) if kind == "p-value" else threshold],
        "series": [threshold_label]})).mark_rule(strokeDash=[6, 4]).encode(
        y="threshold:Q", color=alt.Color("series:N", scale=colours, legend=legend))
    return alt.layer(*layers, line, points, rule).properties(title=title, height=height)


def _series_labels(data: pd.DataFrame, title: str) -> pd.Series:
    """The legend's name of each point's line: the detector and feature (``title``), with the
    version when the chart holds more than one."""
    if data["version"].nunique() > 1:
        return title + " (" + data["version"].astype(str) + ")"
    return pd.Series(title, index=data.index)


def sequential_evidence(frame: pd.DataFrame, *, title: str,
                        height: int = HEIGHT) -> Chart:
    """The sequential statistic per family and day of one version (a ``family_evidence``
    frame): one line per family, the largest statistic of its streams over its page threshold,
    so the page level is 1 for every family; the page level dashed red, the warning level of
    each family (warning / page threshold, 0.88 to 0.94 by its number of streams) dashed
    orange. Below 0 (evidence against a shift) is drawn at 0."""
    if frame.empty:
        return _empty("no sequential evidence: no daily grid checks yet")
    data = frame.copy()
    data["shown"] = data["ratio"].clip(lower=0.0)
    families = [f for f in FAMILY_COLOURS if f in set(data["family"])]
    families += sorted(set(data["family"]) - set(families))
    domain = [*families, WARNING_LEVEL, PAGE_LEVEL]
    colours = alt.Scale(domain=domain, range=[
        *(FAMILY_COLOURS.get(f, SERIES_COLOURS[i % len(SERIES_COLOURS)])
          for i, f in enumerate(families)), "#ef8f00", "#c62828"])
    legend = alt.Legend(title=None, orient="top", labelLimit=360, symbolType="stroke")
    colour = alt.Color("series:N", scale=colours, legend=legend)
    x = alt.X("window_start:T", title="day checked", axis=alt.Axis(format="%b %d"))
    tooltip = ["family", alt.Tooltip("window_start:T", title="day", format="%Y-%m-%d"),
               "level", "stream", alt.Tooltip("statistic:Q", format=".2f"),
               alt.Tooltip("warning_at:Q", format=".2f"), alt.Tooltip("page_at:Q", format=".2f"),
               alt.Tooltip("ratio:Q", title="statistic / page", format=".2f"), "since",
               "n_streams"]
    lines = alt.Chart(data.assign(series=data["family"])).mark_line(
        point=alt.OverlayMarkDef(size=50, filled=True)).encode(
        x=x, y=alt.Y("shown:Q", title="statistic / page threshold",
                     scale=alt.Scale(domainMin=0)),
        color=colour, tooltip=tooltip)
    warning = alt.Chart(data.assign(series=WARNING_LEVEL)).mark_line(
        strokeDash=[4, 4], strokeWidth=1.2, interpolate="step-after").encode(
        x=x, y="warning_ratio:Q", detail="family:N", color=colour,
        tooltip=["family", alt.Tooltip("warning_ratio:Q", title="warning / page",
                                       format=".2f")])
    page = alt.Chart(pd.DataFrame({"level": [1.0], "series": [PAGE_LEVEL]})).mark_rule(
        strokeDash=[6, 4], strokeWidth=1.5).encode(y="level:Q", color=colour)
    return alt.layer(warning, page, lines).properties(title=title, height=height,
                                                      usermeta=SVG)


def attribution_bars(frame: pd.DataFrame, *, top: int = 10) -> Chart:
    if frame.empty:
        return _empty("no attribution for this window (no drift found to attribute)")
    data = frame.head(top).copy()
    data["label"] = data["field"] + " = " + data["value"]
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("contribution:Q", title="contribution"),
        y=alt.Y("label:N", sort="-x", title=None, axis=alt.Axis(labelLimit=320)),
        color=alt.Color("field:N", title="field"),
        tooltip=["field", "value", "where", "basis",
                 alt.Tooltip("contribution:Q", format=".4f"),
                 alt.Tooltip("explained_share:Q", format=".2f"),
                 alt.Tooltip("own_drift:Q", format=".3f"), "n_reference", "n_current",
                 alt.Tooltip("share_reference:Q", format=".1%"),
                 alt.Tooltip("share_current:Q", format=".1%")],
    ).properties(height=alt.Step(24))


def mix_area(frame: pd.DataFrame, *, title: str, height: int = HEIGHT) -> Chart:
    """Share of studies per day by value, stacked to 100%."""
    if frame.empty:
        return _empty("no studies in this range")
    return alt.Chart(frame).mark_area().encode(
        x=alt.X("day:T", title=None, axis=alt.Axis(format="%b %d")),
        y=alt.Y("studies:Q", stack="normalize", title="share of studies",
                axis=alt.Axis(format="%")),
        color=alt.Color("value:N", title=title),
        tooltip=[alt.Tooltip("day:T", format="%Y-%m-%d"), "value", "studies",
                 alt.Tooltip("share:Q", format=".1%")],
    ).properties(height=height)


def first_seen_marks(frame: pd.DataFrame) -> Chart:
    """A timeline dot per value at the date it appeared; new ones in red."""
    if frame.empty:
        return _empty("nothing seen")
    return alt.Chart(frame).mark_point(filled=True, size=90).encode(
        x=alt.X("first_seen:T", title="first seen", axis=alt.Axis(format="%b %d")),
        y=alt.Y("value:N", title=None, axis=alt.Axis(labelLimit=260)),
        color=alt.Color("new:N", scale=alt.Scale(domain=[False, True],
                                                 range=["#607d8b", "#c62828"]),
                        legend=alt.Legend(title="new")),
        tooltip=["value", "manufacturer", "scanner_model",
                 alt.Tooltip("first_seen:T", format="%Y-%m-%d %H:%M"), "studies", "new"],
    ).properties(height=alt.Step(24))


def forest(frame: pd.DataFrame, *, metric: str, height: int | None = None) -> Chart:
    """Forest plot of one metric: each subgroup's value with its Wilson interval, the rest of
    the window as a dashed reference line; insufficient-data groups grey and labelled."""
    data = frame[frame["metric"] == metric].copy()
    if data.empty:
        return _empty(f"no subgroup results for {metric}")
    data["group"] = data["field"] + " = " + data["value"]
    standing = (data["standing"].astype(bool) if "standing" in data.columns
                else pd.Series(False, index=data.index))
    data["finding"] = np.select(
        [data["status"] != "ok", data["drift"], standing],
        ["insufficient data", "gap grew (significant)", "standing gap"],
        default="no significant gap")
    data["note"] = np.where(data["status"] != "ok", "insufficient data (n=" +
                            data["n"].astype(str) + ")", "")
    order = data.sort_values(["field", "value"])["group"].tolist()
    colour = alt.Color("finding:N", title=None, legend=alt.Legend(orient="top"),
                       scale=alt.Scale(
                           domain=["gap grew (significant)", "standing gap",
                                   "no significant gap", "insufficient data"],
                           range=["#c62828", "#ef8f00", "#1565c0", "#b0b0b0"]))
    y = alt.Y("group:N", sort=order, title=None, axis=alt.Axis(labelLimit=320))
    tooltip = ["field", "value", "metric", "status", "n",
               alt.Tooltip("group_value:Q", format=".1%"), alt.Tooltip("ci_low:Q", format=".1%"),
               alt.Tooltip("ci_high:Q", format=".1%"), alt.Tooltip("rest_value:Q", format=".1%"),
               alt.Tooltip("gap:Q", format="+.1%"), alt.Tooltip("q_value:Q", format=".3g")]
    bars = alt.Chart(data).mark_rule(strokeWidth=2).encode(
        x=alt.X("ci_low:Q", title=metric.replace("_", " "),
                scale=alt.Scale(zero=False, nice=True), axis=alt.Axis(format="%")),
        x2="ci_high:Q", y=y, color=colour, tooltip=tooltip)
    dots = alt.Chart(data).mark_point(filled=True, size=60).encode(
        x="group_value:Q", y=y, color=colour, tooltip=tooltip)
    notes = alt.Chart(data).mark_text(align="left", dx=6, color="#777").encode(
        x="ci_high:Q", y=y, text="note:N")
    layers = [bars, dots, notes]
    rest = data["rest_value"].dropna()
    if not rest.empty:
        layers.append(alt.Chart(pd.DataFrame({"rest": [float(rest.median())]})).mark_rule(
            strokeDash=[4, 4], color="#555").encode(x="rest:Q"))
    return alt.layer(*layers).properties(title=metric.replace("_", " "),
                                         height=height or alt.Step(20))


def rate_over_time(frame: pd.DataFrame, *, metric: str, title: str,
                   height: int = 220) -> Chart:
    """A daily rate with its Wilson 95% band."""
    data = frame.dropna(subset=[metric])
    if data.empty:
        return _empty(f"no reads for {title.lower()}")
    base = alt.Chart(data).encode(x=alt.X("day:T", title=None, axis=alt.Axis(format="%b %d")))
    band = base.mark_area(opacity=0.2, color="#1565c0").encode(
        y=alt.Y(f"{metric}_low:Q", title=title, axis=alt.Axis(format="%")),
        y2=f"{metric}_high:Q")
    line = base.mark_line(point=True, color="#1565c0").encode(
        y=alt.Y(f"{metric}:Q"),
        tooltip=[alt.Tooltip("day:T", format="%Y-%m-%d"),
                 alt.Tooltip(f"{metric}:Q", format=".1%"),
                 alt.Tooltip(f"{metric}_low:Q", format=".1%", title="95% low"),
                 alt.Tooltip(f"{metric}_high:Q", format=".1%", title="95% high"),
                 "reads", "studies"])
    return (band + line).properties(title=title, height=height)


def coverage_and_delay(frame: pd.DataFrame, *, height: int = 200) -> Chart:
    if frame.empty:
        return _empty("no studies in this range")
    base = alt.Chart(frame).encode(x=alt.X("day:T", title=None, axis=alt.Axis(format="%b %d")))
    coverage = base.mark_bar(opacity=0.5, color="#607d8b").encode(
        y=alt.Y("read_coverage:Q", title="read coverage", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1])),
        tooltip=[alt.Tooltip("day:T", format="%Y-%m-%d"),
                 alt.Tooltip("read_coverage:Q", format=".1%"), "reads", "studies"])
    delay = base.mark_line(point=True, color="#6a1b9a").encode(
        y=alt.Y("median_delay_h:Q", title="median read delay (h)"),
        tooltip=[alt.Tooltip("day:T", format="%Y-%m-%d"),
                 alt.Tooltip("median_delay_h:Q", format=".1f"),
                 alt.Tooltip("p90_delay_h:Q", format=".1f")])
    return alt.layer(coverage, delay).resolve_scale(y="independent").properties(height=height)


def delay_histogram(frame: pd.DataFrame, *, height: int = 200) -> Chart:
    if frame.empty or frame["reads"].sum() == 0:
        return _empty("no reads in this range")
    return alt.Chart(frame).mark_bar(color="#6a1b9a").encode(
        x=alt.X("bucket:N", sort=frame["bucket"].tolist(), title="read delay"),
        y=alt.Y("reads:Q", title="reads"),
        tooltip=["bucket", "reads", alt.Tooltip("share:Q", format=".1%")],
    ).properties(height=height)


def version_comparison(frame: pd.DataFrame, *, height: int = 240) -> Chart:
    """Rates of two (or more) versions side by side with their intervals."""
    data = frame.dropna(subset=["value"])
    if data.empty:
        return _empty("no metrics")
    y = alt.Y("metric:N", title=None)
    offset = alt.YOffset("version:N")
    colour = alt.Color("version:N", title="version", scale=alt.Scale(scheme="category10"))
    bars = alt.Chart(data).mark_rule(strokeWidth=2).encode(
        x=alt.X("low:Q", title="rate (95% interval)", scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format="%")), x2="high:Q", y=y, yOffset=offset, color=colour)
    dots = alt.Chart(data).mark_point(filled=True, size=70).encode(
        x="value:Q", y=y, yOffset=offset, color=colour,
        tooltip=["version", "metric", alt.Tooltip("value:Q", format=".1%"),
                 alt.Tooltip("low:Q", format=".1%"), alt.Tooltip("high:Q", format=".1%"), "n"])
    return (bars + dots).properties(height=height)
