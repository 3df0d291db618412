"""HttpChannel's check of an institution's signed answer, against a scripted peer (no network):
the refusals the fake institutions cannot easily stage (a replayed answer, an answer signed
for another message, a stale one) and a batch's receipt; the same check of an ack record
(judged when written, re-read without being a replay) and of an ack file's detached
signature, and the ack file's grace period for a late signature."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from adapters.base import Ack, AckStatus, Institution, OutboundAdapter
from router.acks import AckFilePicker
from router.channels import HttpChannel
from router.delivery import Parcel, Result
from router.receipts import Receipt, Refusal, check_file_receipt, check_receipt
from router.signing import (
    ID_HEADER,
    JwksVerifier,
    MessageKeys,
    SigningKey,
    sign_file,
    sign_push,
    verify_file,
)
from services.settings import PartnerSettings

pytestmark = pytest.mark.unit

NOW = 1_780_000_000
INSTITUTION_KEY = SigningKey("css-ack-1", Ed25519PrivateKey.generate())
JOKKO_KEY = SigningKey("message-1", Ed25519PrivateKey.generate())


@dataclass(frozen=True)
class JsonAcks:
    """Answers as ``[{"id": message id, "status": ...}]``."""

    def parse_ack(self, raw: bytes) -> list[Ack]:
        return [
            Ack(a["id"], Institution.CSS, AckStatus(a["status"]), institution_ref="F-1")
            for a in json.loads(raw)
        ]


def parcel(message_id: str, member: str = "m-1") -> Parcel:
    return Parcel(message_id, "e-" + message_id, member, 1, "k", "application/json", 1, b"{}")


def channel(
    handler: Callable[[httpx.Request], httpx.Response], *, required: bool = True, **kw: Any
) -> HttpChannel:
    return HttpChannel(
        Institution.CSS,
        cast(OutboundAdapter, JsonAcks()),
        "https://css.example/push",
        signing_key=JOKKO_KEY,
        client=httpx.Client(transport=httpx.MockTransport(handler)),
        clock=lambda: NOW,
        receipts=JwksVerifier(MessageKeys(INSTITUTION_KEY).jwks(), clock=lambda: NOW),
        require_signed_acks=required,
        **kw,
    )


def answer(
    ids: list[str], signed_id: str, *, ts: int = NOW, key: SigningKey = INSTITUTION_KEY
) -> httpx.Response:
    body = json.dumps([{"id": i, "status": "accepted"} for i in ids]).encode()
    return httpx.Response(
        200, content=body, headers=sign_push(signed_id, body, timestamp=ts, key=key)
    )


def test_a_verified_answer_is_the_receipt() -> None:
    ch = channel(lambda r: answer(["a"], r.headers[ID_HEADER]))
    [d] = ch.deliver([parcel("a")])
    assert d.result == Result.ACCEPTED
    assert d.receipt is not None
    assert d.receipt.signed_id == "a"
    assert d.receipt.kid == INSTITUTION_KEY.kid
    assert d.receipt_refused is None


@pytest.mark.parametrize(
    ("peer", "reason"),
    [
        ("other_message", "wrong_id"),
        ("stale", "stale_timestamp"),
        ("jokko_key", "unknown_key"),
    ],
)
def test_a_refused_answer_is_a_named_transient_failure(peer: str, reason: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if peer == "other_message":  # a genuine receipt for "b" handed back for "a"
            return answer(["a"], "b")
        if peer == "stale":
            return answer(["a"], "a", ts=NOW - 3600)
        return answer(["a"], "a", key=JOKKO_KEY)

    [d] = channel(handler).deliver([parcel("a")])
    assert d.result == Result.FAILED
    assert d.receipt_refused == reason
    assert d.receipt is None
    assert (d.reason_text or "").startswith(f"receipt refused: {reason}")


def test_a_replayed_answer_is_refused() -> None:
    first = answer(["a"], "a")
    captured = (first.content, dict(first.headers))
    ch = channel(lambda r: httpx.Response(200, content=captured[0], headers=captured[1]))
    assert ch.deliver([parcel("a")])[0].result == Result.ACCEPTED
    [again] = ch.deliver([parcel("a")])
    assert again.result == Result.FAILED
    assert again.receipt_refused == "replayed"


def test_unsigned_answers_apply_only_when_not_required() -> None:
    def unsigned(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'[{"id": "a", "status": "accepted"}]')

    [refused] = channel(unsigned).deliver([parcel("a")])
    assert refused.receipt_refused == "unsigned"
    [applied] = channel(unsigned, required=False).deliver([parcel("a")])
    assert applied.result == Result.ACCEPTED
    assert applied.receipt is None


def test_a_batch_answer_is_one_receipt_for_each_message() -> None:
    def encode(batch_id: str, parts: Any) -> bytes:
        return json.dumps({"batch": batch_id, "ids": [m for m, _ in parts]}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        batch = json.loads(request.content)
        return answer(batch["ids"], batch["batch"])

    ch = channel(handler, batch_size=2, encode_batch=encode)
    reports = ch.deliver([parcel("a", "m-1"), parcel("b", "m-2")])
    assert [d.result for d in reports] == [Result.ACCEPTED, Result.ACCEPTED]
    receipts = [d.receipt for d in reports]
    assert all(r is not None for r in receipts)
    assert len({r.signed_id for r in receipts if r is not None}) == 1, "the batch id signed"


def test_signed_acks_cannot_be_required_without_the_institutions_keys() -> None:
    with pytest.raises(ValueError, match="ack_jwks_file"):
        PartnerSettings(require_signed_acks=True)
    assert PartnerSettings(ack_jwks_file=Path("k.json"), require_signed_acks=True)


# --- ack topic records and ack files (router.receipts, router.acks.AckFilePicker) -----------


def verifier() -> JwksVerifier:
    return JwksVerifier(MessageKeys(INSTITUTION_KEY).jwks(), clock=lambda: NOW)


def test_an_ack_record_is_judged_when_it_was_written_and_a_re_read_is_no_replay() -> None:
    """A record written an hour ago, read now (the consumer was away), is not stale; read
    again from the same position it is no replay; the same signature at another position is."""
    written = NOW - 3600
    body = b'[{"id": "a", "status": "accepted"}]'
    headers = sign_push("ack-1", body, timestamp=written, key=INSTITUTION_KEY)
    v = verifier()
    assert isinstance(check_receipt(v, headers, body, required=True), Refusal), "stale now"
    at = ("jokko.acks.css.v1", 0, 41)
    first = check_receipt(v, headers, body, required=True, now=written + 5, carrier=at)
    assert isinstance(first, Receipt)
    assert (first.signed_id, first.timestamp, first.kid) == ("ack-1", written, "css-ack-1")
    again = check_receipt(v, headers, body, required=True, now=written + 9, carrier=at)
    assert isinstance(again, Receipt), "the same record read again after a crash"
    elsewhere = ("jokko.acks.css.v1", 0, 42)
    for carrier in (elsewhere, None):
        copy = check_receipt(v, headers, body, required=True, now=written + 9, carrier=carrier)
        assert isinstance(copy, Refusal)
        assert copy.refused == "replayed"


ACK_FILE = b"H|01|IPRES|JOKKO|A1|J1|20260601\nR|m-1|A|||IP00000001\nT|1\n"


@pytest.mark.parametrize(
    ("signature", "content", "reason"),
    [
        (sign_file(JOKKO_KEY, ACK_FILE), ACK_FILE, "unknown_key"),
        (
            sign_file(SigningKey("css-ack-1", Ed25519PrivateKey.generate()), ACK_FILE),
            ACK_FILE,
            "bad_signature",
        ),
        (sign_file(INSTITUTION_KEY, ACK_FILE), ACK_FILE + b"\n", "bad_signature"),
        (b"not a signature", ACK_FILE, "missing_header"),
        (b'{"alg": "HS256", "kid": "css-ack-1", "sig": "AA"}', ACK_FILE, "bad_signature"),
        (None, ACK_FILE, "unsigned"),
    ],
)
def test_an_ack_file_without_its_genuine_signature_is_refused(
    signature: bytes | None, content: bytes, reason: str
) -> None:
    refused = check_file_receipt(verifier(), "A1.ack", content, signature, required=True)
    assert isinstance(refused, Refusal)
    assert refused.refused == reason
    assert refused.text.startswith(f"receipt refused: {reason}: ")


def test_an_ack_file_receipt_is_its_detached_signature_checkable_offline() -> None:
    signature = sign_file(INSTITUTION_KEY, ACK_FILE)
    receipt = check_file_receipt(verifier(), "A1.ack", ACK_FILE, signature, required=True)
    assert isinstance(receipt, Receipt)
    assert (receipt.signed_id, receipt.body, receipt.kid) == ("A1.ack", ACK_FILE, "css-ack-1")
    assert receipt.timestamp == 0, "a detached signature signs no time"
    jwks = MessageKeys(INSTITUTION_KEY).jwks()
    assert verify_file(jwks, receipt.body, receipt.signature.encode()) == "css-ack-1"
    columns = receipt.columns()
    assert columns["body_sha256"] == hashlib.sha256(ACK_FILE).hexdigest()
    assert check_file_receipt(verifier(), "A1.ack", ACK_FILE, None, required=False) is None
    again = check_file_receipt(verifier(), "A1.ack", ACK_FILE, signature, required=True)
    assert isinstance(again, Receipt), "no replay window: applying it twice changes nothing"


def test_an_ack_file_waits_for_its_signature_during_the_grace_period(tmp_path: Path) -> None:
    """Nothing is read or applied (no store is touched) while the ``.sig`` may still come; a
    ``.sig`` left alone past the grace period follows its ack, or goes to ``refused/``."""
    clock = [time.time()]
    picker = AckFilePicker(
        cast(Engine, None),
        tmp_path,
        Institution.IPRES,
        cast(OutboundAdapter, JsonAcks()),
        receipts=verifier(),
        require_signed_acks=True,
        signature_grace_s=60,
        clock=lambda: clock[0],
    )
    (tmp_path / "A1.ack").write_bytes(ACK_FILE)
    assert picker.poll_once() == 0
    clock[0] += 59
    assert picker.poll_once() == 0
    assert (tmp_path / "A1.ack").exists()
    (tmp_path / "processed" / "A0.ack").write_bytes(ACK_FILE)
    for name in ("A0.ack.sig", "A9.ack.sig"):
        (tmp_path / name).write_bytes(sign_file(INSTITUTION_KEY, ACK_FILE))
    clock[0] += 120
    picker._sweep_signatures()
    assert (tmp_path / "processed" / "A0.ack.sig").exists(), "beside its ack"
    assert (tmp_path / "refused" / "A9.ack.sig").exists(), "its ack is nowhere"
