"""CMU translation specifics: identifiers, XOF integer money, ICD-10, conditional requests."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest

import adapters.cmu
from adapters.base import Institution, InvalidMessage, UnsupportedEvent, message_id
from adapters.cmu import systems as s
from adapters.cmu.mapping import canonical_json
from schemas import CanonicalEvent, ClaimSubmitted, parse_event
from schemas.examples import raw_examples

pytestmark = pytest.mark.unit

Json = dict[str, Any]


def example(event_type: str, n: int = 0, **payload: Any) -> CanonicalEvent:
    raw = copy.deepcopy([r for r in raw_examples() if r["event_type"] == event_type][n])
    raw["payload"].update(payload)
    return parse_event(raw)


def body(event: CanonicalEvent) -> Json:
    [message] = adapters.cmu.translate(event, None)
    doc: Json = json.loads(message.body)
    return doc


def resources(doc: Json, rtype: str) -> list[Json]:
    return [e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == rtype]


def numbers(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []


def test_enrolment_identifies_the_member_by_member_id_and_nin() -> None:
    doc = body(example("member.enrolled"))
    member = resources(doc, "Patient")[0]
    assert member["identifier"] == [
        {"system": s.MEMBER_ID, "value": "MSNAS-DK-000123"},
        {"system": s.NIN, "value": "2751198801234"},
    ]
    assert member["telecom"] == [{"system": "phone", "value": "+221771234567", "use": "mobile"}]
    assert member["address"] == [
        {"use": "home", "state": "SN-DK", "district": "Pikine", "country": "SN"}
    ]
    assert member["gender"] == "female"
    assert member["birthDate"] == "1988-06-12"


def test_enrolment_entries_are_conditional_creates_on_identifiers() -> None:
    doc = body(example("member.enrolled"))
    for entry in doc["entry"]:
        request, resource = entry["request"], entry["resource"]
        assert request["method"] == "POST"
        first = resource["identifier"][0]
        assert request["ifNoneExist"] == f"identifier={first['system']}|{first['value']}"
        assert entry["fullUrl"].startswith("urn:uuid:")


def test_dependents_are_patients_and_coded_related_persons() -> None:
    doc = body(example("member.enrolled"))
    related = resources(doc, "RelatedPerson")
    assert [r["relationship"][0]["coding"][0]["code"] for r in related] == ["SPS", "CHILD", "CHILD"]
    assert all(r["patient"]["identifier"]["value"] == "MSNAS-DK-000123" for r in related)
    dependents = resources(doc, "Patient")[1:]
    assert dependents[0]["identifier"][1] == {"system": s.NIN, "value": "1207198400119"}
    assert len(dependents[1]["identifier"]) == 1  # a child without NIN


def test_coverage_carries_the_package() -> None:
    [coverage] = resources(body(example("member.enrolled")), "Coverage")
    assert coverage["class"][0]["value"] == "complementary"
    assert coverage["identifier"] == [{"system": s.COVERAGE_ID, "value": "MSNAS-DK-000123"}]
    assert coverage["status"] == "active"


def test_claim_money_is_integer_xof() -> None:
    [claim] = resources(body(example("claim.submitted")), "Claim")
    assert claim["total"] == {"value": 9350, "currency": "XOF"}
    assert claim["item"][1]["unitPrice"] == {"value": 2250, "currency": "XOF"}
    assert claim["item"][1]["net"] == {"value": 4500, "currency": "XOF"}
    assert all(type(n) is int for n in numbers(claim))


def test_claim_diagnoses_are_icd10_codings() -> None:
    [claim] = resources(body(example("claim.submitted", 1)), "Claim")
    codings = [d["diagnosisCodeableConcept"]["coding"][0] for d in claim["diagnosis"]]
    assert codings == [{"system": s.ICD10, "code": "A09"}, {"system": s.ICD10, "code": "E86"}]
    # the care was for a dependent: the patient is the dependent, the coverage the member's
    assert claim["patient"]["identifier"] == {
        "system": s.DEPENDENT_ID,
        "value": "MSNAS-DK-000123-D02",
    }
    assert claim["insurance"][0]["coverage"]["identifier"]["value"] == "MSNAS-DK-000123"


def test_maternity_claim_is_flagged_and_institutional() -> None:
    [claim] = resources(body(example("claim.submitted", 2)), "Claim")
    assert claim["type"]["coding"][0]["code"] == "institutional"
    assert claim["subType"]["coding"][0] == {"system": s.CLAIM_KIND, "code": "maternity"}
    assert claim["use"] == "claim"
    assert claim["provider"]["identifier"] == {
        "system": s.PROVIDER_AGREEMENT,
        "value": "CONV-MT-00003",
    }


def test_contribution_sends_only_the_health_share() -> None:
    [notice] = resources(body(example("contribution.paid")), "PaymentNotice")
    assert notice["amount"] == {"value": 7000, "currency": "XOF"}
    assert notice["extension"][0]["valuePeriod"] == {"start": "2026-02-01", "end": "2026-02-28"}


def test_contribution_without_health_share_is_refused() -> None:
    event = example("contribution.paid", amount=1500, allocation={"family": 1500}, channel="cash")
    with pytest.raises(UnsupportedEvent):
        adapters.cmu.translate(event, None)


def test_cmu_decisions_are_not_echoed() -> None:
    with pytest.raises(UnsupportedEvent):
        adapters.cmu.translate(example("claim.adjudicated"), None)


def test_a_mutual_decision_becomes_a_claim_response() -> None:
    event = example(
        "claim.adjudicated",
        adjudicator="MSNAS",
        outcome="partially_approved",
        approved_amount=5000,
        reason_codes=["TARIF_DEPASSE"],
    )
    [response] = resources(body(event), "ClaimResponse")
    totals = {t["category"]["coding"][0]["code"]: t["amount"]["value"] for t in response["total"]}
    assert totals == {"submitted": 9350, "benefit": 5000}
    assert response["adjudication"][0]["reason"]["coding"][0]["code"] == "TARIF_DEPASSE"


def test_update_of_branches_only_is_an_empty_transaction() -> None:
    event = example("member.updated", changes={"opted_branches": ["health", "old_age"]})
    [message] = adapters.cmu.translate(event, None)
    assert json.loads(message.body)["entry"] == []
    adapters.cmu.validate(message)


def test_message_is_deterministic_and_keyed_by_event() -> None:
    event = example("member.enrolled")
    first, second = adapters.cmu.translate(event, None), adapters.cmu.translate(event, None)
    assert first == second
    assert first[0].message_id == message_id(Institution.CMU, event.event_id, "fhir.transaction")
    doc = json.loads(first[0].body)
    assert doc["identifier"] == {"system": s.MESSAGE_ID, "value": first[0].message_id}
    assert doc["timestamp"] == "2026-01-05T09:12:30Z"


def test_validate_reports_fields() -> None:
    [message] = adapters.cmu.translate(example("claim.submitted"), None)
    doc = json.loads(message.body)
    doc["type"] = "batch"
    doc["entry"][0]["resource"]["use"] = 7
    broken = dataclasses.replace(message, body=canonical_json(doc))
    with pytest.raises(InvalidMessage) as info:
        adapters.cmu.validate(broken)
    locs = {e.loc for e in info.value.errors}
    assert "entry.0.resource.use" in locs
    assert "type" in locs


def test_validate_refuses_non_canonical_bytes() -> None:
    [message] = adapters.cmu.translate(example("claim.submitted"), None)
    pretty = json.dumps(json.loads(message.body), indent=2).encode()
    with pytest.raises(InvalidMessage) as info:
        adapters.cmu.validate(dataclasses.replace(message, body=pretty))
    assert [e.type for e in info.value.errors] == ["not_canonical"]


# --- format v2: what a real FHIR server applies and links (issue 29) ---------------------------


def entry_of(doc: Json, rtype: str, system: str, value: str) -> Json:
    return next(
        e
        for e in doc["entry"]
        if e["resource"]["resourceType"] == rtype
        and {"system": system, "value": value} in e["resource"].get("identifier", [])
    )


def test_enrolment_references_its_own_entries_and_creates_the_mutual() -> None:
    event = example("member.enrolled")
    doc = body(event)
    patient = entry_of(doc, "Patient", s.MEMBER_ID, event.member_id)
    mutual = entry_of(doc, "Organization", s.MUTUAL, "MSNAS")
    assert mutual["request"] == {
        "method": "POST",
        "url": "Organization",
        "ifNoneExist": f"identifier={s.MUTUAL}|MSNAS",
    }
    [coverage] = resources(doc, "Coverage")
    for role in ("policyHolder", "subscriber", "beneficiary"):
        assert coverage[role] == {
            "reference": patient["fullUrl"],
            "type": "Patient",
            "identifier": {"system": s.MEMBER_ID, "value": event.member_id},
        }
    assert coverage["payor"][0]["reference"] == mutual["fullUrl"]
    for related in resources(doc, "RelatedPerson"):
        assert related["patient"]["reference"] == patient["fullUrl"]


def test_a_claim_references_what_earlier_messages_created_conditionally() -> None:
    event = example("claim.submitted")
    assert isinstance(event, ClaimSubmitted)
    doc = body(event)
    [claim] = resources(doc, "Claim")
    beneficiary = event.payload.beneficiary_id
    system = s.MEMBER_ID if beneficiary == event.member_id else s.DEPENDENT_ID
    assert claim["patient"]["reference"] == f"Patient?identifier={system}|{beneficiary}"
    assert claim["insurance"][0]["coverage"]["reference"] == (
        f"Coverage?identifier={s.COVERAGE_ID}|{event.member_id}"
    )
    cmu = entry_of(doc, "Organization", s.MUTUAL, "CMU")
    assert claim["insurer"]["reference"] == cmu["fullUrl"]
    agreement = event.payload.provider_agreement
    provider = entry_of(doc, "Organization", s.PROVIDER_AGREEMENT, agreement)
    assert provider["request"]["method"] == "POST"
    assert claim["provider"]["reference"] == provider["fullUrl"]


def test_the_package_change_patches_the_coverage_s_one_class() -> None:
    doc = body(example("member.updated", changes={"package": "complementary"}))
    [patch] = [e for e in doc["entry"] if e["request"]["url"].startswith("Coverage?")]
    parts = [p for op in patch["resource"]["parameter"] for p in op["part"]]
    paths = [p["valueString"] for p in parts if p["name"] == "path"]
    assert "Coverage.class.first().value" in paths
    assert "Coverage.class.first().name" in paths
    assert not any("type.coding" in p for p in paths)


def test_a_mutual_decision_is_a_conditional_update_with_a_claim_type() -> None:
    event = example(
        "claim.adjudicated",
        adjudicator="MSNAS",
        outcome="rejected",
        approved_amount=0,
        reason_codes=["TARIF_DEPASSE"],
    )
    doc = body(event)
    decision = entry_of(doc, "ClaimResponse", s.CLAIM_DECISION_ID, "CLM-2026-000451/MSNAS")
    assert decision["request"] == {
        "method": "PUT",
        "url": f"ClaimResponse?identifier={s.CLAIM_DECISION_ID}|CLM-2026-000451/MSNAS",
    }
    response = decision["resource"]
    assert response["type"] == {"coding": [{"system": s.CLAIM_TYPE, "code": "professional"}]}
    assert response["request"]["reference"] == f"Claim?identifier={s.CLAIM_ID}|CLM-2026-000451"
    mutual = entry_of(doc, "Organization", s.MUTUAL, "MSNAS")
    assert response["insurer"]["reference"] == mutual["fullUrl"]


def test_the_payment_is_the_one_logical_reference() -> None:
    doc = body(example("contribution.paid"))
    [notice] = resources(doc, "PaymentNotice")
    assert "reference" not in notice["payment"]
    assert notice["payment"]["type"] == "PaymentReconciliation"
    assert notice["request"]["reference"].startswith("Coverage?identifier=")
    orgs = {o["identifier"][0]["value"] for o in resources(doc, "Organization")}
    assert orgs == {"MSNAS", "CMU"}


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        (None, "must be resolvable"),
        ("urn:uuid:00000000-0000-0000-0000-000000000000", "must be the fullUrl"),
        ("Patient/123", "must be a fullUrl of this transaction or"),
        (f"Coverage?identifier={s.MEMBER_ID}|X", "not to its type"),
    ],
)
def test_validate_refuses_references_a_server_cannot_resolve(
    reference: str | None, problem: str
) -> None:
    [message] = adapters.cmu.translate(example("claim.submitted"), None)
    doc = json.loads(message.body)
    [claim] = resources(doc, "Claim")
    if reference is None:
        del claim["patient"]["reference"]
    else:
        claim["patient"]["reference"] = reference
    with pytest.raises(InvalidMessage) as info:
        adapters.cmu.validate(dataclasses.replace(message, body=canonical_json(doc)))
    [error] = info.value.errors
    assert error.type == "reference"
    assert error.loc.endswith(".resource.patient")
    assert problem in error.message
