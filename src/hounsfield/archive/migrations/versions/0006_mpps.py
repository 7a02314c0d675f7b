"""MPPS: performed procedure steps and their completion

Revision ID: 0006_mpps
Revises: 0005_ai_jobs
Create Date: 2026-12-02 04:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006_mpps'
down_revision = '0005_ai_jobs'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'mpps',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('sop_instance_uid', sa.String(64), nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('study_instance_uid', sa.String(64), nullable=False),
        sa.Column('study_uids', sa.JSON(), nullable=False),
        sa.Column('patient_id', sa.String(64), nullable=False),
        sa.Column('accession_number', sa.String(16), nullable=False),
        sa.Column('modality', sa.String(16), nullable=False),
        sa.Column('pps_id', sa.String(16), nullable=False),
        sa.Column('description', sa.String(64), nullable=False),
        sa.Column('calling_ae', sa.String(16), nullable=False),
        sa.Column('dataset', sa.JSON(), nullable=False),
        sa.Column('n_referenced', sa.Integer(), nullable=False),
        sa.Column('trigger_state', sa.String(16), nullable=False),
        sa.Column('missing', sa.JSON(), nullable=False),
        sa.Column('n_missing', sa.Integer(), nullable=False),
        sa.Column('route_outcome', sa.String(16), nullable=False),
        sa.Column('job_id', sa.String(64), nullable=False),
        sa.Column('note', sa.Text(), nullable=False),
        sa.Column('created_at', TS, nullable=False),
        sa.Column('updated_at', TS, nullable=False),
        sa.Column('ended_at', TS, nullable=True),
        sa.Column('fired_at', TS, nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mpps')),
        sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_mpps_sop_instance_uid')),
    )
    with op.batch_alter_table('mpps') as b:
        b.create_index(b.f('ix_mpps_state'), ['state'])
        b.create_index(b.f('ix_mpps_study_instance_uid'), ['study_instance_uid'])
        b.create_index(b.f('ix_mpps_trigger_state'), ['trigger_state'])
        b.create_index(b.f('ix_mpps_created_at'), ['created_at'])
    op.create_table(
        'mpps_instance',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('mpps_pk', sa.Integer(), nullable=False),
        sa.Column('series_instance_uid', sa.String(64), nullable=False),
        sa.Column('sop_instance_uid', sa.String(64), nullable=False),
        sa.Column('sop_class_uid', sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(['mpps_pk'], ['mpps.id'], ondelete='CASCADE',
                                name=op.f('fk_mpps_instance_mpps_pk_mpps')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mpps_instance')),
    )
    with op.batch_alter_table('mpps_instance') as b:
        b.create_index('ix_mpps_instance_mpps_sop', ['mpps_pk', 'sop_instance_uid'],
                       unique=True)
        b.create_index(b.f('ix_mpps_instance_sop_instance_uid'), ['sop_instance_uid'])


def downgrade() -> None:
    op.drop_table('mpps_instance')
    op.drop_table('mpps')
