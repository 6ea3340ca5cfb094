"""Check windows: by time (``1d``, ``7d``, ``12h``, ``30m``, ``2w``) or by count (``last:500``),
or an explicit [start, end).

Windows are half-open, [start, end). A time window ends at ``now``; when ``now`` is not
given it ends just after the version's newest inference (its timestamp + 1 microsecond), so
a check over simulated or back-filled data, whose timestamps are not the wall clock, looks at
the newest data there is, and re-running it without new data gives the same window (and so
replaces its results). A count window holds the newest N studies before ``now`` (or the
newest N) and spans their first timestamp to just after their last.

The daily grid (``grid_windows``) is what scheduled checks cover by default: one window per
local day [midnight, next midnight) in the site's time zone, labelled ``1d``. A day is 23 or
25 hours long where daylight saving time changes. A window is a grid window when it covers
exactly one local day (``grid_day``), however it was asked for (the scheduler, ``monitor
check --day``, or ``--window 1d`` ending at a local midnight).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Literal

import numpy as np
import pandas as pd
from monitor_client.events import as_utc as as_utc  # re-exported: windows speak UTC
from sqlalchemy.orm import Session

from monitor.errors import InsufficientDataError, ValidationError
from monitor.store import repo
from monitor.store.repo import newest_timestamp as newest_timestamp

TICK = timedelta(microseconds=1)
GRID_LABEL = "1d"
# How long after its midnight a day with no later data is taken to be complete.
GRID_GRACE = timedelta(hours=2)
_TIME = re.compile(r"^(\d+)([mhdw])$")
_COUNT = re.compile(r"^last:(\d+)$")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1),
          "w": timedelta(weeks=1)}


@dataclass(frozen=True)
class WindowSpec:
    """A parsed window label: a time span or a study count."""

    kind: Literal["time", "count"]
    label: str
    span: timedelta | None = None
    count: int | None = None


@dataclass(frozen=True)
class Window:
    """A resolved window: what was asked for and the [start, end) it covers."""

    kind: Literal["time", "count"]
    label: str
    start: datetime
    end: datetime


def parse_window(label: str) -> WindowSpec:
    """``"1d"`` / ``"7d"`` / ``"12h"`` / ``"30m"`` / ``"2w"`` or ``"last:500"``."""
    text = label.strip().lower()
    if match := _TIME.match(text):
        amount = int(match.group(1))
        if amount > 0:
            return WindowSpec("time", text, span=amount * _UNITS[match.group(2)])
    if match := _COUNT.match(text):
        count = int(match.group(1))
        if count > 0:
            return WindowSpec("count", text, count=count)
    raise ValidationError(
        f"window has value {label!r}; use a span such as 1d, 7d, 12h, 30m, 2w or a count "
        "such as last:500", field="window",
    )


def default_now(session: Session, version_id: int) -> datetime:
    """Just after the version's newest inference (see the module docstring)."""
    newest = newest_timestamp(session, version_id)
    if newest is None:
        raise InsufficientDataError(f"model version id {version_id} has no inferences")
    return newest + TICK


