"""What the relay writes for a batch, row by row, on both stores.

The delivery worker and the ack path write a batch as a few set-based statements
(``router.bulk``); these tests pin the resulting outbox rows, dead letters, anomalies and
trail rows (in the id order the API reads them) for batches that mix every outcome, so that
grouping rows by statement cannot give one row another's values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from adapters.base import Ack, AckStatus, Institution
from router.acks import apply_acks
from router.delivery import Delivery, DeliveryWorker, Parcel, Result, RetryPolicy
from router.processing import Processor, RawRecord
from router.store import AckAnomalyRow, DeadLetterRow, OutboxRow, TrailRow
from schemas import dump_event
from tests.factories import contributions
from tests.fakes.echo_adapter import echo_adapters

pytestmark = pytest.mark.integration

T1 = datetime(2026, 11, 28, 12, tzinfo=UTC)
T2 = T1 + timedelta(seconds=5)
# No jitter: the back-off after the first failure is exactly one second.
POLICY = RetryPolicy(max_attempts=2, initial_s=1, max_s=1, jitter_s=0, breaker_failures=100)


def load(engine: Engine, members: int) -> list[OutboxRow]:
    """One contribution per member; the CMU rows, in id order."""
    events = contributions(members, 1, seed="writes")
    Processor(engine, echo_adapters()).process_batch(
        [RawRecord("canonical", 0, i, dump_event(e)) for i, e in enumerate(events)]
    )
    return outbox(engine)


def outbox(engine: Engine) -> list[OutboxRow]:
    with Session(engine) as s:
        return list(
            s.scalars(
                select(OutboxRow).where(OutboxRow.institution == "cmu").order_by(OutboxRow.id)
            )
        )


def state(row: OutboxRow) -> tuple[Any, ...]:
    return (
        row.state,
        row.attempts,
        row.sent_at,
        row.acked_at,
        row.next_attempt_at,
        row.reason_code,
        row.reason_text,
        row.last_error,
        row.batch_ref,
        row.institution_ref,
    )


def trail_at(engine: Engine, at: datetime) -> list[tuple[str, str, str | None, datetime]]:
    with Session(engine) as s:
        rows = s.scalars(select(TrailRow).where(TrailRow.at == at).order_by(TrailRow.id))
        return [(r.message_id or "", r.stage, r.detail, r.at) for r in rows]


@dataclass
class Answers:
    """Answers each message with what ``script`` gives for its message id and attempt."""

    script: dict[tuple[str, int], Delivery]
    institution: Institution = Institution.CMU
    name: str = "scripted"

    def __post_init__(self) -> None:
        self.tries: dict[str, int] = {}

    def deliver(self, parcels: Sequence[Parcel]) -> list[Delivery]:
        out = []
        for p in parcels:
            n = self.tries[p.message_id] = self.tries.get(p.message_id, 0) + 1
            out.append(self.script[(p.message_id, n)])
        return out

    def close(self) -> None:
        pass


def test_a_batch_of_every_outcome_leaves_each_row_its_own_values(store: Engine) -> None:
    rows = load(store, members=12)
    ids = [r.message_id for r in rows]
    script: dict[tuple[str, int], Delivery] = {}
    for i, m in enumerate(ids):
        script[(m, 1)] = [
            Delivery(m, Result.ACCEPTED, institution_ref=f"CMU-{i}"),
            Delivery(m, Result.REJECTED, "R042", f"not covered {i}", f"CMU-{i}"),
            Delivery(m, Result.FAILED, reason_text="HTTP 503", batch_ref=f"b-{i}"),
            Delivery(m, Result.UNDELIVERABLE, "invalid_message", f"bad body {i}"),
            Delivery(m, Result.SENT, batch_ref="file-1"),
            Delivery(m, Result.FAILED, reason_text=f"HTTP 502 {i}"),
        ][i % 6]
        script[(m, 2)] = (
            Delivery(m, Result.ACCEPTED, institution_ref=f"CMU-late-{i}")
            if i % 6 == 2
            else Delivery(m, Result.FAILED, reason_text=f"HTTP 504 {i}")
        )
    clock = [T1]
    worker = DeliveryWorker(store, Answers(script), policy=POLICY, clock=lambda: clock[0])

    assert worker.deliver_once() == 6, "accepted, rejected and sent count; failures do not"
    after = {r.message_id: r for r in outbox(store)}
    retry_at = T1 + timedelta(seconds=1)
    for i, m in enumerate(ids):
        assert (
            state(after[m])
            == [
                ("accepted", 1, T1, T1, None, None, None, None, None, f"CMU-{i}"),
                ("rejected", 1, T1, T1, None, "R042", f"not covered {i}", None, None, f"CMU-{i}"),
                ("pending", 1, None, None, retry_at, None, None, "HTTP 503", f"b-{i}", None),
                ("dead", 1, None, None, None, "invalid_message", f"bad body {i}", None, None, None),
                ("sent", 1, T1, None, None, None, None, None, "file-1", None),
                ("pending", 1, None, None, retry_at, None, None, f"HTTP 502 {i}", None, None),
            ][i % 6]
        ), (i, m)
    failures = [
        (m, "retrying", "HTTP 503", T1)
        if i % 6 == 2
        else (m, "dead", f"invalid_message: bad body {i}", T1)
        if i % 6 == 3
        else (m, "retrying", f"HTTP 502 {i}", T1)
        for i, m in enumerate(ids)
        if i % 6 in (2, 3, 5)
    ]
    delivered = [
        (
            m,
            ["accepted", "rejected", "", "", "published"][i % 6],
            "R042" if i % 6 == 1 else None,
            T1,
        )
        for i, m in enumerate(ids)
        if i % 6 in (0, 1, 4)
    ]
    assert trail_at(store, T1) == failures + delivered, "failures first, then deliveries"

    clock[0] = T2  # the two failed rows are due again: one goes, one runs out of attempts
    assert worker.deliver_once() == 2
    after = {r.message_id: r for r in outbox(store)}
    for i, m in enumerate(ids):
        want: tuple[Any, ...]
        if i % 6 == 2:
            want = ("accepted", 2, T2, T2, None, None, None, None, f"b-{i}", f"CMU-late-{i}")
        elif i % 6 == 5:
            want = ("dead", 2, None, None, None, None, f"HTTP 504 {i}", f"HTTP 504 {i}", None, None)
        else:
            continue
        assert state(after[m]) == want, (i, m)
    assert trail_at(store, T2) == [
        (m, "dead", f"retries_exhausted: HTTP 504 {i}", T2) for i, m in enumerate(ids) if i % 6 == 5
    ] + [(m, "accepted", None, T2) for i, m in enumerate(ids) if i % 6 == 2]

    with Session(store) as s:
        dead = [
            (d.message_id, d.reason, d.detail, d.attempts, d.source, d.original, d.created_at)
            for d in s.scalars(select(DeadLetterRow).order_by(DeadLetterRow.id))
        ]
    bodies = {r.message_id: r.body for r in rows}
    assert dead == [
        (m, "invalid_message", f"bad body {i}", 1, "delivery:scripted", bodies[m], T1)
        for i, m in enumerate(ids)
        if i % 6 == 3
    ] + [
        (m, "retries_exhausted", f"HTTP 504 {i}", 2, "delivery:scripted", bodies[m], T2)
        for i, m in enumerate(ids)
        if i % 6 == 5
    ]


def test_acks_of_one_batch_apply_once_each_with_their_own_values(store: Engine) -> None:
    rows = load(store, members=8)
    ids = [r.message_id for r in rows]
    sent = {m: Delivery(m, Result.SENT) for m in ids[:6]}
    sent[ids[5]] = Delivery(ids[5], Result.UNDELIVERABLE, "invalid_message", "bad")
    worker = DeliveryWorker(
        store,
        Answers({(m, 1): d for m, d in sent.items()}),
        batch_size=6,
        clock=lambda: T1,
    )
    worker.deliver_once()  # 0-4 sent, 5 dead; 6 and 7 still pending

    def ack(m: str, status: AckStatus, code: str | None = None, ref: str | None = None) -> Ack:
        text = f"text {code}" if code else None
        return Ack(m, Institution.CMU, status, code, text, institution_ref=ref)

    acked, rejected = AckStatus.ACCEPTED, AckStatus.REJECTED
    unknown = "00000000-0000-4000-8000-000000000001"
    acks = [
        ack(ids[0], acked, ref="A0"),
        ack(ids[1], rejected, "R1", ref="A1"),
        ack(ids[0], acked, ref="A0-again"),  # the same answer again: a duplicate
        ack(ids[1], acked, ref="A1-other"),  # contradicts the first: kept as an anomaly
        ack(ids[2], rejected, "R2"),
        ack(ids[5], acked, ref="A5"),  # Jokko had given up on it
        ack(ids[6], acked, ref="A6"),  # before the relay recorded sending it
        ack(unknown, acked),
    ]
    report = apply_acks(store, Institution.CMU, acks, channel="kafka")
    assert (report.applied, report.duplicates) == (5, 1)
    assert dict(report.anomalies) == {
        "conflicting_ack": 1,
        "ack_while_dead": 1,
        "ack_while_pending": 1,
        "unknown_message": 1,
    }
    after = {r.message_id: r for r in outbox(store)}
    now = after[ids[0]].acked_at
    assert now is not None
    assert now > T1
    assert [state(after[m]) for m in ids] == [
        ("accepted", 1, T1, now, None, None, None, None, None, "A0"),
        ("rejected", 1, T1, now, None, "R1", "text R1", None, None, "A1"),
        ("rejected", 1, T1, now, None, "R2", "text R2", None, None, None),
        ("sent", 1, T1, None, None, None, None, None, None, None),
        ("sent", 1, T1, None, None, None, None, None, None, None),
        ("accepted", 1, None, now, None, None, None, None, None, "A5"),
        ("accepted", 0, None, now, None, None, None, None, None, "A6"),
        ("pending", 0, None, None, None, None, None, None, None, None),
    ]
    assert trail_at(store, now) == [
        (ids[0], "accepted", None, now),
        (ids[1], "rejected", "R1", now),
        (ids[2], "rejected", "R2", now),
        (ids[5], "accepted", None, now),
        (ids[6], "accepted", None, now),
    ]
    with Session(store) as s:
        anomalies = [
            (a.message_id, a.kind, a.status, a.detail, a.channel, a.received_at)
            for a in s.scalars(select(AckAnomalyRow).order_by(AckAnomalyRow.id))
        ]
    assert [a[:4] for a in anomalies] == [
        (ids[1], "conflicting_ack", "accepted", "already rejected; the first answer stands"),
        (ids[5], "ack_while_dead", "accepted", "applied"),
        (ids[6], "ack_while_pending", "accepted", "applied"),
        (unknown, "unknown_message", "accepted", "no message with this id was sent"),
    ]
    assert {a[4:] for a in anomalies} == {("kafka", now)}

    again = apply_acks(store, Institution.CMU, acks, channel="kafka")
    assert (again.applied, again.duplicates) == (0, 6), "applying the same acks changes nothing"
