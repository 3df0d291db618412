"""Outbox rows to the institution topics through the real broker and PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from adapters.base import Institution
from router.broker import ensure_topics, group_consumer, idempotent_producer
from router.delivery import Delivery, Parcel, Result, RetryPolicy
from router.migrate import upgrade
from router.processing import Processor, RawRecord
from router.relay import Relay, pending_by_institution
from router.store import DeadLetterRow, DeliveryState, OutboxRow
from router.topics import Topics
from schemas import dump_event
from tests.factories import contributions
from tests.fakes.echo_adapter import echo_adapters

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    t = Topics(canonical="unused", prefix=f"t{uuid.uuid4().hex[:8]}.", partitions=6)
    ensure_topics(kafka_bootstrap, t.specs())
    return t


@pytest.fixture
def store(pg_engine: Engine) -> Engine:
    upgrade(pg_engine)
    return pg_engine


def load(engine: Engine, members: int, per_member: int) -> int:
    processor = Processor(engine, echo_adapters())
    for i, e in enumerate(contributions(members, per_member)):
        processor.process(RawRecord("canonical", 0, i, dump_event(e)))
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(OutboxRow)) or 0


def read_topics(bootstrap: str, names: list[str], expected: int) -> list[dict[str, str]]:
    """Every record on ``names``, in partition order, headers decoded (plus the record's
    topic, partition, key and value)."""
    consumer = group_consumer(bootstrap, f"check-{uuid.uuid4().hex[:6]}", names)
    got: list[dict[str, str]] = []
    deadline = time.monotonic() + 60
    quiet = 0
    try:
        while time.monotonic() < deadline and (len(got) < expected or quiet < 3):
            batch = consumer.poll(timeout_ms=300)
            quiet = 0 if batch else quiet + 1
            for records in batch.values():
                for r in records:
                    h = {k: v.decode() for k, v in r.headers}
                    h["topic"], h["partition"] = r.topic, str(r.partition)
                    h["key"] = r.key.decode() if r.key is not None else ""
                    h["value"] = r.value.decode(errors="replace")
                    got.append(h)
    finally:
        consumer.close()
    return got


def read_outbound(bootstrap: str, topics: Topics, expected: int) -> list[dict[str, str]]:
    """Every record on the three outbound topics."""
    return read_topics(bootstrap, [topics.outbound(i) for i in Institution], expected)


def assert_once_and_in_member_order(got: list[dict[str, str]], expected: int) -> None:
    counts = Counter(h["message_id"] for h in got)
    assert len(counts) == expected, "every outbox row published"
    assert max(counts.values()) == 1, "no row published twice"
    last: dict[tuple[str, str], int] = defaultdict(int)
    for h in got:  # records of one partition arrive in order; a member lives on one partition
        key = (h["topic"], h["key"])
        seq = int(h["member_seq"])
        assert seq == last[key] + 1, f"{key}: {seq} after {last[key]}"
        last[key] = seq


def dedupe_by_message_id(got: list[dict[str, str]]) -> list[dict[str, str]]:
    """What a consumer keeps when it drops every message id it has seen before. A copy must be
    the same message: same member, sequence and event as the first one."""
    first: dict[str, dict[str, str]] = {}
    kept = []
    for h in got:
        seen = first.get(h["message_id"])
        if seen is None:
            first[h["message_id"]] = h
            kept.append(h)
            continue
        for k in ("topic", "key", "member_seq", "event_id", "kind"):
            assert h[k] == seen[k], f"copy of {h['message_id']} differs in {k}"
    return kept


def assert_in_member_order_after_dedupe(got: list[dict[str, str]], ids: set[str]) -> int:
    """Consumer-side dedupe yields exactly ``ids``, each member's messages in sequence;
    returns how many copies were dropped."""
    kept = dedupe_by_message_id(got)
    assert {h["message_id"] for h in kept} == ids, "dedupe yields exactly the expected set"
    assert_once_and_in_member_order(kept, len(ids))
    return len(got) - len(kept)


def test_relay_publishes_every_row_once_in_member_order(
    store: Engine, topics: Topics, kafka_bootstrap: str
) -> None:
    expected = load(store, members=20, per_member=10)
    assert expected == 20 * 10 * 3
    relay = Relay(store, idempotent_producer(kafka_bootstrap), topics, batch_size=128)
    try:
        while relay.relay_once():
            pass
    finally:
        relay.close()
    assert pending_by_institution(store) == {}
    got = read_outbound(kafka_bootstrap, topics, expected)
    assert_once_and_in_member_order(got, expected)
    assert {h["topic"] for h in got} == {topics.outbound(i) for i in Institution}
    with Session(store) as s:
        states = Counter(s.scalars(select(OutboxRow.state)))
    assert states == {DeliveryState.SENT: expected}


def test_three_relays_share_the_store_without_double_publishing(
    store: Engine, topics: Topics, kafka_bootstrap: str
) -> None:
    expected = load(store, members=30, per_member=20)
    stop = threading.Event()
    relays = [
        Relay(store, idempotent_producer(kafka_bootstrap), topics, batch_size=50) for _ in range(3)
    ]
    threads = [threading.Thread(target=r.run, args=(stop,), daemon=True) for r in relays]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while pending_by_institution(store) and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(30)
    assert pending_by_institution(store) == {}
    assert sum(r.published for r in relays) == expected
    assert sum(1 for r in relays if r.published) >= 2, "the work was shared"
    assert_once_and_in_member_order(read_outbound(kafka_bootstrap, topics, expected), expected)


@dataclass
class Refusing:
    """A partner that never takes a message: ``FAILED`` (try again) or ``UNDELIVERABLE``."""

    institution: Institution
    result: Result
    name: str = "scripted"

    def deliver(self, parcels: Sequence[Parcel]) -> list[Delivery]:
        return [Delivery(p.message_id, self.result, reason_text="refused") for p in parcels]

    def close(self) -> None:
        pass


def test_dead_letters_of_failed_deliveries_reach_the_dlq_topic_exactly_once(
    store: Engine, topics: Topics, kafka_bootstrap: str
) -> None:
    """CSS never answers (retries run out), IPRES refuses for good (dead at once), CMU takes
    everything; a poison record rides along. Two relays share the store and both copy dead
    letters to ``jokko.dlq.v1``: each dead letter is on the topic once, reason and attempts
    included."""
    load(store, members=5, per_member=4)
    Processor(store, echo_adapters()).process(RawRecord("canonical", 0, 999, b"not json"))
    policy = RetryPolicy(max_attempts=3, initial_s=0.01, max_s=0.02, breaker_failures=1000)
    stop = threading.Event()
    relays = [
        Relay(
            store,
            idempotent_producer(kafka_bootstrap),
            topics,
            batch_size=7,
            policy=policy,
            channels={
                Institution.CSS: Refusing(Institution.CSS, Result.FAILED),
                Institution.IPRES: Refusing(Institution.IPRES, Result.UNDELIVERABLE),
            },
        )
        for _ in range(2)
    ]
    threads = [threading.Thread(target=r.run, args=(stop,), daemon=True) for r in relays]
    for t in threads:
        t.start()

    def unpublished() -> int:
        with Session(store) as s:
            return (
                s.scalar(
                    select(func.count())
                    .select_from(DeadLetterRow)
                    .where(DeadLetterRow.published_at.is_(None))
                )
                or 0
            )

    deadline = time.monotonic() + 120
    while (pending_by_institution(store) or unpublished()) and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(30)
    assert pending_by_institution(store) == {}
    assert unpublished() == 0

    with Session(store) as s:
        dead = {str(d.id): d for d in s.scalars(select(DeadLetterRow))}
    by_source = Counter(d.reason for d in dead.values())
    assert by_source == {"retries_exhausted": 20, "undeliverable": 20, "invalid_event": 1}
    got = read_topics(kafka_bootstrap, [topics.dead_letters], len(dead))
    assert Counter(h["dead_letter_id"] for h in got) == dict.fromkeys(dead, 1), "exactly once"
    for h in got:
        d = dead[h["dead_letter_id"]]
        assert (h["reason"], h["attempts"], h["source"]) == (d.reason, str(d.attempts), d.source)
        assert (h["message_id"], h["institution"]) == (d.message_id or "", d.institution or "")
        assert h["value"] == d.original.decode(errors="replace")
        expected_attempts = {"retries_exhausted": 3, "undeliverable": 1, "invalid_event": 1}
        assert d.attempts == expected_attempts[d.reason]
