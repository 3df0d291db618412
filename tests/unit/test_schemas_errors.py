"""Error reports are field-level, readable, and never carry personal data."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from schemas import FieldError, InvalidEvent, JokkoError, parse_event
from schemas.examples import raw_examples

pytestmark = pytest.mark.unit

NAME = "Ndèye Fatou"
NIN = "2751198801234"
PHONE = "77 123 45 67"


def enrolment() -> dict[str, Any]:
    raw = copy.deepcopy(next(r for r in raw_examples() if r["event_type"] == "member.enrolled"))
    identity = raw["payload"]["identity"]
    assert (identity["given_names"], identity["nin"], identity["phone"]) == (NAME, NIN, PHONE)
    return raw


def report(raw: dict[str, Any]) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw)
    return caught.value


def leaked(error: InvalidEvent, *secrets: str) -> list[str]:
    text = str(error) + repr(error.errors) + repr(error.args)
    return [s for s in secrets if s in text or s.replace(" ", "") in text]


def test_invalid_values_are_not_echoed() -> None:
    raw = enrolment()
    bad_nin, bad_phone, long_name = "27511988012345", "+221 73 555 12 34", "Aïssatou" * 20
    raw["payload"]["identity"] |= {"nin": bad_nin, "phone": bad_phone, "family_name": long_name}
    error = report(raw)
    assert {e.loc for e in error.errors} == {
        "payload.identity.nin",
        "payload.identity.phone",
        "payload.identity.family_name",
    }
    assert leaked(error, bad_nin, bad_phone, long_name, "Aïssatou") == []


def test_valid_personal_data_beside_an_error_is_not_echoed() -> None:
    raw = enrolment()
    raw["payload"]["package"] = "premium"
    raw["payload"]["identity"]["birth_date"] = "1988-13-12"
    error = report(raw)
    assert leaked(error, NAME, "Diop", NIN, PHONE, "+221771234567", "1988-13-12") == []


def test_invalid_event_is_a_jokko_error_with_field_errors() -> None:
    raw = enrolment()
    raw["payload"]["region"] = "SN-DI"
    error = report(raw)
    assert isinstance(error, JokkoError)
    (field_error,) = error.errors
    assert isinstance(field_error, FieldError)
    assert field_error.loc == "payload.region"
    assert field_error.type == "enum"
    assert "'SN-DK'" in field_error.message  # says what would have been right
    assert str(error).startswith("invalid event: payload.region: Input should be")


def test_root_errors_are_named_in_the_message() -> None:
    with pytest.raises(InvalidEvent, match="<event>: Invalid JSON"):
        parse_event("{")
