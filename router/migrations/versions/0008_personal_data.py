"""personal data: members' wrapped data keys, NIN tokens, keyring checks

Outbox bodies are sealed under a data key per member (``member_key``, wrapped under a key of
the keyring, which lives outside the database); erasing a member drops theirs. NINs are kept
only as keyed tokens (``member_identity``) to find a second enrolment of the same person.
``key_check`` holds one value sealed under each keyring key the store has used.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("dead_letter") as batch:
        batch.add_column(sa.Column("member_id", sa.String(length=64), nullable=True))
        batch.create_index("ix_dead_letter_member_id", ["member_id"])
    op.create_table(
        "member_key",
        sa.Column("member_id", sa.String(length=64), primary_key=True),
        sa.Column("kek_id", sa.String(length=64), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("erased_at", _TS, nullable=True),
        sa.Column("erasure_reason", sa.Text(), nullable=True),
    )
    op.create_table(
        "member_identity",
        sa.Column("token", sa.String(length=100), primary_key=True),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("mutual", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_member_identity_member_id", "member_identity", ["member_id"])
    op.create_table(
        "member_duplicate",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("other_member_id", sa.String(length=64), nullable=False),
        sa.Column("mutual", sa.String(length=16), nullable=False),
        sa.Column("other_mutual", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("reviewed_at", _TS, nullable=True),
    )
    op.create_index("ix_member_duplicate_event_id", "member_duplicate", ["event_id"])
    op.create_index("ix_member_duplicate_member_id", "member_duplicate", ["member_id"])
    op.create_table(
        "key_check",
        sa.Column("kid", sa.String(length=64), primary_key=True),
        sa.Column("proof", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("key_check")
    op.drop_index("ix_member_duplicate_member_id", table_name="member_duplicate")
    op.drop_index("ix_member_duplicate_event_id", table_name="member_duplicate")
    op.drop_table("member_duplicate")
    op.drop_index("ix_member_identity_member_id", table_name="member_identity")
    op.drop_table("member_identity")
    op.drop_table("member_key")
    with op.batch_alter_table("dead_letter") as batch:
        batch.drop_index("ix_dead_letter_member_id")
        batch.drop_column("member_id")
