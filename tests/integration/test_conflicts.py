"""The same event id with other content is a conflict, never a quiet duplicate (issue 17).

On both stores: the router keeps the first copy's effects untouched and dead-letters the other
copy under ``conflicting_duplicate``, with both digests and the differing fields named, and no
value (amount, NIN, phone) in the reason; a true redelivery stays a no-op.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from router.acks import adjudication_events
from router.processing import CONFLICTING_DUPLICATE, Outcome, Processor, RawRecord
from router.registry import outbound_adapters
from router.replay import replay
from router.store import DeadLetterRow, InboxRow, OutboxRow, Stage, TrailRow
from schemas import ClaimAdjudicatedPayload, dump_event
from schemas.examples import raw_examples

pytestmark = pytest.mark.integration


def contribution(**payload: Any) -> dict[str, Any]:
    doc = next(e for e in raw_examples() if e["event_type"] == "contribution.paid")
    return {**doc, "event_id": str(uuid.uuid4()), "payload": {**doc["payload"], **payload}}


def doubled(event: dict[str, Any]) -> dict[str, Any]:
    """The mutual's mistake of issue 17: 10,500 XOF re-sent as 21,000 under the same id."""
    return {
        **event,
        "payload": {
            **event["payload"],
            "amount": 21000,
            "allocation": {"health": 14000, "family": 3000, "old_age": 4000},
        },
    }


def record(offset: int, event: dict[str, Any]) -> RawRecord:
    return RawRecord("canonical", 0, offset, json.dumps(event).encode())


def effects(engine: Engine) -> list[tuple[str, str, int, bytes]]:
    with Session(engine) as s:
        return [
            (r.institution, r.event_id, r.member_seq, r.body)
            for r in s.scalars(select(OutboxRow).order_by(OutboxRow.id))
        ]


def conflicts(engine: Engine) -> list[DeadLetterRow]:
    with Session(engine) as s:
        return list(
            s.scalars(
                select(DeadLetterRow)
                .where(DeadLetterRow.reason == CONFLICTING_DUPLICATE)
                .order_by(DeadLetterRow.id)
            )
        )


def test_conflicting_copy_is_dead_lettered_and_the_first_stands(store: Engine) -> None:
    processor = Processor(store, outbound_adapters())
    first = contribution()
    eid = first["event_id"]
    assert processor.process(record(1, first)) == Outcome.ROUTED
    before = effects(store)
    assert len(before) == 3  # CMU, CSS, IPRES shares

    assert processor.process(record(2, doubled(first))) == Outcome.CONFLICT

    assert effects(store) == before, "the first copy's messages are untouched"
    [letter] = conflicts(store)
    assert letter.event_id == eid
    assert letter.source == "canonical"
    assert (letter.topic, letter.partition, letter.offset) == ("canonical", 0, 2)
    assert json.loads(letter.original)["payload"]["amount"] == 21000, "kept whole for review"
    with Session(store) as s:
        kept = s.get_one(InboxRow, eid).content_digest
        steps = s.scalars(select(TrailRow).where(TrailRow.event_id == eid)).all()
    assert kept is not None
    assert kept in letter.detail, "the applied copy's digest is named"
    other = letter.detail.split("this copy is not applied (digest ")[1][:64]
    assert len(other) == 64
    assert other != kept
    named = letter.detail.split("differing fields: ")[1].split(", ")
    assert named == [
        "payload.allocation.family",
        "payload.allocation.health",
        "payload.allocation.old_age",
        "payload.amount",
    ]
    for value in ("21000", "10500", "14000", "771234567", first["payload"]["payment_reference"]):
        assert value not in letter.detail, "no value in the reason"
    assert [t.stage for t in steps].count(Stage.CONFLICT) == 1
    assert next(t.detail for t in steps if t.stage == Stage.CONFLICT) == letter.detail


def test_true_redeliveries_stay_no_ops(store: Engine) -> None:
    processor = Processor(store, outbound_adapters())
    first = contribution()
    assert processor.process(record(1, first)) == Outcome.ROUTED
    before = effects(store)
    # The same fact in other bytes: keys reordered, a national phone form, recorded later.
    rewritten = {
        **dict(reversed(first.items())),
        "recorded_at": "2026-02-03T19:00:00Z",
        "payload": {**first["payload"], "payer_phone": "77 123 45 67"},
    }
    outcomes = processor.process_batch([record(1, first), record(5, rewritten)])
    assert outcomes == [Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert effects(store) == before
    assert conflicts(store) == []


def test_conflict_within_one_batch_and_its_redelivery_is_one_letter(store: Engine) -> None:
    processor = Processor(store, outbound_adapters())
    first, second = contribution(), contribution()
    batch = [record(1, first), record(2, doubled(first)), record(3, second)]
    assert processor.process_batch(batch) == [Outcome.ROUTED, Outcome.CONFLICT, Outcome.ROUTED]
    before = effects(store)
    assert sorted(e for _, e, _, _ in before) == sorted(3 * [first["event_id"], second["event_id"]])
    assert all(b"21000" not in body for *_, body in before), "the doubled copy went nowhere"
    # The router killed before its offsets were committed: the whole batch comes again.
    assert processor.process_batch(batch) == [
        Outcome.DUPLICATE,
        Outcome.CONFLICT,
        Outcome.DUPLICATE,
    ]
    assert effects(store) == before
    assert [d.offset for d in conflicts(store)] == [2], "one letter per conflicting record"


def test_replaying_a_conflict_does_not_apply_it(store: Engine) -> None:
    processor = Processor(store, outbound_adapters())
    first = contribution()
    processor.process(record(1, first))
    processor.process(record(2, doubled(first)))
    before = effects(store)
    [letter] = conflicts(store)
    assert replay(store, processor, [letter.id]) == {letter.id: Outcome.CONFLICT.value}
    assert effects(store) == before
    [still] = conflicts(store)
    assert still.replayed_at is None, "the letter stays open for the operator"


def test_a_cmu_decision_read_twice_is_one_content(store: Engine) -> None:
    """Jokko makes events too: CMU's decision, re-read after its first publication could not
    be confirmed, must not look like a conflict to the router."""
    doc = next(e for e in raw_examples() if e["event_type"] == "claim.adjudicated")
    payload = ClaimAdjudicatedPayload.model_validate_json(json.dumps(doc["payload"]))
    decided = datetime(2026, 3, 20, 9, tzinfo=UTC)
    row = OutboxRow(
        message_id=str(uuid.uuid4()),
        event_id=str(uuid.uuid4()),
        institution="cmu",
        member_id=doc["member_id"],
    )
    with Session(store) as s:
        [read_once] = adjudication_events(s, [(row, payload, decided)], datetime.now(UTC))
        time.sleep(0.01)
        [read_again] = adjudication_events(s, [(row, payload, decided)], datetime.now(UTC))
    assert read_once.event_id == read_again.event_id
    assert read_once.recorded_at != read_again.recorded_at
    assert read_once.occurred_at == decided
    processor = Processor(store, outbound_adapters())
    copies = [
        RawRecord("canonical", 0, n, dump_event(e)) for n, e in enumerate([read_once, read_again])
    ]
    assert processor.process_batch(copies[:1]) == [Outcome.ROUTED]
    assert processor.process_batch(copies[1:]) == [Outcome.DUPLICATE]
    assert conflicts(store) == []
