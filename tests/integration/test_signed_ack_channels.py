"""Signed acknowledgements on the two other ways acks come back, on the real broker and
PostgreSQL: records on the institution's ack topic (Standard Webhooks ``v1a`` headers on the
record) and ack files (a detached ``<name>.ack.sig`` beside each).

A verified record or file is applied and kept as the receipt; a forged, altered, unsigned,
stale or replayed one applies nothing, is counted in ``jokko_receipts_refused_total``, leaves
a ``receipt_refused`` step on each message it names and a dead letter for the operator; the
genuine one, when it comes, applies exactly once. The fakes sign as the institutions would.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kafka import KafkaProducer, TopicPartition
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.base import Ack, AckStatus, Institution
from adapters.ipres import build_ack_file
from router.acks import AckConsumer, AckFilePicker, Refused, record_refusal
from router.broker import admin_client, idempotent_producer
from router.receipts import Refusal
from router.replay import replay
from router.signing import MessageKeys, SigningKey, sign_file, sign_push, verify_file
from router.store import DeadLetterRow, DeliveryState, OutboxRow
from services.api.app import create_app
from services.bootstrap import Jokko, bootstrap
from services.settings import Settings
from tests.factories import enrolments
from tests.fakes.css import FakeCSS
from tests.fakes.faults import Faults
from tests.fakes.ipres import FakeIPRES
from tests.fakes.kafka_partner import KafkaPartner
from tests.fakes.server import serve
from tests.integration.test_signed_messages import FAST_RETRIES, relaying, rows, wait
from tests.integration.test_signed_receipts import css_ack, receipts, refusals, route

pytestmark = pytest.mark.integration

SECRET = b"css-shared-secret-for-ack-record-tests-0123456789"


def new_key(kid: str) -> SigningKey:
    return SigningKey(kid, Ed25519PrivateKey.generate())


def registered(tmp_path: Path, key: SigningKey) -> str:
    """The institution's registered JWKS (its public half only), as the operator installs it."""
    path = tmp_path / f"{key.kid}.jwks.json"
    path.write_text(json.dumps(MessageKeys(key).jwks()))
    return str(path)


def sent(jokko: Jokko, institution: Institution) -> list[OutboxRow]:
    """Relay everything routed (no ack intake): the rows wait for their acks."""
    relay = jokko.relay(with_acks=False)
    try:
        while relay.relay_once():
            pass
    finally:
        relay.close()
    out = rows(jokko, institution)
    assert out
    assert {r.state for r in out} == {DeliveryState.SENT}
    return out


def receipt_letters(jokko: Jokko) -> list[DeadLetterRow]:
    with Session(jokko.engine) as s:
        return list(
            s.scalars(
                select(DeadLetterRow)
                .where(DeadLetterRow.source.startswith("receipt:"))
                .order_by(DeadLetterRow.id)
            )
        )


def refused_metric(jokko: Jokko, institution: Institution) -> dict[str, float]:
    """``jokko_receipts_refused_total`` for ``institution``, by reason, from /metrics."""
    with serve(create_app(jokko)) as api:
        text = httpx.get(f"{api}/metrics", timeout=10).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("jokko_receipts_refused_total{") and (
            f'institution="{institution.value}"' in line
        ):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            found[reason] = float(line.split()[-1])
    return found


def signed(value: bytes, key: SigningKey, ack_id: str, timestamp: int) -> list[tuple[str, bytes]]:
    """Kafka record headers signing ``value`` as the institution does."""
    headers = sign_push(ack_id, value, timestamp=timestamp, key=key)
    return [(name, v.encode()) for name, v in headers.items()]


def produce(
    jokko: Jokko, topic: str, records: Sequence[tuple[bytes, list[tuple[str, bytes]]]]
) -> None:
    producer = KafkaProducer(bootstrap_servers=jokko.settings.kafka_bootstrap, acks="all")
    try:
        for value, headers in records:
            producer.send(topic, value=value, headers=headers, partition=0)  # one order
        producer.flush()
    finally:
        producer.close()


def poll_until(consumer: AckConsumer, done: Callable[[], bool], label: str) -> None:
    deadline = time.monotonic() + 60
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {label}"
        consumer.poll_once(timeout_ms=300)


