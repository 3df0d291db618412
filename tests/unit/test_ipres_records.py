"""IPRES record lines: mapping from canonical events, validation errors, acks, and FORMAT.md."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path

import pytest

import adapters.ipres as ipres
from adapters.base import (
    Ack,
    AckStatus,
    Institution,
    InvalidMessage,
    MalformedAck,
    OutboundMessage,
    UnsupportedEvent,
    message_id,
)
from adapters.ipres.records import AFFILIATION, ALL_LAYOUTS, CONTRIBUTION, Layout, fit
from schemas import CanonicalEvent, MemberEnrolled, parse_event
from schemas.examples import load_examples, raw_examples
from tests.contract.suite import opted_into_everything
from tests.contract.test_ipres_contract import golden_messages

pytestmark = pytest.mark.unit

FORMAT_MD = Path(ipres.__file__).with_name("FORMAT.md")


def by_event(event_id: str) -> tuple[CanonicalEvent, list[OutboundMessage]]:
    return next((e, ms) for e, ms in golden_messages() if str(e.event_id) == event_id)


def field(body: bytes, layout: Layout, name: str) -> str:
    col = layout.column(name)
    return body.decode("utf-8")[col.start - 1 : col.end].rstrip(" ")


def rebody(message: OutboundMessage, text: str) -> OutboundMessage:
    return dataclasses.replace(message, body=text.encode("utf-8"))


def setcol(message: OutboundMessage, layout: Layout, name: str, value: str) -> OutboundMessage:
    col, text = layout.column(name), message.body.decode("utf-8")
    return rebody(message, text[: col.start - 1] + value.ljust(col.width) + text[col.end :])


# --- translation ---------------------------------------------------------------------------------


def test_enrolment_gives_one_affiliation_and_one_line_per_dependent() -> None:
    _e, messages = by_event("1095bd6f-a0e9-536f-9345-edb683b4c2ec")
    assert [m.kind for m in messages] == ["ipres.affiliation"] + ["ipres.dependent"] * 3
    assert all(m.content_type == "text/plain; charset=utf-8" for m in messages)
    body = messages[0].body
    assert field(body, AFFILIATION, "given_names") == "Ndèye Fatou"
    assert field(body, AFFILIATION, "nin") == "2751198801234"
    assert field(body, AFFILIATION, "region") == "SN-DK"
    assert field(body, AFFILIATION, "effective_date") == "20260105"


def test_accented_names_survive_and_widths_count_characters() -> None:
    _e, messages = by_event("3a7e3c3b-29bf-5fe9-a800-b31c3813fcce")
    body = messages[0].body
    assert field(body, AFFILIATION, "family_name") == "Sène"
    assert field(body, AFFILIATION, "given_names") == "Aïssatou"
    assert len(body.decode("utf-8")) == AFFILIATION.length < len(body)


def test_long_names_are_cut_to_the_column_and_controls_replaced() -> None:
    assert fit("N" * 49 + " Diop", 50) == "N" * 49
    assert fit("Awa\nDiop", 50) == "Awa?Diop"
    assert fit("  Sène ", 50) == "Sène"
    assert fit("Ndèye", 5) == "Ndèye"
    raw = next(e for e in raw_examples() if e["event_type"] == "member.enrolled")
    raw["payload"]["identity"]["family_name"] = "Ba" * 40
    event = parse_event(raw)
    assert isinstance(event, MemberEnrolled)
    (first, *_rest) = ipres.translate(event, opted_into_everything(event))
    ipres.validate(first)
    assert field(first.body, AFFILIATION, "family_name") == "Ba" * 25


def test_contribution_carries_only_the_old_age_share() -> None:
    _e, (message,) = by_event("9b36a32e-f673-55b1-b8b8-c77a05ba961a")
    assert field(message.body, CONTRIBUTION, "amount") == "0000002500"
    assert field(message.body, CONTRIBUTION, "sign") == "+"
    assert field(message.body, CONTRIBUTION, "period") == "202602"
    assert field(message.body, CONTRIBUTION, "channel") == "OM"
    assert field(message.body, CONTRIBUTION, "nin") == ""


def test_a_reversal_is_a_negative_line_pointing_at_the_original_contribution() -> None:
    _e, (original,) = by_event("d7d8acfc-4696-5ef9-bbd0-2589ff180c70")
    _e, (reversal,) = by_event("547e168e-8d2a-5b10-bf8b-c88f8a82fd73")
    assert field(reversal.body, CONTRIBUTION, "movement") == "AN"
    assert field(reversal.body, CONTRIBUTION, "sign") == "-"
    assert field(reversal.body, CONTRIBUTION, "original_message_id") == original.message_id
    assert field(reversal.body, CONTRIBUTION, "reversal_reason") == "DP"


def test_an_update_opting_into_old_age_is_a_change_record() -> None:
    _e, (message,) = by_event("f76a8524-e20c-5342-a874-23c8df6afecc")
    assert field(message.body, AFFILIATION, "movement") == "MO"
    assert field(message.body, AFFILIATION, "old_age") == "O"
    assert field(message.body, AFFILIATION, "phone") == "+221772104455"
    assert field(message.body, AFFILIATION, "nin") == ""


def test_message_ids_derive_from_the_event() -> None:
    event, messages = by_event("1095bd6f-a0e9-536f-9345-edb683b4c2ec")
    assert messages[0].message_id == message_id(Institution.IPRES, event.event_id, messages[0].kind)
    assert messages[2].message_id == message_id(
        Institution.IPRES, event.event_id, "ipres.dependent", 2
    )


def test_events_not_for_ipres_are_refused() -> None:
    events = {e.event_type: e for e in load_examples()}
    enrolled = events["member.enrolled"]
    no_old_age = dataclasses.replace(opted_into_everything(enrolled), opted_branches=frozenset())
    with pytest.raises(UnsupportedEvent):
        ipres.translate(enrolled, no_old_age)
    with pytest.raises(UnsupportedEvent):
        ipres.translate(events["member.status_changed"], None)
    without_share = next(
        e
        for e in load_examples()
        if e.event_type == "contribution.paid" and "old_age" not in str(e.payload)
    )
    with pytest.raises(UnsupportedEvent):
        ipres.translate(without_share, None)


# --- validation ---------------------------------------------------------------------------------


def the_contribution() -> OutboundMessage:
    return by_event("f5b4d0e6-9e29-53d3-9dba-14f68083d504")[1][0]


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        (("amount", "00000x2000"), "line 1, col 83-92 (amount)"),
        (("amount", "0000000000"), "line 1, col 83-92 (amount)"),
        (("period", "202613"), "line 1, col 76-81 (period)"),
        (("sign", "-"), "line 1, col 82-82 (sign)"),
        (("channel", ""), "line 1, col 157-158 (channel)"),
        (("reversal_reason", "DP"), "line 1, col 203-204 (reversal_reason)"),
        (("payment_date", "20260230"), "line 1, col 159-166 (payment_date)"),
        (("member_id", "MSNAS-DK-000124"), "line 1, col 40-62 (member_id)"),
        (("message_id", "0" * 36), "line 1, col 2-37 (message_id)"),
    ],
)
def test_validate_locates_the_bad_column(change: tuple[str, str], loc: str) -> None:
    broken = setcol(the_contribution(), CONTRIBUTION, *change)
    with pytest.raises(InvalidMessage) as info:
        ipres.validate(broken)
    assert loc in [e.loc for e in info.value.errors], info.value.errors


def test_validate_checks_the_frame_of_the_message() -> None:
    m = the_contribution()
    cases = {
        "wrong length": rebody(m, m.body.decode() + " "),
        "two lines": rebody(m, m.body.decode() + "\r\n"),
        "not utf-8": dataclasses.replace(m, body=b"\xff" + m.body[1:]),
        "wrong kind": dataclasses.replace(m, kind="ipres.affiliation"),
        "wrong content type": dataclasses.replace(m, content_type="application/json"),
    }
    for name, broken in cases.items():
        with pytest.raises(InvalidMessage) as info:
            ipres.validate(broken)
        assert info.value.errors, name


def test_movement_rules_need_and_forbid_fields() -> None:
    _e, messages = by_event("1095bd6f-a0e9-536f-9345-edb683b4c2ec")
    no_nin = setcol(messages[0], AFFILIATION, "nin", "")
    with pytest.raises(InvalidMessage, match=r"col 63-75 \(nin\): is required for movement AF"):
        ipres.validate(no_nin)
    _e, (status,) = by_event("2c66ebf7-f161-585d-abfe-aa656688aab8")
    named = setcol(status, AFFILIATION, "family_name", "Diallo")
    with pytest.raises(InvalidMessage, match=r"\(family_name\): must be blank for movement ST"):
        ipres.validate(named)
    decomposed = setcol(messages[0], AFFILIATION, "given_names", "Nde\u0300ye")
    with pytest.raises(InvalidMessage, match="NFC"):
        ipres.validate(decomposed)


# --- acknowledgements -----------------------------------------------------------------------------


def test_an_ack_round_trips_with_accents_and_references() -> None:
    mids = [m.message_id for _e, ms in golden_messages() for m in ms][:3]
    answers = [
        Ack(mids[0], Institution.IPRES, AckStatus.ACCEPTED, institution_ref="IPR-2026-000001"),
        Ack(
            mids[1],
            Institution.IPRES,
            AckStatus.REJECTED,
            "R042",
            "Numéro d'identification inconnu",
        ),
        Ack(mids[2], Institution.IPRES, AckStatus.REJECTED, "R030", None),
    ]
    raw = ipres.build_ack_file(
        answers, file_id="ACK-1", declaration_file_id="F-1", created=date(2026, 7, 2)
    )
    assert ipres.parse_ack(raw) == answers
    assert ipres.parse_ack(raw.replace(b"\r\n", b"\n")) == answers
    assert raw.endswith(b"T000000003000000001000000002\r\n")


def test_an_ack_line_out_of_place_is_malformed() -> None:
    raw = ipres.build_ack_file(
        [], file_id="ACK-1", declaration_file_id="F-1", created=date(2026, 7, 2)
    )
    lines = raw.split(b"\r\n")
    with pytest.raises(MalformedAck, match=r"line 2, col 1-1 \(record_type\)"):
        ipres.parse_ack(b"\r\n".join([lines[0], b"X", lines[1]]))


# --- FORMAT.md --------------------------------------------------------------------------------


def table(layout: Layout) -> list[str]:
    rows = []
    for c in layout.columns:
        need = "yes" if c.required else "no"
        rows.append(f"| {c.start}-{c.end} | {c.width} | `{c.name}` | {need} | {c.meaning} |")
    return rows


def test_format_md_documents_every_layout_as_coded() -> None:
    text = FORMAT_MD.read_text(encoding="utf-8")
    for layouts in ALL_LAYOUTS.values():
        for layout in layouts:
            assert f"length {layout.length} characters" in text, layout.title
            for row in table(layout):
                assert row in text, row
