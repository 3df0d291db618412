"""Ed25519 signatures (Standard Webhooks ``v1a``) and detached file signatures: what an
institution holding only Jokko's JWKS accepts, and what it refuses."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from router.signing import (
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AllOf,
    JwksVerifier,
    MessageKeys,
    Reason,
    Scheme,
    SignatureRejected,
    SigningKey,
    Verifier,
    keys_of,
    sign_file,
    sign_push,
    verify_file,
)

pytestmark = pytest.mark.unit

MID = "3685ee87-8c8a-5d4e-9b1f-1a2b3c4d5e6f"
BODY = '{"resourceType":"Bundle","type":"transaction","note":"Ndèye"}'.encode()
NOW = 1_780_000_000
SECRET = b"css-shared-secret-0123456789abcdef"


def key(kid: str) -> SigningKey:
    return SigningKey(kid, Ed25519PrivateKey.generate())


CURRENT = key("message-2026b")
PREVIOUS = key("message-2026a")
JWKS = MessageKeys(CURRENT, (PREVIOUS,)).jwks()


def verifier(jwks: object = JWKS, now: float = NOW) -> JwksVerifier:
    return JwksVerifier(jwks, clock=lambda: now)  # type: ignore[arg-type]


def rejection(v: JwksVerifier | AllOf, headers: dict[str, str], body: bytes = BODY) -> Reason:
    with pytest.raises(SignatureRejected) as info:
        v.verify(headers, body)
    return info.value.reason


def test_jwks_holds_public_okp_keys_only_current_first() -> None:
    keys = JWKS["keys"]
    assert [k["kid"] for k in keys] == ["message-2026b", "message-2026a"]
    for jwk in keys:
        assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", "Ed25519", "EdDSA")
        assert set(jwk) == {"kty", "crv", "alg", "use", "kid", "x"}, "no private part (d)"
    raw = CURRENT.private.public_key().public_bytes_raw()
    assert base64.urlsafe_b64decode(keys[0]["x"] + "=") == raw


def test_v1a_round_trip_names_the_key() -> None:
    headers = sign_push(MID, BODY, timestamp=NOW, key=CURRENT)
    assert headers[SIGNATURE_HEADER].startswith("v1a,")
    assert " " not in headers[SIGNATURE_HEADER], "no HMAC unless asked"
    assert headers[KEY_ID_HEADER] == "message-2026b"
    assert verifier().verify(headers, BODY) == MID


def test_signature_is_plain_ed25519_over_id_timestamp_body() -> None:
    """What a verifier in any language checks: Standard Webhooks' signed content."""
    headers = sign_push(MID, BODY, timestamp=NOW, key=CURRENT)
    signature = base64.b64decode(headers[SIGNATURE_HEADER].removeprefix("v1a,"))
    CURRENT.private.public_key().verify(signature, f"{MID}.{NOW}.".encode() + BODY)


def test_an_altered_body_is_refused() -> None:
    headers = sign_push(MID, BODY, timestamp=NOW, key=CURRENT)
    assert rejection(verifier(), headers, BODY.replace(b"Bundle", b"Bundlf")) is (
        Reason.BAD_SIGNATURE
    )


def test_an_altered_id_or_timestamp_is_refused() -> None:
    headers = sign_push(MID, BODY, timestamp=NOW, key=CURRENT)
    assert rejection(verifier(), {**headers, "webhook-id": MID[:-1] + "0"}) is (
        Reason.BAD_SIGNATURE
    )
    assert rejection(verifier(), {**headers, TIMESTAMP_HEADER: str(NOW + 1)}) is (
        Reason.BAD_SIGNATURE
    )


def test_a_key_outside_the_jwks_is_refused_as_unknown() -> None:
    stranger = key("message-2026b")  # the right name, another key: a forgery
    forged = sign_push(MID, BODY, timestamp=NOW, key=stranger)
    assert rejection(verifier(), forged) is Reason.BAD_SIGNATURE
    other = sign_push(MID, BODY, timestamp=NOW, key=key("message-evil"))
    assert rejection(verifier(), other) is Reason.UNKNOWN_KEY


def test_the_signature_of_one_kid_does_not_pass_under_another() -> None:
    headers = sign_push(MID, BODY, timestamp=NOW, key=CURRENT)
    assert rejection(verifier(), {**headers, KEY_ID_HEADER: "message-2026a"}) is (
        Reason.BAD_SIGNATURE
    )


def test_previous_key_verifies_while_in_the_jwks_and_not_after() -> None:
    headers = sign_push(MID, BODY, timestamp=NOW, key=PREVIOUS)
    assert verifier().verify(headers, BODY) == MID
    retired = MessageKeys(CURRENT).jwks()
    assert rejection(verifier(retired), headers) is Reason.UNKNOWN_KEY


def test_stale_or_future_timestamp_is_refused() -> None:
    old = sign_push(MID, BODY, timestamp=NOW - 301, key=CURRENT)
    future = sign_push(MID, BODY, timestamp=NOW + 301, key=CURRENT)
    assert rejection(verifier(), old) is Reason.STALE_TIMESTAMP
    assert rejection(verifier(), future) is Reason.STALE_TIMESTAMP


