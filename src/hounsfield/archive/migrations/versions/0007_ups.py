"""UPS-RS: workitems, subscriptions and events

Revision ID: 0007_ups
Revises: 0006_mpps
Create Date: 2026-12-02 04:00:00
"""
from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401


revision = '0007_ups'
down_revision = '0006_mpps'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'ups_workitem',
        sa.Column('uid', sa.String(64), nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('transaction_uid', sa.String(64), nullable=False),
        sa.Column('dataset', sa.JSON(), nullable=False),
        sa.Column('study_instance_uid', sa.String(64), nullable=False),
        sa.Column('performer', sa.String(32), nullable=False),
        sa.Column('job_id', sa.String(64), nullable=False),
        sa.Column('cancel_requested', sa.Boolean(), nullable=False),
        sa.Column('cancel_reason', sa.Text(), nullable=False),
        sa.Column('progress', sa.Integer(), nullable=True),
        sa.Column('created_by', sa.String(128), nullable=False),
        sa.Column('created_at', TS, nullable=False),
        sa.Column('updated_at', TS, nullable=False),
        sa.PrimaryKeyConstraint('uid', name=op.f('pk_ups_workitem')),
    )
    with op.batch_alter_table('ups_workitem') as b:
        b.create_index(b.f('ix_ups_workitem_state'), ['state'])
        b.create_index(b.f('ix_ups_workitem_study_instance_uid'), ['study_instance_uid'])
        b.create_index(b.f('ix_ups_workitem_created_at'), ['created_at'])
    op.create_table(
        'ups_subscription',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('ae_title', sa.String(16), nullable=False),
        sa.Column('kind', sa.String(16), nullable=False),
        sa.Column('workitem_uid', sa.String(64), nullable=False),
        sa.Column('filter', sa.JSON(), nullable=False),
        sa.Column('deletion_lock', sa.Boolean(), nullable=False),
        sa.Column('suspended', sa.Boolean(), nullable=False),
        sa.Column('created_at', TS, nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_ups_subscription')),
        sa.UniqueConstraint('ae_title', 'kind', 'workitem_uid',
                            name=op.f('uq_ups_subscription')),
    )
    with op.batch_alter_table('ups_subscription') as b:
        b.create_index(b.f('ix_ups_subscription_ae_title'), ['ae_title'])
        b.create_index(b.f('ix_ups_subscription_workitem_uid'), ['workitem_uid'])
    op.create_table(
        'ups_event',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('ae_title', sa.String(16), nullable=False),
        sa.Column('workitem_uid', sa.String(64), nullable=False),
        sa.Column('event_type', sa.Integer(), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('created_at', TS, nullable=False),
        sa.Column('delivered_at', TS, nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_ups_event')),
    )
    with op.batch_alter_table('ups_event') as b:
        b.create_index(b.f('ix_ups_event_ae_title'), ['ae_title'])
        b.create_index(b.f('ix_ups_event_delivered_at'), ['delivered_at'])
    op.create_table(
        'ups_mirror',
        sa.Column('job_id', sa.String(64), nullable=False),
        sa.Column('workitem_uid', sa.String(64), nullable=False),
        sa.Column('transaction_uid', sa.String(64), nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('progress', sa.Integer(), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('updated_at', TS, nullable=False),
        sa.PrimaryKeyConstraint('job_id', name=op.f('pk_ups_mirror')),
    )


def downgrade() -> None:
    op.drop_table('ups_mirror')
    op.drop_table('ups_event')
    op.drop_table('ups_subscription')
    op.drop_table('ups_workitem')
