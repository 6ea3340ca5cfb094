"""security: API tokens, key fingerprints, event ids unique per model, rotation columns

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

- ``api_token``: bearer tokens stored as SHA-256 digests with roles.
- ``pseudonym_key``: fingerprints of the pseudonymisation keys in use (filled at start-up
  for a database created before this revision).
- ``inference`` and ``override``: ``event_id`` unique per model rather than globally.
- ``*_next`` pseudonym columns filled during a key rotation.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_token',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_token')),
    sa.UniqueConstraint('name', name=op.f('uq_api_token_name'))
    )
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_token_prefix'), ['prefix'], unique=False)

    op.create_table('pseudonym_key',
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('fingerprint', name=op.f('pk_pseudonym_key'))
    )

    with op.batch_alter_table('inference', schema=None) as batch_op:
        batch_op.add_column(sa.Column('study_key_next', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('patient_key_next', sa.String(length=32), nullable=True))
        batch_op.drop_constraint('uq_inference_event_id', type_='unique')
        batch_op.create_unique_constraint('uq_inference_model_event_id', ['model', 'event_id'])

    with op.batch_alter_table('override', schema=None) as batch_op:
        batch_op.add_column(sa.Column('study_key_next', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('reader_key_next', sa.String(length=32), nullable=True))
        batch_op.drop_constraint('uq_override_event_id', type_='unique')
        batch_op.create_unique_constraint('uq_override_model_event_id', ['model', 'event_id'])


def downgrade() -> None:
    with op.batch_alter_table('override', schema=None) as batch_op:
        batch_op.drop_constraint('uq_override_model_event_id', type_='unique')
        batch_op.create_unique_constraint('uq_override_event_id', ['event_id'])
        batch_op.drop_column('reader_key_next')
        batch_op.drop_column('study_key_next')

    with op.batch_alter_table('inference', schema=None) as batch_op:
        batch_op.drop_constraint('uq_inference_model_event_id', type_='unique')
        batch_op.create_unique_constraint('uq_inference_event_id', ['event_id'])
        batch_op.drop_column('patient_key_next')
        batch_op.drop_column('study_key_next')

    op.drop_table('pseudonym_key')
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_token_prefix'))
    op.drop_table('api_token')
