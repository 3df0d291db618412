"""Issue 21 on the real broker and PostgreSQL: no NIN, name or phone number in clear in any
table after a month went through the API, the router and the relay (poison records, a
conflict and an unknown member included); keys rotated lazily and eagerly; a member erased
after the retention period with the accounting kept; a second enrolment of the same NIN found.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session

from adapters.base import Institution
from router.delivery import DeliveryWorker
from router.erasure import ErasureRefused, erase_member
from router.processing import DuplicatePolicy, Outcome, RawRecord
from router.sealing import member_keys, open_body, open_original, rewrap
from router.store import (
    AuditRow,
    DeadLetterRow,
    DeliveryState,
    InboxRow,
    MemberDuplicateRow,
    MemberIdentityRow,
    MemberKeyRow,
    OutboxRow,
    Stage,
    TrailRow,
    utcnow,
)
from router.vault import MEMBER
from services import keyring
from services.bootstrap import Jokko, bootstrap
from services.demo_data import generate_month, previous_period
from services.reconcile_runs import duplicate_members
from services.settings import InvalidSettings, Settings
from tests.integration.test_api import Api, api, on_topic
from tests.integration.test_router_flow import route_until_idle
from tests.integration.test_trail import POLICY, Partner

pytestmark = pytest.mark.integration

__all__ = ["api"]  # the fixture, shared with test_api.py

Json = dict[str, Any]


def personal_values(events: list[Json]) -> set[str]:
    """Every NIN, name and phone number the events carry, as they would be written."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("nin", "given_names", "family_name") and isinstance(value, str):
                    found.add(value)
                elif key in ("phone", "payer_phone") and isinstance(value, str):
                    found.add(value)
                    found.add(value.removeprefix("+221"))  # the national 9 digits
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(events)
    return {v for v in found if len(v) >= 4}  # short given names would match anything


def raw_dump(engine: Engine) -> dict[str, str]:
    """Every table of the test's schema, every row, as the database stores it: text columns
    as text, binary ones both as bytes (decoded leniently) and as hex."""
    out: dict[str, str] = {}
    with engine.connect() as conn:
        tables = conn.execute(
            text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            )
        ).scalars()
        for table in tables:
            parts: list[str] = []
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        raw = bytes(value)
                        parts += [raw.decode("utf-8", "replace"), raw.hex()]
                    else:
                        parts.append(str(value))
            out[table] = "\n".join(parts)
    return out


def hex_of(value: str) -> str:
    return value.encode().hex()


def route_and_relay(jokko: Jokko, expected: int) -> None:
    router = jokko.router()
    try:
        route_until_idle(router, expected)
    finally:
        router.close()
    relay = jokko.relay(with_acks=False)
    try:
        while relay.relay_once():
            pass
    finally:
        relay.close()


