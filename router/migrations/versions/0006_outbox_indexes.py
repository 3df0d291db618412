"""outbox: two overlapping indexes fewer, pending rows in a partial index

Every outbox row is written into each of the table's indexes, and those writes were about
half of the router's store time. ``ix_outbox_claim`` (institution, state, id) and
``ix_outbox_pending`` (state, id) become one partial index on (institution, id) of the
pending rows only: it serves the relay's claim and member-order check and the pending counts,
and stays as small as the backlog. ``uq_outbox_member_seq`` is rebuilt member first, so it
also serves the look-ups by member that ``ix_outbox_member`` was for.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_PENDING = sa.text("state = 'pending'")


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_claim")
        batch.drop_index("ix_outbox_pending")
        batch.drop_index("ix_outbox_member")
        batch.drop_constraint("uq_outbox_member_seq", type_="unique")
        batch.create_unique_constraint(
            "uq_outbox_member_seq", ["member_id", "institution", "member_seq"]
        )
        batch.create_index(
            "ix_outbox_pending",
            ["institution", "id"],
            postgresql_where=_PENDING,
            sqlite_where=_PENDING,
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_pending")
        batch.drop_constraint("uq_outbox_member_seq", type_="unique")
        batch.create_unique_constraint(
            "uq_outbox_member_seq", ["institution", "member_id", "member_seq"]
        )
        batch.create_index("ix_outbox_member", ["member_id", "institution", "state"])
        batch.create_index("ix_outbox_pending", ["state", "id"])
        batch.create_index("ix_outbox_claim", ["institution", "state", "id"])
