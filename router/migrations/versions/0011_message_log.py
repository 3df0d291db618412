"""message_log: per request sent, the digest of its bytes, Jokko's signature and the answer,
append-only and hash-chained like audit_log (``router.msglog``)

Triggers refuse UPDATE, DELETE (and on PostgreSQL TRUNCATE), as for audit_log (0009).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from router.store import UtcDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_APPEND_ONLY = "message_log is append-only"


def upgrade() -> None:
    op.create_table(
        "message_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("sent_at", UtcDateTime(), nullable=False),
        sa.Column("institution", sa.String(length=16), nullable=False),
        sa.Column("signed_id", sa.String(length=64), nullable=False),
        sa.Column("message_ids", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=True),
        sa.Column("signature", sa.Text(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("row_hash", sa.String(length=64), nullable=False),
    )
    op.create_index("ix_message_log_signed_id", "message_log", ["signed_id"])
    op.create_table(
        "message_log_index",
        sa.Column("message_id", sa.String(length=64), primary_key=True),
        sa.Column("log_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    )
    op.create_index("ix_message_log_prev_hash", "message_log", ["prev_hash"], unique=True)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION message_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER message_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
            "ON message_log FOR EACH STATEMENT EXECUTE FUNCTION message_log_append_only()"
        )
    else:
        for verb in ("update", "delete"):
            op.execute(
                f"CREATE TRIGGER message_log_no_{verb} BEFORE {verb.upper()} ON message_log "
                f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER message_log_append_only ON message_log")
        op.execute("DROP FUNCTION message_log_append_only()")
    op.drop_table("message_log_index")
    op.drop_table("message_log")
