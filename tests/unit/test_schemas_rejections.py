"""Every validation rule refuses bad input with a field-level error at the exact place."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import FieldError, InvalidEvent, parse_event
from schemas.examples import raw_examples

pytestmark = pytest.mark.unit


def example(event_type: str) -> dict[str, Any]:
    """A fresh, valid raw event of that type, to break one thing in."""
    return copy.deepcopy(next(r for r in raw_examples() if r["event_type"] == event_type))


def rejection(raw: dict[str, Any] | str | bytes) -> list[FieldError]:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw)
    return list(caught.value.errors)


def assert_only(raw: dict[str, Any] | str | bytes, loc: str, error_type: str) -> None:
    errors = rejection(raw)
    assert [(e.loc, e.type) for e in errors] == [(loc, error_type)], errors


def next_month() -> str:
    now = datetime.now(UTC)
    return f"{now.year + 1}-01" if now.month == 12 else f"{now.year}-{now.month + 1:02d}"


# --- money ------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [10500.0, "10500", None])
def test_money_must_be_an_integer_not_a_float_or_text(amount: object) -> None:
    raw = example("contribution.paid")
    raw["payload"]["amount"] = amount
    assert_only(raw, "payload.amount", "int_type")


def test_bool_is_not_an_amount() -> None:
    raw = example("contribution.paid")
    raw["payload"]["amount"] = True
    assert_only(raw, "payload.amount", "int_type")


@pytest.mark.parametrize("amount", [0, -10500])
def test_amount_must_be_positive(amount: int) -> None:
    raw = example("contribution.paid")
    raw["payload"]["amount"] = amount
    raw["payload"]["allocation"] = {"health": 1}
    assert_only(raw, "payload.amount", "greater_than")


def test_negative_share_is_refused() -> None:
    raw = example("contribution.paid")
    raw["payload"]["allocation"] = {"health": 12000, "family": -1500}
    assert_only(raw, "payload.allocation.family", "greater_than")


def test_float_unit_price_is_refused() -> None:
    raw = example("claim.submitted")
    raw["payload"]["items"][1]["unit_price"] = 2250.0
    assert_only(raw, "payload.items.1.unit_price", "int_type")


def test_allocation_must_add_up_to_the_amount() -> None:
    raw = example("contribution.paid")
    raw["payload"]["allocation"]["health"] += 1
    assert_only(raw, "payload.allocation", "allocation_mismatch")


def test_reversal_allocation_must_add_up_too() -> None:
    raw = example("contribution.reversed")
    raw["payload"]["amount"] = 10000
    assert_only(raw, "payload.allocation", "allocation_mismatch")


def test_unknown_branch_in_allocation() -> None:
    raw = example("contribution.paid")
    raw["payload"]["allocation"] = {"pension": raw["payload"]["amount"]}
    assert_only(raw, "payload.allocation.pension.[key]", "enum")


def test_claim_total_must_be_the_sum_of_items() -> None:
    raw = example("claim.submitted")
    raw["payload"]["total"] += 100
    assert_only(raw, "payload.total", "total_mismatch")


def test_item_amount_must_be_quantity_times_unit_price() -> None:
    raw = example("claim.submitted")
    raw["payload"]["items"][1]["quantity"] = 3
    errors = rejection(raw)
    assert [(e.loc, e.type) for e in errors] == [("payload.items.1.amount", "amount_mismatch")]


@pytest.mark.parametrize(
    ("outcome", "approved", "loc", "error_type"),
    [
        ("approved", 100, "payload.approved_amount", "approved_amount_mismatch"),
        ("partially_approved", 2100, "payload.approved_amount", "approved_amount_mismatch"),
        ("rejected", 1680, "payload.approved_amount", "approved_amount_mismatch"),
    ],
)
def test_adjudication_outcome_matches_amounts(
    outcome: str, approved: int, loc: str, error_type: str
) -> None:
    raw = example("claim.adjudicated")
    raw["payload"] |= {"outcome": outcome, "claimed_amount": 2100, "approved_amount": approved}
    assert_only(raw, loc, error_type)


def test_partial_approval_needs_a_reason() -> None:
    raw = next(r for r in raw_examples() if r["payload"].get("outcome") == "partially_approved")
    raw["payload"]["reason_codes"] = []
    assert_only(raw, "payload.reason_codes", "reason_missing")


# --- periods and time -------------------------------------------------------------------------


@pytest.mark.parametrize("period", ["2026-2", "2026-13", "202602", "2026/02", "1999-12", ""])
def test_period_must_be_yyyy_mm(period: str) -> None:
    raw = example("contribution.paid")
    raw["payload"]["period"] = period
    assert_only(raw, "payload.period", "string_pattern_mismatch")


def test_period_in_the_future_is_refused() -> None:
    raw = example("contribution.paid")
    raw["payload"]["period"] = next_month()
    assert_only(raw, "payload.period", "period_in_future")


def test_period_after_the_payment_month_is_refused() -> None:
    raw = example("contribution.paid")
    assert raw["occurred_at"].startswith("2026-02")
    raw["payload"]["period"] = "2026-03"
    assert_only(raw, "payload.period", "period_in_future")


@pytest.mark.parametrize("field", ["occurred_at", "recorded_at"])
def test_naive_datetime_is_refused(field: str) -> None:
    raw = example("member.enrolled")
    raw[field] = "2026-01-05T09:10:00"
    assert_only(raw, field, "timezone_aware")


def test_timestamp_number_is_not_a_datetime() -> None:
    raw = example("member.enrolled")
    raw["occurred_at"] = 1767604200
    assert_only(raw, "occurred_at", "datetime_type")


def test_recorded_before_it_occurred_is_refused() -> None:
    raw = example("member.enrolled")
    raw["recorded_at"] = "2026-01-05T09:09:59Z"
    assert_only(raw, "recorded_at", "recorded_before_occurred")


def test_birth_date_in_the_future_is_refused() -> None:
    raw = example("member.enrolled")
    raw["payload"]["identity"]["birth_date"] = f"{datetime.now(UTC).year + 1}-01-01"
    assert_only(raw, "payload.identity.birth_date", "date_in_future")


def test_accident_after_its_declaration_is_refused() -> None:
    raw = example("work_accident.declared")
    raw["payload"]["accident_at"] = "2026-04-22T17:31:00Z"
    assert_only(raw, "payload.accident_at", "date_after_event")


def test_expected_delivery_must_follow_confirmation() -> None:
    raw = example("maternity.declared")
    raw["payload"]["expected_delivery_date"] = "2026-02-01"
    assert_only(raw, "payload.expected_delivery_date", "delivery_date_implausible")


def test_cash_benefit_needs_a_leave_start() -> None:
    raw = example("maternity.declared")
    del raw["payload"]["leave_start"]
    assert_only(raw, "payload.leave_start", "leave_start_missing")


# --- identity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("nin", ["275119880123", "27511988012345", "2751198801A34", ""])
def test_nin_must_be_13_digits(nin: str) -> None:
    raw = example("member.enrolled")
    raw["payload"]["identity"]["nin"] = nin
    assert_only(raw, "payload.identity.nin", "nin_invalid")


def test_dependent_nin_is_checked_too() -> None:
    raw = example("member.enrolled")
    raw["payload"]["dependents"][0]["identity"]["nin"] = "12345"
    assert_only(raw, "payload.dependents.0.identity.nin", "nin_invalid")


@pytest.mark.parametrize("phone", ["12345", "+221 73 123 45 67", "77 123 45", "not a phone"])
def test_phone_must_be_a_valid_number(phone: str) -> None:
    raw = example("member.enrolled")
    raw["payload"]["identity"]["phone"] = phone
    assert_only(raw, "payload.identity.phone", "phone_invalid")


def test_mobile_money_needs_the_paying_wallet() -> None:
    raw = example("contribution.paid")
    assert raw["payload"]["channel"] == "wave"
    del raw["payload"]["payer_phone"]
    assert_only(raw, "payload.payer_phone", "payer_phone_missing")


@pytest.mark.parametrize("region", ["SN-DI", "SN-XX", "DK", "sn-dk"])
def test_unknown_region_is_refused(region: str) -> None:
    raw = example("member.enrolled")
    raw["payload"]["region"] = region
    assert_only(raw, "payload.region", "enum")


def test_unknown_source_region_is_refused() -> None:
    raw = example("member.enrolled")
    raw["source"]["region"] = "SN-DI"
    assert_only(raw, "source.region", "enum")


def test_dependent_needs_a_relationship() -> None:
    raw = example("member.enrolled")
    del raw["payload"]["dependents"][1]["relationship"]
    assert_only(raw, "payload.dependents.1.relationship", "missing")


def test_dependent_relationship_must_be_known() -> None:
    raw = example("member.dependent_added")
    raw["payload"]["dependent"]["relationship"] = "cousin"
    assert_only(raw, "payload.dependent.relationship", "enum")


def test_dependent_must_belong_to_the_member() -> None:
    raw = example("member.enrolled")
    raw["payload"]["dependents"][0]["dependent_id"] = "MSNAS-DK-000999-D01"
    assert_only(raw, "payload.dependents.0.dependent_id", "dependent_id_mismatch")


def test_dependent_listed_twice_is_refused() -> None:
    raw = example("member.enrolled")
    raw["payload"]["dependents"].append(raw["payload"]["dependents"][0])
    assert_only(raw, "payload.dependents", "duplicate_dependent")


def test_branch_listed_twice_is_refused() -> None:
    raw = example("member.enrolled")
    raw["payload"]["opted_branches"] = ["health", "health"]
    assert_only(raw, "payload.opted_branches", "duplicate_branch")


def test_no_branch_is_refused() -> None:
    raw = example("member.enrolled")
    raw["payload"]["opted_branches"] = []
    assert_only(raw, "payload.opted_branches", "too_short")


def test_update_without_change_is_refused() -> None:
    raw = example("member.updated")
    raw["payload"]["changes"] = {}
    assert_only(raw, "payload.changes", "no_change")


@pytest.mark.parametrize("member_id", ["MSNAS-DI-000123", "MSNAS-DK-123", "msnas-dk-000123", ""])
def test_member_id_must_follow_its_pattern(member_id: str) -> None:
    raw = example("contribution.paid")
    raw["member_id"] = member_id
    assert_only(raw, "member_id", "string_pattern_mismatch")


def test_claim_beneficiary_must_be_covered_by_the_member() -> None:
    raw = example("claim.submitted")
    raw["payload"]["beneficiary_id"] = "MSNAS-DK-000123"
    assert_only(raw, "payload.beneficiary_id", "beneficiary_mismatch")


def test_cash_benefit_is_for_the_insured_woman_only() -> None:
    raw = next(r for r in raw_examples() if r["payload"].get("beneficiary_id", "").endswith("D01"))
    raw["payload"] |= {"cash_benefit_requested": True, "leave_start": "2026-10-20"}
    assert_only(raw, "payload.cash_benefit_requested", "cash_benefit_not_insured")


def test_provider_event_is_keyed_by_its_agreement_number() -> None:
    raw = example("provider.agreement_signed")
    raw["member_id"] = "CONV-TH-00043"
    assert_only(raw, "payload.agreement_number", "agreement_number_mismatch")


def test_provider_ninea_is_checked() -> None:
    raw = example("provider.agreement_signed")
    raw["payload"]["ninea"] = "3067222"
    assert_only(raw, "payload.ninea", "ninea_invalid")


# --- claims -----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["J4", "J459", "j45.9", "J45.", "J45.123", "45.9", "JJ5"])
def test_diagnosis_must_have_the_icd10_shape(code: str) -> None:
    raw = example("claim.submitted")
    raw["payload"]["diagnoses"] = [code]
    assert_only(raw, "payload.diagnoses.0", "string_pattern_mismatch")


def test_claim_needs_a_diagnosis() -> None:
    raw = example("claim.submitted")
    raw["payload"]["diagnoses"] = []
    assert_only(raw, "payload.diagnoses", "too_short")


# --- envelope and document --------------------------------------------------------------------


def test_unknown_field_is_refused_in_the_payload() -> None:
    raw = example("contribution.paid")
    raw["payload"]["amount_in_euros"] = 16
    assert_only(raw, "payload.amount_in_euros", "extra_forbidden")


def test_unknown_field_is_refused_in_the_envelope() -> None:
    raw = example("contribution.paid")
    raw["priority"] = "high"
    assert_only(raw, "priority", "extra_forbidden")


def test_unknown_event_type_is_refused() -> None:
    raw = example("contribution.paid")
    raw["event_type"] = "contribution.refunded"
    assert_only(raw, "event_type", "union_tag_invalid")


def test_missing_event_type_is_refused() -> None:
    raw = example("contribution.paid")
    del raw["event_type"]
    assert_only(raw, "event_type", "union_tag_not_found")


@pytest.mark.parametrize("version", [2, 0, True, 1.0, "1"])
def test_schema_version_must_be_exactly_1(version: object) -> None:
    raw = example("contribution.paid")
    raw["schema_version"] = version
    errors = rejection(raw)
    assert [e.loc for e in errors] == ["schema_version"]


def test_schema_version_is_required_not_defaulted() -> None:
    # Once a v2 exists, an event without a version must not be read as v1 by accident.
    raw = example("contribution.paid")
    del raw["schema_version"]
    assert_only(raw, "schema_version", "missing")


def test_event_id_must_be_a_uuid() -> None:
    raw = example("contribution.paid")
    raw["event_id"] = "pay-42"
    assert_only(raw, "event_id", "uuid_parsing")


@pytest.mark.parametrize("raw", ["{not json", b"\xff\xfe", "", b'{"event_type": "member.enrolled"'])
def test_non_json_is_refused(raw: str | bytes) -> None:
    assert_only(raw, "", "json_invalid")


@pytest.mark.parametrize("raw", ["[]", "42", '"member.enrolled"', "null"])
def test_json_that_is_not_an_object_is_refused(raw: str) -> None:
    assert [e.loc for e in rejection(raw)] == [""]


def test_dict_with_python_objects_is_refused_cleanly() -> None:
    raw: dict[str, Any] = example("contribution.paid")
    raw["payload"]["amount"] = object()
    assert_only(raw, "", "json_invalid")


def test_several_problems_are_all_reported() -> None:
    raw = example("member.enrolled")
    raw["payload"]["identity"]["nin"] = "123"
    raw["payload"]["region"] = "SN-DI"
    raw["payload"]["package"] = "premium"
    locs = {e.loc for e in rejection(raw)}
    assert locs == {"payload.identity.nin", "payload.region", "payload.package"}


@pytest.mark.parametrize("written", ["10500.0", "1.05e4", "true", '"10500"'])
def test_money_in_json_text_must_be_an_integer_literal(written: str) -> None:
    raw = example("contribution.paid")
    text = json.dumps(raw).replace('"amount": 10500', f'"amount": {written}', 1)
    assert written in text
    assert_only(text, "payload.amount", "int_type")
