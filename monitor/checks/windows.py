"""Check windows: by time (``1d``, ``7d``, ``12h``, ``30m``, ``2w``) or by count (``last:500``),
or an explicit [start, end).

Windows are half-open, [start, end). A time window ends at ``now``; when ``now`` is not
given it ends just after the version's newest inference (its timestamp + 1 microsecond), so
a check over simulated or back-filled data, whose timestamps are not the wall clock, looks at
the newest data there is, and re-running it without new data gives the same window (and so
replaces its results). A count window holds the newest N studies before ``now`` (or the
newest N) and spans their first timestamp to just after their last.

The daily grid that scheduled checks cover by default is ``monitor.grid``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
import pandas as pd
from monitor_client.events import as_utc
from sqlalchemy.orm import Session

from monitor.errors import InsufficientDataError, ValidationError
from monitor.grid import TICK, Window
from monitor.store import repo
from monitor.store.repo import newest_timestamp

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
