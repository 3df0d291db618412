"""audit_log becomes an append-only hash chain, with the member a row concerns

Rows already there are chained in id order here, so the chain starts at the very first row
(``jokko audit verify`` checks them too; their ids may have gaps, which the chain then spans).
New rows get ids from ``router.audit.append``, the head's + 1. Triggers refuse UPDATE, DELETE
(and on PostgreSQL TRUNCATE): whoever can drop them can still edit rows, and ``verify`` shows
it. A later migration that rebuilds the table on SQLite (batch mode) drops the triggers and
must create them again.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from router.audit import GENESIS, AuditEntry, chain_hash
from router.store import UtcDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_APPEND_ONLY = "audit_log is append-only"


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("member_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("row_hash", sa.String(length=64), nullable=True))
    _chain_existing_rows()
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch.alter_column("row_hash", existing_type=sa.String(length=64), nullable=False)
    op.create_index("ix_audit_log_member_id", "audit_log", ["member_id"])
    op.create_index("ix_audit_log_prev_hash", "audit_log", ["prev_hash"], unique=True)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
            "ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
        )
    else:
        for verb in ("update", "delete"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb} BEFORE {verb.upper()} ON audit_log "
                f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
            )


def _chain_existing_rows() -> None:
    log = sa.table(
        "audit_log",
        sa.column("id", sa.BigInteger()),
        sa.column("at", UtcDateTime()),
        sa.column("actor", sa.String()),
        sa.column("action", sa.String()),
        sa.column("target", sa.String()),
        sa.column("member_id", sa.String()),
        sa.column("detail", sa.Text()),
        sa.column("prev_hash", sa.String()),
        sa.column("row_hash", sa.String()),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(
            log.c.id, log.c.at, log.c.actor, log.c.action, log.c.target, log.c.detail
        ).order_by(log.c.id)
    ).all()
    prev = GENESIS
    for r in rows:
        entry = AuditEntry(r.id, r.at, r.actor, r.action, r.target, None, r.detail)
        row_hash = chain_hash(prev, entry)
        conn.execute(
            sa.update(log).where(log.c.id == r.id).values(prev_hash=prev, row_hash=row_hash)
        )
        prev = row_hash


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION audit_log_append_only()")
    else:
        for verb in ("update", "delete"):
            op.execute(f"DROP TRIGGER audit_log_no_{verb}")
    op.drop_index("ix_audit_log_prev_hash", table_name="audit_log")
    op.drop_index("ix_audit_log_member_id", table_name="audit_log")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("row_hash")
        batch.drop_column("prev_hash")
        batch.drop_column("member_id")
