"""Bounded request parameters: integers beyond what the database stores and times that
overflow on conversion to UTC are a 422 naming the parameter, never an overflow (500) further
down."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator, Field

MAX_ID = 2**31 - 1  # row ids are INTEGER: int4 on PostgreSQL

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


# C0 and C1 controls (NUL included: PostgreSQL cannot store it); free text may hold tab and
# newline.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _printable(value: str | None) -> str | None:
    if value is not None and _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _printable_text(value: str | None) -> str | None:
    if value is not None and _CONTROL_IN_TEXT.search(value):
        raise ValueError("must not contain control characters other than tab and newline")
    return value


# A model, version, alias, detector or status named in a path, a query or a body.
Name = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_printable)]
PathName = Annotated[str, Path(min_length=1, max_length=128), AfterValidator(_printable)]
QueryName = Annotated[str | None, Query(min_length=1, max_length=256),
                      AfterValidator(_printable)]
QueryModel = Annotated[str, Query(min_length=1, max_length=128), AfterValidator(_printable)]
# A reason or note an operator types.
Text = Annotated[str, Field(max_length=4096), AfterValidator(_printable_text)]

# A time in a query or a body, converted to UTC (0001-01-01T00:00:00+14:00 is a 422).
UtcTime = Annotated[datetime | None, AfterValidator(_as_utc)]
