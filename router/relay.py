"""``jokko relay``: publishes outbox rows to the per-institution topics, then marks them sent.

A row is marked sent only after the broker acknowledged it (``acks=all``), in the same
transaction that claimed it. A relay killed between the two republishes the row on restart;
the copy carries the same ``message_id`` header, so consumers can drop it.

Several relays may share a PostgreSQL store: rows are claimed with ``FOR UPDATE SKIP LOCKED``,
and a relay publishes a member's rows only when every earlier pending row of that member (for
that institution) is in its own claim, so per-member order holds across relays. With SQLite
(the embedded demo store) run a single relay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from tenacity import RetryError, Retrying, retry_if_exception_type, wait_exponential_jitter

from router.store import DeadLetterRow, DeliveryState, OutboxRow, Stage, TrailRow, utcnow
from router.topics import Topics

log = logging.getLogger(__name__)


def _in_order(
    claimed: Sequence[OutboxRow], pending: Sequence[tuple[str, str, int]]
) -> list[OutboxRow]:
    """The claimed rows that can leave now: no earlier pending row of their member is
    held elsewhere. ``pending`` is (institution, member_id, id) of pending rows."""
    mine = {r.id for r in claimed}
    first_gap: dict[tuple[str, str], int] = {}
    for inst, member, row_id in sorted(pending, key=lambda p: p[2]):
        key = (inst, member)
        if row_id not in mine and key not in first_gap:
            first_gap[key] = row_id
    return [r for r in claimed if r.id < first_gap.get((r.institution, r.member_id), r.id + 1)]


class Relay:
    def __init__(
        self,
        engine: Engine,
        producer: KafkaProducer,
        topics: Topics,
        *,
        batch_size: int = 500,
        publish_timeout_s: float = 30.0,
    ) -> None:
        self._engine = engine
        self._producer = producer
        self._topics = topics
        self._batch_size = batch_size
        self._timeout = publish_timeout_s
        self._skip_locked = engine.dialect.name == "postgresql"
        self.published = 0

    def relay_once(self) -> int:
        """Publish one batch of pending rows and dead letters; returns rows published."""
        return self._relay_outbox() + self._relay_dead_letters()

    def _relay_outbox(self) -> int:
        with Session(self._engine) as session, session.begin():
            query = (
                select(OutboxRow)
                .where(OutboxRow.state == DeliveryState.PENDING)
                .order_by(OutboxRow.id)
                .limit(self._batch_size)
            )
            if self._skip_locked:
                query = query.with_for_update(skip_locked=True)
            claimed = session.scalars(query).all()
            if not claimed:
                return 0
            pending = session.execute(
                select(OutboxRow.institution, OutboxRow.member_id, OutboxRow.id).where(
                    OutboxRow.state == DeliveryState.PENDING,
                    OutboxRow.member_id.in_({r.member_id for r in claimed}),
                    OutboxRow.id <= max(r.id for r in claimed),
                )
            ).all()
            rows = _in_order(claimed, [(p[0], p[1], p[2]) for p in pending])
            futures = [
                self._producer.send(
                    self._topics.outbound(r.institution),
                    key=r.member_id.encode(),
                    value=r.body,
                    headers=[
                        ("message_id", r.message_id.encode()),
                        ("event_id", r.event_id.encode()),
                        ("kind", r.kind.encode()),
                        ("content_type", r.content_type.encode()),
                        ("member_seq", str(r.member_seq).encode()),
                        ("format_version", str(r.format_version).encode()),
                    ],
                )
                for r in rows
            ]
            self._producer.flush(timeout=self._timeout)
            for f in futures:
                f.get(timeout=self._timeout)  # any failure rolls the claim back
            now = utcnow()
            for r in rows:
                r.state = DeliveryState.SENT
                r.sent_at = now
                r.attempts += 1
                session.add(
                    TrailRow(
                        event_id=r.event_id,
                        stage=Stage.PUBLISHED,
                        institution=r.institution,
                        message_id=r.message_id,
                        at=now,
                    )
                )
            self.published += len(rows)
            return len(rows)

    def _relay_dead_letters(self) -> int:
        with Session(self._engine) as session, session.begin():
            query = (
                select(DeadLetterRow)
                .where(DeadLetterRow.published_at.is_(None))
                .order_by(DeadLetterRow.id)
                .limit(self._batch_size)
            )
            if self._skip_locked:
                query = query.with_for_update(skip_locked=True)
            dead = session.scalars(query).all()
            futures = [
                self._producer.send(
                    self._topics.dead_letters,
                    value=d.original,
                    headers=[
                        ("dead_letter_id", str(d.id).encode()),
                        ("reason", d.reason.encode()),
                        ("source", d.source.encode()),
                        ("event_id", (d.event_id or "").encode()),
                        ("message_id", (d.message_id or "").encode()),
                        ("attempts", str(d.attempts).encode()),
                    ],
                )
                for d in dead
            ]
            self._producer.flush(timeout=self._timeout)
            for f in futures:
                f.get(timeout=self._timeout)
            now = utcnow()
            for d in dead:
                d.published_at = now
            return len(dead)

    def close(self) -> None:
        self._producer.close()

    def run(self, stop: threading.Event, idle_sleep_s: float = 0.05) -> None:
        # Broker or database trouble: back off with jitter and try the same rows again.
        retrying = Retrying(
            retry=retry_if_exception_type((KafkaError, OperationalError)),
            wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
            stop=lambda _state: stop.is_set(),
            before_sleep=lambda rs: log.warning("relay retrying: %s", rs.outcome),
        )
        log.info("relay started")
        try:
            while not stop.is_set():
                try:
                    published = retrying(self.relay_once)
                except RetryError:
                    break  # asked to stop while retrying
                if published == 0:
                    stop.wait(idle_sleep_s)
        finally:
            self.close()
            log.info("relay stopped after publishing %d rows", self.published)


def pending_by_institution(engine: Engine) -> dict[str, int]:
    """How many messages wait for each institution (for status pages and tests)."""
    with Session(engine) as session:
        rows = session.execute(
            select(OutboxRow.institution, func.count())
            .where(OutboxRow.state == DeliveryState.PENDING)
            .group_by(OutboxRow.institution)
        ).all()
    return {inst: n for inst, n in rows}
