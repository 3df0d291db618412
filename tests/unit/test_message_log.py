"""The message log on SQLite: the frozen row encoding, appends chained in one statement, the
triggers, and ``check`` on bundles whole, altered, erased or from a batch."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from router.audit import GENESIS
from router.migrate import upgrade
from router.msglog import Sent, append, bundle, canonical, check, v1a_signature
from router.signing import MessageKeys, SigningKey, sign_push
from router.store import utcnow

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
