"""IPRES against the shared adapter contract, plus golden files of its wire format.

Regenerate the golden files after a deliberate format change with
``JOKKO_UPDATE_GOLDEN=1 .venv/bin/pytest tests/contract/test_ipres_contract.py``.
"""

from __future__ import annotations

import os
import uuid
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import pytest

import adapters.ipres
from adapters.base import Ack, AckStatus, Institution, OutboundMessage, message_id
from adapters.ipres import build_ack_file, build_declaration_file
from schemas import CanonicalEvent, DependentRemoved, MemberEnrolled
from schemas.events import parse_event
from schemas.examples import raw_examples
from tests.contract.suite import OutboundAdapterContract, Rejections, opted_into_everything

pytestmark = pytest.mark.contract

GOLDEN = Path(__file__).parent / "golden" / "ipres"
UPDATE = os.environ.get("JOKKO_UPDATE_GOLDEN") == "1"
FILE_ID = "MSNAS-20260701-0001"
CREATED = date(2026, 7, 1)


def ack_line(mid: str, status: str, code: str = "", text: str = "") -> str:
    return f"R{mid:<36}{status}{code:<8}{text:<100}{'':<20}"


HEADER = "H01IPRES     MSNAS     ACK-0001            MSNAS-20260701-0001 20260702"
MID = message_id(Institution.IPRES, uuid.UUID(int=1), "ipres.contribution")


class TestIpresContract(OutboundAdapterContract):
    adapter: ClassVar[ModuleType] = adapters.ipres

    def build_ack(self, messages: list[OutboundMessage], rejected: Rejections) -> bytes:
        answers = []
        for n, m in enumerate(messages, start=1):
            if m.message_id in rejected:
                code, text = rejected[m.message_id]
                answers.append(Ack(m.message_id, Institution.IPRES, AckStatus.REJECTED, code, text))
            else:
                ref = f"IPR-2026-{n:06d}"
                answers.append(
                    Ack(m.message_id, Institution.IPRES, AckStatus.ACCEPTED, institution_ref=ref)
                )
        return build_ack_file(
            answers, file_id="ACK-0001", declaration_file_id=FILE_ID, created=date(2026, 7, 2)
        )

    def malformed_acks(self) -> dict[str, bytes]:
        ok = ack_line(MID, "A")
        trailer_1 = "T000000001000000001000000000"

        def file(*lines: str) -> bytes:
            return ("\r\n".join(lines) + "\r\n").encode("utf-8")

        return {
            "empty": b"",
            "not utf-8": b"H01IPRES\xff\xfe\r\n",
            "json, not the format": b'{"acks": []}',
            "no header": file(ok, trailer_1),
            "no trailer": file(HEADER, ok),
            "unknown status": file(HEADER, ack_line(MID, "X"), trailer_1),
            "missing message id": file(HEADER, ack_line("", "A"), trailer_1),
            "message id not a uuid": file(HEADER, ack_line("x" * 36, "A"), trailer_1),
            "rejected without reason": file(
                HEADER, ack_line(MID, "R"), "T000000001000000000000000001"
            ),
            "count mismatch": file(HEADER, ok, "T000000002000000002000000000"),
            "accepted count mismatch": file(HEADER, ok, "T000000001000000000000000001"),
            "same message answered twice": file(HEADER, ok, ok, "T000000002000000002000000000"),
            "short line": file(HEADER, ok[:-30], trailer_1),
            "a declaration file, not an ack": file(
                "H01MSNAS     IPRES     F1                  20260701",
                "T000000000+000000000000000000",
            ),
        }

    def test_dependent_removed_of_an_old_age_member_translates(self) -> None:
        event = removed_dependent_example()
        messages = self.adapter.translate(event, opted_into_everything(event))
        assert [m.kind for m in messages] == ["ipres.dependent"]
        self.adapter.validate(messages[0])


def removed_dependent_example() -> DependentRemoved:
    """The shared example, moved to a member opted into old age (MSNAS-DK-000123)."""
    raw = next(e for e in raw_examples() if e["event_type"] == "member.dependent_removed")
    raw = {**raw, "member_id": "MSNAS-DK-000123"}
    raw["payload"] = {**raw["payload"], "dependent_id": "MSNAS-DK-000123-D03"}
    event = parse_event(raw)
    assert isinstance(event, DependentRemoved)
    return event


def golden_messages() -> list[tuple[CanonicalEvent, list[OutboundMessage]]]:
    contract = TestIpresContract()
    out = [(e, adapters.ipres.translate(e, p)) for e, p in contract.routed_examples()]
    removed = removed_dependent_example()
    out.append((removed, adapters.ipres.translate(removed, opted_into_everything(removed))))
    return out


def check_golden(name: str, actual: bytes) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(actual)
    assert path.exists(), f"{path} missing: run with JOKKO_UPDATE_GOLDEN=1"
    assert actual == path.read_bytes(), f"{name} differs from its golden file"


def test_declaration_file_of_all_examples_matches_golden() -> None:
    messages = [m for _e, ms in golden_messages() for m in ms]
    check_golden(
        "declaration.txt", build_declaration_file(messages, file_id=FILE_ID, created=CREATED)
    )


def test_record_lines_per_event_type_match_golden() -> None:
    by_type: dict[str, list[OutboundMessage]] = {}
    for event, messages in golden_messages():
        if isinstance(event, MemberEnrolled) and event.event_type in by_type:
            continue
        by_type.setdefault(event.event_type, []).extend(messages)
    for event_type, messages in sorted(by_type.items()):
        body = b"".join(m.body + b"\r\n" for m in messages)
        check_golden(f"{event_type}.txt", body)


def test_ack_file_matches_golden() -> None:
    messages = [m for _e, ms in golden_messages() for m in ms]
    refused = {messages[1].message_id: ("R042", "Numéro d'identification inconnu")}
    check_golden("ack.txt", TestIpresContract().build_ack(messages, refused))
