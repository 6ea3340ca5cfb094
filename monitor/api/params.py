"""Bounded request parameters: integers beyond what the database stores are a 422 naming the
parameter, never an overflow (500) further down."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

MAX_ID = 2**63 - 1  # BIGINT; SQLite's INTEGER

# A row id in a path (check run, alert, recommendation).
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]
# How many rows to skip.
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]
