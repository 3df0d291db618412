"""Personal data sealed on the Kafka topics (router/envelope.py), on the real broker and
PostgreSQL: a month of events through the API, the router and the relay in Kafka mode, then
the broker's segment files on disk read for every NIN and phone number submitted."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.base import Institution
from router.broker import TopicSpec, ensure_topics, idempotent_producer
from router.canonical import canonical_record
from router.envelope import SEALED, UNSEALABLE, header, is_sealed, open_for_institution
from router.processing import Outcome, Processor
from router.replay import replay
from router.sealing import open_original
from router.store import DeadLetterRow, DeliveryState, InboxRow, OutboxRow
from router.vault import Keyring, KeySet, Vault, new_key
from schemas import CanonicalEvent, parse_event
from services import keyring
from services.api.app import create_app
from services.api.auth import Scope
from services.bootstrap import Jokko, bootstrap
from services.demo_data import generate_month
from services.settings import InvalidSettings, Settings
from tests.fakes.cmu import FakeCMU
from tests.fakes.faults import Faults
from tests.fakes.kafka_partner import KafkaPartner
from tests.fakes.server import serve
from tests.infra import KafkaBroker
from tests.integration.test_partners import SECRETS
from tests.integration.test_router_flow import route_until_idle
from tests.segments import found_in, personal_values, segment_files, topics_of

pytestmark = pytest.mark.integration


@dataclass
class Deployment:
    jokko: Jokko
    api: str
    token: str
    cmu: str
    """The fake CMU's endpoint, which judges what its Kafka consumer reads."""
    keys: dict[Institution, KeySet]
    """Each institution's topic key, as the institution holds it."""


@pytest.fixture
def deployment(jokko_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Deployment]:
    files = {inst: tmp_path / f"{inst.value}-topic-key.json" for inst in Institution}
    for inst, path in files.items():
        keyring.topic_key(path, inst.value)
    settings = jokko_settings(
        **{inst.value: {"mode": "kafka", "topic_key_file": path} for inst, path in files.items()},
        delivery_backoff_initial_s=0.2,
    )
    jokko = bootstrap(settings)
    app = create_app(jokko, max_body_bytes=2_000_000)
    secret = app.state.authority.add_client("msnas", [Scope.EVENTS_SUBMIT.value], institution=None)
    cmu = FakeCMU(SECRETS[Institution.CMU], Faults(seed=1))
    try:
        with ExitStack() as stack:
            api = stack.enter_context(serve(app, lifespan=True))
            cmu_url = stack.enter_context(serve(cmu.app))
            answer = httpx.post(
                f"{api}/v1/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=("msnas", secret),
            )
            assert answer.status_code == 200, answer.text
            keys = {inst: keyring.load_topic_key(path) for inst, path in files.items()}
            yield Deployment(jokko, api, answer.json()["access_token"], f"{cmu_url}/fhir", keys)
    finally:
        jokko.engine.dispose()


def read_topic(jokko: Jokko, topic: str) -> list[Any]:
    """Every record now on ``topic``, from the beginning to its end."""
    consumer = KafkaConsumer(bootstrap_servers=jokko.settings.kafka_bootstrap)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        records: list[Any] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(p) < end[p] for p in parts):
            assert time.monotonic() < deadline, f"{topic} was not read to its end"
            for batch in consumer.poll(timeout_ms=300).values():
                records += batch
        return records
    finally:
        consumer.close()