def test_ack_records_are_verified_refused_kept_apart_then_the_genuine_one_applies_once(
    jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    css = new_key("css-ack-2026")
    jokko = bootstrap(
        jokko_settings(
            css={"ack_jwks_file": registered(tmp_path, css), "require_signed_acks": True}
        )
    )
    producer = idempotent_producer(jokko.settings.kafka_bootstrap)
    try:
        route(jokko, [*enrolments(2)])
        ids = [r.message_id for r in sent(jokko, Institution.CSS)]
        ack = css_ack(ids)
        stranger = css_ack([str(uuid.uuid4())])
        now = int(time.time())
        other_institution = new_key("cmu-ack-2026")
        impostor = new_key(css.kid)  # CSS's key id, another key
        forged = [
            (ack, signed(ack, other_institution, "ack-f1", now), "unknown_key"),
            (ack, signed(ack, impostor, "ack-f2", now), "bad_signature"),
            (ack.replace(b"000000", b"000009"), signed(ack, css, "ack-f3", now), "bad_signature"),
            (ack, [], "unsigned"),
            (ack, signed(ack, css, "ack-f4", now - 3600), "stale_timestamp"),
            (stranger, signed(stranger, other_institution, "ack-f5", now), "unknown_key"),
        ]
        topic = jokko.topics.acks(Institution.CSS)
        produce(jokko, topic, [(v, h) for v, h, _ in forged])
        consumer = next(
            a
            for a in jokko.ack_intake(producer)
            if isinstance(a, AckConsumer) and a.institution == Institution.CSS
        )
        try:
            poll_until(consumer, lambda: consumer.refused == len(forged), "the forged records")
            before = rows(jokko, Institution.CSS)
            stored_before = receipts(jokko)
            counted = refused_metric(jokko, Institution.CSS)
            genuine = signed(ack, css, "ack-1", int(time.time()))
            produce(jokko, topic, [(ack, genuine), (ack, genuine)])  # the copy: a replay
            poll_until(consumer, lambda: consumer.refused == len(forged) + 1, "the replay")
            assert consumer.poll_once(timeout_ms=500) == 0, "nothing left to read"
        finally:
            consumer.close()
        admin = admin_client(jokko.settings.kafka_bootstrap)
        try:
            group = f"{jokko.settings.router_group}-acks-css"
            committed = admin.list_group_offsets(group)[group]
        finally:
            admin.close()
        after = rows(jokko, Institution.CSS)
        stored = receipts(jokko)
        steps = refusals(jokko)
        letters = receipt_letters(jokko)
        report = consumer.report
    finally:
        producer.close()
        jokko.engine.dispose()
    assert {r.state for r in before} == {DeliveryState.SENT}, "nothing refused was applied"
    assert stored_before == []
    assert committed[TopicPartition(topic, 0)].offset == len(forged) + 2, (
        "refused records are committed: they never block the partition"
    )
    assert counted == {
        "unknown_key": len(ids) + 1,  # the record naming no message Jokko sent: once
        "bad_signature": 2 * len(ids),
        "unsigned": len(ids),
        "stale_timestamp": len(ids),
    }
    assert {r.state for r in after} == {DeliveryState.ACCEPTED}
    assert (report.applied, report.duplicates) == (len(ids), 0), "applied exactly once"
    assert sorted(r.message_id for r in stored) == sorted(ids)
    assert all(r.signed_id == "ack-1" and r.body == ack and r.kid == css.kid for r in stored)
    assert Counter(t.detail for t in steps) == {
        "unknown_key": len(ids),
        "bad_signature": 2 * len(ids),
        "unsigned": len(ids),
        "stale_timestamp": len(ids),
        "replayed": len(ids),
    }
    assert [d.reason for d in letters] == [*(r for _, _, r in forged), "replayed"]
    assert {d.source for d in letters} == {"receipt:kafka"}
    assert {d.topic for d in letters} == {topic}
    assert letters[5].message_id is None, "it named nothing Jokko sent"
    assert all(d.message_id in ids for d in letters[:5])
    assert all(d.original != ack for d in letters), "sealed like every dead letter's original"
    assert "webhook-key-id=cmu-ack-2026" in letters[0].detail


def test_a_refused_record_is_recorded_once_and_never_replayed(
    jokko_settings: Callable[..., Settings],
) -> None:
    """Read again after a crash, a refused record leaves no second step; an operator's
    replay of its dead letter applies nothing."""
    jokko = bootstrap(jokko_settings())
    try:
        route(jokko, [*enrolments(1)])
        ids = [r.message_id for r in sent(jokko, Institution.CSS)]
        acks = [Ack(m, Institution.CSS, AckStatus.ACCEPTED) for m in ids]
        refused = Refused(Refusal("bad_signature", "forged"), css_ack(ids), ("t", 0, 7), "test")
        first = record_refusal(
            jokko.engine, Institution.CSS, refused, acks, channel="kafka", vault=jokko.vault
        )
        again = record_refusal(
            jokko.engine, Institution.CSS, refused, acks, channel="kafka", vault=jokko.vault
        )
        (letter,) = receipt_letters(jokko)
        outcome = replay(jokko.engine, jokko.processor(), [letter.id])
        after = rows(jokko, Institution.CSS)
        steps = refusals(jokko)
    finally:
        jokko.engine.dispose()
    assert (first, again) == (len(ids), 0)
    assert len(steps) == len(ids)
    assert outcome == {letter.id: "not_replayable"}
    assert {r.state for r in after} == {DeliveryState.SENT}


def ipres_settings(
    jokko_settings: Callable[..., Settings], tmp_path: Path, key: SigningKey, **extra: object
) -> Settings:
    return jokko_settings(
        ipres={
            "mode": "file",
            "outbox_dir": str(tmp_path / "ipres-in"),
            "ack_dir": str(tmp_path / "ipres-acks"),
            "ack_jwks_file": registered(tmp_path, key),
            "require_signed_acks": True,
            **extra,
        },
        **FAST_RETRIES,
    )


def test_ack_files_are_verified_refused_or_wait_for_a_late_signature(
    jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ipres = new_key("ipres-ack-2026")
    jokko = bootstrap(ipres_settings(jokko_settings, tmp_path, ipres, ack_signature_grace_s=30))
    acks_dir = tmp_path / "ipres-acks"
    producer = idempotent_producer(jokko.settings.kafka_bootstrap)
    try:
        route(jokko, [*enrolments(2)])
        out = sent(jokko, Institution.IPRES)
        ids = [r.message_id for r in out]
        ack = build_ack_file(
            [
                Ack(m, Institution.IPRES, AckStatus.ACCEPTED, institution_ref=f"IP{i:08d}")
                for i, m in enumerate(ids)
            ],
            file_id="A0000000001",
            declaration_file_id=out[0].batch_ref or "",
            created=date.today(),
        )
        long_ago = time.time() - 600
        picker = next(a for a in jokko.ack_intake(producer) if isinstance(a, AckFilePicker))

        def drop(name: str, content: bytes, signature: bytes | None) -> None:
            if signature is not None:
                (acks_dir / f"{name}.sig").write_bytes(signature)
            (acks_dir / name).write_bytes(content)

        refused_files = {
            "f1.ack": (ack, sign_file(new_key("cmu-ack-2026"), ack), "unknown_key"),
            "f2.ack": (ack, sign_file(new_key(ipres.kid), ack), "bad_signature"),
            "f3.ack": (ack.replace(b"IP0", b"IP9", 1), sign_file(ipres, ack), "bad_signature"),
            "f4.ack": (ack, b"not a signature", "missing_header"),
            "f5.ack": (ack, None, "unsigned"),
        }
        for name, (content, signature, _) in refused_files.items():
            drop(name, content, signature)
        os.utime(acks_dir / "f5.ack", (long_ago, long_ago))  # its grace is over
        drop("g.ack", ack, None)  # the genuine one, its signature not there yet
        assert picker.poll_once() == len(refused_files)
        waiting = rows(jokko, Institution.IPRES)
        counted = refused_metric(jokko, Institution.IPRES)
        assert (acks_dir / "g.ack").exists(), "an ack waits for its signature"
        assert picker.poll_once() == 0
        (acks_dir / "g.ack.sig").write_bytes(sign_file(ipres, ack))  # it comes
        assert picker.poll_once() == 1
        drop("g2.ack", ack, sign_file(ipres, ack))  # the same ack again, signed
        (acks_dir / "lost.ack.sig").write_bytes(sign_file(ipres, ack))  # no ack will follow
        os.utime(acks_dir / "lost.ack.sig", (long_ago, long_ago))
        assert picker.poll_once() == 1
        after = rows(jokko, Institution.IPRES)
        stored = receipts(jokko)
        steps = refusals(jokko)
        letters = receipt_letters(jokko)
    finally:
        producer.close()
        jokko.engine.dispose()
    assert {r.state for r in waiting} == {DeliveryState.SENT}, "nothing refused was applied"
    assert counted == {
        "unknown_key": len(ids),
        "bad_signature": 2 * len(ids),
        "missing_header": len(ids),
        "unsigned": len(ids),
    }
    assert sorted(picker.refused) == sorted(refused_files)
    for name in refused_files:
        assert (acks_dir / "refused" / name).exists()
    assert (acks_dir / "refused" / "f1.ack.sig").exists(), "the signature goes with its file"
    assert (acks_dir / "refused" / "lost.ack.sig").exists()
    assert {r.state for r in after} == {DeliveryState.ACCEPTED}
    assert (picker.report.applied, picker.report.duplicates) == (len(ids), len(ids))
    for name in ("g.ack", "g.ack.sig", "g2.ack", "g2.ack.sig"):
        assert (acks_dir / "processed" / name).exists()
    assert sorted(r.message_id for r in stored) == sorted(ids), "one receipt each"
    jwks = MessageKeys(ipres).jwks()
    for r in stored:
        assert (r.signed_id, r.body, r.kid, r.timestamp) == ("g.ack", ack, ipres.kid, 0)
        assert verify_file(jwks, r.body, r.signature.encode()) == ipres.kid, "checkable offline"
    assert Counter(t.detail for t in steps) == counted
    assert Counter(d.reason for d in letters) == Counter(r for *_, r in refused_files.values())
    assert {d.source for d in letters} == {"receipt:file"}


@pytest.mark.parametrize("fault", [None, "late"])
def test_the_fake_ipres_signs_its_ack_files_and_jokko_keeps_them_as_receipts(
    jokko_settings: Callable[..., Settings], tmp_path: Path, fault: str | None
) -> None:
    """The relay's own picker against the fake IPRES signing its ack files (the ``.sig``
    first, or a second after the ack: waited for, never refused)."""
    ipres_key = new_key("ipres-ack-2026")
    settings = ipres_settings(jokko_settings, tmp_path, ipres_key, ack_signature_grace_s=30)
    fake = FakeIPRES(tmp_path / "ipres-in", tmp_path / "ipres-acks", Faults())
    fake.ack_key, fake.receipt_fault, fake.late_signature_s = ipres_key, fault, 1.5
    app = bootstrap(settings)
    try:
        with fake, relaying(app, enrolments(3)):
            wait(
                lambda: {r.state for r in rows(app, Institution.IPRES)} == {DeliveryState.ACCEPTED},
                60,
                "IPRES's deliveries accepted",
            )
        delivered = rows(app, Institution.IPRES)
        stored = [r for r in receipts(app) if r.institution == "ipres"]
        steps = refusals(app)
    finally:
        app.engine.dispose()
    assert steps == []
    assert sorted(r.message_id for r in stored) == sorted(r.message_id for r in delivered)
    assert all(r.kid == ipres_key.kid and r.signed_id.endswith(".ack") for r in stored)
    assert not list((tmp_path / "ipres-acks" / "refused").iterdir())


def test_the_fake_ipres_forging_its_ack_files_gets_them_refused(
    jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ipres_key = new_key("ipres-ack-2026")
    settings = ipres_settings(jokko_settings, tmp_path, ipres_key)
    fake = FakeIPRES(tmp_path / "ipres-in", tmp_path / "ipres-acks", Faults())
    fake.receipt_fault, fake.forge_key = "forge", new_key("css-ack-2026")
    app = bootstrap(settings)
    refused_dir = tmp_path / "ipres-acks" / "refused"
    try:
        with fake, relaying(app, enrolments(3)):
            wait(lambda: len(list(refused_dir.glob("*.ack"))) >= 1, 60, "the ack file refused")
        pending = rows(app, Institution.IPRES)
        steps = refusals(app)
    finally:
        app.engine.dispose()
    assert {r.state for r in pending} == {DeliveryState.SENT}
    assert {t.detail for t in steps} == {"unknown_key"}
    assert {t.message_id for t in steps} == {r.message_id for r in pending}


def test_the_kafka_partner_signs_its_ack_records_and_jokko_keeps_them_as_receipts(
    jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """CSS reads its topic and answers on its ack topic, each record signed (twice each:
    the copy, with its own ack id, applies as a duplicate)."""
    css_key = new_key("css-ack-2026")
    settings = jokko_settings(
        css={"ack_jwks_file": registered(tmp_path, css_key), "require_signed_acks": True},
        **FAST_RETRIES,
    )
    css = FakeCSS(SECRET, Faults())
    app = bootstrap(settings)
    try:
        with serve(css.app) as url:
            partner = KafkaPartner(
                settings.kafka_bootstrap,
                app.topics,
                Institution.CSS,
                f"{url}/css/v1/documents",
                SECRET,
                duplicate_acks=True,
            )
            partner.ack_key = css_key
            with partner, relaying(app, enrolments(3)):
                wait(
                    lambda: (
                        {r.state for r in rows(app, Institution.CSS)} == {DeliveryState.ACCEPTED}
                    ),
                    90,
                    "CSS's deliveries accepted",
                )
        delivered = rows(app, Institution.CSS)
        stored = [r for r in receipts(app) if r.institution == "css"]
        steps = refusals(app)
    finally:
        app.engine.dispose()
    assert steps == []
    assert sorted(r.message_id for r in stored) == sorted(r.message_id for r in delivered)
    assert all(r.kid == css_key.kid and r.signed_id.startswith("ack-") for r in stored)
