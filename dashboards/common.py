"""What every page shares: the cached runtime, cached queries, the sidebar filters, formatting.

Every value that came from the database is shown through ``md`` (Markdown-escaped) wherever
Streamlit renders Markdown: st.markdown, captions, alerts, subheaders, help texts. Tables and
charts draw text, not markup. ``unsafe_allow_html`` is used once, for a colour swatch built
from constants only.

Pages read the store only through ``monitor.store.dashboard`` via ``query``, which caches each
result for ``QUERY_TTL_S`` seconds keyed by the database URL, the query's name and the filter
values; an action (acknowledge, approve, ...) clears the cache so the page shows its effect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from monitor.config import Settings, load_settings
from monitor.errors import MonitorError
from monitor.runtime import Runtime
from monitor.safe_output import markdown_text as md
from monitor.store import dashboard
from monitor.store.dashboard import FilterOptions, Filters
from monitor.store.db import session_scope

QUERY_TTL_S = 30
OPTIONS_TTL_S = 60
DEFAULT_DAYS = 30
ALL = "(all)"
CONTEXT_KEY = "monitor_dashboard_context"
RAG_COLOURS = {"green": "#2e7d32", "amber": "#ef8f00", "red": "#c62828", "no data": "#9e9e9e"}
# Streamlit badges (its own icon font: no emoji font needed on the viewer's machine).
RAG_BADGES = {"green": ":green-badge[:material/check_circle: green]",
              "amber": ":orange-badge[:material/warning: amber]",
              "red": ":red-badge[:material/error: red]",
              "no data": ":gray-badge[no data]"}


@dataclass(frozen=True)
class Context:
    """The settings and the sidebar's choices for this run of a page."""

    settings: Settings
    options: FilterOptions
    filters: Filters

    @property
    def database_url(self) -> str:
        return self.settings.database_url


@st.cache_resource(show_spinner=False)
def runtime_for(database_url: str, _settings: Settings) -> Runtime:
    """One Runtime (engine and connection pool) per database for the whole server."""
    return Runtime.open(_settings)


@st.cache_data(ttl=QUERY_TTL_S, show_spinner=False, max_entries=1024)
def _cached_query(database_url: str, name: str, args: tuple[Any, ...],
                  kwargs: tuple[tuple[str, Any], ...], _settings: Settings) -> Any:
    runtime = runtime_for(database_url, _settings)
    with session_scope(runtime.sessions) as session:
        return getattr(dashboard, name)(session, *args, **dict(kwargs))


def query(settings: Settings, name: str, *args: Any, **kwargs: Any) -> Any:
    """Run ``monitor.store.dashboard.<name>(session, *args, **kwargs)``, cached."""
    return _cached_query(settings.database_url, name, args, tuple(sorted(kwargs.items())),
                         _settings=settings)


@st.cache_data(ttl=OPTIONS_TTL_S, show_spinner=False)
def _cached_options(database_url: str, _settings: Settings) -> FilterOptions:
    runtime = runtime_for(database_url, _settings)
    with session_scope(runtime.sessions) as session:
        return dashboard.filter_options(session)


def refresh() -> None:
    """Forget cached query results (after an action changed the store)."""
    _cached_query.clear()
    _cached_options.clear()


def _default_range(options: FilterOptions, model: str) -> tuple[date, date, date, date]:
    """(lowest, highest, default start, default end) for the date filter: the model's data,
    the last ``DEFAULT_DAYS`` of it by default."""
    today = datetime.now(UTC).date()
    last = options.last_ts.get(model)
    first = options.first_ts.get(model)
    highest = last.date() if last else today
    lowest = first.date() if first else highest - timedelta(days=DEFAULT_DAYS - 1)
    start = max(lowest, highest - timedelta(days=DEFAULT_DAYS - 1))
    return lowest, highest, start, highest


