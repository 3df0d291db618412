"""Values that come back event after event (a member's phone, the branch sets) validate alike.

Phone validation is memoised and the enum orders are taken once at import: these tests pin
that a repeat gets exactly the first answer, refusals included.
"""

from __future__ import annotations

from typing import Any

import pytest

from schemas import (
    Branch,
    ContributionPaid,
    InvalidEvent,
    MemberEnrolled,
    Package,
    ProviderAgreementSigned,
    parse_event,
)
from tests.unit.test_schemas_parsing import example

pytestmark = pytest.mark.unit


def paid_by(phone: str) -> dict[str, Any]:
    raw = example("contribution.paid")
    raw["payload"]["payer_phone"] = phone
    return raw


@pytest.mark.parametrize("phone", ["+221 73 123 45 67", "77 123 45", "not a phone"])
def test_an_invalid_phone_is_refused_every_time_it_comes_back(phone: str) -> None:
    for _ in range(3):
        with pytest.raises(InvalidEvent) as caught:
            parse_event(paid_by(phone))
        assert [(e.loc, e.type) for e in caught.value.errors] == [
            ("payload.payer_phone", "phone_invalid")
        ]


def test_a_repeated_phone_gets_the_same_canonical_form_in_any_field() -> None:
    for written in ["78 901 23 45", "+221789012345", "78 901 23 45"]:
        event = parse_event(paid_by(written))
        assert isinstance(event, ContributionPaid)
        assert event.payload.payer_phone == "+221789012345"
        raw = example("member.enrolled")
        raw["payload"]["identity"]["phone"] = written
        enrolled = parse_event(raw)
        assert isinstance(enrolled, MemberEnrolled)
        assert enrolled.payload.identity.phone == "+221789012345"


def test_a_valid_phone_does_not_make_a_near_miss_pass() -> None:
    assert isinstance(parse_event(paid_by("77 123 45 67")), ContributionPaid)
    with pytest.raises(InvalidEvent):
        parse_event(paid_by("77 123 45 6"))


def test_every_branch_order_comes_out_in_declaration_order() -> None:
    every = list(Branch)
    for shift in range(len(every)):
        written = every[shift:] + every[:shift]
        raw = example("contribution.paid")
        raw["payload"] |= {"amount": 1000 * len(every), "payer_phone": "77 123 45 67"}
        raw["payload"]["allocation"] = {b.value: 1000 for b in written}
        event = parse_event(raw)
        assert isinstance(event, ContributionPaid)
        assert list(event.payload.allocation) == every

        enrolled_raw = example("member.enrolled")
        enrolled_raw["payload"]["opted_branches"] = [b.value for b in written]
        enrolled = parse_event(enrolled_raw)
        assert isinstance(enrolled, MemberEnrolled)
        assert enrolled.payload.opted_branches == tuple(every)


def test_packages_come_out_in_declaration_order() -> None:
    raw = example("provider.agreement_signed")
    raw["payload"]["packages"] = [p.value for p in reversed(Package)]
    event = parse_event(raw)
    assert isinstance(event, ProviderAgreementSigned)
    assert event.payload.packages == tuple(Package)
