"""An event's status trail from the store, end to end, on both databases.

Three contributions go through the router (real adapters) and the per-institution delivery
workers; the institutions accept the first, reject the second (their reason is kept) and
never take the third (retries run out: dead). Each trail is asserted whole and in order, the
way the API reads it (by row id).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from adapters.base import Ack, AckStatus, Institution
from router.acks import apply_acks
from router.delivery import Delivery, DeliveryWorker, Parcel, Result, RetryPolicy
from router.processing import Outcome, Processor, RawRecord
from router.registry import outbound_adapters
from router.store import DeadLetterRow, DeliveryState, OutboxRow, Stage, TrailRow
from schemas import dump_event
from tests.factories import contributions

pytestmark = pytest.mark.integration

# Real time throughout (router, delivery and acks stamp the trail with it), so the back-off
# is a few milliseconds.
POLICY = RetryPolicy(max_attempts=3, initial_s=0.002, max_s=0.004, breaker_failures=100)


@dataclass
class Partner:
    """Takes every message (the ack comes later), except those of ``refused`` events, which
    fail as if the partner were unreachable for them."""

    institution: Institution
    refused: set[str]
    name: str = "scripted"
    attempts: Counter[str] = field(default_factory=Counter)

    def deliver(self, parcels: Sequence[Parcel]) -> list[Delivery]:
        out = []
        for p in parcels:
            self.attempts[p.message_id] += 1
            if p.event_id in self.refused:
                out.append(Delivery(p.message_id, Result.FAILED, reason_text="HTTP 503"))
            else:
                out.append(Delivery(p.message_id, Result.SENT))
        return out

    def close(self) -> None:
        pass


def trail(engine: Engine, event_id: str) -> list[tuple[str, str | None, str | None]]:
    with Session(engine) as s:
        rows = s.scalars(
            select(TrailRow).where(TrailRow.event_id == event_id).order_by(TrailRow.id)
        )
        found = list(rows)
    times = [r.at for r in found]
    assert times == sorted(times), "the trail's times follow its order"
    return [(r.stage, r.institution, r.detail) for r in found]


def messages(engine: Engine, event_id: str) -> dict[str, OutboxRow]:
    with Session(engine) as s:
        rows = s.scalars(select(OutboxRow).where(OutboxRow.event_id == event_id))
        return {r.institution: r for r in rows}


def test_trails_to_accepted_rejected_and_dead_are_whole_and_in_order(store: Engine) -> None:
    events = contributions(3, 1)
    accepted, rejected, doomed = (str(e.event_id) for e in events)
    processor = Processor(store, outbound_adapters())
    records = [RawRecord("jokko.events.v1", 0, i, dump_event(e)) for i, e in enumerate(events)]
    assert processor.process_batch(records) == [Outcome.ROUTED] * 3

    insts = list(Institution)
    for inst in insts:  # one institution after the other, so the expected trail is exact
        worker = DeliveryWorker(store, Partner(inst, {doomed}), policy=POLICY)
        for _ in range(10 * POLICY.max_attempts):
            if messages(store, doomed)[inst.value].state == DeliveryState.DEAD:
                break
            worker.deliver_once()
            time.sleep(POLICY.max_s)
    for inst in insts:
        sent = messages(store, accepted)[inst.value].message_id
        refused = messages(store, rejected)[inst.value].message_id
        report = apply_acks(
            store,
            inst,
            [
                Ack(sent, inst, AckStatus.ACCEPTED, institution_ref=f"{inst.value}-1"),
                Ack(refused, inst, AckStatus.REJECTED, "R042", "NIN inconnu"),
            ],
            channel="kafka",
        )
        assert report.applied == 2

    routed = ",".join(i.value for i in insts)
    head = [(Stage.RECEIVED, None, None), (Stage.ROUTED, None, routed)]
    queued = [(Stage.QUEUED, i.value, None) for i in insts]
    published = [(Stage.PUBLISHED, i.value, None) for i in insts]
    assert trail(store, accepted) == [
        *head,
        *queued,
        *published,
        *[(Stage.ACCEPTED, i.value, None) for i in insts],
    ]
    assert trail(store, rejected) == [
        *head,
        *queued,
        *published,
        *[(Stage.REJECTED, i.value, "R042") for i in insts],
    ]
    retries = POLICY.max_attempts - 1
    assert trail(store, doomed) == [
        *head,
        *queued,
        *[
            stage
            for i in insts
            for stage in [
                *[(Stage.RETRYING, i.value, "HTTP 503")] * retries,
                (Stage.DEAD, i.value, "retries_exhausted: HTTP 503"),
            ]
        ],
    ]

    for row in messages(store, accepted).values():
        assert (row.state, row.institution_ref) == (DeliveryState.ACCEPTED, f"{row.institution}-1")
    for row in messages(store, rejected).values():
        assert (row.state, row.reason_code, row.reason_text) == (
            DeliveryState.REJECTED,
            "R042",
            "NIN inconnu",
        )
    with Session(store) as s:
        dead = s.scalars(select(DeadLetterRow).order_by(DeadLetterRow.id)).all()
    assert [(d.event_id, d.institution, d.reason, d.attempts) for d in dead] == [
        (doomed, i.value, "retries_exhausted", POLICY.max_attempts) for i in insts
    ]
    assert {r.state for r in messages(store, doomed).values()} == {DeliveryState.DEAD}
