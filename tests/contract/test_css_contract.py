"""CSS adapter against the shared contract, plus byte-for-byte golden documents.

Regenerate the golden files with ``JOKKO_UPDATE_GOLDEN=1`` and review the diff by eye.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar
from xml.sax.saxutils import escape, quoteattr

import pytest

import adapters.css
from adapters.base import OutboundMessage
from tests.contract.suite import BatchEnvelopeContract, OutboundAdapterContract, Rejections

pytestmark = pytest.mark.contract

GOLDEN = Path(__file__).parent / "golden" / "css"
NS = "urn:sn:css:jokko:v1"


def css_ack(messages: list[OutboundMessage], rejected: Rejections) -> bytes:
    """A CSS Acknowledgement: one Receipt per message, file numbers for the accepted ones."""
    lines = [
        "<?xml version='1.0' encoding='UTF-8'?>",
        f'<Acknowledgement xmlns="{NS}" formatVersion="1" issuedAt="2026-06-03T10:00:00Z">',
    ]
    for n, m in enumerate(messages, start=1):
        if m.message_id in rejected:
            code, text = rejected[m.message_id]
            lines.append(
                f'  <Receipt messageId="{m.message_id}" status="rejected">'
                f"<Reason code={quoteattr(code)}>{escape(text)}</Reason></Receipt>"
            )
        else:
            lines.append(
                f'  <Receipt messageId="{m.message_id}" status="accepted"'
                f' fileNumber="CSS-2026-{n:06d}"/>'
            )
    lines.append("</Acknowledgement>")
    return "\n".join(lines).encode("utf-8")


MID = "6f1c2a8e-7d3b-4c51-9a0e-6b8d2f4e1c37"
MID2 = "7f1c2a8e-7d3b-4c51-9a0e-6b8d2f4e1c37"


def _ack(body: str, ns: str = NS, version: str = "1") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<Acknowledgement xmlns="{ns}" formatVersion="{version}">{body}</Acknowledgement>'
    ).encode()


MALFORMED_ACKS: dict[str, bytes] = {
    "empty": b"",
    "garbage": b"\x00\xffnot xml at all",
    "json instead of xml": b'{"messageId": "x", "status": "accepted"}',
    "truncated": _ack(f'<Receipt messageId="{MID}" status="accepted" fileNumber="CSS-1"')[:-30],
    "no namespace": _ack(
        f'<Receipt messageId="{MID}" status="accepted" fileNumber="CSS-0001"/>'
    ).replace(f' xmlns="{NS}"'.encode(), b""),
    "wrong namespace": _ack(
        f'<Receipt messageId="{MID}" status="accepted" fileNumber="CSS-0001"/>',
        ns="urn:sn:cmu:jokko:v1",
    ),
    "future version": _ack(
        f'<Receipt messageId="{MID}" status="accepted" fileNumber="CSS-0001"/>',
        ns="urn:sn:css:jokko:v2",
        version="2",
    ),
    "not an acknowledgement": (
        f'<Affiliation xmlns="{NS}" messageId="{MID}" eventId="{MID}" '
        f'memberId="MSNAS-DK-000123" formatVersion="1"/>'
    ).encode(),
    "no receipt": _ack(""),
    "missing message id": _ack('<Receipt status="accepted" fileNumber="CSS-0001"/>'),
    "message id not a uuid": _ack(
        '<Receipt messageId="42" status="accepted" fileNumber="CSS-01"/>'
    ),
    "unknown status": _ack(f'<Receipt messageId="{MID}" status="pending" fileNumber="CSS-0001"/>'),
    "missing status": _ack(f'<Receipt messageId="{MID}" fileNumber="CSS-0001"/>'),
    "duplicate message id": _ack(
        f'<Receipt messageId="{MID}" status="accepted" fileNumber="CSS-0001"/>'
        f'<Receipt messageId="{MID}" status="accepted" fileNumber="CSS-0002"/>'
    ),
    "rejected without reason": _ack(f'<Receipt messageId="{MID}" status="rejected"/>'),
    "accepted without file number": _ack(f'<Receipt messageId="{MID}" status="accepted"/>'),
    "bad reason code": _ack(
        f'<Receipt messageId="{MID}" status="rejected"><Reason code="42">x</Reason></Receipt>'
    ),
    "unknown element": _ack(
        f'<Receipt messageId="{MID}" status="accepted" fileNumber="CSS-0001"/>'
        f'<Bonus messageId="{MID2}"/>'
    ),
    "xxe": (
        b'<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
        + _ack(
            f'<Receipt messageId="{MID}" status="rejected"><Reason code="R001">&x;</Reason>'
            "</Receipt>"
        ).split(b"\n", 1)[1]
    ),
}


class TestCssContract(OutboundAdapterContract, BatchEnvelopeContract):
    adapter: ClassVar = adapters.css

    def validate_envelope(self, raw: bytes) -> None:
        from tests.fakes.css import css_schema  # the independent validator (xmlschema)

        css_schema().validate(raw)

    def build_ack(self, messages: list[OutboundMessage], rejected: Rejections) -> bytes:
        return css_ack(messages, rejected)

    def malformed_acks(self) -> dict[str, bytes]:
        return MALFORMED_ACKS


# --- golden files ------------------------------------------------------------------------------


def _by_type() -> dict[str, list[OutboundMessage]]:
    out: dict[str, list[OutboundMessage]] = {}
    for event, member in TestCssContract().routed_examples():
        out.setdefault(event.event_type, []).extend(adapters.css.translate(event, member))
    return out


GOLDEN_TYPES = sorted(_by_type())


def golden_files() -> dict[str, bytes]:
    """One standalone document per routed example: ``<event_type>.xml`` for the first of its
    type, ``<event_type>.2.xml``... for the next ones, each byte-equal to the message body."""
    out: dict[str, bytes] = {}
    for event_type, messages in _by_type().items():
        for n, m in enumerate(messages, start=1):
            out[event_type + (f".{n}" if n > 1 else "") + ".xml"] = m.body
    return out


GOLDEN_FILES = golden_files()


@pytest.mark.parametrize("name", sorted(GOLDEN_FILES))
def test_translation_matches_golden_file(name: str) -> None:
    path = GOLDEN / name
    actual = GOLDEN_FILES[name]
    if os.environ.get("JOKKO_UPDATE_GOLDEN") == "1":
        path.write_bytes(actual)
    assert path.exists(), f"missing {path}: run with JOKKO_UPDATE_GOLDEN=1"
    assert actual == path.read_bytes(), f"{name} differs from its golden file"


def test_golden_files_cover_every_event_type_routed_here() -> None:
    on_disk = {p.name for p in GOLDEN.glob("*.xml")}
    assert on_disk == set(GOLDEN_FILES), "stale or missing golden files"
    assert {f"{t}.xml" for t in GOLDEN_TYPES} <= on_disk
