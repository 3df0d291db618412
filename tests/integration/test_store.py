"""The router's store on both databases: migrations, and idempotent inbox + outbox."""

from __future__ import annotations

from collections import Counter

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from router.processing import Outcome, Processor, RawRecord
from router.routing import destinations
from router.store import Base, DeadLetterRow, InboxRow, OutboxRow, Stage, TrailRow
from schemas import MemberEnrolled, dump_event
from schemas.examples import load_examples
from tests.contract.suite import profiles
from tests.fakes.echo_adapter import echo_adapters

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(store: Engine) -> Engine:
    """Every test here runs on SQLite and on PostgreSQL (the ``store`` fixture)."""
    return store


def records(topic: str = "jokko.events.v1") -> list[RawRecord]:
    return [RawRecord(topic, 0, i, dump_event(e)) for i, e in enumerate(load_examples())]


def count(engine: Engine, model: type[Base]) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def test_migrations_build_exactly_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_every_event_is_routed_once_and_duplicates_have_no_effect(engine: Engine) -> None:
    processor = Processor(engine, echo_adapters())
    recs = records()
    assert {processor.process(r) for r in recs} == {Outcome.ROUTED}
    events = load_examples()
    expected = sum(
        len(destinations(e, profiles(events[: i + 1]).get(e.member_id)))
        for i, e in enumerate(events)
    )
    assert count(engine, OutboxRow) == expected
    assert count(engine, InboxRow) == len(recs)

    # the same records twice more, as after a crash before the offset commit
    for _ in range(2):
        assert {processor.process(r) for r in recs} == {Outcome.DUPLICATE}
    assert count(engine, OutboxRow) == expected
    assert count(engine, InboxRow) == len(recs)
    assert count(engine, DeadLetterRow) == 0


def test_per_member_sequence_follows_the_order_of_events(engine: Engine) -> None:
    processor = Processor(engine, echo_adapters())
    for r in records():
        processor.process(r)
    with Session(engine) as s:
        rows = s.execute(
            select(OutboxRow.institution, OutboxRow.member_id, OutboxRow.member_seq).order_by(
                OutboxRow.id
            )
        ).all()
    seen: Counter[tuple[str, str]] = Counter()
    for inst, member, seq in rows:
        seen[(inst, member)] += 1
        assert seq == seen[(inst, member)]


def test_status_trail_records_received_routed_and_queued(engine: Engine) -> None:
    processor = Processor(engine, echo_adapters())
    enrolment = next(e for e in load_examples() if isinstance(e, MemberEnrolled))
    processor.process(RawRecord("t", 0, 0, dump_event(enrolment)))
    with Session(engine) as s:
        trail = s.execute(
            select(TrailRow.stage, TrailRow.institution)
            .where(TrailRow.event_id == str(enrolment.event_id))
            .order_by(TrailRow.id)
        ).all()
    stages = [t.stage for t in trail]
    assert stages[:2] == [Stage.RECEIVED, Stage.ROUTED]
    queued = {t.institution for t in trail if t.stage == Stage.QUEUED}
    member = profiles([enrolment])[enrolment.member_id]
    assert queued == {i.value for i in destinations(enrolment, member)}


@pytest.mark.parametrize(
    "value",
    [b"not json", b"{}", b'{"event_type": "member.exploded"}', b"\xff\xfe", b"[]"],
)
def test_poison_is_dead_lettered_once_and_never_blocks(engine: Engine, value: bytes) -> None:
    processor = Processor(engine, echo_adapters())
    poison = RawRecord("jokko.events.v1", 3, 41, value)
    assert processor.process(poison) == Outcome.DEAD_LETTERED
    assert processor.process(poison) == Outcome.DEAD_LETTERED  # re-delivered after a crash
    good = records()[0]
    assert processor.process(good) == Outcome.ROUTED
    with Session(engine) as s:
        dead = s.scalars(select(DeadLetterRow)).one()
    assert (dead.reason, dead.original, dead.partition, dead.offset) == (
        "invalid_event",
        value,
        3,
        41,
    )


def test_member_event_before_enrolment_is_dead_lettered(engine: Engine) -> None:
    processor = Processor(engine, echo_adapters())
    update = next(e for e in load_examples() if e.event_type == "member.updated")
    assert processor.process(RawRecord("t", 0, 7, dump_event(update))) == Outcome.DEAD_LETTERED
    with Session(engine) as s:
        assert s.scalars(select(DeadLetterRow.reason)).one() == "member_unknown"
        # nothing half-done: the inbox row was rolled back with the rest
        assert s.get(InboxRow, str(update.event_id)) is None