def test_replay_is_refused_but_a_resend_with_a_new_timestamp_passes() -> None:
    v = verifier()
    first = sign_push(MID, BODY, timestamp=NOW, key=CURRENT)
    assert v.verify(first, BODY) == MID
    assert rejection(v, first) is Reason.REPLAYED
    assert v.verify(sign_push(MID, BODY, timestamp=NOW + 1, key=CURRENT), BODY) == MID


def test_missing_key_id_or_only_an_hmac_is_refused() -> None:
    headers = sign_push(MID, BODY, timestamp=NOW, key=CURRENT)
    del headers[KEY_ID_HEADER]
    assert rejection(verifier(), headers) is Reason.MISSING_HEADER
    hmac_only = sign_push(MID, BODY, timestamp=NOW, secret=SECRET)
    assert rejection(verifier(), {**hmac_only, KEY_ID_HEADER: CURRENT.kid}) is (
        Reason.BAD_SIGNATURE
    )


def test_both_schemes_in_one_header_each_verifier_reads_its_own() -> None:
    headers = sign_push(MID, BODY, timestamp=NOW, key=CURRENT, secret=SECRET)
    versions = [e.split(",")[0] for e in headers[SIGNATURE_HEADER].split()]
    assert versions == ["v1", "v1a"]
    both = AllOf(verifier(), Verifier([SECRET], clock=lambda: NOW))
    assert both.verify(headers, BODY) == MID
    wrong_secret = sign_push(MID, BODY, timestamp=NOW + 1, key=CURRENT, secret=b"x" * 32)
    assert rejection(both, wrong_secret) is Reason.BAD_SIGNATURE


def test_a_fetched_jwks_is_fetched_again_for_an_unknown_kid_after_rotation() -> None:
    served = [MessageKeys(PREVIOUS).jwks()]
    fetches = []

    def fetch() -> dict[str, object]:
        fetches.append(1)
        return served[-1]

    v = JwksVerifier(fetch, clock=lambda: NOW, refresh_s=0)
    assert v.verify(sign_push(MID, BODY, timestamp=NOW, key=PREVIOUS), BODY) == MID
    served.append(JWKS)  # Jokko rotated: the new key is published beside the old one
    assert v.verify(sign_push(MID, BODY, timestamp=NOW + 1, key=CURRENT), BODY) == MID
    assert len(fetches) == 2


def test_keys_of_passes_over_keys_it_cannot_use() -> None:
    doc = {
        "keys": [
            {"kty": "RSA", "kid": "jwt-1", "n": "AQAB", "e": "AQAB"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": "AAAA"},
            *JWKS["keys"],
        ]
    }
    assert set(keys_of(doc)) == {"message-2026b", "message-2026a"}
    with pytest.raises(ValueError, match="list of keys"):
        keys_of({"keys": "none"})


def test_file_signature_names_the_key_and_fails_on_one_changed_byte() -> None:
    content = b"H;J0001;20261207\nA;...;\nT;1;100\n"
    signature = sign_file(CURRENT, content)
    doc = json.loads(signature)
    assert (doc["alg"], doc["kid"]) == ("EdDSA", CURRENT.kid)
    assert verify_file(JWKS, content, signature) == CURRENT.kid
    for i in (0, len(content) // 2, len(content) - 1):
        altered = bytearray(content)
        altered[i] ^= 0x01
        with pytest.raises(SignatureRejected) as info:
            verify_file(JWKS, bytes(altered), signature)
        assert info.value.reason is Reason.BAD_SIGNATURE


def test_file_signature_of_an_unknown_key_or_unreadable_document_is_refused() -> None:
    content = b"declaration"
    with pytest.raises(SignatureRejected) as unknown:
        verify_file(JWKS, content, sign_file(key("message-evil"), content))
    assert unknown.value.reason is Reason.UNKNOWN_KEY
    with pytest.raises(SignatureRejected) as garbage:
        verify_file(JWKS, content, b"not json")
    assert garbage.value.reason is Reason.MISSING_HEADER


def test_signing_key_from_the_keyring_seed_is_deterministic() -> None:
    seed = bytes(range(32))
    a, b = SigningKey.from_seed("message-x", seed), SigningKey.from_seed("message-x", seed)
    assert a.public_jwk() == b.public_jwk()
    with pytest.raises(ValueError, match="key id"):
        SigningKey.from_seed("has space", seed)
    with pytest.raises(ValueError, match="a key, a secret or both"):
        sign_push(MID, BODY, timestamp=NOW)


def test_partner_setting_ed25519_by_default_secret_only_where_hmac_is_asked() -> None:
    from pydantic import ValidationError

    from services.settings import PartnerSettings

    url = "https://cmu.example/fhir"
    default = PartnerSettings(mode="http", url=url)  # type: ignore[arg-type]
    assert default.signature is Scheme.ED25519
    assert default.http_target() == (url, None)
    for scheme in ("hmac", "both"):
        with pytest.raises(ValidationError, match=f"signature {scheme} needs a secret"):
            PartnerSettings(mode="http", url=url, signature=scheme)  # type: ignore[arg-type]
    both = PartnerSettings(mode="http", url=url, signature="both", secret="s" * 32)  # type: ignore[arg-type]
    assert both.http_target() == (url, b"s" * 32)
