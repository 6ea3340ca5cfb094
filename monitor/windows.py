"""Check windows: by time (``1d``, ``7d``, ``12h``, ``30m``, ``2w``) or by count (``last:500``),
or an explicit [start, end).

Windows are half-open, [start, end). A time window ends at ``now``; when ``now`` is not
given it ends just after the version's newest inference (its timestamp + 1 microsecond), so
a check over simulated or back-filled data, whose timestamps are not the wall clock, looks at
the newest data there is, and re-running it without new data gives the same window (and so
replaces its results). A count window holds the newest N studies before ``now`` (or the
newest N) and spans their first timestamp to just after their last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.errors import InsufficientDataError, ValidationError
from monitor.store import repo
from monitor.store.models import Inference, ModelVersion, Override

TICK = timedelta(microseconds=1)
_IN_CHUNK = 900  # bound parameters per IN list (SQLite's default limit is 999)
READ_COLUMNS = ("radiologist_positive", "agrees_with_model", "read_ts")
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


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def newest_timestamp(session: Session, version_id: int) -> datetime | None:
    newest = session.scalar(
        select(func.max(Inference.ts)).where(Inference.model_version_id == version_id)
    )
    return None if newest is None else as_utc(newest)


def default_now(session: Session, version_id: int) -> datetime:
    """Just after the version's newest inference (see the module docstring)."""
    newest = newest_timestamp(session, version_id)
    if newest is None:
        raise InsufficientDataError(f"model version id {version_id} has no inferences")
    return newest + TICK


def join_reads(session: Session, frame: pd.DataFrame, version_id: int) -> pd.DataFrame:
    """The frame with each study's latest radiologist read (``READ_COLUMNS``), looked up by
    (model, study key) on the override index, so the cost follows the window's size."""
    frame = frame.drop(columns=[c for c in READ_COLUMNS if c in frame.columns])
    model = session.scalar(select(ModelVersion.model).where(ModelVersion.id == version_id))
    keys = frame["study_key"].dropna().unique().tolist()
    rows: list[Any] = []
    for lo in range(0, len(keys), _IN_CHUNK):
        rows += session.execute(
            select(Override.study_key, Override.radiologist_positive,
                   Override.agrees_with_model, Override.ts)
            .where(Override.model == model, Override.study_key.in_(keys[lo : lo + _IN_CHUNK]))
        ).all()
    if not rows:
        for name in READ_COLUMNS:
            frame[name] = pd.Series([None] * len(frame), dtype=object, index=frame.index)
        return frame
    reads = pd.DataFrame(rows, columns=["study_key", *READ_COLUMNS])
    latest = reads.sort_values("read_ts", kind="stable").drop_duplicates("study_key", keep="last")
    merged = frame.merge(latest, on="study_key", how="left")
    for name in ("radiologist_positive", "agrees_with_model"):
        merged[name] = merged[name].astype(object).where(merged[name].notna(), None)
    return merged


def load_embeddings(session: Session, inference_ids: list[int]) -> np.ndarray | None:
    """float32 (n, d) in the order of ``inference_ids``, a row of NaN for a study logged
    without an embedding; None when none of them has one."""
    blobs: dict[int, bytes | None] = {}
    for lo in range(0, len(inference_ids), _IN_CHUNK):
        chunk = inference_ids[lo : lo + _IN_CHUNK]
        blobs.update(session.execute(
            select(Inference.id, Inference.embedding).where(Inference.id.in_(chunk))
        ).tuples().all())
    present = [blobs.get(i) for i in inference_ids]
    first = next((blob for blob in present if blob is not None), None)
    if first is None:
        return None
    dim = len(first) // 4
    out = np.full((len(inference_ids), dim), np.nan, dtype=np.float32)
    rows = [k for k, blob in enumerate(present) if blob is not None and len(blob) == 4 * dim]
    if rows:
        out[rows] = np.frombuffer(b"".join(present[k] or b"" for k in rows),
                                  dtype="<f4").reshape(len(rows), dim)
    return out


def read_frame(
    session: Session,
    version_id: int,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    last: int | None = None,
    with_embeddings: bool = False,
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """``repo.window_frame`` with the reads joined by ``join_reads``; embeddings, when asked
    for, from ``load_embeddings`` (rows of NaN for studies without one)."""
    frame, _ = repo.window_frame(session, version_id, start=start, end=end, last=last,
                                 with_reads=False)
    frame = join_reads(session, frame, version_id)
    embeddings = None
    if with_embeddings and len(frame):
        embeddings = load_embeddings(session, frame["id"].astype(int).tolist())
    return frame, embeddings


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
        frame, embeddings = read_frame(session, version_id, start=start, end=end,
                                       with_embeddings=with_embeddings)
        return resolved, frame, embeddings
    if window is None:
        raise ValidationError("give a window label or start and end", field="window")
    spec = parse_window(window)
    now = as_utc(now) if now is not None else default_now(session, version_id)
    if spec.kind == "time":
        assert spec.span is not None
        resolved = Window("time", spec.label, now - spec.span, now)
        frame, embeddings = read_frame(session, version_id, start=resolved.start,
                                       end=resolved.end, with_embeddings=with_embeddings)
        return resolved, frame, embeddings
    frame, embeddings = read_frame(session, version_id, end=now, last=spec.count,
                                   with_embeddings=with_embeddings)
    if frame.empty:
        raise InsufficientDataError(
            f"window {spec.label} has no studies before {now.isoformat()}"
        )
    first = as_utc(pd.Timestamp(frame["ts"].iloc[0]).to_pydatetime())
    last = as_utc(pd.Timestamp(frame["ts"].iloc[-1]).to_pydatetime())
    return Window("count", spec.label, first, last + TICK), frame, embeddings