def test_replay_re_drives_a_dead_letter_once(engine: Engine) -> None:
    from router.replay import replay

    processor = Processor(engine, echo_adapters())
    events = load_examples()
    update = next(e for e in events if e.event_type == "member.updated")
    enrolment = next(
        e for e in events if isinstance(e, MemberEnrolled) and e.member_id == update.member_id
    )
    assert processor.process(RawRecord("t", 0, 1, dump_event(update))) == Outcome.DEAD_LETTERED
    with Session(engine) as s:
        dead_id = s.scalars(select(DeadLetterRow.id)).one()
    assert processor.process(RawRecord("t", 0, 2, dump_event(enrolment))) == Outcome.ROUTED
    before = count(engine, OutboxRow)

    assert replay(engine, processor, [dead_id, 999_999]) == {
        dead_id: "routed",
        999_999: "unknown",
    }
    after_first = count(engine, OutboxRow)
    assert after_first > before
    # replaying again is harmless: the inbox recognises the event
    assert replay(engine, processor, [dead_id]) == {dead_id: "duplicate"}
    assert count(engine, OutboxRow) == after_first
    with Session(engine) as s:
        row = s.get_one(DeadLetterRow, dead_id)
        assert row.replayed_at is not None


def test_one_batch_mixing_new_duplicate_poison_and_unknown_member(engine: Engine) -> None:
    processor = Processor(engine, echo_adapters())
    events = load_examples()
    enrolment = next(e for e in events if isinstance(e, MemberEnrolled))
    orphan = next(e for e in events if e.event_type == "member.status_changed")
    recs = [
        RawRecord("t", 0, 0, dump_event(enrolment)),
        RawRecord("t", 0, 1, b"garbage"),
        RawRecord("t", 0, 2, dump_event(enrolment)),  # the same event again, same batch
        RawRecord("t", 0, 3, dump_event(orphan)),  # its member was never enrolled here
    ]
    assert processor.process_batch(recs) == [
        Outcome.ROUTED,
        Outcome.DEAD_LETTERED,
        Outcome.DUPLICATE,
        Outcome.DEAD_LETTERED,
    ]
    assert count(engine, InboxRow) == 1
    with Session(engine) as s:
        reasons = sorted(s.scalars(select(DeadLetterRow.reason)))
        routed = s.get_one(InboxRow, str(enrolment.event_id)).destinations
    assert reasons == ["invalid_event", "member_unknown"]
    member = profiles([enrolment])[enrolment.member_id]
    assert routed == ",".join(i.value for i in destinations(enrolment, member))
    # the whole batch again: nothing new, dead letters not doubled
    assert processor.process_batch(recs) == [
        Outcome.DUPLICATE,
        Outcome.DEAD_LETTERED,
        Outcome.DUPLICATE,
        Outcome.DEAD_LETTERED,
    ]
    assert count(engine, DeadLetterRow) == 2


def test_a_duplicate_in_a_batch_does_not_route_the_new_events_after_it(engine: Engine) -> None:
    """The batch is routed on the guess that all of it is new; a re-delivered enrolment
    must not take the member back to the profile it had before a later update."""
    processor = Processor(engine, echo_adapters())
    events = load_examples()
    update = next(e for e in events if e.event_type == "member.updated")
    enrolment = next(
        e for e in events if isinstance(e, MemberEnrolled) and e.member_id == update.member_id
    )
    status = next(
        e
        for e in events
        if e.event_type == "member.status_changed" and e.member_id == update.member_id
    )
    assert processor.process(RawRecord("t", 0, 0, dump_event(enrolment))) == Outcome.ROUTED
    assert processor.process(RawRecord("t", 0, 1, dump_event(update))) == Outcome.ROUTED
    batch = [
        RawRecord("t", 0, 0, dump_event(enrolment)),  # re-delivered after a crash
        RawRecord("t", 0, 2, dump_event(status)),
    ]
    assert processor.process_batch(batch) == [Outcome.DUPLICATE, Outcome.ROUTED]
    member = profiles([enrolment, update])[update.member_id]
    expected = [i.value for i in destinations(status, member)]
    assert expected != [
        i.value for i in destinations(status, profiles([enrolment])[update.member_id])
    ], "the example update must change where the member's events go"
    with Session(engine) as s:
        routed = s.get_one(InboxRow, str(status.event_id)).destinations
        sent_to = s.scalars(
            select(OutboxRow.institution)
            .where(OutboxRow.event_id == str(status.event_id))
            .order_by(OutboxRow.id)
        ).all()
    assert routed == ",".join(expected)
    assert sorted(sent_to) == sorted(expected)
