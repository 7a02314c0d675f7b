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
    pass


def downgrade() -> None:
    pass