def wait(what: Callable[[], bool], timeout_s: float, label: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, f"timed out waiting for {label}"
        time.sleep(0.2)


def altered(jokko: Jokko, event: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A sealed record of ``event`` with one byte of its ciphertext flipped."""
    value, headers = canonical_record(parse_event(event), jokko.vault)
    i = len(value) // 2
    return value[:i] + bytes([value[i] ^ 0x01]) + value[i + 1 :], headers


def test_a_month_through_the_api_leaves_no_nin_or_phone_in_clear_on_the_broker_disks(
    deployment: Deployment, kafka_broker: KafkaBroker
) -> None:
    jokko = deployment.jokko
    month = generate_month(40, "2026-11", seed=random.randrange(10**6))
    nins, phones = personal_values(month.events)
    assert len(nins) >= 40
    assert len(phones) >= 40
    # 1. one record altered on the topic, ahead of its member's other events
    victim = next(e for e in month.events if e["event_type"] == "contribution.paid")
    bad_event = {**victim, "event_id": str(uuid.uuid4())}
    value, headers = altered(jokko, bad_event)
    producer = idempotent_producer(jokko.settings.kafka_bootstrap)
    try:
        key = victim["member_id"].encode()
        producer.send(jokko.topics.canonical, key=key, value=value, headers=headers).get(30)
    finally:
        producer.close()
    # 2. the month through the API, in batches
    with httpx.Client(
        base_url=deployment.api, headers={"Authorization": f"Bearer {deployment.token}"}
    ) as http:
        for start in range(0, len(month.events), 50):
            answer = http.post(
                "/v1/events/batch",
                json=month.events[start : start + 50],
                headers={"Idempotency-Key": str(uuid.uuid4())},
                timeout=60,
            )
            assert answer.status_code == 202, answer.text
    # 3. the router: the altered record is a dead letter, nothing behind it is held up
    router = jokko.router()
    try:
        total = len(month.events) + 1
        assert route_until_idle(router, total) == total
        assert router.stats[Outcome.DEAD_LETTERED] == 1
        assert router.stats[Outcome.ROUTED] == len(month.events)
    finally:
        router.close()
    with Session(jokko.engine) as s:
        assert s.scalar(select(func.count()).select_from(InboxRow)) == len(month.events)
        [dead] = s.scalars(select(DeadLetterRow)).all()
        assert (dead.reason, dead.event_id) == (UNSEALABLE, bad_event["event_id"])
        assert "altered" in dead.detail
        with jokko.engine.connect() as conn:
            assert open_original(conn, jokko.vault, dead) == value, "kept as it came"
        rows = list(s.scalars(select(OutboxRow)))
    by_inst = Counter(r.institution for r in rows)
    assert set(by_inst) == {"cmu", "css", "ipres"}
    # 4. the relay, in Kafka mode; CMU reads its topic with its own key, a consumer holding
    # IPRES's key reads CSS's topic and opens nothing
    relay = jokko.relay()
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    try:
        with (
            KafkaPartner(
                jokko.settings.kafka_bootstrap,
                jokko.topics,
                Institution.CMU,
                deployment.cmu,
                SECRETS[Institution.CMU],
                topic_key=deployment.keys[Institution.CMU],
            ) as cmu,
            KafkaPartner(
                jokko.settings.kafka_bootstrap,
                jokko.topics,
                Institution.CSS,
                deployment.cmu,  # never reached: nothing it reads opens
                SECRETS[Institution.CSS],
                topic_key=deployment.keys[Institution.IPRES],
            ) as stranger,
        ):

            def settled() -> bool:
                with Session(jokko.engine) as s:
                    states = Counter((r.institution, r.state) for r in s.scalars(select(OutboxRow)))
                    published = s.scalar(
                        select(func.count())
                        .select_from(DeadLetterRow)
                        .where(DeadLetterRow.published_at.is_not(None))
                    )
                final = (
                    states[("cmu", DeliveryState.ACCEPTED)]
                    + states[("cmu", DeliveryState.REJECTED)]
                )
                return (
                    final == by_inst["cmu"]
                    and states[("css", DeliveryState.SENT)] == by_inst["css"]
                    and states[("ipres", DeliveryState.SENT)] == by_inst["ipres"]
                    and stranger.unsealable == by_inst["css"]
                    and published == 1
                )

            wait(settled, 90, "CMU's acks, every message sent, the dead letter published")
        assert cmu.consumed == by_inst["cmu"]
        assert cmu.unsealable == 0
        assert stranger.consumed == 0, "another institution's key opens nothing"
    finally:
        stop.set()
        thread.join(30)
    # 5. exactly once: each message once on its institution's topic, sealed, opening with
    # that institution's key to the body the outbox holds
    for inst in Institution:
        records = read_topic(jokko, jokko.topics.outbound(inst))
        ids = Counter(header(r.headers, "message_id") for r in records)
        expected = {r.message_id for r in rows if r.institution == inst.value}
        assert set(ids) == expected
        assert set(ids.values()) == {1}
        for r in records:
            assert is_sealed(r.value)
            assert header(r.headers, SEALED) == deployment.keys[inst].current
            mid = header(r.headers, "message_id") or ""
            assert open_for_institution(deployment.keys[inst], inst.value, mid, r.value)
    canonical = read_topic(jokko, jokko.topics.canonical)
    assert len(canonical) == len(month.events) + 1
    assert all(is_sealed(r.value) and header(r.headers, SEALED) for r in canonical)
    # 6. the broker's disks: a clear control record is found, nothing of the month is
    prefix = jokko.settings.topic_prefix
    control = f"{prefix}control"
    ensure_topics(jokko.settings.kafka_bootstrap, [TopicSpec(control, 1)])
    canary = sorted(nins)[0]
    producer = idempotent_producer(jokko.settings.kafka_bootstrap)
    try:
        producer.send(control, value=f'{{"nin": "{canary}"}}'.encode()).get(30)
    finally:
        producer.close()
    segments = segment_files(kafka_broker, prefix)
    topics = topics_of(segments)
    assert {
        jokko.topics.canonical,
        jokko.topics.dead_letters,
        *(jokko.topics.outbound(i) for i in Institution),
        jokko.topics.acks(Institution.CMU),
    } <= topics
    assert found_in(segments, {canary}) == {canary: [f"{control}-0/00000000000000000000.log"]}
    del segments[f"{control}-0/00000000000000000000.log"]
    scanned = sum(len(raw) for raw in segments.values())
    assert scanned > 100_000, "the month's records are in the files read"
    assert found_in(segments, nins) == {}
    assert found_in(segments, phones) == {}
    print(
        f"\nscanned {len(segments)} segment files ({scanned:,} bytes) of {len(topics) - 1} "
        f"topics: 0 of {len(nins)} NINs, 0 of {len(phones)} phone numbers in clear"
    )


def test_records_that_do_not_open_are_dead_letters_and_the_partition_goes_on(
    jokko_settings: Callable[..., Settings],
) -> None:
    """One member's partition: an enrolment, then a record altered by one byte, one sealed
    under a key this keyring lacks, one without its event_id header, a clear record from
    before sealing, and a contribution. The three that do not open are dead letters
    ``unsealable``, never applied; the clear one and the contribution behind them are routed."""
    jokko = bootstrap(jokko_settings())
    try:
        month = generate_month(3, "2026-11", seed=random.randrange(10**6))
        member = next(e for e in month.events if e["event_type"] == "member.enrolled")
        paid = next(
            e
            for e in month.events
            if e["event_type"] == "contribution.paid" and e["member_id"] == member["member_id"]
        )

        def again(event: dict[str, Any]) -> CanonicalEvent:
            return parse_event({**event, "event_id": str(uuid.uuid4())})

        foreign_key = KeySet("data-elsewhere", {"data-elsewhere": new_key()})
        foreign = Vault(Keyring(data=foreign_key, token=foreign_key))
        records: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []
        records.append(("enrolment", *canonical_record(parse_event(member), jokko.vault)))
        value, headers = canonical_record(again(paid), jokko.vault)
        flipped = value[:-1] + bytes([value[-1] ^ 0x80])  # the tag's last byte
        records.append(("altered", flipped, headers))
        records.append(("foreign key", *canonical_record(again(paid), foreign)))
        value, headers = canonical_record(again(paid), jokko.vault)
        records.append(("no event_id", value, [h for h in headers if h[0] != "event_id"]))
        legacy = again(paid)
        records.append(("clear", *canonical_record(legacy, None)))
        records.append(("contribution", *canonical_record(parse_event(paid), jokko.vault)))
        producer = idempotent_producer(jokko.settings.kafka_bootstrap)
        try:
            partitions = {
                producer.send(
                    jokko.topics.canonical,
                    key=member["member_id"].encode(),
                    value=value,
                    headers=headers,
                )
                .get(30)
                .partition
                for _, value, headers in records
            }
        finally:
            producer.close()
        assert len(partitions) == 1
        router = jokko.router()
        try:
            assert route_until_idle(router, len(records)) == len(records)
        finally:
            router.close()
        assert router.stats == Counter({Outcome.ROUTED: 3, Outcome.DEAD_LETTERED: 3})
        with Session(jokko.engine) as s:
            dead = s.scalars(select(DeadLetterRow).order_by(DeadLetterRow.offset)).all()
            inbox = set(s.scalars(select(InboxRow.event_id)))
        assert [d.reason for d in dead] == [UNSEALABLE] * 3
        assert "altered" in dead[0].detail
        assert "no key 'data-elsewhere'" in dead[1].detail
        assert "event_id" in dead[2].detail
        assert inbox == {member["event_id"], paid["event_id"], str(legacy.event_id)}
        # the missing key added to the keyring: the record sealed under it replays; the
        # altered one stays a dead letter
        data = jokko.vault.keyring.data
        both = KeySet(data.current, {**data.keys, **foreign_key.keys})
        processor = Processor(jokko.engine, jokko.adapters, Vault(Keyring(both, both)))
        assert replay(jokko.engine, processor, [dead[1].id, dead[0].id]) == {
            dead[1].id: Outcome.ROUTED.value,
            dead[0].id: Outcome.DEAD_LETTERED.value,
        }
        with Session(jokko.engine) as s:
            assert s.scalar(select(func.count()).select_from(InboxRow)) == 4
            assert s.scalar(select(func.count()).select_from(DeadLetterRow)) == 3
    finally:
        jokko.engine.dispose()


def test_the_relay_refuses_to_start_for_an_institution_in_kafka_mode_without_its_topic_key(
    jokko_settings: Callable[..., Settings],
) -> None:
    """Personal data never goes on a topic in clear by omission: the variable is named, and
    only ``allow_clear_topic`` (a test broker) lets it through."""
    keyless = jokko_settings(css={"mode": "kafka", "allow_clear_topic": False})
    jokko = bootstrap(keyless)
    try:
        with pytest.raises(InvalidSettings, match="JOKKO_CSS__TOPIC_KEY_FILE"):
            jokko.relay()
    finally:
        jokko.engine.dispose()
    allowed = bootstrap(jokko_settings(css={"mode": "kafka", "allow_clear_topic": True}))
    try:
        assert Institution.CSS not in allowed.topic_keys()
    finally:
        allowed.engine.dispose()
