"""The audit log as a hash chain: who did or read what, in an append-only table whose rows a
removal, an insertion or an edit cannot escape ``verify``.

Each row carries ``prev_hash`` (the row before it's ``row_hash``; ``GENESIS`` for the first)
and ``row_hash = sha256(prev_hash || canonical(row))``, where ``canonical`` is the JSON array
``[id, at, actor, action, target, member_id, detail]``. The encoding is frozen: ``verify``
recomputes it over rows written years ago (``tests/unit/test_audit_chain.py`` pins a vector).

Appends are serialised, so the chain never forks however many API processes write: PostgreSQL
takes a transaction-scoped advisory lock keyed by the table's oid (no privilege needed, and two
Jokko schemas in one database do not wait on each other); SQLite takes its single write lock
up front (``BEGIN IMMEDIATE``). The lock is held to the end of the caller's transaction, so
the audit row commits or rolls back with the change it records. A unique index on
``prev_hash`` makes a fork impossible even if a writer bypassed the lock.

Every write goes through ``append``; nothing else inserts into ``audit_log``, and triggers
refuse UPDATE and DELETE (migration 0009). Personal values (NIN, names, phones) never go in a
row: ``member_id`` is the member's Jokko id, and ``detail`` says what happened, not what was seen.

What no chain can show alone: rows cut off at the end. ``verify(head=...)`` checks that a head
hash recorded earlier (by ``jokko audit verify``, kept outside the database) is still in the
chain; see docs/operations.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, insert, select, text
from sqlalchemy.orm import Session

from router.store import AuditRow, utcnow

AUDIT: Table = AuditRow.__table__  # type: ignore[assignment]

GENESIS = "0" * 64
"""The ``prev_hash`` of the first row."""

_PG_LOCK = "SELECT pg_advisory_xact_lock(CAST(CAST('{table}' AS regclass) AS oid)::bigint)"


@dataclass(frozen=True)
class AuditEntry:
    """The fields a row's hash covers, exactly as stored (already cut to the columns' sizes)."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str | None = None
    member_id: str | None = None
    detail: str | None = None


def canonical(entry: AuditEntry) -> bytes:
    """The frozen encoding of a row: JSON escapes make it unambiguous whatever the text."""
    at = entry.at.astimezone(UTC).isoformat(timespec="microseconds")
    fields = [entry.id, at, entry.actor, entry.action, entry.target, entry.member_id, entry.detail]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


def link(prev_hash: str, encoded: bytes) -> str:
    """``sha256(prev_hash || encoded)``, hex: how every hash chain of Jokko links a row (the
    audit log, the message log ``router.msglog``)."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + encoded).hexdigest()


def chain_hash(prev_hash: str, entry: AuditEntry) -> str:
    """``sha256(prev_hash || canonical(entry))``, hex: the row's place in the chain."""
    return link(prev_hash, canonical(entry))


