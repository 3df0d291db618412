"""``Idempotency-Key``: the same key and body get the first answer again; the same key with
another body is a conflict. Keys are per client.

The answer is stored after the events are durably on Kafka. Two concurrent requests with one
key may therefore both publish; that is harmless (the router keeps one effect per
``event_id``), and the first stored answer is the one every later request gets.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fastapi import HTTPException
from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from router.store import IdempotencyRow, utcnow

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class StoredAnswer:
    status_code: int
    body: bytes


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise HTTPException(400, f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters")


_TABLE = IdempotencyRow.__table__


def lookup(conn: Connection, client_id: str, key: str, digest: str) -> StoredAnswer | None:
    """Core, not the ORM, on the caller's connection: this is on the path of every keyed
    ingest request (bench/api.py). The read transaction ends here, so no snapshot is held
    while the events are published."""
    row = conn.execute(
        select(_TABLE.c.request_hash, _TABLE.c.status_code, _TABLE.c.response_body).where(
            _TABLE.c.client_id == client_id, _TABLE.c.key == key
        )
    ).one_or_none()
    conn.rollback()
    if row is None:
        return None
    if row.request_hash != digest:
        raise HTTPException(
            409, "this Idempotency-Key was already used with a different request body"
        )
    return StoredAnswer(row.status_code, row.response_body)


def remember(
    conn: Connection, client_id: str, key: str, digest: str, answer: StoredAnswer
) -> StoredAnswer:
    """Store the answer unless another request stored one first; return the one that stands."""
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    with conn.begin():
        inserted = conn.execute(
            insert(IdempotencyRow)
            .values(
                client_id=client_id,
                key=key,
                request_hash=digest,
                status_code=answer.status_code,
                response_body=answer.body,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["client_id", "key"])
            .returning(_TABLE.c.key)  # rowcount is -1 here on psycopg; a returned row is sure
        ).first()
    if inserted is not None:
        return answer
    stored = lookup(conn, client_id, key, digest)
    return stored or answer
