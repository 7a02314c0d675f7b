"""destination pre-flight results (PACS-compatibility profiles)

Revision ID: 0009_preflight
Revises: 0008_commitment
Create Date: 2026-12-02 04:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009_preflight'
down_revision = '0008_commitment'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'destination_preflight',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('destination', sa.String(64), nullable=False),
        sa.Column('at', TS, nullable=False),
        sa.Column('kind', sa.String(16), nullable=False),
        sa.Column('address', sa.String(512), nullable=False),
        sa.Column('profile', sa.String(64), nullable=False),
        sa.Column('fingerprint', sa.String(64), nullable=False),
        sa.Column('outcome', sa.String(16), nullable=False),
        sa.Column('accepted', sa.JSON(), nullable=False),
        sa.Column('refused', sa.JSON(), nullable=False),
        sa.Column('warnings', sa.JSON(), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('actor', sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_destination_preflight')),
    )
    with op.batch_alter_table('destination_preflight') as b:
        b.create_index(b.f('ix_destination_preflight_destination'), ['destination'])
        b.create_index(b.f('ix_destination_preflight_at'), ['at'])


def downgrade() -> None:
    with op.batch_alter_table('destination_preflight') as b:
        b.drop_index(b.f('ix_destination_preflight_at'))
        b.drop_index(b.f('ix_destination_preflight_destination'))
    op.drop_table('destination_preflight')
