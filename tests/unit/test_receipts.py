"""HttpChannel's check of an institution's signed answer, against a scripted peer (no network):
the refusals the fake institutions cannot easily stage (a replayed answer, an answer signed
for another message, a stale one) and a batch's receipt."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters.base import Ack, AckStatus, Institution, OutboundAdapter
from router.channels import HttpChannel
from router.delivery import Parcel, Result
from router.signing import ID_HEADER, JwksVerifier, MessageKeys, SigningKey, sign_push
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
