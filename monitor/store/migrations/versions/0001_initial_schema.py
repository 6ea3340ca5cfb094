"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23

All tables, and triggers that keep audit_log append-only on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=True),
    sa.Column('model_version', sa.String(length=128), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('alert_id', sa.Integer(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index('ix_audit_model_ts', ['model', 'ts'], unique=False)

    op.create_table('model_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('version', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('embedding_dim', sa.Integer(), nullable=True),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_version')),
    sa.UniqueConstraint('model', 'version', name='uq_model_version_model_version')
    )
    op.create_table('override',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.String(length=128), nullable=True),
    sa.Column('study_key', sa.String(length=32), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('radiologist_positive', sa.Boolean(), nullable=False),
    sa.Column('finding', sa.String(length=128), nullable=True),
    sa.Column('agrees_with_model', sa.Boolean(), nullable=True),
    sa.Column('reader_key', sa.String(length=32), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_override')),
    sa.UniqueConstraint('event_id', name=op.f('uq_override_event_id'))
    )
    with op.batch_alter_table('override', schema=None) as batch_op:
        batch_op.create_index('ix_override_model_study', ['model', 'study_key'], unique=False)
        batch_op.create_index('ix_override_model_ts', ['model', 'ts'], unique=False)

    op.create_table('baseline',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=True),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('n_studies', sa.Integer(), nullable=False),
    sa.Column('summary', sa.JSON(), nullable=True),
    sa.Column('fitted_state', sa.LargeBinary(), nullable=True),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_baseline_model_version_id_model_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_baseline'))
    )
    with op.batch_alter_table('baseline', schema=None) as batch_op:
        batch_op.create_index('ix_baseline_version', ['model_version_id', 'created_at'], unique=False)

    op.create_table('inference',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('study_key', sa.String(length=32), nullable=False),
    sa.Column('patient_key', sa.String(length=32), nullable=True),
    sa.Column('sex', sa.String(length=1), nullable=True),
    sa.Column('age_years', sa.Float(), nullable=True),
    sa.Column('age_band', sa.String(length=8), nullable=True),
    sa.Column('manufacturer', sa.String(length=128), nullable=True),
    sa.Column('vendor', sa.String(length=64), nullable=True),
    sa.Column('scanner_model', sa.String(length=128), nullable=True),
    sa.Column('station', sa.String(length=128), nullable=True),
    sa.Column('site', sa.String(length=64), nullable=True),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('body_part', sa.String(length=64), nullable=True),
    sa.Column('view', sa.String(length=32), nullable=True),
    sa.Column('kvp', sa.Float(), nullable=True),
    sa.Column('exposure_mas', sa.Float(), nullable=True),
    sa.Column('pixel_spacing_mm', sa.Float(), nullable=True),
    sa.Column('photometric', sa.String(length=32), nullable=True),
    sa.Column('software_version', sa.String(length=512), nullable=True),
    sa.Column('tags', sa.JSON(), nullable=True),
    sa.Column('scores', sa.JSON(), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('positive', sa.Boolean(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.Column('embedding', sa.LargeBinary(), nullable=True),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_inference_model_version_id_model_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inference')),
    sa.UniqueConstraint('event_id', name=op.f('uq_inference_event_id'))
    )
    with op.batch_alter_table('inference', schema=None) as batch_op:
        batch_op.create_index('ix_inference_model_study', ['model', 'study_key'], unique=False)
        batch_op.create_index('ix_inference_model_ts', ['model', 'ts'], unique=False)
        batch_op.create_index('ix_inference_version_ts', ['model_version_id', 'ts'], unique=False)

    op.create_table('model_alias',
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('alias', sa.String(length=64), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_model_alias_model_version_id_model_version')),
    sa.PrimaryKeyConstraint('model', 'alias', name=op.f('pk_model_alias'))
    )
    op.create_table('baseline_member',
    sa.Column('baseline_id', sa.Integer(), nullable=False),
    sa.Column('inference_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['baseline_id'], ['baseline.id'], name=op.f('fk_baseline_member_baseline_id_baseline'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['inference_id'], ['inference.id'], name=op.f('fk_baseline_member_inference_id_inference')),
    sa.PrimaryKeyConstraint('baseline_id', 'inference_id', name=op.f('pk_baseline_member'))
    )
    op.create_table('check_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('baseline_id', sa.Integer(), nullable=True),
    sa.Column('window_kind', sa.String(length=16), nullable=False),
    sa.Column('window_label', sa.String(length=64), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('n_studies', sa.Integer(), nullable=False),
    sa.Column('health_score', sa.Float(), nullable=True),
    sa.Column('health_status', sa.String(length=8), nullable=True),
    sa.Column('report_path', sa.String(length=512), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['baseline_id'], ['baseline.id'], name=op.f('fk_check_run_baseline_id_baseline')),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_check_run_model_version_id_model_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_check_run')),
    sa.UniqueConstraint('model_version_id', 'window_start', 'window_end', 'window_kind', name='uq_check_run_window')
    )
    with op.batch_alter_table('check_run', schema=None) as batch_op:
        batch_op.create_index('ix_check_run_version_end', ['model_version_id', 'window_end'], unique=False)

    op.create_table('alert',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('rule', sa.String(length=128), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.String(length=128), nullable=True),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=True),
    sa.Column('summary', sa.Text(), nullable=True),
    sa.Column('consecutive', sa.Integer(), nullable=False),
    sa.Column('firing_windows', sa.Integer(), nullable=False),
    sa.Column('last_window_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('fired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('acknowledged_by', sa.String(length=128), nullable=True),
    sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('silenced_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_check_run_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['last_check_run_id'], ['check_run.id'], name=op.f('fk_alert_last_check_run_id_check_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert')),
    sa.UniqueConstraint('key', name=op.f('uq_alert_key'))
    )
    with op.batch_alter_table('alert', schema=None) as batch_op:
        batch_op.create_index('ix_alert_state', ['state', 'severity'], unique=False)

    op.create_table('check_result',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('check_run_id', sa.Integer(), nullable=False),
    sa.Column('detector', sa.String(length=64), nullable=False),
    sa.Column('feature', sa.String(length=256), nullable=False),
    sa.Column('statistic', sa.Float(), nullable=False),
    sa.Column('p_value', sa.Float(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=False),
    sa.Column('drift', sa.Boolean(), nullable=False),
    sa.Column('n_reference', sa.Integer(), nullable=False),
    sa.Column('n_current', sa.Integer(), nullable=False),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['check_run_id'], ['check_run.id'], name=op.f('fk_check_result_check_run_id_check_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_check_result')),
    sa.UniqueConstraint('check_run_id', 'detector', 'feature', name='uq_check_result_key')
    )
    with op.batch_alter_table('check_result', schema=None) as batch_op:
        batch_op.create_index('ix_check_result_detector', ['detector', 'feature'], unique=False)

    op.create_table('notification',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('alert_id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('target', sa.String(length=512), nullable=False),
    sa.Column('event', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['alert_id'], ['alert.id'], name=op.f('fk_notification_alert_id_alert')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification'))
    )
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.create_index('ix_notification_status', ['status', 'next_attempt_at'], unique=False)

    op.create_table('rollback_recommendation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('from_version', sa.String(length=128), nullable=False),
    sa.Column('to_version', sa.String(length=128), nullable=False),
    sa.Column('policy', sa.String(length=128), nullable=False),
    sa.Column('alert_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_by', sa.String(length=128), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decision_reason', sa.Text(), nullable=True),
    sa.Column('hook_status', sa.String(length=16), nullable=True),
    sa.Column('hook_attempts', sa.Integer(), nullable=False),
    sa.Column('hook_error', sa.Text(), nullable=True),
    sa.Column('hook_next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('alias', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['alert_id'], ['alert.id'], name=op.f('fk_rollback_recommendation_alert_id_alert')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rollback_recommendation'))
    )
    with op.batch_alter_table('rollback_recommendation', schema=None) as batch_op:
        batch_op.create_index('ix_rollback_model_status', ['model', 'status'], unique=False)

    _append_only()


APPEND_ONLY_SQLITE = [
    f"""CREATE TRIGGER audit_log_no_{op_name.lower()} BEFORE {op_name} ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"""
    for op_name in ("UPDATE", "DELETE")
]
APPEND_ONLY_POSTGRESQL = [
    """CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
    BEGIN RAISE EXCEPTION 'audit_log is append-only'; END; $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()""",
]


def _append_only() -> None:
    dialect = op.get_bind().dialect.name
    for statement in APPEND_ONLY_SQLITE if dialect == "sqlite" else APPEND_ONLY_POSTGRESQL:
        op.execute(statement)


def _drop_append_only() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")


def downgrade() -> None:
    _drop_append_only()
    with op.batch_alter_table('rollback_recommendation', schema=None) as batch_op:
        batch_op.drop_index('ix_rollback_model_status')

    op.drop_table('rollback_recommendation')
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.drop_index('ix_notification_status')

    op.drop_table('notification')
    with op.batch_alter_table('check_result', schema=None) as batch_op:
        batch_op.drop_index('ix_check_result_detector')

    op.drop_table('check_result')
    with op.batch_alter_table('alert', schema=None) as batch_op:
        batch_op.drop_index('ix_alert_state')

    op.drop_table('alert')
    with op.batch_alter_table('check_run', schema=None) as batch_op:
        batch_op.drop_index('ix_check_run_version_end')

    op.drop_table('check_run')
    op.drop_table('baseline_member')
    op.drop_table('model_alias')
    with op.batch_alter_table('inference', schema=None) as batch_op:
        batch_op.drop_index('ix_inference_version_ts')
        batch_op.drop_index('ix_inference_model_ts')
        batch_op.drop_index('ix_inference_model_study')

    op.drop_table('inference')
    with op.batch_alter_table('baseline', schema=None) as batch_op:
        batch_op.drop_index('ix_baseline_version')

    op.drop_table('baseline')
    with op.batch_alter_table('override', schema=None) as batch_op:
        batch_op.drop_index('ix_override_model_ts')
        batch_op.drop_index('ix_override_model_study')

    op.drop_table('override')
    op.drop_table('model_version')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_model_ts')

    op.drop_table('audit_log')