def sidebar_filters(settings: Settings) -> Context | None:
    """Draw the filters (model, version, time range, site); None when the store holds no
    model yet."""
    options = _cached_options(settings.database_url, _settings=settings)
    sidebar = st.sidebar
    if not options.models:
        return None
    sidebar.header("Filters")
    model = sidebar.selectbox("Model", options.models, key="filter_model")
    versions = options.versions.get(model, ())
    active = options.active_versions.get(model)
    version_choices = [ALL, *versions]
    default_version = version_choices.index(active) if active in versions else 0
    version = sidebar.selectbox(
        "Version", version_choices, index=default_version, key=f"filter_version_{model}",
        format_func=lambda v: f"{v} (active)" if v == active else v,
        help="The version the production alias points at is marked active.",
    )
    lowest, highest, start, end = _default_range(options, model)
    chosen = sidebar.date_input("Time range (UTC days)", value=(start, end),
                                min_value=lowest, max_value=highest,
                                key=f"filter_range_{model}")
    if isinstance(chosen, tuple | list) and len(chosen) == 2:
        start, end = chosen[0], chosen[1]
    elif isinstance(chosen, tuple | list) and len(chosen) == 1:
        start = end = chosen[0]
    site = sidebar.selectbox("Site", [ALL, *options.sites], key="filter_site",
                             help="Applies to study-level views (volume, scanners, "
                             "overrides); check results are per version.")
    range_start, range_end = dashboard.day_range(start, end)
    filters = Filters(model=model, version=None if version == ALL else version,
                      start=range_start, end=range_end, site=None if site == ALL else site)
    sidebar.caption(f"Database: {where(settings)}. Results are cached for {QUERY_TTL_S} s.")
    if sidebar.button("Refresh now", key="refresh_button"):
        refresh()
        st.rerun()
    return Context(settings=settings, options=options, filters=filters)


def where(settings: Settings) -> str:
    """The database, without credentials or a long path: host/name, or the SQLite file."""
    url = settings.database_url
    if url.startswith("sqlite"):
        return "SQLite " + (url.rsplit("/", 1)[-1] or "in memory")
    return url.split("@")[-1]


def context() -> Context:
    """The context ``app.py`` prepared for this run; stops the page when there is none."""
    ctx = st.session_state.get(CONTEXT_KEY)
    if not isinstance(ctx, Context):
        st.info("No model has logged inferences yet: ingest events (`monitor ingest`, the "
                "SDK or the HTTP API) or run `monitor demo`.")
        st.stop()
    return ctx


def load_app_settings() -> Settings | None:
    try:
        return load_settings()
    except MonitorError as exc:
        st.error(f"Settings: {md(exc)}")
        return None


def scope_caption(ctx: Context, *, per_site: bool = True) -> None:
    f = ctx.filters
    parts = [f"model **{md(f.model)}**", f"version **{md(f.version or 'all')}**",
             f"{fmt_day(f.start)} to {fmt_day(f.end - timedelta(days=1) if f.end else None)}"]
    if per_site:
        parts.append(f"site **{md(f.site or 'all')}**")
    st.caption(" · ".join(parts))


def fmt_day(value: datetime | date | pd.Timestamp | None) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NaT:
        return "–"
    return f"{value:%Y-%m-%d}"


def fmt_time(value: datetime | pd.Timestamp | None) -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{value:%Y-%m-%d %H:%M} UTC"


def fmt_ago(value: datetime | pd.Timestamp | None, now: datetime | None = None) -> str:
    """How long ago, coarsely: "12 min ago", "5 h ago", "3 d ago"."""
    if value is None or pd.isna(value):
        return "–"
    seconds = ((now or datetime.now(UTC)) - value).total_seconds()
    if seconds < 0:
        return f"{value:%b %d %H:%M}"
    if seconds < 3600:
        return f"{max(1, int(seconds // 60))} min ago"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} d ago"


def fmt_rate(value: float | None, low: float | None = None, high: float | None = None) -> str:
    if value is None or pd.isna(value):
        return "–"
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"{100 * value:.1f}%"
    return f"{100 * value:.1f}% ({100 * low:.1f}–{100 * high:.1f})"


def fmt_p(value: float | None) -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def rag_badge(status: str | None) -> str:
    return RAG_BADGES.get(status or "", ":gray-badge[no check yet]")


def show_error(exc: Exception) -> None:
    st.error(f"{type(exc).__name__}: {md(exc)}")


def ask_confirmation(key: str, check: Callable[[], object]) -> None:
    """The first step of a two-step action: ``check`` (token and reason) raises or passes,
    nothing changes yet; on success the page asks for the confirming click
    (``confirm_step``)."""
    try:
        check()
    except MonitorError as exc:
        show_error(exc)
        return
    st.session_state[key] = True
    st.rerun()


def confirming(key: str) -> bool:
    return bool(st.session_state.get(key))


def confirm_step(key: str, prompt: str, *, label: str, act: Callable[[], None]) -> None:
    """The second step: what will happen, in words, then ``label`` (runs ``act``) or Cancel.
    ``act`` clears ``key`` once it has acted (``done_confirming``)."""
    st.info(f"**Confirm:** {prompt}", icon=":material/help:")
    cols = st.columns([1, 1, 4])
    if cols[0].button(label, type="primary", key=f"{key}_confirm"):
        act()
    if cols[1].button("Cancel", key=f"{key}_cancel"):
        done_confirming(key)
        st.rerun()


def done_confirming(key: str) -> None:
    st.session_state.pop(key, None)
