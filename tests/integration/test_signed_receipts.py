"""An institution's signed answer becomes the delivery's receipt; one whose signature fails is
never applied (real broker, real PostgreSQL, the relay pushing to the fake CMU over HTTP).

CMU's fake signs its answers with its own Ed25519 key (Standard Webhooks ``v1a`` over the
answered message id), Jokko holds CMU's registered JWKS (``JOKKO_CMU__ACK_JWKS_FILE``). The
fake can forge (another institution's key, or CMU's key id with an impostor's key), alter the
body after signing, or leave the signature out: each answer is refused with its reason, on
the trail and in the metrics, and the delivery stays pending until a genuine answer comes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.base import Institution
from router.processing import RawRecord
from router.signing import (
    ID_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    JwksVerifier,
    MessageKeys,
    SigningKey,
    sign_push,
)
from router.store import DeliveryState, ReceiptRow, Stage, TrailRow
from schemas import CanonicalEvent, dump_event
from services.api.app import create_app
from services.api.auth import Authority, Scope
from services.bootstrap import Jokko, bootstrap
from services.settings import Settings
from tests.factories import enrolments
from tests.fakes.cmu import FakeCMU
from tests.fakes.faults import Faults
from tests.fakes.server import serve
from tests.integration.test_signed_messages import FAST_RETRIES, relaying, rows, wait

pytestmark = pytest.mark.integration

MEMBERS = 3
SECRET = b"cmu-shared-secret-for-receipt-tests-0123456789"


def cmu_key(kid: str = "cmu-ack-2026") -> SigningKey:
    return SigningKey(kid, Ed25519PrivateKey.generate())


def refusals(app: Jokko) -> list[TrailRow]:
    with Session(app.engine) as s:
        return list(
            s.scalars(select(TrailRow).where(TrailRow.stage == Stage.RECEIPT_REFUSED.value))
        )


def receipts(app: Jokko) -> list[ReceiptRow]:
    with Session(app.engine) as s:
        return list(s.scalars(select(ReceiptRow).order_by(ReceiptRow.id)))


def settings_for(
    jokko_settings: Callable[..., Settings],
    tmp_path: Path,
    url: str,
    key: SigningKey,
    *,
    required: bool = True,
) -> Settings:
    jwks_file = tmp_path / "cmu-ack-keys.json"
    jwks_file.write_text(json.dumps(MessageKeys(key).jwks()))  # public halves only
    return jokko_settings(
        cmu={
            "mode": "http",
            "allow_plain_http": True,
            "url": f"{url}/fhir",
            "ack_jwks_file": str(jwks_file),
            "require_signed_acks": required,
            "signature": "hmac",  # the fake checks Jokko's push with the shared secret
            "secret": SECRET.decode(),
        },
        delivery_max_attempts=100,
        **FAST_RETRIES,
    )


def test_a_signed_answer_is_stored_as_the_receipt_and_verifies_offline(
    jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    key = cmu_key()
    cmu = FakeCMU(SECRET, Faults())
    cmu.ack_key = key
    with serve(cmu.app) as url:
        settings = settings_for(jokko_settings, tmp_path, url, key)
        app = bootstrap(settings)
        try:
            with relaying(app, enrolments(MEMBERS)):
                wait(
                    lambda: all(
                        r.state == DeliveryState.ACCEPTED for r in rows(app, Institution.CMU)
                    ),
                    60,
                    "CMU's deliveries accepted",
                )
            delivered = rows(app, Institution.CMU)
            stored = receipts(app)
            refused = refusals(app)
        finally:
            app.engine.dispose()
    assert len(delivered) == MEMBERS
    assert refused == []
    assert sorted(r.message_id for r in stored) == sorted(r.message_id for r in delivered)
    verifier = JwksVerifier(MessageKeys(key).jwks(), tolerance_s=3600)
    for r in stored:
        assert r.institution == "cmu"
        assert r.kid == key.kid
        assert r.signed_id == r.message_id
        assert r.body_sha256 == hashlib.sha256(r.body).hexdigest()
        headers = {
            ID_HEADER: r.signed_id,
            TIMESTAMP_HEADER: str(r.timestamp),
            SIGNATURE_HEADER: r.signature,
            KEY_ID_HEADER: r.kid,
        }
        assert verifier.verify(headers, r.body) == r.message_id, "a third party can check it"
        tampered = bytearray(r.body)
        tampered[len(tampered) // 2] ^= 1
        with pytest.raises(Exception, match="bad_signature"):
            JwksVerifier(MessageKeys(key).jwks(), tolerance_s=3600).verify(headers, bytes(tampered))


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("other_institution", "unknown_key"),
        ("same_kid_other_key", "bad_signature"),
        ("alter", "bad_signature"),
        ("omit", "unsigned"),
    ],
)
def test_a_refused_receipt_changes_nothing_is_counted_then_a_genuine_one_applies_once(
    jokko_settings: Callable[..., Settings], tmp_path: Path, fault: str, reason: str
) -> None:
    key = cmu_key()
    cmu = FakeCMU(SECRET, Faults())
    cmu.ack_key = key
    if fault == "other_institution":
        cmu.receipt_fault, cmu.forge_key = "forge", cmu_key("css-ack-2026")
    elif fault == "same_kid_other_key":
        cmu.receipt_fault, cmu.forge_key = "forge", cmu_key(key.kid)
    else:
        cmu.receipt_fault = fault
    with serve(cmu.app) as url:
        settings = settings_for(jokko_settings, tmp_path, url, key)
        app = bootstrap(settings)
        try:
            with relaying(app, enrolments(MEMBERS)):
                wait(
                    lambda: len(refusals(app)) >= 2 * MEMBERS,
                    60,
                    "each answer refused twice",
                )
                pending = rows(app, Institution.CMU)
                stored_while_refused = receipts(app)
                secret = Authority(app.engine).add_client(
                    "console-op", [Scope.DELIVERIES_READ.value, Scope.EVENTS_READ.value]
                )
                with serve(create_app(app)) as api:
                    metrics = httpx.get(f"{api}/metrics", timeout=10).text
                    with httpx.Client(base_url=api, timeout=30) as console:
                        login = {"client_id": "console-op", "client_secret": secret}
                        assert console.post("/console/login", data=login).status_code == 303
                        flow = console.get("/console/").text
                cmu.receipt_fault = None  # CMU signs correctly again
                wait(
                    lambda: all(
                        r.state == DeliveryState.ACCEPTED for r in rows(app, Institution.CMU)
                    ),
                    60,
                    "CMU's deliveries accepted",
                )
            delivered = rows(app, Institution.CMU)
            stored = receipts(app)
            refused = refusals(app)
        finally:
            app.engine.dispose()
    assert len(pending) == MEMBERS
    for r in pending:
        assert r.state == DeliveryState.PENDING, "a refused answer is never applied"
        assert r.acked_at is None
        assert r.institution_ref is None
        assert (r.last_error or "").startswith(f"receipt refused: {reason}"), r.last_error
    assert stored_while_refused == []
    assert {t.detail for t in refused} == {reason}
    assert {t.institution for t in refused} == {"cmu"}
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("jokko_receipts_refused_total{")
        and 'institution="cmu"' in line
        and f'reason="{reason}"' in line
    ]
    assert counted, metrics
    assert 'data-refused-receipts="cmu"' in flow, "the operator's console shows them"
    assert float(counted[0].split()[-1]) >= 2 * MEMBERS, metrics
    # once CMU signs again: accepted exactly once, one receipt each
    assert all(r.state == DeliveryState.ACCEPTED for r in delivered)
    assert sorted(r.message_id for r in stored) == sorted(r.message_id for r in delivered)
    applied = [m for m in cmu.received if not m.resent]
    assert sorted(m.message_id for m in applied) == sorted(r.message_id for r in delivered), (
        "the institution applied each message once, whatever the re-sends"
    )
    assert all(r.kid == key.kid for r in stored)


def test_unsigned_answers_still_apply_when_signed_acks_are_not_required(
    jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The default: an institution that does not sign yet keeps working, without receipts."""
    key = cmu_key()
    cmu = FakeCMU(SECRET, Faults())  # no ack_key: unsigned answers
    with serve(cmu.app) as url:
        settings = settings_for(jokko_settings, tmp_path, url, key, required=False)
        app = bootstrap(settings)
        try:
            with relaying(app, enrolments(2)):
                wait(
                    lambda: all(
                        r.state == DeliveryState.ACCEPTED for r in rows(app, Institution.CMU)
                    ),
                    60,
                    "CMU's deliveries accepted",
                )
            assert receipts(app) == []
            assert refusals(app) == []
        finally:
            app.engine.dispose()


