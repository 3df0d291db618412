"""The CMU adapter's messages on a real FHIR server (issue 29): HAPI FHIR's JPA server (R4B,
default settings, H2), not our fake.

Every CMU event kind of the examples is translated by the adapter in a member's life order and
posted as the transaction Bundle it is; then everything is posted again. What must hold:
every transaction accepted, a repost creates no resource, and a member's Coverage, Claims and
decisions linked to their Patient on the server (found by FHIR searches).

Each search below failed on CMU format v1 (logical references that linked nothing, a patch
path HAPI does not evaluate, a re-adjudication dropped by ``ifNoneExist``): format v2
(adapters/cmu/FORMAT.md, section 7) is what made them pass.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

import adapters.cmu
from adapters.base import Institution, OutboundMessage
from router.routing import destinations
from schemas import CanonicalEvent, parse_event
from schemas.examples import load_examples, raw_examples
from tests.contract.suite import profiles
from tests.infra import FhirServer

pytestmark = [
    pytest.mark.integration,
    # The first test here waits for the server's start (the session fixture): allow for it.
    pytest.mark.timeout(900),
]

GOLDEN = Path(__file__).parent.parent / "contract" / "golden" / "cmu"
MEMBER_ID = "https://msnas.sn/fhir/member-id"
DECISION_ID = "https://msnas.sn/fhir/claim-decision-id"
FHIR_JSON = "application/fhir+json"
# The one member of the examples with a claim, a decision, a dependent and contributions.
MEMBER = "MSNAS-TH-000289"
DECIDED_CLAIM = "CLM-2026-000451"
RESOURCE_TYPES = (
    "Patient",
    "RelatedPerson",
    "Coverage",
    "Claim",
    "ClaimResponse",
    "PaymentNotice",
    "EpisodeOfCare",
    "Organization",
)


def mutual_decision(outcome: str, approved: int, reasons: tuple[str, ...] = ()) -> CanonicalEvent:
    """The mutual's own decision on the examples' claim (CMU's decisions are never sent to
    CMU); a second call with other amounts is a re-adjudication of the same claim."""
    raw = next(r for r in raw_examples() if r["event_type"] == "claim.adjudicated")
    payload = {
        **raw["payload"],
        "adjudicator": "MSNAS",
        "outcome": outcome,
        "approved_amount": approved,
        "reason_codes": list(reasons),
    }
    event_id = uuid.uuid5(uuid.UUID(raw["event_id"]), f"{outcome}/{approved}")
    return parse_event({**raw, "event_id": str(event_id), "payload": payload})


def life_order() -> list[OutboundMessage]:
    """The CMU messages of the examples in the order the member's life produced them."""
    history = load_examples()
    messages: list[OutboundMessage] = []
    for i, event in enumerate(history):
        member = profiles(history[: i + 1]).get(event.member_id)
        if Institution.CMU in destinations(event, member):
            messages.extend(adapters.cmu.translate(event, member))
    messages.extend(adapters.cmu.translate(mutual_decision("approved", 9350), None))
    return messages


def event_type(message: OutboundMessage) -> str:
    body: dict[str, Any] = json.loads(message.body)
    tag: str = body["meta"]["tag"][0]["code"]
    return tag


@dataclass
class Answer:
    message: OutboundMessage
    status: int
    body: dict[str, Any]

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300

    @property
    def entry_statuses(self) -> list[str]:
        return [e["response"]["status"] for e in self.body.get("entry", [])]

    def describe(self) -> str:
        diagnostics = [i.get("diagnostics") for i in self.body.get("issue", [])]
        return f"{event_type(self.message)} {self.message.member_id}: {self.status} {diagnostics}"


@dataclass
class Delivery:
    client: httpx.Client
    first: list[Answer] = field(default_factory=list)
    second: list[Answer] = field(default_factory=list)
    counts_first: dict[str, int] = field(default_factory=dict)
    counts_second: dict[str, int] = field(default_factory=dict)

    def get(self, query: str) -> dict[str, Any]:
        r = self.client.get(query)
        assert r.status_code == 200, (query, r.status_code, r.text[:500])
        body: dict[str, Any] = r.json()
        return body

    def total(self, query: str) -> int:
        sep = "&" if "?" in query else "?"
        total: int = self.get(f"{query}{sep}_summary=count")["total"]
        return total

    def patient_id(self, member: str) -> str:
        bundle = self.get(f"Patient?identifier={MEMBER_ID}|{member}")
        assert bundle.get("total", len(bundle.get("entry", []))) == 1, bundle
        pid: str = bundle["entry"][0]["resource"]["id"]
        return pid


def post(client: httpx.Client, message: OutboundMessage) -> Answer:
    assert message.kind == "fhir.transaction"
    assert message.content_type == FHIR_JSON
    r = client.post("", content=message.body, headers={"Content-Type": FHIR_JSON})
    return Answer(message, r.status_code, r.json())


