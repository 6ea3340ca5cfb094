"""The rows behind the records the store hands out, kept for the session's unit of work.

The store gives its callers frozen records, never rows. A session's identity map holds an
unchanged row only while something references it, so a row read for a record would leave the
map at once, and the store function that changes it next (``resolve_alert(session, id)``)
would read it again: one more SELECT per row and, under READ COMMITTED, perhaps a newer row
than the one the caller decided on. ``held`` references the rows until the session is gone, as
the callers did when they held the rows themselves; a change then finds its row in the map,
and the flush writes only the columns that changed, as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from sqlalchemy.orm import Session

RowT = TypeVar("RowT")
_HELD = "monitor.store.held"


def held(session: Session, rows: Iterable[RowT]) -> list[RowT]:
    """``rows`` as a list, referenced by the session for as long as it lives."""
    found = list(rows)
    session.info.setdefault(_HELD, []).extend(found)
    return found


def held_row(session: Session, row: RowT | None) -> RowT | None:
    return None if row is None else held(session, [row])[0]
