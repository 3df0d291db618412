"""``jokko relay``: delivers the outbox, one worker per institution, and publishes dead letters.

Over Kafka a row is marked sent only after the broker acknowledged it (``acks=all``), in the
transaction that claimed it. A relay killed between the two republishes the row on restart;
the copy carries the same ``message_id`` header, so consumers can drop it.

Each institution's worker runs in its own thread with its own back-off and circuit breaker
(``router.delivery``): a topic, endpoint or directory that fails holds up only its own
institution. Several relays may share a PostgreSQL store (``FOR UPDATE SKIP LOCKED`` claims);
with SQLite (the embedded demo store) run a single relay.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from kafka import KafkaProducer
from kafka.errors import KafkaError
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from adapters.base import Institution
from router.acks import DecisionPublisher
from router.delivery import (
    Channel,
    ChannelUnavailable,
    Delivery,
    DeliveryWorker,
    Parcel,
    Result,
    RetryPolicy,
)
from router.envelope import SEALED, seal_for_institution
from router.msglog import Sent, v1a_signature
from router.signing import SIGNATURE_HEADER, SigningKey, sign_record
from router.store import DeadLetterRow, DeliveryState, OutboxRow, utcnow
from router.topics import Topics
from router.vault import KeySet, Vault, sealed_nonce

log = logging.getLogger(__name__)


class KafkaChannel:
    """An institution that reads its own topic, ``jokko.out.<institution>.v1``."""

    name = "kafka"

    def __init__(
        self,
        producer: KafkaProducer,
        topics: Topics,
        institution: Institution,
        *,
        timeout_s: float | None = None,
        key: KeySet | None = None,
        signing_key: SigningKey | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``key``: the institution's topic key; each message is sealed under it
        (``router.envelope``). None: messages go on the topic in clear.

        ``signing_key``: each record's value, as produced (sealed or not), is signed as a
        push is (``router.signing.sign_record``, in its headers), and each record handed to
        the producer goes in the message log (``router.msglog``) with its topic, partition
        and offset, in the transaction that marks it sent."""
        self._signing_key = signing_key
        self._clock = clock
        self._producer = producer
        self._topic = topics.outbound(institution)
        self._institution = institution
        self._key = key
        # Until the producer itself gives up on a record (its delivery timeout): a record
        # given up on sooner may still go out, and its retry would be a second copy.
        self._timeout = timeout_s or producer.config["delivery_timeout_ms"] / 1000 + 5

    @property
    def institution(self) -> Institution:
        return self._institution

    def deliver(self, parcels: Sequence[Parcel]) -> list[Delivery]:
        futures = []
        sent: list[Sent] = []
        refused: KafkaError | None = None
        for p in parcels:
            headers = [
                ("message_id", p.message_id.encode()),
                ("event_id", p.event_id.encode()),
                ("kind", p.kind.encode()),
                ("content_type", p.content_type.encode()),
                ("member_seq", str(p.member_seq).encode()),
                ("format_version", str(p.format_version).encode()),
            ]
            value = p.body
            if self._key is not None:
                value, sealed = seal_for_institution(
                    self._key, self._institution.value, p.message_id, p.body
                )
                headers.append(sealed)
            timestamp = int(self._clock())
            if self._signing_key is not None:
                headers += sign_record(self._signing_key, p.message_id, value, timestamp=timestamp)
            try:
                futures.append(
                    self._producer.send(
                        self._topic, key=p.member_id.encode(), value=value, headers=headers
                    )
                )
            except KafkaError as exc:  # e.g. no metadata for the topic within max_block
                refused = exc
                break
            sent.append(self._logged(p, value, timestamp, dict(headers)))
        if not futures:
            raise ChannelUnavailable(f"{self._topic}: {refused!r}")
        # Waiting on our own futures, not flush(): another institution's stuck records in the
        # shared producer must not hold this one up. Each record is reported on its own, so
        # what did reach the broker is not sent again with what did not.
        reports = []
        for p, f, logged in zip(parcels, futures, sent, strict=False):
            try:
                meta = f.get(timeout=self._timeout)
                if meta is not None:  # the broker's receipt: where the record now is
                    where = {"partition": meta.partition, "offset": meta.offset}
                    logged = replace(logged, detail={**(logged.detail or {}), **where})
                reports.append(Delivery(p.message_id, Result.SENT, sent=logged))
            except KafkaError as exc:
                reports.append(
                    Delivery(p.message_id, Result.FAILED, reason_text=repr(exc), sent=logged)
                )
        reports += [
            Delivery(p.message_id, Result.FAILED, reason_text=f"{self._topic}: {refused!r}")
            for p in parcels[len(futures) :]
        ]
        return reports

    def _logged(self, p: Parcel, value: bytes, timestamp: int, headers: dict[str, bytes]) -> Sent:
        """What the message log keeps of a record (its partition and offset once written)."""
        detail: dict[str, Any] = {"kind": "kafka", "topic": self._topic, "sealed": None}
        kid = headers.get(SEALED)
        if kid is not None:
            nonce = sealed_nonce(value)
            detail.update(
                sealed=kid.decode(),
                nonce=base64.b64encode(nonce).decode() if nonce is not None else None,
                clear_sha256=hashlib.sha256(p.body).hexdigest(),
            )
        signature = headers.get(SIGNATURE_HEADER)
        return Sent(
            p.message_id,
            (p.message_id,),
            timestamp,
            hashlib.sha256(value).hexdigest(),
            self._signing_key.kid if self._signing_key is not None else None,
            v1a_signature(signature.decode()) if signature is not None else None,
            None,
            detail,
        )

    def close(self) -> None:
        """The producer is shared and closed by the relay."""


