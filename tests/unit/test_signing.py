"""Standard Webhooks signing: what a partner's verifier accepts and what it refuses."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.signing import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Reason,
    SignatureRejected,
    Verifier,
    sign,
)

pytestmark = pytest.mark.unit

KEY = b"cmu-secret-2026-\x00\xff-bytes"
OLD_KEY = b"cmu-secret-2025"
MID = "3685ee87-8c8a-5d4e-9b1f-1a2b3c4d5e6f"
BODY = '{"resourceType":"Bundle","type":"transaction","note":"Ndèye"}'.encode()
NOW = 1_780_000_000


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(*secrets: bytes, clock: Clock | None = None, tolerance_s: int = 300) -> Verifier:
    return Verifier(secrets or (KEY,), tolerance_s=tolerance_s, clock=clock or Clock())


def rejection(v: Verifier, headers: dict[str, str], body: bytes = BODY) -> Reason:
    with pytest.raises(SignatureRejected) as info:
        v.verify(headers, body)
    return info.value.reason


def test_round_trip_returns_the_message_id() -> None:
    headers = sign(KEY, MID, BODY, timestamp=NOW)
    assert set(headers) == {ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER}
    assert headers[ID_HEADER] == MID
    assert headers[TIMESTAMP_HEADER] == str(NOW)
    assert headers[SIGNATURE_HEADER].startswith("v1,")
    assert verifier().verify(headers, BODY) == MID


def test_standard_webhooks_published_test_vector() -> None:
    """Byte-for-byte the reference libraries' vector: their verifiers accept what we send."""
    secret = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")  # whsec_ + base64(secret)
    headers = sign(
        secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", b'{"test": 2432232314}', timestamp=1614265330
    )
    assert headers[SIGNATURE_HEADER] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_tampered_body_is_refused() -> None:
    headers = sign(KEY, MID, BODY, timestamp=NOW)
    assert (
        rejection(verifier(), headers, BODY.replace(b"Bundle", b"Bundlf")) is Reason.BAD_SIGNATURE
    )
    assert rejection(verifier(), headers, BODY + b" ") is Reason.BAD_SIGNATURE


def test_tampered_id_is_refused() -> None:
    headers = sign(KEY, MID, BODY, timestamp=NOW)
    headers[ID_HEADER] = MID[:-1] + "0"
    assert rejection(verifier(), headers) is Reason.BAD_SIGNATURE


def test_tampered_timestamp_is_refused() -> None:
    headers = sign(KEY, MID, BODY, timestamp=NOW)
    headers[TIMESTAMP_HEADER] = str(NOW + 1)
    assert rejection(verifier(), headers) is Reason.BAD_SIGNATURE


def test_wrong_key_is_refused() -> None:
    headers = sign(b"css-secret", MID, BODY, timestamp=NOW)
    assert rejection(verifier(), headers) is Reason.BAD_SIGNATURE


def test_rotation_either_key_verifies_and_several_signatures_may_be_sent() -> None:
    rotating = verifier(OLD_KEY, KEY)
    assert rotating.verify(sign(OLD_KEY, MID, BODY, timestamp=NOW), BODY) == MID
    assert rotating.verify(sign(KEY, MID, BODY, timestamp=NOW + 1), BODY) == MID
    # a sender mid-rotation signs with both; a verifier that knows only the new key accepts
    both = sign(OLD_KEY, MID, BODY, timestamp=NOW + 2)
    new = sign(KEY, MID, BODY, timestamp=NOW + 2)[SIGNATURE_HEADER]
    both[SIGNATURE_HEADER] += " " + new
    assert verifier(KEY).verify(both, BODY) == MID
    # the retired key alone no longer verifies
    assert rejection(verifier(KEY), sign(OLD_KEY, MID, BODY, timestamp=NOW)) is (
        Reason.BAD_SIGNATURE
    )


def test_other_signature_versions_are_ignored() -> None:
    headers = sign(KEY, MID, BODY, timestamp=NOW)
    value = headers[SIGNATURE_HEADER].split(",", 1)[1]
    headers[SIGNATURE_HEADER] = f"v1a,{value}"
    assert rejection(verifier(), headers) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 86_400])
def test_stale_and_future_timestamps_are_refused(offset: int) -> None:
    headers = sign(KEY, MID, BODY, timestamp=NOW + offset)
    assert rejection(verifier(), headers) is Reason.STALE_TIMESTAMP


@pytest.mark.parametrize("offset", [-300, 300, 0])
def test_timestamps_at_the_edge_of_the_window_are_accepted(offset: int) -> None:
    assert verifier().verify(sign(KEY, MID, BODY, timestamp=NOW + offset), BODY) == MID


