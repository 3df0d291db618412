"""CSS adapter: amounts, dependents, namespaces and versions, XXE, XSD refusals, determinism."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from typing import Any

import pytest
from lxml import etree

import adapters.css as css
from adapters.base import (
    AckStatus,
    Institution,
    InvalidMessage,
    MalformedAck,
    MemberProfile,
    OutboundMessage,
    UnsupportedEvent,
    message_id,
)
from schemas import (
    Branch,
    CanonicalEvent,
    ContributionPaid,
    ContributionReversed,
    DependentAdded,
    MaternityDeclared,
    MemberEnrolled,
    Package,
    Region,
    dump_event,
    parse_event,
)
from schemas.examples import load_examples

pytestmark = pytest.mark.unit

NS = "urn:sn:css:jokko:v1"
N = {"c": NS}


def _examples(event_type: str) -> list[CanonicalEvent]:
    return [e for e in load_examples() if e.event_type == event_type]


def _enrolment(member_id: str) -> MemberEnrolled:
    found = [e for e in _examples("member.enrolled") if e.member_id == member_id]
    assert isinstance(found[0], MemberEnrolled)
    return found[0]


def _profile(member_id: str, *branches: Branch) -> MemberProfile:
    return MemberProfile(member_id, Package.BASE, frozenset(branches), Region.DAKAR, "Dakar")


def _one(event: CanonicalEvent, member: MemberProfile | None = None) -> OutboundMessage:
    [message] = css.translate(event, member)
    return message


def _root(message: OutboundMessage) -> etree._Element:
    return etree.fromstring(message.body)


def _with_payload(event: CanonicalEvent, **changes: Any) -> CanonicalEvent:
    data = json.loads(dump_event(event))
    data["payload"].update(changes)
    return parse_event(data)


# --- amounts -----------------------------------------------------------------------------------


def test_contribution_carries_only_css_shares_as_integers() -> None:
    paid = next(e for e in _examples("contribution.paid") if e.member_id == "MSNAS-TH-000289")
    root = _root(_one(paid))
    assert root.get("nature") == "payment"
    assert root.findtext("c:Shares/c:Family", namespaces=N) == "1500"
    assert root.findtext("c:Shares/c:WorkAccident", namespaces=N) == "1000"
    assert root.findtext("c:Total", namespaces=N) == "2500"  # not the 12,000 paid in all
    assert root.findtext("c:Period", namespaces=N) == "2026-02"
    assert root.findtext("c:Channel", namespaces=N) == "orange_money"
    shares = root.find("c:Shares", N)
    assert shares is not None
    assert [etree.QName(c).localname for c in shares] == ["Family", "WorkAccident"]


def test_contribution_without_css_share_is_refused() -> None:
    health_only = next(
        e for e in _examples("contribution.paid") if e.member_id.startswith("MSNAS-KA")
    )
    with pytest.raises(UnsupportedEvent):
        css.translate(health_only, None)


def test_reversal_cancels_the_original_declaration_with_positive_amounts() -> None:
    [reversed_] = _examples("contribution.reversed")
    assert isinstance(reversed_, ContributionReversed)
    root = _root(_one(reversed_))
    assert root.get("nature") == "reversal"
    assert root.findtext("c:Shares/c:Family", namespaces=N) == "1500"
    assert root.find("c:Channel", N) is None
    reverses = root.find("c:Reverses", N)
    assert reverses is not None
    original = next(
        e
        for e in _examples("contribution.paid")
        if e.event_id == reversed_.payload.original_event_id
    )
    assert reverses.get("messageId") == _one(original).message_id
    assert reverses.get("reason") == "duplicate_payment"


@pytest.mark.parametrize("bad", ["-1500", "1500.0", "0", "1e3", "1000000001", ""])
def test_xsd_refuses_amounts_that_are_not_positive_whole_francs(bad: str) -> None:
    paid = _examples("contribution.paid")[0]
    message = _one(paid)
    tampered = message.body.replace(b"<Family>1500</Family>", f"<Family>{bad}</Family>".encode())
    assert tampered != message.body
    with pytest.raises(InvalidMessage) as info:
        css.validate(dataclasses.replace(message, body=tampered))
    [error] = [e for e in info.value.errors if "Family" in e.loc]
    line = tampered.split(b"\n").index(f"    <Family>{bad}</Family>".encode()) + 1
    assert error.loc == f"{line}:/ContributionDeclaration/Shares/Family"
    assert error.type.startswith("xsd_")
    assert info.value.institution is Institution.CSS


# --- dependents only for the family branch -----------------------------------------------------


def test_affiliation_lists_dependents_for_a_family_member() -> None:
    root = _root(_one(_enrolment("MSNAS-DK-000123")))
    deps = root.findall("c:Dependents/c:Dependent", N)
    assert [d.get("relationship") for d in deps] == ["spouse", "child", "child"]
    assert all(d.find("c:Identity", N) is not None for d in deps)
    assert [b.text for b in root.findall("c:Branches/c:Branch", N)] == ["family"]


def test_affiliation_of_a_work_accident_only_member_has_no_dependents() -> None:
    enrolled = _enrolment("MSNAS-DB-000058")
    assert enrolled.payload.dependents
    root = _root(_one(enrolled))
    assert root.find("c:Dependents", N) is None
    assert [b.text for b in root.findall("c:Branches/c:Branch", N)] == ["work_accident"]


def test_dependent_added_sends_identity_only_with_family_branch() -> None:
    [added] = _examples("member.dependent_added")
    assert isinstance(added, DependentAdded)
    family = _root(_one(added, _profile(added.member_id, Branch.HEALTH, Branch.FAMILY)))
    at_only = _root(_one(added, _profile(added.member_id, Branch.WORK_ACCIDENT)))
    assert (
        family.findtext("c:DependentAdded/c:Identity/c:GivenNames", namespaces=N) == "Mame Diarra"
    )
    node = at_only.find("c:DependentAdded", N)
    assert node is not None
    assert node.find("c:Identity", N) is None
    assert node.get("dependentId") == "MSNAS-DK-000123-D04"


def test_member_events_without_a_css_branch_or_profile_are_refused() -> None:
    [added] = _examples("member.dependent_added")
    with pytest.raises(UnsupportedEvent):
        css.translate(added, _profile(added.member_id, Branch.HEALTH, Branch.OLD_AGE))
    with pytest.raises(UnsupportedEvent):
        css.translate(added, None)
    with pytest.raises(UnsupportedEvent):
        css.translate(_enrolment("MSNAS-KA-000019"), None)


def test_maternity_without_cash_benefit_is_refused() -> None:
    no_cash = next(
        e
        for e in _examples("maternity.declared")
        if isinstance(e, MaternityDeclared) and not e.payload.cash_benefit_requested
    )
    with pytest.raises(UnsupportedEvent):
        css.translate(no_cash, None)


# --- bytes: determinism, encoding, identity ----------------------------------------------------


def test_same_event_same_bytes_and_ids() -> None:
    event = _enrolment("MSNAS-TH-000289")
    first, second = _one(event), _one(event)
    assert first == second
    assert first.message_id == message_id(Institution.CSS, event.event_id, "css.affiliation")
    assert first.kind == "css.affiliation"
    assert first.content_type == "application/xml"
    assert first.body.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n<Affiliation ")


def test_accents_are_utf8_not_character_references() -> None:
    body = _one(_enrolment("MSNAS-TH-000289")).body
    assert "Aïssatou".encode() in body
    assert "Sène".encode() in body
    assert b"&#" not in body
    assert "Ndèye Fatou".encode() in _one(_enrolment("MSNAS-DK-000123")).body


def test_root_attributes_come_in_a_fixed_order() -> None:
    root = _root(_one(_examples("contribution.paid")[0]))
    assert list(root.attrib) == ["messageId", "eventId", "memberId", "formatVersion", "nature"]


def test_schema_is_not_loaded_at_import() -> None:
    code = (
        "import adapters.css, adapters.css._wire as w; "
        "assert not hasattr(w._per_thread, 'schema'); "
        "assert not hasattr(w._per_thread, 'parser')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- validate: envelope, namespaces, versions, XXE ---------------------------------------------


def _message() -> OutboundMessage:
    return _one(_enrolment("MSNAS-DK-000123"))


def test_validate_accepts_the_translation() -> None:
    css.validate(_message())


def test_xsd_refusal_is_located_and_does_not_echo_personal_data() -> None:
    message = _message()
    tampered = message.body.replace(b"<Nin>2751198801234</Nin>", b"<Nin>27511988-0123</Nin>")
    with pytest.raises(InvalidMessage) as info:
        css.validate(dataclasses.replace(message, body=tampered))
    [error] = info.value.errors
    assert error.loc == "10:/Affiliation/Insured/Nin"
    assert "27511988-0123" not in error.message
    assert "pattern" in error.message


def test_validate_refuses_a_missing_element() -> None:
    message = _message()
    tampered = message.body.replace(b"  <Trade>couturi\xc3\xa8re</Trade>\n", b"")
    with pytest.raises(InvalidMessage) as info:
        css.validate(dataclasses.replace(message, body=tampered))
    assert info.value.errors[0].loc.endswith("/Affiliation/Branches")


def test_validate_checks_the_envelope_against_the_document() -> None:
    message = _message()
    other = dataclasses.replace(
        message, message_id=message_id(Institution.CSS, message.event_id, "x")
    )
    with pytest.raises(InvalidMessage) as info:
        css.validate(other)
    assert [e.type for e in info.value.errors] == ["envelope_mismatch"]
    assert info.value.errors[0].loc.endswith("/@messageId")
    with pytest.raises(InvalidMessage):
        css.validate(dataclasses.replace(message, kind="css.contribution_declaration"))


@pytest.mark.parametrize(
    ("namespace", "hint"),
    [
        ("urn:sn:css:jokko:v2", "unsupported format version"),
        ("urn:sn:css:jokko:v0", "unsupported format version"),
        ("urn:sn:ipres:jokko:v1", "wrong namespace"),
    ],
)
def test_documents_in_another_namespace_or_version_are_refused(namespace: str, hint: str) -> None:
    message = _message()
    tampered = message.body.replace(NS.encode(), namespace.encode())
    with pytest.raises(InvalidMessage) as info:
        css.validate(dataclasses.replace(message, body=tampered))
    assert info.value.errors[0].type == "namespace_mismatch"
    assert hint in info.value.errors[0].message
    ack = _ack_bytes().replace(NS.encode(), namespace.encode())
    with pytest.raises(MalformedAck) as ack_info:
        css.parse_ack(ack)
    assert ack_info.value.errors[0].type == "namespace_mismatch"


def test_format_version_attribute_is_fixed_to_1() -> None:
    message = _message()
    tampered = message.body.replace(b'formatVersion="1"', b'formatVersion="2"')
    with pytest.raises(InvalidMessage):
        css.validate(dataclasses.replace(message, body=tampered))


XXE_FILE = (
    b'<?xml version="1.0"?>\n'
    b'<!DOCTYPE Acknowledgement [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
    b'<Acknowledgement xmlns="urn:sn:css:jokko:v1" formatVersion="1">'
    b'<Receipt messageId="6f1c2a8e-7d3b-4c51-9a0e-6b8d2f4e1c37" status="rejected">'
    b'<Reason code="R001">&x;</Reason></Receipt></Acknowledgement>'
)
BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'.encode()
        for i in range(1, 10)
    )
    + b']>\n<Acknowledgement xmlns="urn:sn:css:jokko:v1" formatVersion="1">&lol9;</Acknowledgement>'
)
XXE_NETWORK = XXE_FILE.replace(b"file:///etc/passwd", b"http://169.254.169.254/latest/meta-data/")


@pytest.mark.parametrize(
    "raw", [XXE_FILE, BILLION_LAUGHS, XXE_NETWORK], ids=["file", "bomb", "net"]
)
def test_entities_and_doctypes_are_refused(raw: bytes) -> None:
    with pytest.raises(MalformedAck) as info:
        css.parse_ack(raw)
    # libxml2 stops an entity bomb itself (a syntax error); otherwise the DOCTYPE is refused.
    [error] = info.value.errors
    assert error.type in {"dtd_forbidden", "xml_syntax"}
    assert b"root:" not in str(info.value).encode()
    message = _message()
    with pytest.raises(InvalidMessage) as minfo:
        css.validate(dataclasses.replace(message, body=raw))
    assert minfo.value.errors[0].type in {"dtd_forbidden", "xml_syntax"}


# --- acks --------------------------------------------------------------------------------------


def _ack_bytes() -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Acknowledgement xmlns="urn:sn:css:jokko:v1" formatVersion="1">\n'
        '  <Receipt messageId="6f1c2a8e-7d3b-4c51-9a0e-6b8d2f4e1c37" status="accepted"'
        ' fileNumber="CSS-AF-2026-000123"/>\n'
        '  <Receipt messageId="7f1c2a8e-7d3b-4c51-9a0e-6b8d2f4e1c37" status="rejected">'
        '<Reason code="R011">Bénéficiaire déjà affilié à la branche</Reason></Receipt>\n'
        "</Acknowledgement>\n"
    ).encode()


def test_ack_is_read_receipt_by_receipt() -> None:
    accepted, rejected = css.parse_ack(_ack_bytes())
    assert accepted.status is AckStatus.ACCEPTED
    assert accepted.institution_ref == "CSS-AF-2026-000123"
    assert accepted.institution is Institution.CSS
    assert (accepted.reason_code, accepted.reason_text) == (None, None)
    assert rejected.status is AckStatus.REJECTED
    assert rejected.reason_code == "R011"
    assert rejected.reason_text == "Bénéficiaire déjà affilié à la branche"
    assert rejected.institution_ref is None


_CONCURRENT_ACKS = """
import threading, adapters.css as css
from adapters.base import MalformedAck
from tests.unit.test_css_adapter import _ack_bytes
raw = _ack_bytes()
invalid = raw.replace(b'status="accepted"', b'status="maybe"')
def read(r):
    try:
        return css.parse_ack(r)
    except MalformedAck as exc:
        return str(exc)
