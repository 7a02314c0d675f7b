"""Storage Commitment: requests and results; destination pre-flight

Revision ID: 0008_commitment
Revises: 0007_ups
Create Date: 2026-12-02 04:00:00
"""
from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401


revision = '0008_commitment'
down_revision = '0007_ups'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'commitment_request',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('transaction_uid', sa.String(64), nullable=False),
        sa.Column('destination', sa.String(256), nullable=False),
        sa.Column('remote_ae', sa.String(16), nullable=False),
        sa.Column('job_id', sa.String(64), nullable=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('n_instances', sa.Integer(), nullable=False),
        sa.Column('n_committed', sa.Integer(), nullable=False),
        sa.Column('n_failed', sa.Integer(), nullable=False),
        sa.Column('requested_at', TS, nullable=False),
        sa.Column('reported_at', TS, nullable=True),
        sa.Column('report_via', sa.String(16), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_commitment_request')),
        sa.UniqueConstraint('transaction_uid', name=op.f('uq_commitment_request_transaction_uid')),
    )
    with op.batch_alter_table('commitment_request') as b:
        b.create_index(b.f('ix_commitment_request_destination'), ['destination'])
        b.create_index(b.f('ix_commitment_request_job_id'), ['job_id'])
        b.create_index(b.f('ix_commitment_request_state'), ['state'])
    op.create_table(
        'commitment_instance',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('transaction_uid', sa.String(64), nullable=False),
        sa.Column('sop_instance_uid', sa.String(64), nullable=False),
        sa.Column('sop_class_uid', sa.String(64), nullable=False),
        sa.Column('study_instance_uid', sa.String(64), nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('failure_reason', sa.Integer(), nullable=True),
        sa.Column('at', TS, nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_commitment_instance')),
        sa.UniqueConstraint('transaction_uid', 'sop_instance_uid',
                            name=op.f('uq_commitment_instance_transaction_uid')),
    )
    with op.batch_alter_table('commitment_instance') as b:
        b.create_index(b.f('ix_commitment_instance_transaction_uid'), ['transaction_uid'])
        b.create_index(b.f('ix_commitment_instance_sop_instance_uid'), ['sop_instance_uid'])
    op.create_table(
        'commitment_inbound',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('transaction_uid', sa.String(64), nullable=False),
        sa.Column('calling_ae', sa.String(16), nullable=False),
        sa.Column('peer', sa.String(128), nullable=False),
        sa.Column('received_at', TS, nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('report', sa.JSON(), nullable=False),
        sa.Column('n_committed', sa.Integer(), nullable=False),
        sa.Column('n_failed', sa.Integer(), nullable=False),
        sa.Column('reported_at', TS, nullable=True),
        sa.Column('via', sa.String(16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_commitment_inbound')),
    )
    with op.batch_alter_table('commitment_inbound') as b:
        b.create_index(b.f('ix_commitment_inbound_transaction_uid'), ['transaction_uid'])
        b.create_index(b.f('ix_commitment_inbound_state'), ['state'])


def downgrade() -> None:
    op.drop_table('commitment_inbound')
    op.drop_table('commitment_instance')
    op.drop_table('commitment_request')
