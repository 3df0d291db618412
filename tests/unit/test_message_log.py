"""The message log on SQLite: the frozen row encoding, appends chained in one statement, the
triggers, ``check`` on bundles whole, altered, erased, from a batch, a declaration file or a
sealed Kafka record, the walk of the whole chain and signed checkpoints."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from router.audit import GENESIS
from router.envelope import reseal_for_institution, seal_for_institution
from router.migrate import upgrade
from router.msglog import (
    Sent,
    append,
    bundle,
    canonical,
    carried_in,
    check,
    check_checkpoint,
    checkpoint,
    v1a_signature,
    verify,
    what_verified,
)
from router.signing import (
    MessageKeys,
    SignatureRejected,
    SigningKey,
    file_signature,
    sign_file,
    sign_push,
    sign_record,
    verify_record,
)
from router.store import utcnow
from router.vault import KeySet, sealed_nonce

pytestmark = pytest.mark.unit

KEY = SigningKey("message-test", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
BODY = b'{"resourceType":"Patient","id":"m-1"}'


def _sent(signed_id: str, body: bytes, carried: tuple[str, ...]) -> Sent:
    headers = sign_push(signed_id, body, timestamp=1_765_000_000, key=KEY)
    return Sent(
        signed_id,
        carried,
        1_765_000_000,
        hashlib.sha256(body).hexdigest(),
        headers["webhook-key-id"],
        v1a_signature(headers["webhook-signature"]),
        200,
    )


@pytest.fixture
def store(tmp_path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 'jokko.db'}")
    upgrade(engine)
    with engine.begin() as conn:
        append(
            conn,
            [
                (_sent("m-1", BODY, ("m-1",)), {"m-1": "accepted"}),
                (_sent("b-1", b"<batch/>", ("m-2", "m-3")), {"m-2": "accepted", "m-3": "rejected"}),
            ],
            institution="cmu",
            at=utcnow(),
        )
    with engine.begin() as conn:
        append(
            conn, [(_sent("m-4", b"x", ("m-4",)), {"m-4": "sent"})], institution="css", at=utcnow()
        )
    return engine


def test_the_row_encoding_is_frozen() -> None:
    row = {
        "id": 1,
        "sent_at": "2026-12-07T21:30:00.123456+00:00",
        "institution": "cmu",
        "signed_id": "m-1",
        "message_ids": '["m-1"]',
        "timestamp": 1765000000,
        "body_sha256": "ab" * 32,
        "key_id": "message-test",
        "signature": "c2ln",
        "status": 200,
        "outcome": '{"m-1":"accepted"}',
    }
    assert canonical(row) == (
        b'[1,"2026-12-07T21:30:00.123456+00:00","cmu","m-1","[\\"m-1\\"]",1765000000,'
        b'"' + b"ab" * 32 + b'","message-test","c2ln",200,"{\\"m-1\\":\\"accepted\\"}"]'
    )


def _bundle(engine: Engine, message_id: str, body: bytes | None) -> dict[str, Any]:
    with engine.connect() as conn:
        return bundle(conn, message_id, body, MessageKeys(KEY))


def test_a_bundle_verifies_and_one_changed_byte_anywhere_fails(store: Engine) -> None:
    doc = _bundle(store, "m-1", BODY)
    assert doc["log_row"]["prev_hash"] == GENESIS
    assert [r["id"] for r in doc["chain"]] == [2, 3]
    assert doc["receipt"] is None
    assert check(doc) == []
    for path, change in [
        (("message", "body"), base64.b64encode(BODY.replace(b"m-1", b"m-2")).decode()),
        (("log_row", "timestamp"), 1_765_000_001),
        (("log_row", "outcome"), '{"m-1":"rejected"}'),
        (
            ("key", "x"),
            MessageKeys(SigningKey.from_seed("message-test", bytes(32))).jwks()["keys"][0]["x"],
        ),
    ]:
        bad = copy.deepcopy(doc)
        bad[path[0]][path[1]] = change
        assert check(bad), path
    bad = copy.deepcopy(doc)
    bad["chain"][1]["status"] = 500
    assert check(bad) == ["chain: row 3 does not match its hash"]
    bad = copy.deepcopy(doc)
    del bad["chain"][0]
    assert check(bad) == ["chain: row 3 does not link to row 1"]


def test_an_erased_body_or_a_batch_leaves_the_digest_and_the_chain(store: Engine) -> None:
    erased = _bundle(store, "m-1", None)
    assert erased["message"] == {"body": None, "why_no_body": "erased"}
    assert check(erased) == []
    batch = _bundle(store, "m-3", b"the message alone is not what was signed")
    assert batch["message"]["body"] is None
    assert json.loads(batch["log_row"]["message_ids"]) == ["m-2", "m-3"]
    assert check(batch) == []


def test_the_log_refuses_update_and_delete(store: Engine) -> None:
    for statement in ("UPDATE message_log SET status = 500", "DELETE FROM message_log"):
        with pytest.raises(DBAPIError, match="append-only"), store.begin() as conn:
            conn.execute(text(statement))


def _append(engine: Engine, sent: Sent, outcome: dict[str, str], institution: str) -> None:
    with engine.begin() as conn:
        append(conn, [(sent, outcome)], institution=institution, at=utcnow())


MEMBERS = {
    f"m-{i}": f'{{"resourceType":"Bundle","id":"m-{i}","n":"{i}"}}'.encode() for i in (5, 6, 7)
}


def test_a_message_in_a_batch_proves_the_whole_batch_or_its_own_part(store: Engine) -> None:
    """The CMU envelope, spliced from the bodies; then the CSS one, whose parts are cut."""
    from adapters.cmu import encode_batch
    from adapters.css import batch_part
    from adapters.css import encode_batch as css_batch

    whole = encode_batch("b-2", list(MEMBERS.items()))
    detail = carried_in("batch", whole, [(m, b, b) for m, b in MEMBERS.items()])
    _append(store, replace(_sent("b-2", whole, tuple(MEMBERS)), detail=detail), {}, "cmu")
    doc = _bundle_of(store, "m-6", MEMBERS)
    assert [p is not None for p in doc["batch"]["parts"]] == [True, True, True]
    assert check(doc) == []
    assert what_verified(doc) == "batch: its part, the whole, digest, signature"
    alone = _bundle_of(store, "m-6", {"m-6": MEMBERS["m-6"]})  # the others erased, left out
    assert alone["batch"]["parts"][0] is None
    assert check(alone) == []
    assert what_verified(alone) == "batch: its part, digests only"
    for bad, named in [
        (_flip_b64(doc, ("message", "body")), "message: its SHA-256"),
        (_flip_b64(doc, ("batch", "parts", 2)), "the part of m-7"),
        (_flip_glue(doc), "row 4 does not match its hash"),
        (_flip_b64(doc, ("log_row", "signature")), "signature"),
    ]:
        problems = check(bad)
        assert any(named in p for p in problems), (named, problems)

    css = {m: b"<?xml version='1.0'?>\n<Doc messageId='%s'/>\n" % m.encode() for m in MEMBERS}
    whole = css_batch("b-3", list(css.items()))
    parts = [(m, b, batch_part(b)) for m, b in css.items()]
    _append(
        store,
        replace(_sent("b-3", whole, tuple(css)), detail=carried_in("batch", whole, parts)),
        {},
        "css",
    )
    doc = _bundle_of(store, "m-5", css)
    assert check(doc) == [], "the parts and the glue give back the batch byte for byte"


def test_a_declaration_file_is_proved_by_its_detached_signature(store: Engine) -> None:
    records = {"m-8": b"A0001 first", "m-9": b"A0002 second"}
    content = b"H header\r\n" + b"\r\n".join(records.values()) + b"\r\nT 2\r\n"
    signature = file_signature(sign_file(KEY, content))
    detail = carried_in("file", content, [(m, b, b) for m, b in records.items()], file="J1.dat")
    sent = Sent(
        "J1.dat",
        tuple(records),
        1_765_000_000,
        hashlib.sha256(content).hexdigest(),
        KEY.kid,
        signature,
        None,
        detail,
    )
    _append(store, sent, {m: "sent" for m in records}, "ipres")
    doc = _bundle_of(store, "m-9", records)
    assert check(doc) == []
    assert what_verified(doc) == "file: its part, the whole, digest, signature"
    assert check(_flip_b64(doc, ("batch", "parts", 0)))
    assert check(_flip_b64(doc, ("log_row", "signature"))) == [
        "signature: Ed25519 verification failed",
        "chain: row 4 does not match its hash",
    ]


def test_a_sealed_kafka_record_is_proved_as_it_was_produced(store: Engine) -> None:
    keys = KeySet("topic-cmu-1", {"topic-cmu-1": bytes(32)})
    value, _ = seal_for_institution(keys, "cmu", "m-10", BODY)
    nonce = sealed_nonce(value)
    assert nonce is not None
    assert reseal_for_institution(keys, "cmu", "m-10", BODY, "topic-cmu-1", nonce) == value
    headers = dict(sign_record(KEY, "m-10", value, timestamp=1_765_000_000))
    assert verify_record(MessageKeys(KEY).jwks(), list(headers.items()), value) == KEY.kid
    detail = {
        "kind": "kafka",
        "topic": "jokko.out.cmu.v1",
        "partition": 0,
        "offset": 7,
        "sealed": "topic-cmu-1",
        "nonce": base64.b64encode(nonce).decode(),
        "clear_sha256": hashlib.sha256(BODY).hexdigest(),
    }
    sent = Sent(
        "m-10",
        ("m-10",),
        1_765_000_000,
        hashlib.sha256(value).hexdigest(),
        KEY.kid,
        v1a_signature(headers["webhook-signature"].decode()),
        None,
        detail,
    )
    _append(store, sent, {"m-10": "sent"}, "cmu")
    doc = _bundle_of(store, "m-10", {}, value=value)
    assert check(doc) == []
    assert what_verified(doc) == "sealed record: value, digest, signature"
    assert check(_flip_b64(doc, ("record", "value"))) == [
        "record: its SHA-256 is not the logged digest"
    ]
    assert check(_flip_b64(doc, ("message", "body")))
    with pytest.raises(SignatureRejected):
        verify_record(MessageKeys(KEY).jwks(), list(headers.items()), value + b"x")


def test_verify_walks_the_chain_and_names_the_first_row_at_fault(store: Engine) -> None:
    verdict = verify(store)
    assert (verdict.ok, verdict.checked, verdict.head_id) == (True, 3, 3)
    assert verify(store, head=verdict.head_hash).ok
    assert not verify(store, head="ab" * 32).ok
    with store.begin() as conn:
        conn.execute(text("DROP TRIGGER message_log_no_update"))
        conn.execute(text("UPDATE message_log SET status = 500 WHERE id = 2"))
    broken = verify(store)
    assert (broken.ok, broken.row_id, broken.checked) == (False, 2, 1)
    assert "row 2 was altered" in (broken.problem or "")


def test_a_checkpoint_is_signed_and_a_later_bundle_holds_it(store: Engine) -> None:
    cp = checkpoint(store, KEY, utcnow())
    doc = _bundle(store, "m-1", BODY)
    assert check_checkpoint(cp, doc) == []
    forged = {**cp, "id": 2}
    assert check_checkpoint(forged, doc)[0].startswith("checkpoint signature")
    earlier = _bundle(store, "m-4", b"x")
    _append(store, _sent("m-11", b"y", ("m-11",)), {}, "cmu")
    assert check_checkpoint(checkpoint(store, KEY, utcnow()), earlier)[0].startswith(
        "checkpoint: row 4"
    )


def _bundle_of(
    engine: Engine, message_id: str, bodies: dict[str, bytes], value: bytes | None = None
) -> dict[str, Any]:
    with engine.connect() as conn:
        body = bodies.get(message_id, BODY)
        return bundle(conn, message_id, body, MessageKeys(KEY), bodies=bodies, value=value)


def _flip_b64(doc: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    """``doc`` with one byte changed in the base64 value at ``path``."""
    bad = copy.deepcopy(doc)
    holder = bad
    for key in path[:-1]:
        holder = holder[key]
    raw = bytearray(base64.b64decode(holder[path[-1]]))
    raw[len(raw) // 2] ^= 0x01
    holder[path[-1]] = base64.b64encode(bytes(raw)).decode()
    return bad


def _flip_glue(doc: dict[str, Any]) -> dict[str, Any]:
    bad = copy.deepcopy(doc)
    detail = json.loads(bad["log_row"]["detail"])
    glue = bytearray(base64.b64decode(detail["glue"][1]))
    glue[0] ^= 0x01
    detail["glue"][1] = base64.b64encode(bytes(glue)).decode()
    bad["log_row"]["detail"] = json.dumps(detail, sort_keys=True, separators=(",", ":"))
    return bad
