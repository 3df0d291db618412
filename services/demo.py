"""The demo of the flow so far: example events through the real broker and back."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from router.broker import TopicSpec, ensure_topics, group_consumer, idempotent_producer
from router.broker import wait_until_ready as wait_for_broker
from router.canonical import decode_record, publish_events
from schemas import CanonicalEvent, dump_event
from schemas.examples import load_examples
from services.settings import Settings


@dataclass
class RoundTrip:
    """What went out and what came back, per event type."""

    sent: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    identical: Counter[str] = field(default_factory=Counter)
    partitions: dict[str, set[int]] = field(default_factory=dict)
    member_partitions: dict[str, set[int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.sent == self.received == self.identical


def round_trip(
    settings: Settings, events: list[CanonicalEvent], timeout_s: float = 60
) -> RoundTrip:
    start = time.monotonic()
    wait_for_broker(settings.kafka_bootstrap, timeout_s=timeout_s)
    topic = settings.canonical_topic
    ensure_topics(settings.kafka_bootstrap, [TopicSpec(topic, settings.canonical_partitions)])

    producer = idempotent_producer(settings.kafka_bootstrap, client_id="jokko-demo")
    try:
        published = publish_events(producer, topic, events)
    finally:
        producer.close()
    by_position = {(p.partition, p.offset): e for p, e in zip(published, events, strict=True)}

    result = RoundTrip()
    for e in events:
        result.sent[e.event_type] += 1
    # A fresh group reads from the start; only the records this run wrote are counted.
    consumer = group_consumer(settings.kafka_bootstrap, f"jokko-demo-{uuid.uuid4()}", [topic])
    deadline = time.monotonic() + timeout_s
    try:
        while sum(result.received.values()) < len(events) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    original = by_position.get((record.partition, record.offset))
                    if original is None:
                        continue
                    back = decode_record(record)
                    result.received[back.event_type] += 1
                    result.partitions.setdefault(back.event_type, set()).add(record.partition)
                    result.member_partitions.setdefault(back.member_id, set()).add(record.partition)
                    if back == original and record.value == dump_event(original):
                        result.identical[back.event_type] += 1
        consumer.commit()
    finally:
        consumer.close()
    result.seconds = time.monotonic() - start
    return result


def run(settings: Settings, console: Console, timeout_s: float = 60) -> bool:
    events = load_examples()
    console.print(
        f"Publishing {len(events)} example MSNAS events to [bold]{settings.canonical_topic}[/] "
        f"on {settings.kafka_bootstrap} (idempotent producer, acks=all), then reading them back"
    )
    result = round_trip(settings, events, timeout_s)
    table = Table(title="Canonical events: round trip through Kafka")
    table.add_column("event type")
    table.add_column("sent", justify="right")
    table.add_column("read back", justify="right")
    table.add_column("identical", justify="right")
    table.add_column("partitions")
    for event_type in sorted(result.sent):
        table.add_row(
            event_type,
            str(result.sent[event_type]),
            str(result.received[event_type]),
            str(result.identical[event_type]),
            ",".join(str(p) for p in sorted(result.partitions.get(event_type, set()))),
        )
    table.add_row(
        "[bold]total[/]",
        str(sum(result.sent.values())),
        str(sum(result.received.values())),
        str(sum(result.identical.values())),
        "",
    )
    console.print(table)
    verdict = (
        "[green]round trip complete[/]" if result.complete else "[red]round trip INCOMPLETE[/]"
    )
    console.print(f"{verdict} in {result.seconds:.1f}s")
    return result.complete
