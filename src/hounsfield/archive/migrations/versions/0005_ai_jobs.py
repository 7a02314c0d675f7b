"""clinical pipeline: AI jobs and routing records

Revision ID: 0005_ai_jobs
Revises: 0003_dimse_stable_delivery
Create Date: 2026-12-01 22:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005_ai_jobs'
down_revision = '0003_dimse_stable_delivery'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'ai_job',
        sa.Column('id', sa.String(64), nullable=False),
        sa.Column('idempotency_key', sa.String(64), nullable=False),
        sa.Column('workflow_id', sa.String(96), nullable=False),
        sa.Column('study_instance_uid', sa.String(64), nullable=False),
        sa.Column('series_instance_uid', sa.String(64), nullable=False),
        sa.Column('trigger', sa.String(32), nullable=False),
        sa.Column('actor', sa.String(128), nullable=False),
        sa.Column('rule', sa.String(128), nullable=False),
        sa.Column('model_ref', sa.String(160), nullable=False),
        sa.Column('model_version', sa.String(160), nullable=False),
        sa.Column('device_uid', sa.String(64), nullable=False),
        sa.Column('operating_threshold', sa.Float(), nullable=True),
        sa.Column('profile', sa.String(32), nullable=False),
        sa.Column('destinations', sa.JSON(), nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('log', sa.JSON(), nullable=False),
        sa.Column('result_uids', sa.JSON(), nullable=False),
        sa.Column('n_findings', sa.Integer(), nullable=True),
        sa.Column('findings', sa.JSON(), nullable=False),
        sa.Column('timings', sa.JSON(), nullable=False),
        sa.Column('superseded_by', sa.String(64), nullable=False),
        sa.Column('created_at', TS, nullable=False),
        sa.Column('updated_at', TS, nullable=False),
        sa.Column('finished_at', TS, nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_ai_job')),
        sa.UniqueConstraint('idempotency_key', name=op.f('uq_ai_job_idempotency_key')),
    )
    with op.batch_alter_table('ai_job') as b:
        b.create_index(b.f('ix_ai_job_workflow_id'), ['workflow_id'])
        b.create_index(b.f('ix_ai_job_study_instance_uid'), ['study_instance_uid'])
        b.create_index(b.f('ix_ai_job_state'), ['state'])
        b.create_index(b.f('ix_ai_job_created_at'), ['created_at'])
    op.create_table(
        'route_event',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('trigger_key', sa.String(128), nullable=False),
        sa.Column('at', TS, nullable=False),
        sa.Column('study_instance_uid', sa.String(64), nullable=False),
        sa.Column('trigger', sa.String(32), nullable=False),
        sa.Column('actor', sa.String(128), nullable=False),
        sa.Column('outcome', sa.String(16), nullable=False),
        sa.Column('rule', sa.String(128), nullable=False),
        sa.Column('job_id', sa.String(64), nullable=False),
        sa.Column('log', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_route_event')),
        sa.UniqueConstraint('trigger_key', name=op.f('uq_route_event_trigger_key')),
    )
    with op.batch_alter_table('route_event') as b:
        b.create_index(b.f('ix_route_event_at'), ['at'])
        b.create_index(b.f('ix_route_event_study_instance_uid'), ['study_instance_uid'])


def downgrade() -> None:
    op.drop_table('route_event')
    op.drop_table('ai_job')
