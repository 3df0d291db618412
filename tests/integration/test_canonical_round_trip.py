"""Canonical events through the real broker: what the demo shows, asserted."""

from __future__ import annotations

import re
import uuid
from collections import Counter

import pytest
from typer.testing import CliRunner

from schemas.examples import load_examples
from services.cli import app
from services.demo import round_trip
from services.settings import load_settings
from tests.infra import free_port

pytestmark = pytest.mark.integration


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


def test_jokko_demo_command_prints_the_round_trip(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOKKO_CANONICAL_TOPIC", f"demo.{uuid.uuid4().hex[:8]}")
    result = CliRunner().invoke(app, ["demo", "--kafka-bootstrap", kafka_bootstrap])
    assert result.exit_code == 0, result.output
    assert "round trip complete" in result.output
    n = len(load_examples())
    assert re.search(rf"total\s*│\s*{n}\s*│\s*{n}\s*│\s*{n}\s*│", result.output), result.output


def test_demo_fails_clearly_when_the_broker_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOKKO_CANONICAL_TOPIC", "unused")
    result = CliRunner().invoke(
        app, ["demo", "--kafka-bootstrap", f"127.0.0.1:{free_port()}", "--timeout", "2"]
    )
    assert result.exit_code == 1
    assert "did not answer" in result.output
