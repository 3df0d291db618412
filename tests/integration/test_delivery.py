"""Per-institution delivery on a real store: retries on a schedule, dead letters, order, isolation.

The channels here are scripted fakes (real objects answering per message); the channels that
talk to Kafka, HTTP and files are tested against the real things elsewhere. Time is a
controllable clock so back-off is exercised without sleeping.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from adapters.base import Institution
from router.delivery import (
    ChannelUnavailable,
    Delivery,
    DeliveryWorker,
    Parcel,
    Result,
    RetryPolicy,
)
from router.processing import Processor, RawRecord
from router.replay import replay
from router.store import DeadLetterRow, DeliveryState, OutboxRow, Stage, TrailRow
from schemas import dump_event
from tests.factories import contributions
from tests.fakes.echo_adapter import echo_adapters

pytestmark = pytest.mark.integration


def load(engine: Engine, members: int, per_member: int) -> None:
    processor = Processor(engine, echo_adapters())
    events = contributions(members, per_member)
    processor.process_batch(
        [RawRecord("canonical", 0, i, dump_event(e)) for i, e in enumerate(events)]
    )


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2026, 11, 28, 12, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class ScriptedChannel:
    """Answers each message with what ``decide`` says; remembers every attempt."""

    institution: Institution
    decide: Callable[[Parcel, int], Result] = lambda _p, _n: Result.SENT
    down: bool = False
    name: str = "scripted"
    attempts: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    delivered: list[Parcel] = field(default_factory=list)

    def deliver(self, parcels: Sequence[Parcel]) -> list[Delivery]:
        self.calls += 1
        if self.down:
            raise ChannelUnavailable("partner unreachable")
        out = []
        failed_members: set[str] = set()
        for p in parcels:
            self.attempts[p.message_id] += 1
            result = self.decide(p, self.attempts[p.message_id])
            if p.member_id in failed_members:
                result = Result.FAILED  # a channel never sends past a member's failure
            if result == Result.FAILED:
                failed_members.add(p.member_id)
            else:
                self.delivered.append(p)
            reason = "R042" if result == Result.REJECTED else None
            out.append(Delivery(p.message_id, result, reason_code=reason, reason_text=reason))
        return out

    def close(self) -> None:
        pass


FAST = RetryPolicy(max_attempts=4, initial_s=1, max_s=8, jitter_s=0.5, breaker_failures=3)


def rows(engine: Engine, institution: Institution) -> list[OutboxRow]:
    with Session(engine) as s:
        return list(
            s.scalars(
                select(OutboxRow).where(OutboxRow.institution == institution).order_by(OutboxRow.id)
            )
        )


def drain(worker: DeliveryWorker, clock: Clock, rounds: int = 200) -> None:
    for _ in range(rounds):
        if worker.deliver_once() == 0:
            clock.advance(10)


def test_a_failing_message_is_retried_later_then_delivered(store: Engine) -> None:
    load(store, members=3, per_member=2)
    clock = Clock()
    first = rows(store, Institution.CSS)[0].message_id
    channel = ScriptedChannel(
        Institution.CSS,
        decide=lambda p, n: Result.FAILED if p.message_id == first and n <= 2 else Result.SENT,
    )
    worker = DeliveryWorker(store, channel, policy=FAST, clock=clock)
    worker.deliver_once()
    row = rows(store, Institution.CSS)[0]
    assert row.state == DeliveryState.PENDING
    assert row.attempts == 1
    assert row.next_attempt_at is not None
    assert row.next_attempt_at > clock.now
    worker.deliver_once()  # not due yet: nothing re-tried
    assert channel.attempts[first] == 1
    drain(worker, clock)
    final = rows(store, Institution.CSS)
    assert all(r.state == DeliveryState.SENT for r in final)
    assert final[0].attempts == 3
    assert channel.attempts[first] == 3
    with Session(store) as s:
        retried = s.scalars(
            select(TrailRow.stage).where(
                TrailRow.message_id == first, TrailRow.stage == Stage.RETRYING
            )
        ).all()
    assert len(retried) == 2


def test_back_off_grows_and_is_capped() -> None:
    policy = RetryPolicy(initial_s=1, max_s=60, jitter_s=0.5)
    delays = [policy.delay(n) for n in range(1, 12)]
    assert delays[0] < 2
    assert 4 <= delays[3] <= 8.5
    assert all(d <= 60 for d in delays)
    assert delays[-1] >= 59
    assert len({round(policy.delay(3), 6) for _ in range(20)}) > 1, "jittered"


def test_exhausted_retries_become_a_dead_letter_with_reason_and_attempts(store: Engine) -> None:
    load(store, members=2, per_member=1)
    clock = Clock()
    doomed = rows(store, Institution.IPRES)[0]
    channel = ScriptedChannel(
        Institution.IPRES,
        decide=lambda p, _n: Result.FAILED if p.message_id == doomed.message_id else Result.SENT,
    )
    drain(DeliveryWorker(store, channel, policy=FAST, clock=clock), clock)
    after = {r.message_id: r for r in rows(store, Institution.IPRES)}
    assert after[doomed.message_id].state == DeliveryState.DEAD
    assert channel.attempts[doomed.message_id] == FAST.max_attempts
    with Session(store) as s:
        dead = s.scalars(select(DeadLetterRow)).one()
    assert (dead.reason, dead.message_id, dead.institution) == (
        "retries_exhausted",
        doomed.message_id,
        "ipres",
    )
    assert dead.attempts == FAST.max_attempts
    assert dead.original == doomed.body
    # the member's later message left once the dead one was out of the way
    later = [r for r in after.values() if r.member_id == doomed.member_id and r.id > doomed.id]
    assert all(r.state == DeliveryState.SENT for r in later)


def test_undeliverable_is_dead_at_once_and_rejections_keep_the_reason(store: Engine) -> None:
    load(store, members=2, per_member=2)
    clock = Clock()
    cmu = rows(store, Institution.CMU)
    verdict = {cmu[0].message_id: Result.UNDELIVERABLE, cmu[1].message_id: Result.REJECTED}
    channel = ScriptedChannel(
        Institution.CMU, decide=lambda p, _n: verdict.get(p.message_id, Result.ACCEPTED)
    )
    drain(DeliveryWorker(store, channel, policy=FAST, clock=clock), clock)
    states = {r.message_id: (r.state, r.reason_code) for r in rows(store, Institution.CMU)}
    assert states[cmu[0].message_id] == (DeliveryState.DEAD, None)
    assert states[cmu[1].message_id] == (DeliveryState.REJECTED, "R042")
    assert Counter(s for s, _ in states.values())[DeliveryState.ACCEPTED] == len(cmu) - 2
    assert channel.attempts[cmu[0].message_id] == 1


def test_a_members_later_messages_wait_for_its_failed_one(store: Engine) -> None:
    load(store, members=4, per_member=5)
    clock = Clock()
    css = rows(store, Institution.CSS)
    stuck = css[0]
    channel = ScriptedChannel(
        Institution.CSS,
        decide=lambda p, n: (
            Result.FAILED if p.message_id == stuck.message_id and n < 3 else (Result.SENT)
        ),
    )
    worker = DeliveryWorker(store, channel, policy=FAST, clock=clock)
    worker.deliver_once()
    worker.deliver_once()
    sent = {p.member_id for p in channel.delivered}
    assert stuck.member_id not in sent, "nothing of the member passes its failed message"
    assert len(sent) == 3, "other members are not held up"
    drain(worker, clock)
    seqs: dict[str, list[int]] = defaultdict(list)
    for p in channel.delivered:
        seqs[p.member_id].append(p.member_seq)
    assert all(s == sorted(s) == list(range(1, 6)) for s in seqs.values()), seqs


def test_a_dead_partner_is_probed_not_hammered_and_others_flow(store: Engine) -> None:
    load(store, members=10, per_member=10)
    clock = Clock()
    css = ScriptedChannel(Institution.CSS, down=True)
    cmu = ScriptedChannel(Institution.CMU)
    policy = RetryPolicy(
        max_attempts=1000, initial_s=0.001, max_s=0.001, breaker_failures=3, breaker_reset_s=3600
    )
    css_worker = DeliveryWorker(store, css, policy=policy, batch_size=20, clock=clock)
    cmu_worker = DeliveryWorker(store, cmu, policy=policy, batch_size=20, clock=clock)
    for _ in range(50):
        css_worker.deliver_once()
        cmu_worker.deliver_once()
        clock.advance(1)
    assert css.calls == policy.breaker_failures, "circuit open: no further requests"
    assert sum(r.attempts for r in rows(store, Institution.CSS)) == 3 * 20
    assert all(r.state == DeliveryState.SENT for r in rows(store, Institution.CMU))
    assert all(r.state == DeliveryState.PENDING for r in rows(store, Institution.CSS))


def test_an_open_circuit_probes_with_one_message_and_closes_on_success(store: Engine) -> None:
    load(store, members=5, per_member=4)
    clock = Clock()
    css = ScriptedChannel(Institution.CSS, down=True)
    policy = RetryPolicy(
        max_attempts=1000, initial_s=0.001, max_s=0.001, breaker_failures=2, breaker_reset_s=1.0
    )
    worker = DeliveryWorker(store, css, policy=policy, batch_size=50, clock=clock)
    worker.deliver_once()
    clock.advance(1)
    worker.deliver_once()
    assert worker.breaker.current_state == "open"
    clock.advance(1)
    assert worker.deliver_once() == 0, "open: nothing tried"
    assert css.calls == 2
    css.down = False
    time.sleep(1.05)  # pybreaker times its reset with the real clock (1 s: a loaded machine)
    assert worker.deliver_once() == 1, "half-open: a single message probes"
    assert worker.breaker.current_state == "closed"
    drain(worker, clock)
    assert all(r.state == DeliveryState.SENT for r in rows(store, Institution.CSS))


def test_replaying_a_dead_delivery_gives_it_a_new_budget_once(store: Engine) -> None:
    load(store, members=2, per_member=1)
    clock = Clock()
    doomed = rows(store, Institution.CSS)[0].message_id
    failing = {doomed}
    channel = ScriptedChannel(
        Institution.CSS,
        decide=lambda p, _n: Result.FAILED if p.message_id in failing else Result.SENT,
    )
    worker = DeliveryWorker(store, channel, policy=FAST, clock=clock)
    drain(worker, clock)
    with Session(store) as s:
        dead_id = s.scalars(select(DeadLetterRow.id)).one()
    failing.clear()  # the partner fixed its side; the operator replays
    processor = Processor(store, echo_adapters())
    assert replay(store, processor, [dead_id]) == {dead_id: "redelivered"}
    assert replay(store, processor, [dead_id]) == {dead_id: "already_redelivered"}
    worker.breaker.close()  # its failures had opened the circuit; the operator's fix closed it
    drain(worker, clock)
    row = next(r for r in rows(store, Institution.CSS) if r.message_id == doomed)
    assert row.state == DeliveryState.SENT
    assert row.attempts == 1, "a fresh budget, counted from the replay"
    assert channel.attempts[doomed] == FAST.max_attempts + 1
    with Session(store) as s:
        assert s.get_one(DeadLetterRow, dead_id).replayed_at is not None