def load_window(
    session: Session,
    version_id: int,
    *,
    window: str | None = "1d",
    start: datetime | None = None,
    end: datetime | None = None,
    now: datetime | None = None,
    with_embeddings: bool = True,
) -> tuple[Window, pd.DataFrame, np.ndarray | None]:
    """Resolve a window and read its studies (``repo.window_frame``).

    Give either ``window`` (a label) or both ``start`` and ``end`` (label ``custom``).
    """
    if start is not None or end is not None:
        if start is None or end is None:
            raise ValidationError("an explicit window needs both start and end", field="start")
        start, end = as_utc(start), as_utc(end)
        if end <= start:
            raise ValidationError(f"window end {end.isoformat()} is not after start "
                                  f"{start.isoformat()}", field="end")
        resolved = Window("time", "custom", start, end)
        frame, embeddings = repo.window_frame(session, version_id, start=start, end=end,
                                       with_embeddings=with_embeddings)
        return resolved, frame, embeddings
    if window is None:
        raise ValidationError("give a window label or start and end", field="window")
    spec = parse_window(window)
    now = as_utc(now) if now is not None else default_now(session, version_id)
    if spec.kind == "time":
        assert spec.span is not None
        resolved = Window("time", spec.label, now - spec.span, now)
        frame, embeddings = repo.window_frame(session, version_id, start=resolved.start,
                                       end=resolved.end, with_embeddings=with_embeddings)
        return resolved, frame, embeddings
    frame, embeddings = repo.window_frame(session, version_id, end=now, last=spec.count,
                                   with_embeddings=with_embeddings)
    if frame.empty:
        raise InsufficientDataError(
            f"window {spec.label} has no studies before {now.isoformat()}"
        )
    first = as_utc(pd.Timestamp(frame["ts"].iloc[0]).to_pydatetime())
    last = as_utc(pd.Timestamp(frame["ts"].iloc[-1]).to_pydatetime())
    return Window("count", spec.label, first, last + TICK), frame, embeddings


# --- the daily grid --------------------------------------------------------------------------


def local_midnight(day: date, zone: tzinfo) -> datetime:
    """The instant (UTC) a local day begins. Where a zone skips midnight (a DST change at
    00:00), the day begins at the change: the skipped wall time is read with the offset
    before it, which is the same instant."""
    return datetime.combine(day, time(), zone).astimezone(UTC)


def local_day(instant: datetime, zone: tzinfo) -> date:
    """The local date of an instant."""
    return as_utc(instant).astimezone(zone).date()


def day_window(day: date, zone: tzinfo) -> Window:
    """The grid window of one local day: [its midnight, the next midnight), label ``1d``."""
    return Window("time", GRID_LABEL, local_midnight(day, zone),
                  local_midnight(day + timedelta(days=1), zone))


def grid_day(start: datetime, end: datetime, zone: tzinfo) -> date | None:
    """The local day that [start, end) covers exactly, or None when it is not a grid window."""
    day = local_day(start, zone)
    window = day_window(day, zone)
    return day if (window.start, window.end) == (as_utc(start), as_utc(end)) else None


def is_weekend(day: date) -> bool:
    return day.weekday() >= 5


def first_grid_day(after: datetime, zone: tzinfo) -> date:
    """The first local day that starts at or after ``after`` (a baseline's end): a day the
    baseline covers, even in part, is not checked."""
    day = local_day(after, zone)
    return day if local_midnight(day, zone) >= as_utc(after) else day + timedelta(days=1)


def last_complete_day(until: datetime, zone: tzinfo) -> date:
    """The last local day that has ended by ``until``: the day before ``until``'s own day."""
    return local_day(until, zone) - timedelta(days=1)


def grid_until(now: datetime, newest: datetime, zone: tzinfo, *,
               grace: timedelta = GRID_GRACE) -> datetime:
    """How far a version's grid reaches: a day is complete once the clock has passed its end
    and either an inference stamped after it has arrived or ``grace`` has passed too.

    So a day is checked as soon as the next day's data starts, or ``grace`` after midnight on
    a quiet night; days after the newest inference's day are not checked until data of a
    later day arrives (back-filled data is checked to its end, never past it into empty days);
    and simulated data stamped ahead of the clock is checked no further than the clock."""
    now, newest = as_utc(now), as_utc(newest)
    end_of_newest_day = local_midnight(local_day(newest, zone) + timedelta(days=1), zone)
    if now >= end_of_newest_day + grace:
        return end_of_newest_day
    return min(now, newest + TICK)


def grid_windows(*, after: datetime, until: datetime, zone: tzinfo) -> list[Window]:
    """The grid windows of every complete local day from the first that starts at or after
    ``after`` to the last that ends by ``until``, oldest first."""
    first, last = first_grid_day(after, zone), last_complete_day(until, zone)
    return [day_window(first + timedelta(days=i), zone)
            for i in range((last - first).days + 1)]
