"""``Idempotency-Key``: the same key and body get the first answer again; the same key with
another body is a conflict. Keys are per client.

A keyed submission *claims* its key before it publishes: a row whose status is ``PENDING``
and whose body lists the events' ids. Then:

* published (``acks=all``): the row gets the answer (202), which every re-send replays;
* refused for sure (nothing reached the producer, or the broker failed every record): the
  row is deleted, so the re-send publishes as if for the first time;
* outcome unknown (records handed to the producer, no acknowledgement within the bound):
  the row stays pending and the request is answered 503. The producer keeps trying for at
  most its delivery timeout; when it settles, the row gets the answer (the events are on the
  topic) or is deleted (they are not). A re-send meanwhile is answered 503 too, so the events
  are not published a second time while the first copy may still land.

A pending row older than the delivery timeout plus a margin was left by a process that died
(or could not reach the database to record the outcome): its re-send takes the key over and
publishes the same events again. That, and two requests racing past a deleted row, are the
only ways an event reaches the topic twice through the API; the router keeps one effect per
``event_id`` either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import HTTPException
from sqlalchemy import ColumnElement, Connection, Engine, and_, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from router.errors import BrokerUnavailable
from router.store import IdempotencyRow, utcnow

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 255
PENDING = 0
"""``status_code`` of a claimed key whose events are being published or whose outcome is
not known yet (no HTTP status is 0)."""
TAKEOVER_MARGIN_S = 30.0
"""Beyond the producer's delivery timeout, before a pending key counts as abandoned."""


@dataclass(frozen=True)
class StoredAnswer:
    status_code: int
    body: bytes


class KeyPending(BrokerUnavailable):
    """An earlier request with this key handed its events to the broker, which has not said
    yet whether it stored them: not accepted now, retry later."""

    detail = (
        "an earlier request with this Idempotency-Key is still being delivered and its "
        "outcome is not known yet; nothing new was accepted"
    )


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise HTTPException(400, f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters")


_TABLE = IdempotencyRow.__table__


def _mine(client_id: str, key: str) -> ColumnElement[bool]:
    return and_(_TABLE.c.client_id == client_id, _TABLE.c.key == key)


def _insert(conn: Connection, values: dict[str, object]) -> bool:
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    with conn.begin():
        inserted = conn.execute(
            insert(IdempotencyRow)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["client_id", "key"])
            .returning(_TABLE.c.key)  # rowcount is -1 here on psycopg; a returned row is sure
        ).first()
    return inserted is not None


def claim(
    conn: Connection,
    client_id: str,
    key: str,
    digest: str,
    event_ids: list[str],
    *,
    takeover_after_s: float,
) -> StoredAnswer | datetime:
    """The stored answer for this key, or the time of this request's claim on it (the caller
    publishes, then ``finish``es or ``release``s). Raises ``KeyPending`` while another
    attempt's outcome is unknown, 409 for the same key with another body."""
    for _ in range(3):  # a row deleted between our insert and our read: claim again
        now = utcnow()
        values = {
            "client_id": client_id,
            "key": key,
            "request_hash": digest,
            "status_code": PENDING,
            "response_body": json.dumps({"pending": event_ids}).encode(),
            "created_at": now,
        }
        if _insert(conn, values):
            return now
        row = conn.execute(
            select(
                _TABLE.c.request_hash,
                _TABLE.c.status_code,
                _TABLE.c.response_body,
                _TABLE.c.created_at,
            ).where(_mine(client_id, key))
        ).one_or_none()
        conn.rollback()
        if row is None:
            continue
        if row.request_hash != digest:
            raise HTTPException(
                409, "this Idempotency-Key was already used with a different request body"
            )
        if row.status_code != PENDING:
            return StoredAnswer(row.status_code, row.response_body)
        if row.created_at > now - timedelta(seconds=takeover_after_s):
            raise KeyPending("the key's earlier attempt is still in flight")
        with conn.begin():
            taken = conn.execute(
                update(IdempotencyRow)
                .where(
                    _mine(client_id, key),
                    _TABLE.c.status_code == PENDING,
                    _TABLE.c.created_at == row.created_at,
                )
                .values(created_at=now)
                .returning(_TABLE.c.key)
            ).first()
        if taken is not None:
            log.warning("Idempotency-Key of %s abandoned while pending: published again", client_id)
            return now
    raise KeyPending("the key changed hands while it was claimed")


def finish(conn: Connection, client_id: str, key: str, answer: StoredAnswer) -> StoredAnswer:
    """Record the answer of a published claim; return the answer that stands (an earlier
    attempt of the same request may have recorded its own first)."""
    with conn.begin():
        updated = conn.execute(
            update(IdempotencyRow)
            .where(_mine(client_id, key), _TABLE.c.status_code == PENDING)
            .values(status_code=answer.status_code, response_body=answer.body)
            .returning(_TABLE.c.key)
        ).first()
    if updated is not None:
        return answer
    row = conn.execute(
        select(_TABLE.c.status_code, _TABLE.c.response_body).where(_mine(client_id, key))
    ).one_or_none()
    conn.rollback()
    if row is None or row.status_code == PENDING:
        return answer
    return StoredAnswer(row.status_code, row.response_body)


def release(conn: Connection, client_id: str, key: str, claimed_at: datetime) -> None:
    """Forget a claim whose events were not stored, unless another attempt holds it now."""
    with conn.begin():
        conn.execute(
            delete(IdempotencyRow).where(
                _mine(client_id, key),
                _TABLE.c.status_code == PENDING,
                _TABLE.c.created_at == claimed_at,
            )
        )


@dataclass(frozen=True)
class _Outcome:
    client_id: str
    key: str
    claimed_at: datetime
    answer: StoredAnswer | None
    """None: the events were not stored, release the claim."""
    give_up_at: float


class Outcomes:
    """Records the outcome of a claim off the request's path: when the producer settles an
    unknown outcome (its callback runs on the producer's I/O thread, which must not wait for
    the database), or when the database failed just as a request tried to record it.

    One daemon thread, started on first use, retries a write while the database is down, up
    to ``give_up_after_s``; a claim never recorded stays pending and is taken over by its
    re-send once abandoned (see the module's docstring)."""

    RETRY_S = 0.5

    def __init__(self, engine: Engine, *, give_up_after_s: float = 600.0) -> None:
        self._engine = engine
        self._give_up_after_s = give_up_after_s
        self._queue: queue.SimpleQueue[_Outcome | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def record(
        self, client_id: str, key: str, claimed_at: datetime, answer: StoredAnswer | None
    ) -> None:
        """Queue an outcome; never blocks."""
        give_up_at = time.monotonic() + self._give_up_after_s
        self._queue.put(_Outcome(client_id, key, claimed_at, answer, give_up_at))
        with self._lock:
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="idempotency-outcomes", daemon=True
                )
                self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (while the database answers), then stop."""
        with self._lock:
            self._stopping.set()
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                with self._engine.connect() as conn:
                    apply(conn, item.client_id, item.key, item.claimed_at, item.answer)
            except SQLAlchemyError as exc:
                if time.monotonic() > item.give_up_at or self._stopping.is_set():
                    log.error("Idempotency-Key outcome not recorded: %s", type(exc).__name__)
                    continue
                self._queue.put(item)
                time.sleep(self.RETRY_S)


def apply(
    conn: Connection, client_id: str, key: str, claimed_at: datetime, answer: StoredAnswer | None
) -> StoredAnswer | None:
    """``finish`` with the answer, or ``release`` the claim when there is none."""
    if answer is None:
        release(conn, client_id, key, claimed_at)
        return None
    return finish(conn, client_id, key, answer)
