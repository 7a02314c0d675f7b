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
    pass


def downgrade() -> None:
    pass