def test_no_nin_name_or_phone_in_clear_in_any_table_or_log(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    month = generate_month(40, previous_period(utcnow()))
    events = month.events
    enrolment = next(e for e in events if e["event_type"] == "member.enrolled")
    poison = {**enrolment, "event_id": str(uuid.uuid4()), "member_id": "MSNAS-XX-1"}
    unknown = {
        **next(e for e in events if e["event_type"] == "contribution.paid"),
        "event_id": str(uuid.uuid4()),
    }
    unknown["payload"] = {**unknown["payload"], "payer_phone": "+221770000001"}
    with api.client("msnas") as c:
        for i in range(0, len(events), 100):
            r = c.post(
                "/v1/events/batch",
                json=events[i : i + 100],
                headers={"Idempotency-Key": f"month-{i}"},
            )
            assert r.status_code == 202, r.text
            assert r.json()["invalid"] == 0
        assert c.post("/v1/events", json=poison).status_code == 422
    # Poison that got past an API (another producer): whole identities in dead letters.
    from router.broker import idempotent_producer

    producer = idempotent_producer(api.jokko.settings.kafka_bootstrap)
    try:
        producer.send(api.jokko.topics.canonical, value=json.dumps(poison).encode())
        producer.flush()
    finally:
        producer.close()
    route_and_relay(api.jokko, len(events) + 1)

    with Session(api.jokko.engine) as s:
        letters = s.scalars(select(DeadLetterRow)).all()
        bodies = s.scalars(select(OutboxRow.body)).all()
    assert [d.reason for d in letters] == ["invalid_event"]
    assert bodies
    assert all(b.startswith(MEMBER) for b in bodies), "every message body sealed"
    needles = personal_values([*events, poison, unknown])
    assert len(needles) > 100
    dump = raw_dump(api.jokko.engine)
    assert {"outbox", "dead_letter", "idempotency_key", "status_trail", "member_key"} <= set(dump)
    leaks = {
        (table, value)
        for table, content in dump.items()
        for value in needles
        if value in content or hex_of(value) in content
    }
    assert leaks == set()
    # Jokko's own logs (the Kafka client's debug lines quote the canonical topic's records,
    # which are issue 28's to seal).
    ours = ("router", "services", "adapters", "schemas", "tests")
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(ours))
    assert [v for v in needles if v in logged] == []
    # ...while what each institution receives still carries them, in clear, to it alone.
    with Session(api.jokko.engine) as s, s.begin():
        row = s.scalars(
            select(OutboxRow).where(
                OutboxRow.event_id == enrolment["event_id"], OutboxRow.institution == "cmu"
            )
        ).one()
        deks = member_keys(s.connection(), api.jokko.vault, [row.member_id])
        clear = open_body(api.jokko.vault, deks, row.member_id, row.message_id, row.body)
        original = open_original(s.connection(), api.jokko.vault, letters[0])
    assert enrolment["payload"]["identity"]["nin"].encode() in clear
    assert json.loads(original)["member_id"] == "MSNAS-XX-1"
    assert on_topic(api), "the canonical topic is issue 28's: not sealed yet"


@pytest.fixture
def jokko(jokko_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Jokko]:
    app = bootstrap(jokko_settings(keyring_file=tmp_path / "keyring.json"))
    try:
        yield app
    finally:
        app.engine.dispose()


def month_records(members: int = 6) -> list[RawRecord]:
    month = generate_month(members, previous_period(utcnow()))
    return [
        RawRecord("canonical", 0, i, json.dumps(e).encode()) for i, e in enumerate(month.events)
    ]


def readable(jokko: Jokko) -> int:
    """How many outbox bodies open with the keyring of ``jokko`` (all must)."""
    with Session(jokko.engine) as s:
        rows = s.scalars(select(OutboxRow)).all()
        deks = member_keys(s.connection(), jokko.vault, {r.member_id for r in rows})
        for r in rows:
            open_body(jokko.vault, deks, r.member_id, r.message_id, r.body)
    return len(rows)


