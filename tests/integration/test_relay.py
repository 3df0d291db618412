"""Outbox rows to the institution topics through the real broker and PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from adapters.base import Institution
from router.broker import ensure_topics, group_consumer, idempotent_producer
from router.migrate import upgrade
from router.processing import Processor, RawRecord
from router.relay import Relay, pending_by_institution
from router.store import DeliveryState, OutboxRow
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


def read_outbound(bootstrap: str, topics: Topics, expected: int) -> list[dict[str, str]]:
    """Every record on the three outbound topics, in partition order, headers decoded."""
    consumer = group_consumer(
        bootstrap, f"check-{uuid.uuid4().hex[:6]}", [topics.outbound(i) for i in Institution]
    )
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
                    h["topic"], h["partition"], h["key"] = r.topic, str(r.partition), r.key.decode()
                    got.append(h)
    finally:
        consumer.close()
    return got


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