class DeadLetterPublisher:
    """Copies new dead letters to ``jokko.dlq.v1`` for whoever watches the stream."""

    def __init__(
        self, engine: Engine, producer: KafkaProducer, topics: Topics, *, batch_size: int = 500
    ) -> None:
        self._engine = engine
        self._producer = producer
        self._topic = topics.dead_letters
        self._batch_size = batch_size
        self._skip_locked = engine.dialect.name == "postgresql"

    def publish_once(self, timeout_s: float = 30.0) -> int:
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
                    self._topic,
                    value=d.original,
                    headers=[
                        ("dead_letter_id", str(d.id).encode()),
                        ("reason", d.reason.encode()),
                        ("source", d.source.encode()),
                        ("event_id", (d.event_id or "").encode()),
                        ("message_id", (d.message_id or "").encode()),
                        ("institution", (d.institution or "").encode()),
                        ("attempts", str(d.attempts).encode()),
                    ],
                )
                for d in dead
            ]
            for f in futures:
                f.get(timeout=timeout_s)
            now = utcnow()
            for d in dead:
                d.published_at = now
            return len(dead)

    def run(self, stop: threading.Event, idle_s: float = 0.2) -> None:
        failures = 0
        while not stop.is_set():
            try:
                n = self.publish_once()
                failures = 0
            except (KafkaError, OperationalError) as exc:
                failures += 1
                log.warning("dead-letter publishing retrying: %r", exc)
                stop.wait(RetryPolicy(initial_s=0.1, max_s=5.0).delay(failures))
                continue
            if n == 0:
                stop.wait(idle_s)


class AckIntake(Protocol):
    """Something that reads acknowledgements until told to stop (``router.acks``)."""

    def run(self, stop: threading.Event) -> None: ...


class Relay:
    """All of one process's delivery: a worker per institution plus the dead-letter copier."""

    def __init__(
        self,
        engine: Engine,
        producer: KafkaProducer,
        topics: Topics,
        *,
        batch_size: int = 500,
        policy: RetryPolicy | None = None,
        channels: Mapping[Institution, Channel] | None = None,
        intake: Sequence[AckIntake] = (),
        vault: Vault | None = None,
        topic_keys: Mapping[Institution, KeySet] | None = None,
        signing_key: SigningKey | None = None,
    ) -> None:
        """``topic_keys``: each Kafka institution's topic key (``KafkaChannel``);
        ``signing_key``: Jokko's current message key, signing every record."""
        self._producer = producer
        self.intake = list(intake)
        keys = topic_keys or {}
        chosen: dict[Institution, Channel] = {
            inst: KafkaChannel(producer, topics, inst, key=keys.get(inst), signing_key=signing_key)
            for inst in Institution
        }
        chosen.update(channels or {})
        decisions = DecisionPublisher(producer, topics.canonical, vault)  # CMU's, in HTTP answers
        self.workers = {
            inst: DeliveryWorker(
                engine, ch, policy=policy, batch_size=batch_size, decisions=decisions, vault=vault
            )
            for inst, ch in chosen.items()
        }
        self.dead_letters = DeadLetterPublisher(engine, producer, topics, batch_size=batch_size)

    @property
    def published(self) -> int:
        return sum(w.delivered for w in self.workers.values())

    def relay_once(self) -> int:
        """One round over every institution and the dead letters (tests and tools)."""
        done = sum(w.deliver_once() for w in self.workers.values())
        return done + self.dead_letters.publish_once()

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self._producer.close()

    def run(self, stop: threading.Event) -> None:
        """Run every worker in its own thread until ``stop``. A worker that dies of a bug
        stops the whole relay (so its supervisor restarts it) rather than leaving one
        institution silently undelivered."""
        crashed: list[BaseException] = []

        def guarded(target: Callable[[threading.Event], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    target(stop)
                except BaseException as exc:
                    log.exception("relay worker crashed")
                    crashed.append(exc)
                    stop.set()

            return run

        targets: list[tuple[str, Callable[[threading.Event], None]]] = [
            (f"deliver-{i}", w.run) for i, w in self.workers.items()
        ]
        targets.append(("dead-letters", self.dead_letters.run))
        targets += [(f"acks-{i}", a.run) for i, a in enumerate(self.intake)]
        threads = [threading.Thread(target=guarded(t), name=n) for n, t in targets]
        log.info("relay started")
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.5)
        finally:
            self.close()
            log.info("relay stopped after delivering %d rows", self.published)
        if crashed:
            raise crashed[0]


def pending_by_institution(engine: Engine) -> dict[str, int]:
    """How many messages wait for each institution (for status pages and tests)."""
    with Session(engine) as session:
        rows = session.execute(
            select(OutboxRow.institution, func.count())
            .where(OutboxRow.state == DeliveryState.PENDING)
            .group_by(OutboxRow.institution)
        ).all()
    return {inst: n for inst, n in rows}