def serialise(conn: Connection, table: str = "audit_log") -> None:
    """Hold ``table``'s chain write lock until the caller's transaction ends."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(_PG_LOCK.format(table=table)))
    # pysqlite opens a transaction only at the first INSERT/UPDATE/DELETE, so a transaction
    # already open has written and holds SQLite's one write lock; otherwise take it now,
    # before the head is read, or two writers could both read the same head.
    elif conn.dialect.name == "sqlite" and not getattr(
        conn.connection.dbapi_connection, "in_transaction", False
    ):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str | None = None,
    member_id: str | None = None,
    detail: str | None = None,
    at: datetime | None = None,
) -> str:
    """Add one row at the head of the chain in ``session``'s transaction (the caller commits);
    returns its hash. Never give it personal values: ids and what happened only."""
    conn = session.connection()
    serialise(conn)
    head = conn.execute(
        select(AUDIT.c.id, AUDIT.c.row_hash).order_by(AUDIT.c.id.desc()).limit(1)
    ).first()
    prev_id, prev_hash = (head[0], head[1]) if head is not None else (0, GENESIS)
    entry = AuditEntry(
        id=prev_id + 1,
        at=at or utcnow(),
        actor=actor[:64],
        action=action[:64],
        target=target[:255] if target is not None else None,
        member_id=member_id[:64] if member_id is not None else None,
        detail=detail,
    )
    row_hash = chain_hash(prev_hash, entry)
    conn.execute(
        insert(AUDIT).values(
            id=entry.id,
            at=entry.at,
            actor=entry.actor,
            action=entry.action,
            target=entry.target,
            member_id=entry.member_id,
            detail=entry.detail,
            prev_hash=prev_hash,
            row_hash=row_hash,
        )
    )
    return row_hash


@dataclass(frozen=True)
class Verdict:
    """What ``verify`` found: the rows checked and the head, or the first row at fault."""

    checked: int
    head_id: int | None
    head_hash: str | None
    row_id: int | None = None
    """The row altered, inserted or (first of those) removed; None when the chain is whole."""
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _rows(conn: Connection, batch: int) -> Iterator[Any]:
    """The chain in id order, a batch at a time (keyset, so memory stays flat)."""
    after = -1
    cols = (
        AUDIT.c.id,
        AUDIT.c.at,
        AUDIT.c.actor,
        AUDIT.c.action,
        AUDIT.c.target,
        AUDIT.c.member_id,
        AUDIT.c.detail,
        AUDIT.c.prev_hash,
        AUDIT.c.row_hash,
    )
    while True:
        rows = conn.execute(
            select(*cols).where(AUDIT.c.id > after).order_by(AUDIT.c.id).limit(batch)
        ).all()
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].id


def verify(engine: Engine, *, head: str | None = None, batch: int = 5000) -> Verdict:
    """Walk the chain from its first row; stop at the first row that is not what was written.

    ``head``: a ``row_hash`` recorded earlier; the chain must still contain it, which is what
    shows that rows were cut off at the end (nothing else can).
    """
    checked = 0
    prev: Any = None
    # The hash of the row before ``prev``: a row chaining onto it means ``prev`` was put in.
    before_prev_hash = GENESIS
    head_seen = head is None
    with engine.connect() as conn:
        for row in _rows(conn, batch):
            entry = AuditEntry(
                row.id, row.at, row.actor, row.action, row.target, row.member_id, row.detail
            )
            if chain_hash(row.prev_hash, entry) != row.row_hash:
                return Verdict(
                    checked,
                    None,
                    None,
                    row.id,
                    f"row {row.id} was altered: its content does not match its hash",
                )
            expected = prev.row_hash if prev is not None else GENESIS
            if row.prev_hash != expected:
                culprit, problem = _broken_link(prev, row, before_prev_hash)
                return Verdict(checked, None, None, culprit, problem)
            checked += 1
            head_seen = head_seen or row.row_hash == head
            before_prev_hash = expected
            prev = row
    if not head_seen:
        return Verdict(
            checked,
            None,
            None,
            prev.id if prev is not None else None,
            f"the recorded head {head} is not in the chain: rows were cut off its end "
            f"(it now ends at row {prev.id if prev is not None else 'none'}), or it was rewritten",
        )
    return Verdict(checked, prev.id if prev else None, prev.row_hash if prev else None, None, None)


def _broken_link(prev: Any, row: Any, before_prev_hash: str) -> tuple[int, str]:
    """Which row to blame when ``row`` does not chain onto ``prev`` though both hash right."""
    if prev is None:
        return row.id, f"the chain does not start at row {row.id}: rows before it were removed"
    if row.prev_hash == before_prev_hash:
        return prev.id, f"row {prev.id} was inserted: row {row.id} chains onto the row before it"
    if row.id > prev.id + 1:
        missing = (
            f"row {prev.id + 1}" if row.id == prev.id + 2 else f"rows {prev.id + 1}-{row.id - 1}"
        )
        return prev.id + 1, f"{missing} removed: row {row.id} does not chain onto row {prev.id}"
    return prev.id, (
        f"row {prev.id} was rewritten (its hash recomputed): row {row.id} does not chain onto it"
    )
