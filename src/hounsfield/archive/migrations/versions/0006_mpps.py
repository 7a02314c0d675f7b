"""MPPS: performed procedure steps and their completion

Revision ID: 0006_mpps
Revises: 0005_ai_jobs
Create Date: 2026-12-02 04:00:00
"""
from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401


revision = '0006_mpps'
down_revision = '0005_ai_jobs'
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
