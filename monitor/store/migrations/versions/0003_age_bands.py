"""age bands: 0-17, 18-39, 40-64, 65-79, 80+ (65+ split at 80)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09

A change that affects only the oldest patients was diluted in "65+". Upgrade:

- ``inference.age_band`` is re-derived from the stored ``age_years`` (already capped at 90; an
  unknown age keeps no band) in one UPDATE, touching only the rows whose band changes;
- each baseline's ``summary.categories.age_band`` (the descriptive shares the dashboards and
  the API show) is recomputed from its members, so it names the bands its members now carry.
  Nothing else a baseline keeps names a band: its detectors refit from the members at check
  time, so an existing baseline compares 65-79 and 80+ from its first check after the upgrade;
- open (pending or firing) alerts on a band that no longer exists (feature
  ``age_band=65+:...``) are resolved: no check can observe that band again, so they would
  otherwise stay open for ever. A group that still does worse is raised again under its new
  band by the next check.

Downgrade maps 65-79 and 80+ back to 65+ the same way (and resolves alerts on those two).
Stored check results keep the bands they were computed with: they are the record of what a
check saw.

The band edges are written out here rather than imported, so this revision keeps doing what
it did when ``monitor_client.dicom.age_band`` changes again.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

SPLIT_BANDS = ("65-79", "80+")
MERGED_BAND = "65+"

inference = sa.table(
    "inference", sa.column("id", sa.Integer), sa.column("age_years", sa.Float),
    sa.column("age_band", sa.String(8)),
)
baseline = sa.table("baseline", sa.column("id", sa.Integer), sa.column("summary", sa.JSON))
baseline_member = sa.table(
    "baseline_member", sa.column("baseline_id", sa.Integer),
    sa.column("inference_id", sa.Integer),
)
alert = sa.table(
    "alert", sa.column("id", sa.Integer), sa.column("state", sa.String(16)),
    sa.column("labels", sa.JSON), sa.column("consecutive", sa.Integer),
    sa.column("firing_windows", sa.Integer),
    sa.column("updated_at", sa.DateTime(timezone=True)),
    sa.column("resolved_at", sa.DateTime(timezone=True)),
)


def _band(age: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """``age_band`` of revision 0003, in SQL."""
    return sa.case(
        (age.is_(None), sa.null()),
        (age < 18, "0-17"), (age < 40, "18-39"), (age < 65, "40-64"), (age < 80, "65-79"),
        else_="80+",
    )


def upgrade() -> None:
    band = _band(inference.c.age_years)
    op.execute(inference.update().where(inference.c.age_band.is_distinct_from(band))
               .values(age_band=band))
    _recount_baseline_bands()
    _resolve_alerts_on((MERGED_BAND,))


def downgrade() -> None:
    op.execute(inference.update().where(inference.c.age_band.in_(SPLIT_BANDS))
               .values(age_band=MERGED_BAND))
    _recount_baseline_bands()
    _resolve_alerts_on(SPLIT_BANDS)


def _recount_baseline_bands() -> None:
    """Recompute ``summary.categories.age_band`` of every baseline from its members, as
    ``monitor.checks.baselines.summarise`` does: shares of the known bands, largest first."""
    connection = op.get_bind()
    counts: dict[int, Counter[str]] = defaultdict(Counter)
    for baseline_id, value, n in connection.execute(
        sa.select(baseline_member.c.baseline_id, inference.c.age_band, sa.func.count())
        .join(inference, inference.c.id == baseline_member.c.inference_id)
        .where(inference.c.age_band.is_not(None))
        .group_by(baseline_member.c.baseline_id, inference.c.age_band)
    ):
        counts[baseline_id][value] = n
    for baseline_id, summary in connection.execute(sa.select(baseline.c.id, baseline.c.summary)):
        categories = (summary or {}).get("categories")
        if not isinstance(categories, dict) or "age_band" not in categories:
            continue
        bands = counts.get(baseline_id, Counter())
        total = sum(bands.values())
        categories["age_band"] = {
            value: n / total for value, n in sorted(bands.items(), key=lambda kv: (-kv[1], kv[0]))
        }
        connection.execute(baseline.update().where(baseline.c.id == baseline_id)
                           .values(summary=summary))


def _resolve_alerts_on(bands: tuple[str, ...]) -> None:
    """Resolve the open alerts whose feature is a subgroup of ``age_band`` in ``bands``."""
    connection = op.get_bind()
    prefixes = tuple(f"age_band={value}:" for value in bands)
    stale = [
        alert_id for alert_id, labels in connection.execute(
            sa.select(alert.c.id, alert.c.labels).where(alert.c.state.in_(("pending", "firing"))))
        if str((labels or {}).get("feature", "")).startswith(prefixes)
    ]
    if not stale:
        return
    now = datetime.now(UTC)
    if connection.dialect.name == "sqlite":  # the service keeps naive UTC there
        now = now.replace(tzinfo=None)
    connection.execute(alert.update().where(alert.c.id.in_(stale)).values(
        state="resolved", resolved_at=now, updated_at=now, consecutive=0, firing_windows=0))