@pytest.fixture(scope="module")
def delivered(fhir_server: FhirServer) -> Iterator[Delivery]:
    """Every message posted once in life order, the resources counted, then all posted again."""
    messages = life_order()
    with httpx.Client(base_url=fhir_server.base_url, timeout=120) as client:
        d = Delivery(client)
        d.first = [post(client, m) for m in messages]
        d.counts_first = {t: d.total(t) for t in RESOURCE_TYPES}
        d.second = [post(client, m) for m in messages]
        d.counts_second = {t: d.total(t) for t in RESOURCE_TYPES}
        yield d


def test_every_cmu_event_kind_is_posted(delivered: Delivery) -> None:
    assert {event_type(a.message) for a in delivered.first} == {
        p.stem for p in GOLDEN.glob("*.json")
    }


def test_the_server_is_hapi_fhir_r4b(delivered: Delivery) -> None:
    # The header, not /metadata: HAPI's first CapabilityStatement costs ~30 s of CPU.
    r = delivered.client.get("Organization?_count=1")
    assert r.status_code == 200
    powered_by = r.headers["X-Powered-By"]
    assert "HAPI FHIR 8.8.0" in powered_by
    assert "FHIR 4.3.0/R4B" in powered_by


def test_a_refusal_is_an_operation_outcome_with_diagnostics(delivered: Delivery) -> None:
    for answer in delivered.first + delivered.second:
        if not answer.accepted:
            assert 400 <= answer.status < 500, answer.describe()
            assert answer.body["resourceType"] == "OperationOutcome"
            assert all(i.get("diagnostics") for i in answer.body["issue"]), answer.describe()


def test_creating_messages_are_accepted(delivered: Delivery) -> None:
    """Messages that only create (POST with ifNoneExist, conditional PUT) are applied today."""
    for answer in delivered.first:
        methods = {e["request"]["method"] for e in json.loads(answer.message.body)["entry"]}
        if methods <= {"POST", "PUT"}:
            assert answer.accepted, answer.describe()
            assert answer.body["type"] == "transaction-response"


def test_a_repost_creates_no_resource(delivered: Delivery) -> None:
    assert delivered.counts_second == delivered.counts_first
    assert delivered.counts_first["Patient"] > 0
    for answer in delivered.second:
        assert "201 Created" not in answer.entry_statuses, answer.describe()


def test_every_transaction_is_accepted(delivered: Delivery) -> None:
    refused = [a.describe() for a in delivered.first + delivered.second if not a.accepted]
    assert refused == []


def test_a_members_coverage_is_found_by_beneficiary(delivered: Delivery) -> None:
    pid = delivered.patient_id(MEMBER)
    assert delivered.total(f"Coverage?beneficiary=Patient/{pid}") == 1


def test_a_members_claims_and_decisions_are_found_by_patient(delivered: Delivery) -> None:
    pid = delivered.patient_id(MEMBER)
    assert delivered.total(f"Claim?patient=Patient/{pid}") == 1
    assert delivered.total(f"ClaimResponse?patient=Patient/{pid}") >= 1


def test_a_members_dependents_are_found_by_patient(delivered: Delivery) -> None:
    pid = delivered.patient_id(MEMBER)
    assert delivered.total(f"RelatedPerson?patient=Patient/{pid}") >= 1


def test_include_brings_the_beneficiary(delivered: Delivery) -> None:
    bundle = delivered.get(
        f"Coverage?identifier=https://msnas.sn/fhir/coverage-id|{MEMBER}"
        "&_include=Coverage:beneficiary"
    )
    included = [e["resource"]["resourceType"] for e in bundle.get("entry", [])]
    assert sorted(included) == ["Coverage", "Patient"]


def test_everything_returns_the_members_resources(delivered: Delivery) -> None:
    pid = delivered.patient_id(MEMBER)
    bundle = delivered.get(f"Patient/{pid}/$everything?_count=500")
    types = {e["resource"]["resourceType"] for e in bundle.get("entry", [])}
    assert {"Patient", "Coverage", "RelatedPerson", "Claim", "ClaimResponse"} <= types


def test_a_re_adjudication_replaces_the_decision(delivered: Delivery) -> None:
    reviewed = mutual_decision("partially_approved", 7000, ("TARIFF_CAP",))
    for message in adapters.cmu.translate(reviewed, None):
        answer = post(delivered.client, message)
        assert answer.accepted, answer.describe()
    bundle = delivered.get(f"ClaimResponse?identifier={DECISION_ID}|{DECIDED_CLAIM}/MSNAS")
    decisions = [e["resource"] for e in bundle.get("entry", [])]
    assert [d["disposition"] for d in decisions] == ["partially_approved"]
