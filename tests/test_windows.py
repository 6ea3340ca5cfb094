"""The daily grid: local days in the site's time zone (23 and 25 hours where daylight saving
time changes, a midnight that does not exist), which days are complete, which the baseline
covers; and the time-zone setting."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from monitor.config import load_settings
from monitor.errors import ConfigError
from monitor.grid import (
    GRID_LABEL,
    TICK,
    day_window,
    first_grid_day,
    grid_day,
    grid_until,
    grid_windows,
    is_weekend,
    last_complete_day,
)

BERLIN = ZoneInfo("Europe/Berlin")
SANTIAGO = ZoneInfo("America/Santiago")  # clocks jump from 24:00 to 01:00 in September


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_day_window_runs_from_local_midnight_to_the_next():
    window = day_window(date(2026, 10, 20), BERLIN)
    assert window.kind == "time" and window.label == GRID_LABEL == "1d"
    assert (window.start, window.end) == (utc(2026, 10, 19, 22), utc(2026, 10, 20, 22))
    assert day_window(date(2026, 10, 20), ZoneInfo("UTC")).start == utc(2026, 10, 20)


@pytest.mark.parametrize(("day", "hours", "start"), [
    (date(2026, 3, 29), 23, utc(2026, 3, 28, 23)),   # Berlin springs forward
    (date(2026, 10, 25), 25, utc(2026, 10, 24, 22)),  # Berlin falls back
    (date(2026, 10, 26), 24, utc(2026, 10, 25, 23)),
])
def test_daylight_saving_days_are_23_and_25_hours(day: date, hours: int, start: datetime):
    window = day_window(day, BERLIN)
    assert window.start == start
    assert window.end - window.start == timedelta(hours=hours)
    assert grid_day(window.start, window.end, BERLIN) == day


def test_a_skipped_midnight_starts_the_day_at_the_change():
    before, skipped, after = (day_window(date(2026, 9, d), SANTIAGO) for d in (5, 6, 7))
    assert before.end == skipped.start == utc(2026, 9, 6, 4)  # 01:00 local, the new offset
    assert skipped.end == after.start
    assert skipped.end - skipped.start == timedelta(hours=23)
    assert grid_day(skipped.start, skipped.end, SANTIAGO) == date(2026, 9, 6)


def test_grid_windows_tile_the_days_without_gaps_or_overlaps():
    windows = grid_windows(after=utc(2026, 10, 1), until=utc(2026, 11, 3, 12), zone=BERLIN)
    assert windows[0].start == day_window(date(2026, 10, 2), BERLIN).start  # baseline's 1 Oct
    assert windows[-1] == day_window(date(2026, 11, 2), BERLIN)
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))
    assert sorted({w.end - w.start for w in windows}) == [timedelta(hours=24),
                                                          timedelta(hours=25)]
    assert len(windows) == 32


def test_only_grid_windows_are_recognised():
    window = day_window(date(2026, 10, 25), BERLIN)
    assert grid_day(window.start, window.end, BERLIN) == date(2026, 10, 25)
    assert grid_day(window.start, window.start + timedelta(hours=24), BERLIN) is None
    assert grid_day(window.start + timedelta(hours=1), window.end, BERLIN) is None
    # The same instants are not a day in another zone.
    assert grid_day(window.start, window.end, ZoneInfo("UTC")) is None
    naive_utc = datetime(2026, 10, 20), datetime(2026, 10, 21)
    assert grid_day(*naive_utc, ZoneInfo("UTC")) == date(2026, 10, 20)


def test_days_the_baseline_touches_are_not_checked():
    # A baseline ending at a local midnight: that day is the first one checked.
    assert first_grid_day(utc(2026, 10, 7, 22), BERLIN) == date(2026, 10, 8)
    # Ending mid-day (or at UTC midnight, 02:00 in Berlin): the next day.
    assert first_grid_day(utc(2026, 10, 8), BERLIN) == date(2026, 10, 9)
    assert first_grid_day(utc(2026, 10, 8, 15), BERLIN) == date(2026, 10, 9)


def test_a_day_is_complete_once_its_end_has_passed():
    assert last_complete_day(utc(2026, 10, 20, 21, 59), BERLIN) == date(2026, 10, 19)
    assert last_complete_day(utc(2026, 10, 20, 22), BERLIN) == date(2026, 10, 20)
    newest = utc(2026, 10, 20, 21, 30)  # 23:30 in Berlin
    # Data still coming in: a day is complete once a later day's data has arrived...
    assert grid_until(utc(2026, 10, 20, 22, 5), utc(2026, 10, 20, 22, 1), BERLIN) == utc(
        2026, 10, 20, 22, 1) + TICK
    # ...or two hours after its midnight on a quiet night (not before).
    assert last_complete_day(grid_until(utc(2026, 10, 20, 23), newest, BERLIN),
                             BERLIN) == date(2026, 10, 19)
    assert grid_until(utc(2026, 10, 21, 0), newest, BERLIN) == utc(2026, 10, 20, 22)
    # Back-filled data is checked to its newest day, never into the empty days after it.
    assert grid_until(utc(2026, 12, 1), newest, BERLIN) == utc(2026, 10, 20, 22)
    # Data stamped ahead of the clock: the clock decides.
    assert grid_until(utc(2026, 10, 20, 12), newest, BERLIN) == utc(2026, 10, 20, 12)
    assert grid_windows(after=utc(2026, 10, 20), until=utc(2026, 10, 20, 12),
                        zone=ZoneInfo("UTC")) == []


def test_weekend_days():
    assert [is_weekend(date(2026, 10, d)) for d in range(5, 12)] == [
        False, False, False, False, False, True, True]  # Monday 5 October to Sunday 11


def test_the_time_zone_setting_is_checked_and_named():
    assert load_settings().timezone == "UTC"
    assert load_settings(timezone="Europe/Berlin").zone == BERLIN
    for bad in ("Mars/Olympus_Mons", "", "../etc/passwd"):
        with pytest.raises(ConfigError, match=r"MONITOR_TIMEZONE has value .*IANA time zone"):
            load_settings(timezone=bad)

