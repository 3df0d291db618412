"""Canonical events through the real broker: every example published with the idempotent
producer and read back in a consumer group, keyed by member, sealed on the wire and identical
once opened."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from router.broker import TopicSpec, ensure_topics, group_consumer, idempotent_producer
from router.canonical import decode_record, publish_events
from router.envelope import open_canonical
from router.vault import Vault
from schemas import CanonicalEvent, dump_event
from schemas.examples import load_examples
from services import keyring
from services.cli import app
from services.settings import Settings, load_settings
from tests.infra import free_port

pytestmark = pytest.mark.integration


@dataclass
class RoundTrip:
    """What went out and what came back, per event type."""

    sent: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    identical: Counter[str] = field(default_factory=Counter)
    member_partitions: dict[str, set[int]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.sent == self.received == self.identical


def round_trip(settings: Settings, events: list[CanonicalEvent], timeout_s: float) -> RoundTrip:
    topic = settings.canonical_topic
    ensure_topics(settings.kafka_bootstrap, [TopicSpec(topic, settings.canonical_partitions)])
    vault = Vault(keyring.load(settings.keyring_file, create=True))
    producer = idempotent_producer(settings.kafka_bootstrap, client_id="round-trip")
    try:
        published = publish_events(producer, topic, events, vault=vault)
    finally:
        producer.close()
    by_position = {(p.partition, p.offset): e for p, e in zip(published, events, strict=True)}
    result = RoundTrip(sent=Counter(e.event_type for e in events))
    consumer = group_consumer(settings.kafka_bootstrap, f"round-trip-{uuid.uuid4()}", [topic])
    deadline = time.monotonic() + timeout_s
    try:
        while sum(result.received.values()) < len(events) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    original = by_position.get((record.partition, record.offset))
                    if original is None:
                        continue
                    back = decode_record(record, vault)
                    clear = open_canonical(vault, record.value, record.headers)
                    result.received[back.event_type] += 1
                    result.member_partitions.setdefault(back.member_id, set()).add(record.partition)
                    if back == original and clear == dump_event(original) != record.value:
                        result.identical[back.event_type] += 1
    finally:
        consumer.close()
    return result


def test_every_example_event_comes_back_identical(kafka_bootstrap: str) -> None:
    events = load_examples()
    settings = load_settings(
        kafka_bootstrap=kafka_bootstrap, canonical_topic=f"events.{uuid.uuid4().hex[:8]}"
    )
    result = round_trip(settings, events, timeout_s=60)
    expected = Counter(e.event_type for e in events)
    assert result.sent == expected
    assert result.received == expected
    assert result.identical == expected
    assert result.complete
    # keyed by member_id: all of one member's events land on one partition, in order
    assert {m for m, parts in result.member_partitions.items() if len(parts) != 1} == set()
    assert set(result.member_partitions) == {e.member_id for e in events}


def test_demo_fails_clearly_when_the_broker_is_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JOKKO_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    result = CliRunner().invoke(
        app, ["demo", "--timeout", "2", "--workdir", str(tmp_path / "demo")]
    )
    assert result.exit_code == 1
    assert "did not answer" in result.output
    assert not (tmp_path / "demo").exists(), "nothing started, nothing left behind"
