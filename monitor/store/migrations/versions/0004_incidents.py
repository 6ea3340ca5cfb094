"""incidents: findings that share a cause, what notifies

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-16

- ``incident``: the findings (alerts) of one model version that share a cause (a scanner, a
  site, a software version, a subgroup, the version), with its evidence, who accepted it as
  a validated change, and when it was paged, escalated and resolved. At most one incident
  per (model, version, cause) is open: a partial unique index (``WHERE state = 'open'``),
  which SQLite and PostgreSQL both enforce.
- ``alert.incident_id``: the incident a finding belongs to.
- ``notification.incident_id``; ``notification.alert_id`` becomes nullable: notifications
  are sent per incident from now on, and the rows written before keep their alert.

Existing alerts keep no incident: the next check of their version groups the open ones.
Downgrade drops the incident table and the two columns, and deletes the notifications that
belonged to an incident (revision 0003 has nowhere to keep them).

On SQLite the notification table is rebuilt (a column's nullability cannot be altered
there). ``alert`` gains its column in place on the way up; on the way down it is rebuilt,
which drops the old table: with foreign keys on, that would orphan the notifications and
rollback recommendations that cite an alert, so their ``alert_id`` is set aside and put back
around the rebuild.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

OPEN_INCIDENT = "state = 'open'"
ALERT_CITED_BY = ("notification", "rollback_recommendation")


def upgrade() -> None:
    op.create_table('incident',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.String(length=128), nullable=False),
    sa.Column('cause_field', sa.String(length=64), nullable=False),
    sa.Column('cause_value', sa.String(length=512), nullable=False),
    sa.Column('cause_label', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('first_evidence_day', sa.Date(), nullable=True),
    sa.Column('paged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('escalated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_reason', sa.Text(), nullable=True),
    sa.Column('summary', sa.Text(), nullable=True),
    sa.Column('evidence', sa.JSON(), nullable=True),
    sa.Column('quiet_windows', sa.Integer(), nullable=False),
    sa.Column('last_check_run_id', sa.Integer(), nullable=True),
    sa.Column('last_window_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('accepted_by', sa.String(length=128), nullable=True),
    sa.Column('accepted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('accept_reason', sa.Text(), nullable=True),
    sa.Column('accepted_since', sa.Date(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['last_check_run_id'], ['check_run.id'],
                            name=op.f('fk_incident_last_check_run_id_check_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_incident'))
    )
    with op.batch_alter_table('incident', schema=None) as batch_op:
        batch_op.create_index('ix_incident_state', ['state', 'severity'], unique=False)
        batch_op.create_index('ix_incident_version', ['model', 'model_version', 'state'],
                              unique=False)
        batch_op.create_index('uq_incident_open_cause',
                              ['model', 'model_version', 'cause_field', 'cause_value'],
                              unique=True, sqlite_where=sa.text(OPEN_INCIDENT),
                              postgresql_where=sa.text(OPEN_INCIDENT))

    if op.get_bind().dialect.name == "sqlite":
        # In place: a column with a REFERENCES clause and no default may be added there.
        op.execute("ALTER TABLE alert ADD COLUMN incident_id INTEGER "
                   "CONSTRAINT fk_alert_incident_id_incident REFERENCES incident (id)")
    else:
        op.add_column('alert', sa.Column('incident_id', sa.Integer(), nullable=True))
        op.create_foreign_key(op.f('fk_alert_incident_id_incident'), 'alert', 'incident',
                              ['incident_id'], ['id'])

    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.add_column(sa.Column('incident_id', sa.Integer(), nullable=True))
        batch_op.alter_column('alert_id', existing_type=sa.Integer(), nullable=True)
        batch_op.create_foreign_key(batch_op.f('fk_notification_incident_id_incident'),
                                    'incident', ['incident_id'], ['id'])


def downgrade() -> None:
    op.execute("DELETE FROM notification WHERE alert_id IS NULL")
    sqlite = op.get_bind().dialect.name == "sqlite"
    cited = _set_aside_alert_ids() if sqlite else {}
    with op.batch_alter_table('alert', schema=None) as batch_op:
        if not sqlite:
            batch_op.drop_constraint(batch_op.f('fk_alert_incident_id_incident'),
                                     type_='foreignkey')
        batch_op.drop_column('incident_id')
    _put_back_alert_ids(cited)

    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_notification_incident_id_incident'),
                                 type_='foreignkey')
        batch_op.alter_column('alert_id', existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column('incident_id')

    with op.batch_alter_table('incident', schema=None) as batch_op:
        batch_op.drop_index('uq_incident_open_cause', sqlite_where=sa.text(OPEN_INCIDENT),
                            postgresql_where=sa.text(OPEN_INCIDENT))
        batch_op.drop_index('ix_incident_version')
        batch_op.drop_index('ix_incident_state')
    op.drop_table('incident')


def _set_aside_alert_ids() -> dict[str, list[tuple[int, int]]]:
    """(row id, alert id) of the rows that cite an alert, per table; their ``alert_id`` is
    cleared so the alert table can be dropped and rebuilt."""
    connection = op.get_bind()
    cited = {}
    for name in ALERT_CITED_BY:
        table = sa.table(name, sa.column("id", sa.Integer), sa.column("alert_id", sa.Integer))
        cited[name] = [(row_id, alert_id) for row_id, alert_id in connection.execute(
            sa.select(table.c.id, table.c.alert_id).where(table.c.alert_id.is_not(None)))]
        connection.execute(table.update().values(alert_id=None))
    return cited


def _put_back_alert_ids(cited: dict[str, list[tuple[int, int]]]) -> None:
    connection = op.get_bind()
    for name, rows in cited.items():
        if not rows:
            continue
        table = sa.table(name, sa.column("id", sa.Integer), sa.column("alert_id", sa.Integer))
        connection.execute(
            table.update().where(table.c.id == sa.bindparam("row_id"))
            .values(alert_id=sa.bindparam("cited_alert")),
            [{"row_id": row_id, "cited_alert": alert_id} for row_id, alert_id in rows])
