"""One check window's Evidently HTML report (``report?run=<check run id>``), served from
``MONITOR_REPORTS_DIR``; a stored path outside that folder is refused.

The report is drawn in a frame only when it carries its Content-Security-Policy (written by
``monitor.checks.reports``: only Evidently's own scripts, by hash, may run in it). A report written
by an earlier version, without one, is offered as a download only."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import streamlit.components.v1 as components

from dashboards.common import Context, context, fmt_time, query
from monitor.checks.reports import report_policy
from monitor.safe_output import markdown_text as md

REPORT_HEIGHT_PX = 1400


def report_file(reports_dir: Path, stored: str) -> Path | None:
    """The report's file when it lies inside ``reports_dir`` and exists."""
    root = reports_dir.resolve()
    path = Path(stored)
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def render(ctx: Context) -> None:
    st.title("Evidently report")
    raw = st.query_params.get("run", "")
    if not raw.isdigit():
        st.info("Open a report from the Drift page (a window's report link).")
        return
    run = query(ctx.settings, "check_run", int(raw))
    if run is None:
        st.error(f"check run {raw} not found")
        return
    st.caption(f"Window {md(run['window_label'])}: {fmt_time(run['window_start'])} to "
               f"{fmt_time(run['window_end'])}, {run['n_studies']} studies. Evidently's view "
               "of the window against the baseline; the verdicts that page people are the "
               "service's own (Drift page).")
    path = report_file(ctx.settings.reports_dir, run["report_path"] or "")
    if path is None:
        st.warning(f"The report of check run {raw} is not in "
                   f"{md(ctx.settings.reports_dir)} (MONITOR_REPORTS_DIR).")
        return
    content = path.read_text(encoding="utf-8")
    st.download_button("Download the HTML report", content, file_name=path.name,
                       mime="text/html")
    if report_policy(path) is None:
        st.warning("This report was written without a Content-Security-Policy (by an earlier "
                   "version), so it is not shown here: re-run the window's check to rewrite "
                   "it, or download it.")
        return
    components.html(content, height=REPORT_HEIGHT_PX, scrolling=True)


render(context())