expected = {raw: read(raw), invalid: read(invalid)}
bad = []
def work():
    for _ in range(2000):
        for r in (raw, invalid):
            if read(r) != expected[r]:
                bad.append(r)
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
assert not bad, f"{len(bad)} answers read wrong"
"""


def test_acks_are_read_by_eight_threads_at_once() -> None:
    """The relay reads partners' answers on its push threads: the adapter must be safe there.
    One XMLSchema shared by all threads mixed up their error logs (a valid answer read as
    malformed, about 1 in 1,000 here) and once crashed the relay; in a child, so a crash is a
    failure too."""
    done = subprocess.run([sys.executable, "-c", _CONCURRENT_ACKS], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_ack_that_is_not_bytes_is_malformed() -> None:
    with pytest.raises(MalformedAck):
        css.parse_ack(_ack_bytes().decode())  # type: ignore[arg-type]


def test_public_names() -> None:
    assert css.INSTITUTION is Institution.CSS
    assert css.FORMAT_VERSION == 1
    assert isinstance(_enrolment("MSNAS-DK-000123"), MemberEnrolled)
    assert isinstance(_examples("contribution.paid")[0], ContributionPaid)


def test_update_leaving_both_css_branches_still_tells_css() -> None:
    update = next(e for e in _examples("member.updated") if e.member_id == "MSNAS-SL-000077")
    leaving = _with_payload(update, changes={"opted_branches": ["health"]})
    message = _one(leaving, _profile(leaving.member_id, Branch.HEALTH))
    css.validate(message)
    root = _root(message)
    assert root.get("action") == "update"
    assert root.findall("c:Branches/c:Branch", N) == []


def test_package_only_update_gives_an_empty_changes_element() -> None:
    update = next(e for e in _examples("member.updated") if e.member_id == "MSNAS-SL-000077")
    package_only = _with_payload(update, changes={"package": "complementary"})
    message = _one(package_only, _profile(update.member_id, Branch.WORK_ACCIDENT))
    css.validate(message)
    changes = _root(message).find("c:Changes", N)
    assert changes is not None
    assert len(changes) == 0
