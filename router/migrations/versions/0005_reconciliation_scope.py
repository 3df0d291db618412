"""Reconciliation runs keep their period scope

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reconciliation_run") as batch:
        batch.add_column(sa.Column("period_from", sa.String(length=7), nullable=True))
        batch.add_column(sa.Column("period_to", sa.String(length=7), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reconciliation_run") as batch:
        batch.drop_column("period_to")
        batch.drop_column("period_from")
