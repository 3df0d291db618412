"""What a FHIR server does with Jokko's CMU messages: the contract a server holds to, run here
against the fake CMU (in process), and meant to be run against a real server too (HAPI FHIR,
issue 29) by subclassing ``FhirServerContract`` with its own ``post``.

Each test posts messages in a member's life order and reads the server's answer: status and
body. The fake refuses what HAPI FHIR refused, so that these fast tests catch it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import adapters.cmu
from adapters.base import AckStatus, MemberProfile, OutboundMessage, profile_after
from adapters.cmu import systems as s
from adapters.cmu.mapping import canonical_json
from router.routing import destinations
from schemas import CanonicalEvent, parse_event
from schemas.examples import load_examples, raw_examples
from tests.fakes.cmu import CREATE_CLASH, PATCH_REFUSED, FakeCMU, unapplied_patch_path
from tests.fakes.faults import Faults

pytestmark = pytest.mark.contract

Json = dict[str, Any]


def routed(events: list[CanonicalEvent]) -> list[OutboundMessage]:
    """CMU's messages for ``events``, in order, as the router hands them over."""
    known: dict[str, MemberProfile] = {}
    out: list[OutboundMessage] = []
    for event in events:
        profile = profile_after(known.get(event.member_id), event)
        if profile is not None:
            known[event.member_id] = profile
        member = known.get(event.member_id)
        if adapters.cmu.INSTITUTION in destinations(event, member):
            out += adapters.cmu.translate(event, member)
    return out


def mutual_decision(*, rejected: bool = False) -> CanonicalEvent:
    """The mutual's own decision on the examples' first decided claim (the examples' decisions
    are CMU's, never sent to CMU); ``rejected``: its re-adjudication, another event."""
    raw = next(r for r in raw_examples() if r["event_type"] == "claim.adjudicated")
    payload = {**raw["payload"], "adjudicator": "MSNAS"}
    if rejected:
        payload |= {"outcome": "rejected", "approved_amount": 0, "reason_codes": ["NOT_COVERED"]}
        event_id = "7d1c3f0e-2b4a-5c6d-8e9f-0a1b2c3d4e60"
    else:
        payload |= {"outcome": "approved", "approved_amount": payload["claimed_amount"]}
        payload["reason_codes"] = []
        event_id = "7d1c3f0e-2b4a-5c6d-8e9f-0a1b2c3d4e5f"
    return parse_event({**raw, "event_id": event_id, "payload": payload})


def altered(message: OutboundMessage, change: Any) -> OutboundMessage:
    """``message`` with its body changed by ``change(doc)`` (a message Jokko v1 would send)."""
    doc = json.loads(message.body)
    change(doc)
    return OutboundMessage(
        message_id=message.message_id,
        institution=message.institution,
        event_id=message.event_id,
        member_id=message.member_id,
        kind=message.kind,
        content_type=message.content_type,
        body=canonical_json(doc),
        format_version=message.format_version,
    )


class FhirServerContract:
    """What every FHIR server CMU runs does with Jokko's messages (FORMAT.md §1, §7)."""

    def post(self, message: OutboundMessage) -> tuple[int, Json]:
        """Deliver ``message``; the server's HTTP status and its answer (FHIR JSON)."""
        raise NotImplementedError

    def diagnostics(self, answer: Json) -> str:
        return " ".join(str(i.get("diagnostics", "")) for i in answer.get("issue", ()))

    def history(self) -> list[OutboundMessage]:
        return routed([*load_examples(), mutual_decision()])

    def first(self, event_type: str) -> OutboundMessage:
        tag = f'"code":"{event_type}"'.encode()
        return next(m for m in self.history() if tag in m.body)

    def test_every_message_of_a_member_s_life_is_applied_and_a_repost_too(self) -> None:
        messages = self.history()
        for m in [*messages, *messages]:
            status, answer = self.post(m)
            assert status == 200, (m.member_id, answer)
            assert answer["resourceType"] == "Bundle", answer

    def test_the_v1_package_change_path_is_refused_and_fails_the_whole_transaction(
        self,
    ) -> None:
        messages = self.history()
        update = next(m for m in messages if b"Coverage.class.first()" in m.body)
        for m in messages[: messages.index(update)]:
            self.post(m)

        def v1_path(doc: Json) -> None:
            for entry in doc["entry"]:
                for op in entry["resource"].get("parameter", ()):
                    for part in op["part"]:
                        path = part.get("valueString", "")
                        if path.startswith("Coverage.class.first()"):
                            part["valueString"] = path.replace(
                                "class.first()", "class.where(type.coding.code='plan')"
                            )

        status, answer = self.post(altered(update, v1_path))
        assert status == 400
        assert "HAPI-2719" in self.diagnostics(answer)
        status, _ = self.post(update)
        assert status == 200

    def test_a_claim_of_a_member_never_enrolled_is_refused(self) -> None:
        claim = self.first("claim.submitted")
        status, answer = self.post(claim)
        assert status == 404
        assert "HAPI-1091" in self.diagnostics(answer)
        assert "?identifier=" in self.diagnostics(answer)

    def test_a_reference_to_an_organization_not_created_is_refused(self) -> None:
        enrolment = self.first("member.enrolled")

        def without_organizations(doc: Json) -> None:
            payor = doc["entry"][-1]["resource"]["payor"][0]
            payor["reference"] = f"Organization?identifier={s.MUTUAL}|NOWHERE"
            payor["identifier"] = {"system": s.MUTUAL, "value": "NOWHERE"}

        status, answer = self.post(altered(enrolment, without_organizations))
        assert status == 404
        assert "HAPI-1091" in self.diagnostics(answer)


