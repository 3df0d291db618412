"""The broker harness itself: the real broker and kafka-python agree on what Jokko relies on."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from router.broker import (
    TopicSpec,
    admin_client,
    ensure_topics,
    group_consumer,
    idempotent_producer,
    wait_until_ready,
)
from tests.infra import KafkaBroker

pytestmark = pytest.mark.integration

N_MESSAGES = 10_000
PARTITIONS = 6


class _Member(threading.Thread):
    """A consumer-group member that commits after each processed batch."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = group_consumer(bootstrap, group, [topic], client_id=f"m-{id(self)}")
        self.received: list[bytes] = []
        self.assigned: set[TopicPartition] = set()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                batch = self.consumer.poll(timeout_ms=200)
                for records in batch.values():
                    self.received.extend(r.value for r in records)
                if batch:
                    self.consumer.commit()
                self.assigned = set(self.consumer.assignment())
        except BaseException as exc:
            self.error = exc
        finally:
            self.consumer.close()


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_topic_created_through_admin_has_requested_partitions(
    make_topic: Callable[..., str], kafka_bootstrap: str
) -> None:
    topic = make_topic(PARTITIONS)
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        assert consumer.partitions_for_topic(topic) == set(range(PARTITIONS))
    finally:
        consumer.close()
    # creating it again is a no-op, not an error
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, PARTITIONS)])


def test_ten_thousand_messages_reach_a_group_of_two_exactly_once(
    make_topic: Callable[..., str], kafka_bootstrap: str
) -> None:
    topic = make_topic(PARTITIONS)
    group = f"g-{topic}"
    members = [_Member(kafka_bootstrap, group, topic) for _ in range(2)]
    for m in members:
        m.start()
    # Produce only once the group is stable, so no rebalance re-delivers a batch.
    _wait(lambda: all(len(m.assigned) == PARTITIONS // 2 for m in members), 60, "group join")

    producer = idempotent_producer(kafka_bootstrap)
    sent = [f"msg-{i:05d}".encode() for i in range(N_MESSAGES)]
    for i, value in enumerate(sent):
        producer.send(topic, key=f"member-{i % 97}".encode(), value=value)
    producer.flush()
    producer.close()

    def total() -> int:
        for m in members:
            if m.error:
                raise m.error
        return sum(len(m.received) for m in members)

    _wait(lambda: total() >= N_MESSAGES, 120, "all messages")
    time.sleep(0.5)  # anything beyond N would be a duplicate: give it a chance to show
    for m in members:
        m.stop.set()
        m.join(30)

    counts = Counter(v for m in members for v in m.received)
    assert sorted(counts) == sent
    assert max(counts.values()) == 1
    assert all(m.received for m in members), "both members must have consumed"
    assert set.union(*(m.assigned for m in members)) == {
        TopicPartition(topic, p) for p in range(PARTITIONS)
    }

    # After commit the group's offsets sit at the end of every partition: a restart
    # of the group re-reads nothing.
    check = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = check.end_offsets(tps)
        assert {tp: check.committed(tp) for tp in tps} == ends
        assert sum(ends.values()) == N_MESSAGES
    finally:
        check.close()


def test_uncommitted_messages_are_redelivered_to_the_group(
    make_topic: Callable[..., str], kafka_bootstrap: str
) -> None:
    """The crash-safety rule Jokko builds on: no commit, no loss."""
    topic = make_topic(1)
    group = f"g-{topic}"
    producer = idempotent_producer(kafka_bootstrap)
    for i in range(10):
        producer.send(topic, key=b"k", value=str(i).encode())
    producer.flush()
    producer.close()

    def drain(expect: int, commit_after: int | None) -> list[bytes]:
        consumer = group_consumer(kafka_bootstrap, group, [topic], max_poll_records=10)
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        try:
            settled = 0  # polls made once assigned and `expect` reached: extras would show
            while settled < 3 and time.monotonic() < deadline:
                if len(got) >= expect and consumer.assignment():
                    settled += 1
                for records in consumer.poll(timeout_ms=300).values():
                    for r in records:
                        got.append(r.value)
                        if commit_after is not None and len(got) == commit_after:
                            consumer.commit(
                                {TopicPartition(topic, 0): OffsetAndMetadata(r.offset + 1, "", -1)}
                            )
        finally:
            consumer.close()
        return got

    first = drain(10, commit_after=4)  # "crash" after processing 10 but committing 4
    second = drain(6, commit_after=None)
    third = drain(6, commit_after=None)  # the second committed nothing: all six again
    assert first == [str(i).encode() for i in range(10)]
    assert second == [str(i).encode() for i in range(4, 10)]
    assert third == second


def test_broker_restart_keeps_topics_and_data(tmp_path_factory: pytest.TempPathFactory) -> None:
    broker = KafkaBroker(directory=Path(tmp_path_factory.mktemp("kafka")) / "b")
    broker.start()
    try:
        wait_until_ready(broker.bootstrap)
        ensure_topics(broker.bootstrap, [TopicSpec("kept", 2)])
        producer = idempotent_producer(broker.bootstrap)
        producer.send("kept", key=b"a", value=b"before restart").get(timeout=30)
        producer.close()

        broker.restart()
        wait_until_ready(broker.bootstrap)

        admin = admin_client(broker.bootstrap)
        try:
            assert "kept" in admin.list_topics()
        finally:
            admin.close()
        consumer = group_consumer(broker.bootstrap, "after-restart", ["kept"])
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        try:
            while not got and time.monotonic() < deadline:
                got = [r.value for rs in consumer.poll(timeout_ms=200).values() for r in rs]
        finally:
            consumer.close()
        assert got == [b"before restart"]
    finally:
        broker.stop()