def test_replay_of_the_same_request_is_refused() -> None:
    v = verifier()
    headers = sign(KEY, MID, BODY, timestamp=NOW)
    assert v.verify(headers, BODY) == MID
    assert rejection(v, headers) is Reason.REPLAYED


def test_legitimate_resend_with_a_new_timestamp_is_accepted() -> None:
    clock = Clock()
    v = verifier(clock=clock)
    assert v.verify(sign(KEY, MID, BODY, timestamp=NOW), BODY) == MID
    clock.now += 30
    assert v.verify(sign(KEY, MID, BODY, timestamp=NOW + 30), BODY) == MID


def test_remembered_pairs_are_pruned_once_out_of_the_window() -> None:
    clock = Clock()
    v = verifier(clock=clock, tolerance_s=60)
    for k in range(5):
        v.verify(sign(KEY, f"m-{k}", BODY, timestamp=NOW), BODY)
    assert v.remembered == 5
    clock.now += 61
    v.verify(sign(KEY, "later", BODY, timestamp=int(clock.now)), BODY)
    assert v.remembered == 1
    # an old pair, even forgotten, is still refused: it is stale now
    assert rejection(v, sign(KEY, "m-0", BODY, timestamp=NOW)) is Reason.STALE_TIMESTAMP


def test_a_refused_request_is_not_remembered() -> None:
    v = verifier()
    headers = sign(KEY, MID, BODY, timestamp=NOW)
    assert rejection(v, headers, b"tampered") is Reason.BAD_SIGNATURE
    assert v.verify(headers, BODY) == MID


def test_header_names_are_case_insensitive() -> None:
    headers = sign(KEY, MID, BODY, timestamp=NOW)
    shouting = {k.upper(): v for k, v in headers.items()}
    titled = {"Webhook-Id": MID, **{k.title(): v for k, v in headers.items()}}
    assert verifier().verify(shouting, BODY) == MID
    assert verifier().verify(titled, BODY) == MID


@pytest.mark.parametrize("missing", [ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER])
def test_missing_headers_are_refused(missing: str) -> None:
    headers = sign(KEY, MID, BODY, timestamp=NOW)
    del headers[missing]
    assert rejection(verifier(), headers) is Reason.MISSING_HEADER


@pytest.mark.parametrize("value", ["", "  ", "1.7e9", "-5", "١٢٣", "1780000000000000"])
def test_unreadable_timestamps_are_refused(value: str) -> None:
    headers = sign(KEY, MID, BODY, timestamp=NOW)
    headers[TIMESTAMP_HEADER] = value
    assert rejection(verifier(), headers) is Reason.MISSING_HEADER


def test_garbage_signatures_are_refused_not_crashing() -> None:
    headers = sign(KEY, MID, BODY, timestamp=NOW)
    for value in ["v1,", "v1", "nonsense", "v1,é", "v1,==" + "A" * 500, " ".join(["v1,x"] * 50)]:
        headers[SIGNATURE_HEADER] = value
        assert rejection(verifier(), headers) is Reason.BAD_SIGNATURE


def test_arguments_that_cannot_sign_are_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        sign(b"", MID, BODY, timestamp=NOW)
    with pytest.raises(ValueError, match="message_id"):
        sign(KEY, "has space", BODY, timestamp=NOW)
    with pytest.raises(ValueError, match="message_id"):
        sign(KEY, "", BODY, timestamp=NOW)
    with pytest.raises(ValueError, match="secret"):
        Verifier([])
    with pytest.raises(ValueError, match="secret"):
        Verifier([KEY, b""])


def test_rejection_is_a_jokko_error_with_its_reason() -> None:
    from schemas.errors import JokkoError

    with pytest.raises(JokkoError) as info:
        verifier().verify({}, BODY)
    assert isinstance(info.value, SignatureRejected)
    assert info.value.reason == "missing_header"


ids = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80
)


@given(message_id=ids, body=st.binary(max_size=2048))
def test_any_body_and_id_round_trip(message_id: str, body: bytes) -> None:
    assert verifier().verify(sign(KEY, message_id, body, timestamp=NOW), body) == message_id


@given(
    message_id=ids,
    body=st.binary(min_size=1, max_size=512),
    position=st.integers(min_value=0),
    delta=st.integers(min_value=1, max_value=255),
)
def test_any_single_byte_change_of_the_body_is_refused(
    message_id: str, body: bytes, position: int, delta: int
) -> None:
    headers = sign(KEY, message_id, body, timestamp=NOW)
    i = position % len(body)
    changed = body[:i] + bytes([(body[i] + delta) % 256]) + body[i + 1 :]
    assert rejection(verifier(), headers, changed) is Reason.BAD_SIGNATURE
