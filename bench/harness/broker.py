"""Publishing a workload to the broker and reading topics back, with kafka-python directly."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from bench.harness.infra import PARTITIONS
from router.broker import TopicSpec, ensure_topics, idempotent_producer
from router.canonical import record_headers
from schemas import CanonicalEvent, dump_event


def canonical_topic(bootstrap: str, name: str) -> str:
    """A fresh canonical topic of ``PARTITIONS`` partitions, named after its scenario."""
    topic = f"{name}{uuid.uuid4().hex[:6]}.jokko.events.v1"
    ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS)])
    return topic


def publish(
    bootstrap: str, topic: str, events: Sequence[CanonicalEvent], rate: float | None = None
) -> None:
    """Keyed by member, acks=all; at ``rate`` events/s if given (CreateTime = send time).

    Clear records, which the router reads as records from before sealing: the routers run
    with a keyring of their own that this publisher does not share, so the figures here leave
    out opening a sealed record (its cost per record is in ``bench/seal.py``)."""
    producer = idempotent_producer(bootstrap, client_id="bench-publisher")
    try:
        start = time.perf_counter()
        for i, e in enumerate(events):
            if rate:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            producer.send(
                topic, key=e.member_id.encode(), value=dump_event(e), headers=record_headers(e)
            )
        producer.flush(timeout=120)
    finally:
        producer.close()


def read_all(bootstrap: str, topics: Sequence[str]) -> list[Any]:
    """Every record now on ``topics`` (from the beginning to the current end offsets)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, max_poll_records=5000
    )
    try:
        tps: list[TopicPartition] = []
        for t in topics:
            deadline = time.monotonic() + 30
            while not consumer.partitions_for_topic(t) and time.monotonic() < deadline:
                consumer.topics()  # refresh metadata
                time.sleep(0.1)
            tps += [TopicPartition(t, p) for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + 300
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topics}: still short of the end offsets")
            for batch in consumer.poll(timeout_ms=500).values():
                records += batch
        return records
    finally:
        consumer.close()


def records_on(bootstrap: str, topic: str) -> int:
    """Records on ``topic`` by its end offsets (an idempotent, non-transactional producer
    leaves no gaps)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        return sum(ends.values())
    finally:
        consumer.close()


def headers(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers or ()}
