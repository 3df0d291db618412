"""What the channels hand the message log: a declaration file's row matches the file and the
``.sig`` on disk, and a Kafka record's row its signed headers, its sealed value and where the
broker put it (a recording producer: no broker)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any, ClassVar

import pytest

from adapters.base import Institution, MemberProfile, OutboundMessage, UnsupportedEvent
from router.channels import FileChannel
from router.delivery import Parcel, Result
from router.envelope import reseal_for_institution
from router.registry import outbound_adapters
from router.relay import KafkaChannel
from router.signing import MessageKeys, SigningKey, file_signature, verify_file, verify_record
from router.topics import Topics
from router.vault import KeySet
from schemas import MemberEnrolled
from schemas.examples import load_examples

pytestmark = pytest.mark.unit

KEY = SigningKey.from_seed("message-test", bytes(range(32)))
JWKS = MessageKeys(KEY).jwks()


def _messages(institution: Institution) -> list[OutboundMessage]:
    events = load_examples()
    profile = MemberProfile.from_enrolment(next(e for e in events if isinstance(e, MemberEnrolled)))
    out = []
    for event in events:
        try:
            out += outbound_adapters()[institution].translate(event, profile)
        except UnsupportedEvent:
            continue
    return out


def _parcels(messages: list[OutboundMessage]) -> list[Parcel]:
    return [
        Parcel(
            m.message_id,
            str(m.event_id),
            m.member_id,
            i + 1,
            m.kind,
            m.content_type,
            m.format_version,
            m.body,
        )
        for i, m in enumerate(messages)
    ]


def test_a_declaration_file_is_logged_as_written(tmp_path: Path) -> None:
    parcels = _parcels(_messages(Institution.IPRES))
    assert len(parcels) > 1
    reports = FileChannel(tmp_path, signing_key=KEY).deliver(parcels)
    assert {d.result for d in reports} == {Result.SENT}
    sent = reports[0].sent
    assert sent is not None
    assert all(d.sent is sent for d in reports), "one row for the file"
    [written] = tmp_path.glob("*.dat")
    content = written.read_bytes()
    signature = (tmp_path / f"{written.name}.sig").read_bytes()
    assert verify_file(JWKS, content, signature) == KEY.kid
    assert (sent.signed_id, sent.key_id) == (written.name, KEY.kid)
    assert sent.body_sha256 == hashlib.sha256(content).hexdigest()
    assert sent.signature == file_signature(signature)
    assert sent.message_ids == tuple(p.message_id for p in parcels)
    detail = sent.detail
    assert detail is not None
    assert detail["kind"] == "file"
    glue = [base64.b64decode(g) for g in detail["glue"]]
    parts = [
        p.body[start:end] for p, (_, start, end, _) in zip(parcels, detail["parts"], strict=True)
    ]
    rebuilt = glue[0] + b"".join(p + g for p, g in zip(parts, glue[1:], strict=True))
    assert rebuilt == content, "the glue and the parts give back the file byte for byte"


class _Metadata:
    """A record's future and, once got, the broker's answer: partition 2, its offset."""

    partition = 2

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def get(self, timeout: float) -> _Metadata:
        return self


class _RecordingProducer:
    config: ClassVar[dict[str, int]] = {"delivery_timeout_ms": 120_000}

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, list[tuple[str, bytes]]]] = []

    def send(self, topic: str, *, key: bytes, value: bytes, headers: Any) -> _Metadata:
        self.sent.append((value, headers))
        return _Metadata(len(self.sent) - 1)


def test_a_kafka_record_is_signed_as_produced_and_logged_where_the_broker_put_it() -> None:
    producer = _RecordingProducer()
    topic_key = KeySet("topic-css-1", {"topic-css-1": bytes(32)})
    channel = KafkaChannel(
        producer,
        Topics(),
        Institution.CSS,
        key=topic_key,
        signing_key=KEY,
        clock=lambda: 1_765_000_000,
    )
    parcels = _parcels(_messages(Institution.CSS))[:3]
    reports = channel.deliver(parcels)
    for p, d, (value, headers) in zip(parcels, reports, producer.sent, strict=True):
        assert verify_record(JWKS, headers, value) == KEY.kid, "the JWKS alone verifies it"
        with pytest.raises(Exception, match="no signature matches"):
            verify_record(JWKS, headers, value[:-1] + bytes([value[-1] ^ 1]))
        sent = d.sent
        assert sent is not None
        assert sent.detail is not None
        assert sent.body_sha256 == hashlib.sha256(value).hexdigest(), "the sealed bytes"
        assert sent.detail["partition"] == 2
        assert sent.detail["clear_sha256"] == hashlib.sha256(p.body).hexdigest()
        nonce = base64.b64decode(sent.detail["nonce"])
        again = reseal_for_institution(topic_key, "css", p.message_id, p.body, "topic-css-1", nonce)
        assert again == value, "Jokko makes the produced value again for a bundle"
    assert [d.sent.detail["offset"] for d in reports if d.sent and d.sent.detail] == [0, 1, 2]
