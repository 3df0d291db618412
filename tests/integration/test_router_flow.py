"""The router and relay in-process against the real broker and PostgreSQL: duplicates, replays
from offset 0, poison records and consumer lag, and one institution's topic failing."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.base import Institution
from adapters.cmu import systems
from router.acks import AckConsumer
from router.broker import admin_client, idempotent_producer
from router.canonical import publish_events
from router.processing import Outcome, RawRecord
from router.relay import pending_by_institution
from router.sealing import DEAD_LETTER_AAD, open_original
from router.store import DeadLetterRow, DeliveryState, InboxRow, OutboxRow
from router.worker import RouterWorker
from schemas import dump_event
from schemas.examples import load_examples
from services.bootstrap import Jokko, bootstrap
from services.settings import Settings
from tests.factories import contributions
from tests.integration.test_relay import assert_once_and_in_member_order, read_outbound
from tests.unit.test_cmu_acks import claim_response

pytestmark = pytest.mark.integration

POISON = [b"not json", b'{"event_type": "member.exploded"}', b"", b"\xff\xfe", b"[]"]


@pytest.fixture
def jokko(jokko_settings: Callable[..., Settings]) -> Iterator[Jokko]:
    app = bootstrap(jokko_settings(router_batch_size=50, relay_batch_size=100))
    try:
        yield app
    finally:
        app.engine.dispose()


def route_until_idle(
    router: RouterWorker, expected: int, quiet_polls: int = 3, timeout_s: float = 60
) -> int:
    """Poll until ``expected`` records were handled (joining the group takes a moment) and
    nothing more came for a few polls; returns the records handled."""
    handled, quiet = 0, 0
    deadline = time.monotonic() + timeout_s
    while (handled < expected or quiet < quiet_polls) and time.monotonic() < deadline:
        n = router.poll_once(timeout_ms=300)
        handled += n
        quiet = 0 if n else quiet + 1
    return handled


def outbox_per_institution(app: Jokko) -> Counter[str]:
    with Session(app.engine) as s:
        return Counter(s.scalars(select(OutboxRow.institution)))


def lag(app: Jokko, group: str) -> int:
    """Records of the canonical topic not yet committed by ``group``."""
    admin: KafkaAdminClient = admin_client(app.settings.kafka_bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=app.settings.kafka_bootstrap)
    try:
        committed = admin.list_group_offsets(group)[group]
        parts = [TopicPartition(app.topics.canonical, p) for p in range(app.topics.partitions)]
        ends = consumer.end_offsets(parts)
        return sum(ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in parts)
    finally:
        consumer.close()
        admin.close()


def test_each_event_three_times_then_replayed_from_offset_zero_gives_one_row_each(
    jokko: Jokko,
) -> None:
    events = contributions(12, 5, seed=uuid.uuid4().hex[:6])
    producer = idempotent_producer(jokko.settings.kafka_bootstrap)
    try:
        for _ in range(3):  # the mutual's agent retried twice: three copies of every event
            publish_events(producer, jokko.topics.canonical, events, vault=jokko.vault)
    finally:
        producer.close()

    router = jokko.router()
    try:
        assert route_until_idle(router, 3 * len(events)) == 3 * len(events)
    finally:
        router.close()
    expected = Counter({inst.value: len(events) for inst in Institution})
    assert outbox_per_institution(jokko) == expected
    assert lag(jokko, jokko.settings.router_group) == 0

    # An operator resets the router to offset 0: a new group reads everything again.
    again = bootstrap(jokko.settings.model_copy(update={"router_group": "replay-from-zero"}))
    replayer = again.router()
    try:
        assert route_until_idle(replayer, 3 * len(events)) == 3 * len(events)
    finally:
        replayer.close()
        again.engine.dispose()
    assert outbox_per_institution(jokko) == expected, "a replay from offset 0 adds nothing"
    with Session(jokko.engine) as s:
        assert s.scalar(select(func.count()).select_from(InboxRow)) == len(events)
    assert replayer.stats[Outcome.DUPLICATE] == 3 * len(events)


def test_poison_interleaved_is_dead_lettered_and_lag_returns_to_zero(jokko: Jokko) -> None:
    events = contributions(8, 6, seed=uuid.uuid4().hex[:6])
    producer = idempotent_producer(jokko.settings.kafka_bootstrap)
    try:
        step = len(events) // len(POISON)
        for k, poison in enumerate(POISON):
            publish_events(
                producer,
                jokko.topics.canonical,
                events[k * step : (k + 1) * step],
                vault=jokko.vault,
            )
            # keyed like real members, so poison shares partitions with valid records
            producer.send(jokko.topics.canonical, key=events[k].member_id.encode(), value=poison)
        publish_events(
            producer, jokko.topics.canonical, events[len(POISON) * step :], vault=jokko.vault
        )
        producer.flush()
    finally:
        producer.close()

    router = jokko.router()
    relay = jokko.relay()
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    try:
        route_until_idle(router, len(events) + len(POISON))
        deadline = time.monotonic() + 60
        while pending_by_institution(jokko.engine) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        router.close()
        stop.set()
        thread.join(30)

    assert lag(jokko, jokko.settings.router_group) == 0, "poison never stalls its partition"
    assert outbox_per_institution(jokko) == {i.value: len(events) for i in Institution}
    with Session(jokko.engine) as s:
        dead = s.scalars(select(DeadLetterRow)).all()
        opened = sorted(open_original(s.connection(), jokko.vault, d) for d in dead)
    assert opened == sorted(POISON), "kept whole, to be read by an operator"
    assert not {d.original for d in dead} & set(POISON), "sealed at rest"
    assert all(d.reason == "invalid_event" and d.published_at is not None for d in dead)
    got = read_outbound(jokko.settings.kafka_bootstrap, jokko.topics, 3 * len(events))
    assert_once_and_in_member_order(got, 3 * len(events))

    dlq = KafkaConsumer(
        jokko.topics.dead_letters,
        bootstrap_servers=jokko.settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    try:
        on_topic = sorted(r.value for r in dlq)
    finally:
        dlq.close()
    assert on_topic == sorted(d.original for d in dead), "the DLQ carries them sealed"
    assert sorted(jokko.vault.open(v, DEAD_LETTER_AAD) for v in on_topic) == sorted(POISON)


def css_attempts(app: Jokko) -> int:
    with Session(app.engine) as s:
        return (
            s.scalar(select(func.sum(OutboxRow.attempts)).where(OutboxRow.institution == "css"))
            or 0
        )


def test_a_failing_institution_topic_holds_up_only_that_institution(
    jokko_settings: Callable[..., Settings],
) -> None:
    """CSS's topic disappears: CMU and IPRES keep flowing, CSS backs off and, once its topic
    is back, drains in member order (the retry budget itself is exercised in test_delivery)."""
    app = bootstrap(
        jokko_settings(
            delivery_backoff_initial_s=0.2,
            delivery_backoff_max_s=1.0,
            delivery_breaker_reset_s=1.0,
            delivery_max_attempts=1000,
        )
    )
    css_topic = app.topics.outbound(Institution.CSS)
    admin = admin_client(app.settings.kafka_bootstrap)
    admin.delete_topics([css_topic])
    while css_topic in admin.list_topics():  # deletion completes asynchronously
        time.sleep(0.1)
    events = contributions(10, 6, seed=uuid.uuid4().hex[:6])
    producer = idempotent_producer(app.settings.kafka_bootstrap)
    try:
        publish_events(producer, app.topics.canonical, events, vault=app.vault)
    finally:
        producer.close()
    router = app.router()
    relay = app.relay()
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    try:
        route_until_idle(router, len(events))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pending = pending_by_institution(app.engine)
            if set(pending) == {"css"}:
                break
            time.sleep(0.1)
        assert pending_by_institution(app.engine) == {"css": len(events)}
        deadline = time.monotonic() + 60
        while not css_attempts(app) and time.monotonic() < deadline:
            time.sleep(0.2)  # each try waits up to max_block_s for the missing topic
        assert css_attempts(app) > 0, "CSS rows were tried and are backing off"

        admin.create_topics([NewTopic(css_topic, app.topics.partitions, 1)])
        deadline = time.monotonic() + 90
        while pending_by_institution(app.engine) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pending_by_institution(app.engine) == {}
    finally:
        router.close()
        stop.set()
        thread.join(30)
        admin.close()
    with Session(app.engine) as s:
        states = Counter(s.scalars(select(OutboxRow.state)))
    assert states == {DeliveryState.SENT: 3 * len(events)}
    got = read_outbound(app.settings.kafka_bootstrap, app.topics, 3 * len(events))
    assert_once_and_in_member_order(got, 3 * len(events))
    app.engine.dispose()


def test_cmu_claim_decision_on_the_ack_topic_flows_back_as_one_canonical_event(
    jokko: Jokko,
) -> None:
    examples = [
        e
        for e in load_examples()
        if e.member_id == "MSNAS-TH-000289"
        and e.event_type in ("member.enrolled", "claim.submitted")
    ]
    claim = next(e for e in examples if e.event_type == "claim.submitted")
    jokko.processor().process_batch(
        [RawRecord("canonical", 0, i, dump_event(e)) for i, e in enumerate(examples)]
    )
    with Session(jokko.engine) as s:
        row = s.scalars(
            select(OutboxRow).where(
                OutboxRow.event_id == str(claim.event_id), OutboxRow.institution == "cmu"
            )
        ).one()
    decision = claim_response(
        30000,
        20000,
        ("NOT_COVERED",),
        extension=[{"url": systems.EXT_MESSAGE_ID, "valueString": row.message_id}],
    )
    producer = idempotent_producer(jokko.settings.kafka_bootstrap)
    try:
        for _ in range(2):  # CMU sends its decision twice
            producer.send(jokko.topics.acks(Institution.CMU), value=json.dumps(decision).encode())
        producer.flush()
    finally:
        producer.close()

    producer = idempotent_producer(jokko.settings.kafka_bootstrap)
    intake = [a for a in jokko.ack_intake(producer) if isinstance(a, AckConsumer)]
    consumer = next(a for a in intake if a.institution == Institution.CMU)
    deadline = time.monotonic() + 60
    try:
        while consumer.report.applied + consumer.report.duplicates < 2:
            assert time.monotonic() < deadline, "the two acks were not applied"
            consumer.poll_once(timeout_ms=300)
    finally:
        for a in intake:
            a.close()
        producer.close()
    with Session(jokko.engine) as s:
        after = s.get_one(OutboxRow, row.id)
    assert after.state == DeliveryState.ACCEPTED
    assert (consumer.report.applied, consumer.report.duplicates) == (1, 1)
    decided = consumer.report.adjudications
    assert len(decided) == 1
    assert decided[0].correlation_id == claim.event_id
    assert decided[0].payload.approved_amount == 20000

    router = jokko.router()
    try:
        route_until_idle(router, 1)
    finally:
        router.close()
    with Session(jokko.engine) as s:
        inbox = s.get_one(InboxRow, str(decided[0].event_id))
    assert inbox.event_type == "claim.adjudicated"
    assert inbox.destinations == "", "CMU's own decision is not echoed back to CMU"
