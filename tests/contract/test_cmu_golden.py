"""CMU messages for the example events, compared byte for byte with reviewed golden files.

Regenerate after an intended format change (and review the diff)::

    JOKKO_UPDATE_GOLDEN=1 .venv/bin/pytest tests/contract/test_cmu_golden.py

Each ``golden/cmu/<event_type>.json`` lists the messages of every example of that type routed
to CMU, bodies shown indented; the test also checks that the body bytes are exactly the
canonical (sorted, compact) form of that JSON, so the comparison is byte for byte.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import adapters.cmu
from adapters.base import Institution, OutboundMessage
from adapters.cmu.mapping import canonical_json
from router.routing import destinations
from schemas import CanonicalEvent, parse_event
from schemas.examples import load_examples, raw_examples
from tests.contract.suite import profiles

pytestmark = pytest.mark.contract

GOLDEN = Path(__file__).parent / "golden" / "cmu"
UPDATE = os.environ.get("JOKKO_UPDATE_GOLDEN") == "1"


def mutual_decision() -> CanonicalEvent:
    """The examples' claim decisions are all CMU's (never sent to CMU): this variant is the
    mutual's own decision on the same claim, which is."""
    raw = next(r for r in raw_examples() if r["event_type"] == "claim.adjudicated")
    raw = {**raw, "payload": {**raw["payload"], "adjudicator": "MSNAS"}}
    return parse_event(raw)


def routed_messages() -> dict[str, list[OutboundMessage]]:
    history = load_examples()
    by_type: dict[str, list[OutboundMessage]] = {}
    for i, event in enumerate(history):
        member = profiles(history[: i + 1]).get(event.member_id)
        if Institution.CMU in destinations(event, member):
            by_type.setdefault(event.event_type, []).extend(adapters.cmu.translate(event, member))
    decision = mutual_decision()
    by_type.setdefault(decision.event_type, []).extend(adapters.cmu.translate(decision, None))
    return by_type


def render(messages: list[OutboundMessage]) -> bytes:
    shown = [
        {
            "message_id": m.message_id,
            "event_id": str(m.event_id),
            "member_id": m.member_id,
            "kind": m.kind,
            "content_type": m.content_type,
            "body": json.loads(m.body),
        }
        for m in messages
    ]
    return (json.dumps(shown, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


MESSAGES = routed_messages()


@pytest.mark.parametrize("event_type", sorted(MESSAGES))
def test_translation_matches_golden(event_type: str) -> None:
    messages = MESSAGES[event_type]
    for m in messages:
        assert canonical_json(json.loads(m.body)) == m.body
    path = GOLDEN / f"{event_type}.json"
    if UPDATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render(messages))
    assert path.exists(), f"missing {path}: run with JOKKO_UPDATE_GOLDEN=1"
    assert render(messages) == path.read_bytes()


def test_no_stale_golden_files() -> None:
    assert {p.stem for p in GOLDEN.glob("*.json")} == set(MESSAGES)