def test_keys_rotate_lazily_and_rewrap_seals_the_rest(
    jokko: Jokko, jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    records = month_records()
    jokko.processor().process_batch(records[: len(records) // 2])
    old = jokko.vault.keyring.data.current
    new = keyring.rotate(tmp_path / "keyring.json", "data")
    rotated = bootstrap(jokko_settings(keyring_file=tmp_path / "keyring.json"))
    try:
        rotated.processor().process_batch(records[len(records) // 2 :])
        with Session(rotated.engine) as s:
            kids = dict(s.execute(select(MemberKeyRow.member_id, MemberKeyRow.kek_id)).all())
        assert new in kids.values(), "members routed since the rotation moved to the new key"
        assert old in kids.values(), "the others wait for their next event or a rewrap"
        assert readable(rotated) > 0, "every body opens with the rotated keyring"
        with Session(rotated.engine) as s, s.begin():  # a body from before encryption at rest
            legacy = s.scalars(select(OutboxRow).limit(1)).one()
            clear = open_body(
                rotated.vault,
                member_keys(s.connection(), rotated.vault, [legacy.member_id]),
                legacy.member_id,
                legacy.message_id,
                legacy.body,
            )
            legacy.body = clear
        counts = rewrap(rotated.engine, rotated.vault)
        assert counts["message bodies"] == 1
        assert counts["member keys"] == list(kids.values()).count(old)
        with Session(rotated.engine) as s:
            assert set(s.scalars(select(MemberKeyRow.kek_id))) == {new}
        assert rewrap(rotated.engine, rotated.vault) == dict.fromkeys(counts, 0), "idempotent"
        # The old key may now be retired: everything opens without it.
        doc = json.loads((tmp_path / "keyring.json").read_text())
        del doc["data"]["keys"][old]
        (tmp_path / "keyring.json").write_text(json.dumps(doc))
        with pytest.raises(InvalidSettings, match=old):
            bootstrap(jokko_settings(keyring_file=tmp_path / "keyring.json"))
    finally:
        rotated.engine.dispose()


def test_a_process_with_another_keyring_refuses_to_start(
    jokko: Jokko, jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    jokko.processor().process_batch(month_records(2))
    with pytest.raises(InvalidSettings, match="cannot open what the store sealed"):
        bootstrap(jokko_settings(keyring_file=tmp_path / "other.json"))
    with pytest.raises(InvalidSettings, match="no keyring"):
        bootstrap(jokko_settings(keyring_file=tmp_path / "none.json", keyring_autocreate=False))


def test_erasure_after_retention_keeps_the_accounting_and_stops_the_data(jokko: Jokko) -> None:
    records = month_records()
    jokko.processor().process_batch(records)
    member = json.loads(records[-1].value)["member_id"]
    bad = {**json.loads(records[-1].value), "event_id": str(uuid.uuid4()), "payload": {}}
    jokko.processor().process(RawRecord("canonical", 1, 0, json.dumps(bad).encode()))
    with Session(jokko.engine) as s:
        s.execute(update(DeadLetterRow).values(member_id=member))  # its letter
        s.commit()
        before = {
            r.message_id: (r.state, r.member_seq)
            for r in s.scalars(select(OutboxRow).where(OutboxRow.member_id == member))
        }
        trail = s.scalar(select(text("count(*)")).select_from(TrailRow))
    with pytest.raises(ErasureRefused, match="retention period"):
        erase_member(jokko.engine, member, retention_days=3650, actor="dpo", reason="request 7")
    later = utcnow() + timedelta(days=3651)
    report = erase_member(
        jokko.engine, member, retention_days=3650, actor="dpo", reason="request 7", now=later
    )
    assert report.messages == len(before) > 0
    assert report.dead_letters == 1
    with pytest.raises(ErasureRefused, match="already erased"):
        erase_member(jokko.engine, member, retention_days=0, actor="dpo", reason="again")
    with Session(jokko.engine) as s:
        kept = {
            r.message_id: (r.state, r.member_seq)
            for r in s.scalars(select(OutboxRow).where(OutboxRow.member_id == member))
        }
        assert kept == before, "the accounting stays"
        assert s.scalar(select(text("count(*)")).select_from(TrailRow)) == trail
        assert s.scalars(select(InboxRow).where(InboxRow.member_id == member)).all()
        assert s.scalars(select(DeadLetterRow.original)).all() == [b""]
        assert not s.scalars(
            select(MemberIdentityRow).where(MemberIdentityRow.member_id == member)
        ).all()
        audit = s.scalars(select(AuditRow).where(AuditRow.action == "member.erase")).one()
        assert (audit.actor, audit.target, audit.detail) == ("dpo", member, "request 7")
    # The relay cannot open their pending messages: they go dead, never out in clear.
    partner = Partner(Institution.CMU, refused=set())
    worker = DeliveryWorker(jokko.engine, partner, policy=POLICY, vault=jokko.vault)
    while worker.deliver_once():
        pass
    with Session(jokko.engine) as s:
        cmu = s.scalars(
            select(OutboxRow).where(OutboxRow.member_id == member, OutboxRow.institution == "cmu")
        ).all()
        sent_others = s.scalars(
            select(OutboxRow.message_id).where(
                OutboxRow.member_id != member, OutboxRow.institution == "cmu"
            )
        ).all()
    assert cmu
    assert {r.state for r in cmu} == {DeliveryState.DEAD}
    assert {r.reason_code for r in cmu} == {"unreadable"}
    assert not {r.message_id for r in cmu} & set(partner.attempts)
    assert set(partner.attempts) == set(sent_others), "everyone else's went out"
    # A later event about them is refused.
    again = {**json.loads(records[-1].value), "event_id": str(uuid.uuid4())}
    outcome = jokko.processor().process(RawRecord("canonical", 2, 0, json.dumps(again).encode()))
    assert outcome == Outcome.DEAD_LETTERED
    with Session(jokko.engine) as s:
        assert (
            s.scalars(select(DeadLetterRow.reason).order_by(DeadLetterRow.id)).all()[-1]
            == "member_erased"
        )


def enrolment(member_id: str, nin: str, mutual: str = "MSNAS") -> RawRecord:
    month = generate_month(1, previous_period(utcnow()))
    e = next(e for e in month.events if e["event_type"] == "member.enrolled")
    e = {
        **e,
        "event_id": str(uuid.uuid4()),
        "member_id": member_id,
        "source": {**e["source"], "mutual": mutual},
    }
    e["payload"] = {**e["payload"], "identity": {**e["payload"]["identity"], "nin": nin}}
    e["payload"]["dependents"] = []
    return RawRecord("canonical", 0, uuid.uuid4().int % 10**9, json.dumps(e).encode())


@pytest.mark.parametrize("policy", list(DuplicatePolicy))
def test_the_same_nin_under_another_member_id_is_flagged_or_held(
    jokko_settings: Callable[..., Settings], tmp_path: Path, policy: DuplicatePolicy
) -> None:
    app = bootstrap(
        jokko_settings(keyring_file=tmp_path / "keyring.json", duplicate_member_policy=policy)
    )
    try:
        processor = app.processor()
        first = enrolment("MSNAS-DK-000001", "1234519880001")
        assert processor.process(first) == Outcome.ROUTED
        assert processor.process(first) == Outcome.DUPLICATE, "a redelivery is no second member"
        keyring.rotate(tmp_path / "keyring.json", "token")  # found across a rotation too
        app.engine.dispose()
        app = bootstrap(
            jokko_settings(keyring_file=tmp_path / "keyring.json", duplicate_member_policy=policy)
        )
        processor = app.processor()
        second = enrolment("COMM-TH-000042", "1234 5198 80001", mutual="COMM")
        other = enrolment("MSNAS-DK-000002", "2234519880002")
        outcomes = processor.process_batch([second, other])
        expected = Outcome.ROUTED if policy is DuplicatePolicy.FLAG else Outcome.DEAD_LETTERED
        assert outcomes == [expected, Outcome.ROUTED]
        second_id = json.loads(second.value)["event_id"]
        with Session(app.engine) as s:
            [dup] = s.scalars(select(MemberDuplicateRow)).all()
            identities = s.scalars(select(MemberIdentityRow)).all()
            steps = s.scalars(select(TrailRow.stage).where(TrailRow.event_id == second_id)).all()
            letters = s.scalars(select(DeadLetterRow)).all()
            sent = s.scalars(select(OutboxRow).where(OutboxRow.event_id == second_id)).all()
        assert (dup.member_id, dup.other_member_id, dup.mutual, dup.other_mutual) == (
            "COMM-TH-000042",
            "MSNAS-DK-000001",
            "COMM",
            "MSNAS",
        )
        assert sorted(i.member_id for i in identities) == ["MSNAS-DK-000001", "MSNAS-DK-000002"]
        assert all("1234519880001" not in i.token for i in identities)
        reported = list(duplicate_members(app.engine, {"cmu", "css", "ipres"}))
        if policy is DuplicatePolicy.FLAG:
            assert dup.action == "flagged"
            assert Stage.DUPLICATE_MEMBER in steps
            # every reconciliation run reports it, at each institution it reached
            assert [(d.institution, d.kind, d.member_id, d.ref) for d in reported] == [
                ("cmu", "duplicate_member", "COMM-TH-000042", "MSNAS-DK-000001")
            ] + [
                (i, "duplicate_member", "COMM-TH-000042", "MSNAS-DK-000001")
                for i in ("css", "ipres")
                if i in {m.institution for m in sent}
            ]
            assert sent
            assert not letters
        else:
            assert dup.action == "held"
            assert reported == [], "held: affiliated nowhere, nothing to reconcile"
            assert [d.reason for d in letters] == ["duplicate_member"]
            assert "MSNAS-DK-000001" in letters[0].detail
            assert not sent
    finally:
        app.engine.dispose()
