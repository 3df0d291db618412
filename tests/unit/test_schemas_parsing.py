"""Parsing returns the precise class and puts every value in its one canonical form."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from schemas import (
    EVENT_CLASSES,
    Branch,
    ContributionPaid,
    InvalidEvent,
    MemberEnrolled,
    ProviderAgreementSigned,
    Region,
    dump_event,
    parse_event,
)
from schemas.examples import raw_examples

pytestmark = pytest.mark.unit


def example(event_type: str) -> dict[str, Any]:
    return copy.deepcopy(next(r for r in raw_examples() if r["event_type"] == event_type))


@pytest.mark.parametrize("event_type", sorted(EVENT_CLASSES))
def test_parse_returns_the_class_of_the_event_type(event_type: str) -> None:
    event = parse_event(example(event_type))
    assert type(event) is EVENT_CLASSES[event_type]
    assert event.event_type == event_type
    assert event.schema_version == 1


@pytest.mark.parametrize(
    "written",
    ["77 123 45 67", "771234567", "+221771234567", "00221 77 123 45 67", "+221 77-123-45-67"],
)
def test_phone_is_stored_in_e164(written: str) -> None:
    raw = example("member.enrolled")
    raw["payload"]["identity"]["phone"] = written
    event = parse_event(raw)
    assert isinstance(event, MemberEnrolled)
    assert event.payload.identity.phone == "+221771234567"


@pytest.mark.parametrize("written", ["+33 6 12 34 56 78", "0033612345678", "+223 76 12 34 56"])
def test_foreign_numbers_are_refused_with_the_field_named(written: str) -> None:
    raw = example("member.enrolled")
    raw["payload"]["identity"]["phone"] = written
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw)
    assert [(e.loc, e.type) for e in caught.value.errors] == [
        ("payload.identity.phone", "phone_not_senegalese")
    ]
    assert "33" not in str(caught.value)  # the value itself is never echoed


def test_payer_and_witness_phones_follow_the_same_rule() -> None:
    raw = example("contribution.paid")
    raw["payload"]["payer_phone"] = "+33612345678"
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw)
    assert [(e.loc, e.type) for e in caught.value.errors] == [
        ("payload.payer_phone", "phone_not_senegalese")
    ]


@pytest.mark.parametrize("written", ["2751198801234", "2 751 1988 01234", "2-751-1988-01234"])
def test_nin_is_stored_without_separators(written: str) -> None:
    raw = example("member.enrolled")
    raw["payload"]["identity"]["nin"] = written
    event = parse_event(raw)
    assert isinstance(event, MemberEnrolled)
    assert event.payload.identity.nin == "2751198801234"


def test_names_are_trimmed_and_nfc() -> None:
    raw = example("member.enrolled")
    raw["payload"]["identity"]["given_names"] = "  Nde\u0300ye Fatou "
    event = parse_event(raw)
    assert isinstance(event, MemberEnrolled)
    assert event.payload.identity.given_names == "Ndèye Fatou"
    assert event == parse_event(example("member.enrolled"))


def test_datetimes_are_stored_in_utc() -> None:
    raw = example("member.enrolled")
    raw["occurred_at"] = "2026-01-05T10:10:00+01:00"
    event = parse_event(raw)
    assert event.occurred_at.utcoffset() is not None
    assert event.occurred_at.isoformat() == "2026-01-05T09:10:00+00:00"
    assert b'"occurred_at":"2026-01-05T09:10:00Z"' in dump_event(event)


def test_sets_are_stored_in_declaration_order() -> None:
    raw = example("contribution.paid")
    raw["payload"]["allocation"] = dict(reversed(list(raw["payload"]["allocation"].items())))
    shuffled = parse_event(raw)
    assert isinstance(shuffled, ContributionPaid)
    assert list(shuffled.payload.allocation) == [Branch.HEALTH, Branch.FAMILY, Branch.OLD_AGE]
    assert shuffled == parse_event(example("contribution.paid"))

    raw = example("member.enrolled")
    raw["payload"]["opted_branches"] = ["old_age", "health", "family"]
    enrolled = parse_event(raw)
    assert isinstance(enrolled, MemberEnrolled)
    assert enrolled.payload.opted_branches == (Branch.HEALTH, Branch.FAMILY, Branch.OLD_AGE)


def test_provider_events_are_keyed_by_agreement_number() -> None:
    event = parse_event(example("provider.agreement_signed"))
    assert isinstance(event, ProviderAgreementSigned)
    assert event.member_id == event.payload.agreement_number == "CONV-TH-00042"


def test_dump_is_canonical_json() -> None:
    event = parse_event(example("member.enrolled"))
    dumped = dump_event(event)
    decoded = json.loads(dumped)
    expected = json.dumps(decoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert dumped == expected.encode()
    assert "Ndèye Fatou".encode() in dumped  # UTF-8, not \\u escapes
    assert decoded["payload"]["region"] == Region.DAKAR.value


def test_events_are_immutable() -> None:
    event = parse_event(example("member.enrolled"))
    with pytest.raises(ValueError, match="frozen"):
        event.member_id = "MSNAS-DK-000999"  # type: ignore[misc]


def test_the_fourteen_regions() -> None:
    assert sorted(r.value for r in Region) == [
        "SN-DB", "SN-DK", "SN-FK", "SN-KA", "SN-KD", "SN-KE", "SN-KL",
        "SN-LG", "SN-MT", "SN-SE", "SN-SL", "SN-TC", "SN-TH", "SN-ZG",
    ]  # fmt: skip