def route(jokko: Jokko, events: Sequence[CanonicalEvent]) -> None:
    jokko.processor().process_batch(
        [RawRecord("canonical", 0, i, dump_event(e)) for i, e in enumerate(events)]
    )


def css_ack(row_ids: list[str]) -> bytes:
    receipts = "".join(
        f'<Receipt messageId="{m}" status="accepted" fileNumber="CSS-AF-2026-{i:06d}"/>'
        for i, m in enumerate(row_ids)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Acknowledgement xmlns="urn:sn:css:jokko:v1" formatVersion="1" '
        f'issuedAt="2026-06-03T10:00:00Z">{receipts}</Acknowledgement>'
    ).encode()


def test_acks_posted_to_the_api_are_verified_refused_or_kept_as_receipts(
    jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    key = cmu_key("css-ack-2026")
    jwks_file = tmp_path / "css-ack-keys.json"
    jwks_file.write_text(json.dumps(MessageKeys(key).jwks()))
    jokko = bootstrap(
        jokko_settings(css={"ack_jwks_file": str(jwks_file), "require_signed_acks": True})
    )
    app = create_app(jokko)
    secret = app.state.authority.add_client(
        "css", [Scope.ACKS_WRITE.value], institution=Institution.CSS
    )
    try:
        route(jokko, [*enrolments(2)])
        relay = jokko.relay(with_acks=False)
        try:
            while relay.relay_once():
                pass  # on CSS's topic: sent, waiting for its acks
        finally:
            relay.close()
        ids = [r.message_id for r in rows(jokko, Institution.CSS)]
        ack = css_ack(ids)
        now = int(time.time())
        genuine = sign_push("ack-1", ack, timestamp=now, key=key)
        forged = sign_push("ack-1", ack, timestamp=now, key=cmu_key("cmu-ack-2026"))
        with serve(app, lifespan=True) as url:
            token = httpx.post(
                f"{url}/v1/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=("css", secret),
            ).json()["access_token"]
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
            ) as css:
                xml = {"content-type": "application/xml"}
                unsigned = css.post("/v1/acks/css", content=ack, headers=xml)
                other_key = css.post("/v1/acks/css", content=ack, headers={**xml, **forged})
                altered = css.post(
                    "/v1/acks/css",
                    content=ack.replace(b"000000", b"000009"),
                    headers={**xml, **genuine},
                )
                before = rows(jokko, Institution.CSS)
                applied = css.post("/v1/acks/css", content=ack, headers={**xml, **genuine})
                replayed = css.post("/v1/acks/css", content=ack, headers={**xml, **genuine})
        after = rows(jokko, Institution.CSS)
        stored = receipts(jokko)
        refused = refusals(jokko)
    finally:
        jokko.engine.dispose()
    for answer, reason in (
        (unsigned, "unsigned"),
        (other_key, "unknown_key"),
        (altered, "bad_signature"),
        (replayed, "replayed"),
    ):
        assert answer.status_code == 401, answer.text
        assert f"receipt refused: {reason}" in answer.json()["detail"]
    assert {r.state for r in before} == {DeliveryState.SENT}, "nothing refused was applied"
    assert applied.status_code == 200, applied.text
    assert applied.json()["applied"] == len(ids)
    assert {r.state for r in after} == {DeliveryState.ACCEPTED}
    assert sorted(r.message_id for r in stored) == sorted(ids)
    assert all(r.signed_id == "ack-1" and r.body == ack and r.kid == key.kid for r in stored)
    assert Counter(t.detail for t in refused) == {
        reason: len(ids) for reason in ("unsigned", "unknown_key", "bad_signature", "replayed")
    }