class TestFakeCmuServer(FhirServerContract):
    """The contract on the fake CMU, in process (its HTTP side is the integration tier's)."""

    @pytest.fixture(autouse=True)
    def _fake(self) -> None:
        self.fake = FakeCMU(b"jokko-contract-secret", Faults())

    def post(self, message: OutboundMessage) -> tuple[int, Json]:
        answer = self.fake.process(message.message_id, message.body, message.content_type)
        doc: Json = json.loads(answer.body)
        return answer.status, doc

    def test_its_refusals_are_rejections_with_the_server_s_diagnostics(self) -> None:
        claim = self.first("claim.submitted")
        _, answer = self.post(claim)
        [ack] = adapters.cmu.parse_ack(json.dumps(answer).encode())
        assert (ack.message_id, ack.status) == (claim.message_id, AckStatus.REJECTED)
        assert ack.reason_code == "processing"
        assert str(ack.reason_text).startswith("HAPI-1091")

    def test_a_refused_transaction_applies_nothing(self) -> None:
        enrolment = self.first("member.enrolled")

        def dangling(doc: Json) -> None:
            doc["entry"][-1]["resource"]["payor"][0]["reference"] = "urn:uuid:nowhere"

        status, answer = self.post(altered(enrolment, dangling))
        assert status == 400
        assert "urn:uuid:nowhere" in self.diagnostics(answer)
        assert self.fake.held == set()

    def test_a_concurrent_conditional_create_clash_is_answered_409(self) -> None:
        self.fake.faults.create_clashes = 1
        enrolment = self.first("member.enrolled")
        status, answer = self.post(enrolment)
        assert status == 409
        assert self.diagnostics(answer) == CREATE_CLASH
        assert self.fake.held == set()
        status, _ = self.post(enrolment)  # the clash is over: the retry goes through
        assert status == 200
        assert ("Patient", s.MEMBER_ID, enrolment.member_id) in self.fake.held

    def test_a_re_adjudication_replaces_the_decision(self) -> None:
        messages = self.history()
        for m in messages:
            self.post(m)
        [second] = routed([mutual_decision(rejected=True)])
        status, answer = self.post(second)
        assert status == 200
        assert answer["entry"][-1]["response"]["status"] == "200 OK"


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ("Coverage.class.where(type.coding.code='plan').value", True),
        ("Coverage.class.where(type.coding.code='plan').name", True),
        ("Coverage.class.first().value", False),
        ("Coverage.class[0].value", False),
        ("Coverage.class.where(value='base').value", False),
        ("Patient.address.where(use='home').district", False),
        ("Patient.telecom.where(system='phone')", False),
        (f"Coverage.extension.where(url='{s.EXT_MEMBER_STATUS}').value", False),
        (f"Patient.identifier.where(system='{s.NIN}')", False),
    ],
)
def test_the_fake_refuses_exactly_the_patch_paths_hapi_refused(path: str, refused: bool) -> None:
    assert unapplied_patch_path(path) is refused


def test_no_message_of_jokko_uses_a_refused_patch_path() -> None:
    assert PATCH_REFUSED.startswith("HAPI-2719")
    for m in routed(load_examples()):
        for entry in json.loads(m.body)["entry"]:
            for op in entry["resource"].get("parameter", ()):
                for part in op["part"]:
                    if part["name"] == "path":
                        assert not unapplied_patch_path(part["valueString"])
