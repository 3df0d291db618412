"""inbox keeps each event's content digests; the API keeps the events it published

The same ``event_id`` with other content is a conflict, not a quiet duplicate (issue 17): the
router compares a redelivery's digest with the one its inbox kept, and names the differing
fields from the per-field digests. Rows routed before this revision have none and are taken,
as before, for duplicates. ``submitted_event`` lets the API refuse (409) a conflicting
resubmission before the router has seen the first one.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbox") as batch:
        batch.add_column(sa.Column("content_digest", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("field_digests", sa.Text(), nullable=True))
    op.create_table(
        "submitted_event",
        sa.Column("event_id", sa.String(length=36), primary_key=True),
        sa.Column("content_digest", sa.String(length=64), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("submitted_event")
    with op.batch_alter_table("inbox") as batch:
        batch.drop_column("field_digests")
        batch.drop_column("content_digest")
