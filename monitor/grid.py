"""The daily grid: what scheduled checks cover by default, one window per local day
[midnight, next midnight) in the site's time zone, labelled ``1d``. A day is 23 or 25 hours
long where daylight saving time changes. A window is a grid window when it covers exactly one
local day (``grid_day``), however it was asked for (the scheduler, ``monitor check --day``, or
``--window 1d`` ending at a local midnight).

Pure calendar arithmetic, shared by the checks, the store's dashboard queries and the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Literal

from monitor_client.events import as_utc

TICK = timedelta(microseconds=1)
GRID_LABEL = "1d"
# How long after its midnight a day with no later data is taken to be complete.
GRID_GRACE = timedelta(hours=2)


@dataclass(frozen=True)
class Window:
    """A resolved window: what was asked for and the [start, end) it covers."""

    kind: Literal["time", "count"]
    label: str
    start: datetime
    end: datetime


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
