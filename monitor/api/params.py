"""Bounded request parameters: integers beyond what the database stores and times that
overflow on conversion to UTC are a 422 naming the parameter, never an overflow (500) further
down."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator

MAX_ID = 2**63 - 1  # BIGINT; SQLite's INTEGER

# A row id in a path (check run, alert, recommendation).
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]
# How many rows to skip.
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]


def _as_utc(value: datetime | None) -> datetime | None:
    """Naive times are UTC; an offset that takes the time out of range is a 422."""
    if value is None or value.tzinfo is None:
        return None if value is None else value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range once converted to UTC") from None


# A time in a query or a body, converted to UTC (0001-01-01T00:00:00+14:00 is a 422).
UtcTime = Annotated[datetime | None, AfterValidator(_as_utc)]
