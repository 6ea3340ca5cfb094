"""The quality dashboard: ``monitor dashboard`` (or ``streamlit run dashboards/app.py``).

Settings come from the same ``MONITOR_*`` environment as the service (``MONITOR_DATABASE_URL``,
``MONITOR_SECRET_KEY``). Once the token store holds a token, every page asks for a read token
first (``dashboards.guard``). The sidebar filters (model, version, time range, site) apply to
every page.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts only this folder on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboards.common import (  # noqa: E402
    CONTEXT_KEY,
    load_app_settings,
    runtime_for,
    show_error,
    sidebar_filters,
)
from dashboards.guard import require_reader  # noqa: E402
from monitor.errors import MonitorError  # noqa: E402

VIEWS = Path(__file__).parent / "views"
PAGES = (
    ("overview.py", "Overview", ":material/monitor_heart:", "overview"),
    ("drift.py", "Drift", ":material/trending_up:", "drift"),
    ("fleet.py", "Scanners and sites", ":material/radiology:", "scanners"),
    ("bias.py", "Bias", ":material/balance:", "bias"),
    ("overrides.py", "Overrides", ":material/rule:", "overrides"),
    ("alerts.py", "Alerts", ":material/notifications_active:", "alerts"),
    ("versions.py", "Versions", ":material/history:", "versions"),
)
HIDDEN_PAGES = (("report.py", "Evidently report", ":material/description:", "report"),)


def main() -> None:
    st.set_page_config(page_title="Imaging AI monitor", page_icon=":material/monitor_heart:",
                       layout="wide")
    pages = [st.Page(VIEWS / file, title=title, icon=icon, url_path=path,
                     default=(path == "overview"))
             for file, title, icon, path in PAGES]
    pages += [st.Page(VIEWS / file, title=title, icon=icon, url_path=path, visibility="hidden")
              for file, title, icon, path in HIDDEN_PAGES]
    page = st.navigation(pages)
    st.session_state.pop(CONTEXT_KEY, None)
    settings = load_app_settings()
    if settings is None:
        st.stop()
    try:
        require_reader(runtime_for(settings.database_url, settings))
        ctx = sidebar_filters(settings)
    except MonitorError as exc:
        show_error(exc)
        st.stop()
    if ctx is not None:
        st.session_state[CONTEXT_KEY] = ctx
    page.run()


main()
