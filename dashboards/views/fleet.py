"""Scanners and sites: the mix of manufacturers, scanner models, software versions and sites
over time, and the scanners and software versions that are new (with the date they appeared)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import charts
from dashboards.common import Context, context, fmt_day, fmt_time, query, scope_caption
from monitor.safe_output import markdown_text as md

MIX_FIELDS = (
    ("manufacturer", "Manufacturer"),
    ("scanner_model", "Scanner model"),
    ("software_version", "Software version"),
    ("site", "Site"),
)


def describe_new(row: pd.Series, field: str) -> str:
    if field == "software_version":
        return (f"software **{md(row['value'])}** on {md(row['manufacturer'])} "
                f"{md(row['scanner_model'])}, "
                f"first seen {fmt_time(row['first_seen'])} ({row['studies']:,} studies in view)")
    if field == "scanner_model":
        return (f"scanner **{md(row['manufacturer'])} {md(row['value'])}**, first seen "
                f"{fmt_time(row['first_seen'])} ({row['studies']:,} studies in view)")
    return (f"{field.replace('_', ' ')} **{md(row['value'])}**, first seen "
            f"{fmt_time(row['first_seen'])} ({row['studies']:,} studies in view)")


def render(ctx: Context) -> None:
    st.title("Scanners and sites")
    scope_caption(ctx)
    f = ctx.filters
    fleet = query(ctx.settings, "fleet_view", f)
    seen, since = fleet.first_seen, fleet.new_since
    cols = st.columns(5)
    cols[0].metric("Manufacturers", f"{len(seen['manufacturer'])}")
    cols[1].metric("Scanner models", f"{len(seen['scanner_model'])}")
    cols[2].metric("Software versions", f"{len(seen['software_version'])}")
    cols[3].metric("Sites", f"{len(seen['site'])}")
    n_new = sum(int(frame["new"].sum()) for frame in seen.values())
    cols[4].metric("New since baseline", f"{n_new}",
                   help=f"First seen after {fmt_day(since)} (the end of the earliest "
                   "baseline of the chosen versions).")

    st.subheader("New scanners and software versions")
    news = [(field, row) for field in ("scanner_model", "software_version", "manufacturer",
                                       "site")
            for _, row in seen[field][seen[field]["new"]].iterrows()]
    if news:
        for field, row in news:
            st.warning(describe_new(row, field), icon=":material/fiber_new:")
    else:
        st.success(f"Nothing new since {fmt_day(since)}.")
    left, right = st.columns(2)
    with left:
        st.markdown("**Scanner models by first appearance**")
        st.altair_chart(charts.first_seen_marks(seen["scanner_model"]), width="stretch")
    with right:
        st.markdown("**Software versions by first appearance**")
        st.altair_chart(charts.first_seen_marks(seen["software_version"]), width="stretch")

    st.subheader("Mix over time")
    tabs = st.tabs([title for _, title in MIX_FIELDS])
    for tab, (field, title) in zip(tabs, MIX_FIELDS, strict=True):
        with tab:
            st.altair_chart(charts.mix_area(fleet.mix[field], title=title), width="stretch")
            context_columns = {"manufacturer": ["manufacturer", "scanner_model"],
                               "site": ["manufacturer", "scanner_model"],
                               "scanner_model": ["scanner_model"]}.get(field, [])
            table = seen[field].drop(columns=context_columns).rename(
                columns={"value": title.lower()})
            st.dataframe(table, hide_index=True, width="stretch", column_config={
                "first_seen": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
                "last_seen": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
                "new": st.column_config.CheckboxColumn("new"),
            })


render(context())
