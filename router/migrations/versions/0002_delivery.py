"""per-institution delivery: back-off schedule, institution refs, batches; ack anomalies

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("institution_ref", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("batch_ref", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_outbox_claim", ["institution", "state", "id"])
        batch.create_index("ix_outbox_batch_ref", ["batch_ref"])
    op.create_table(
        "ack_anomaly",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("institution", sa.String(length=16), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason_code", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ack_anomaly_message_id", "ack_anomaly", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_ack_anomaly_message_id", table_name="ack_anomaly")
    op.drop_table("ack_anomaly")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_batch_ref")
        batch.drop_index("ix_outbox_claim")
        for column in ("acked_at", "batch_ref", "institution_ref", "last_error", "next_attempt_at"):
            batch.drop_column(column)
