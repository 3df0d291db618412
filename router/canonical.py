"""The canonical topic on the wire: canonical events in, keyed by member for per-member order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer

from schemas import CanonicalEvent, dump_event, parse_event


@dataclass(frozen=True)
class Published:
    """Where the broker durably stored one event (acks=all)."""

    event_id: str
    partition: int
    offset: int


def record_headers(event: CanonicalEvent) -> list[tuple[str, bytes]]:
    """Headers let a consumer route or dead-letter a record without parsing its body."""
    return [
        ("event_id", str(event.event_id).encode()),
        ("event_type", event.event_type.encode()),
        ("schema_version", str(event.schema_version).encode()),
    ]


def publish_events(
    producer: KafkaProducer, topic: str, events: Iterable[CanonicalEvent], *, timeout_s: float = 30
) -> list[Published]:
    """Send events keyed by ``member_id`` and wait until the broker has acknowledged each."""
    futures = [
        (
            event,
            producer.send(
                topic,
                key=event.member_id.encode(),
                value=dump_event(event),
                headers=record_headers(event),
            ),
        )
        for event in events
    ]
    producer.flush(timeout=timeout_s)
    published = []
    for event, future in futures:
        meta = future.get(timeout=timeout_s)
        published.append(Published(str(event.event_id), meta.partition, meta.offset))
    return published


def decode_record(record: Any) -> CanonicalEvent:
    """Parse a consumed record's value; raises ``InvalidEvent`` for a poison record."""
    return parse_event(record.value)
