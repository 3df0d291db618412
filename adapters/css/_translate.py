"""Canonical events -> CSS v1 XML documents (see FORMAT.md)."""

from __future__ import annotations

from collections.abc import Iterable
from copy import copy
from datetime import date, datetime
from functools import cache

from lxml import etree

from adapters.base import Institution, MemberProfile, OutboundMessage, UnsupportedEvent, message_id
from adapters.css._wire import CONTENT_TYPE, FORMAT_VERSION, NAMESPACE, qname
from schemas import (
    Branch,
    CanonicalEvent,
    ContributionPaid,
    ContributionReversed,
    Dependent,
    DependentAdded,
    DependentRemoved,
    MaternityDeclared,
    MemberEnrolled,
    MemberStatusChanged,
    MemberUpdated,
    WorkAccidentDeclared,
)

CSS_BRANCHES = (Branch.FAMILY, Branch.WORK_ACCIDENT)
"""The branches CSS serves, in the order they are written on the wire."""

KIND_AFFILIATION = "css.affiliation"
KIND_AFFILIATION_CHANGE = "css.affiliation_change"
KIND_CONTRIBUTION = "css.contribution_declaration"
KIND_WORK_ACCIDENT = "css.work_accident_declaration"
KIND_MATERNITY = "css.maternity_benefit_request"

ROOT_OF_KIND = {
    KIND_AFFILIATION: "Affiliation",
    KIND_AFFILIATION_CHANGE: "AffiliationChange",
    KIND_CONTRIBUTION: "ContributionDeclaration",
    KIND_WORK_ACCIDENT: "WorkAccidentDeclaration",
    KIND_MATERNITY: "MaternityBenefitRequest",
}
_NSMAP = {None: NAMESPACE}
_SHARE_ELEMENT = {Branch.FAMILY: "Family", Branch.WORK_ACCIDENT: "WorkAccident"}


# --- small builders ----------------------------------------------------------------------------


def _sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, qname(name))
    if text is not None:
        child.text = text
    return child


def _opt(parent: etree._Element, name: str, value: object | None) -> None:
    if value is not None:
        _sub(parent, name, _text(value))


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _utc(moment: datetime) -> str:
    # Canonical datetimes are already in UTC; the wire says so with a Z.
    return moment.isoformat().replace("+00:00", "Z")


def _css_branches(branches: Iterable[Branch]) -> tuple[Branch, ...]:
    chosen = set(branches)
    return tuple(b for b in CSS_BRANCHES if b in chosen)


def _branches(parent: etree._Element, branches: tuple[Branch, ...]) -> None:
    node = _sub(parent, "Branches")
    for b in branches:
        _sub(node, "Branch", b.value)


def _document(event: CanonicalEvent, kind: str, **extra: str) -> tuple[etree._Element, str]:
    """The root element with its fixed attributes (always in this order), and the message id."""
    mid = message_id(Institution.CSS, event.event_id, kind)
    root = copy(_empty_root(kind))  # cheaper than declaring the namespace on a new Element
    root.set("messageId", mid)
    root.set("eventId", str(event.event_id))
    root.set("memberId", event.member_id)
    root.set("formatVersion", str(FORMAT_VERSION))
    for name, value in extra.items():
        root.set(name, value)
    src = _sub(root, "Source")
    src.set("mutual", event.source.mutual)
    src.set("region", event.source.region.value)
    src.set("agentId", event.source.agent_id)
    _sub(root, "OccurredAt", _utc(event.occurred_at))
    return root, mid


@cache
def _empty_root(kind: str) -> etree._Element:
    return etree.Element(qname(ROOT_OF_KIND[kind]), nsmap=_NSMAP)


def _message(event: CanonicalEvent, kind: str, mid: str, root: etree._Element) -> OutboundMessage:
    body = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return OutboundMessage(
        message_id=mid,
        institution=Institution.CSS,
        event_id=event.event_id,
        member_id=event.member_id,
        kind=kind,
        content_type=CONTENT_TYPE,
        body=body,
        format_version=FORMAT_VERSION,
    )


def _dependent(parent: etree._Element, name: str, dep: Dependent, *, family: bool) -> None:
    """A dependent; their identity goes to CSS only for members in the family branch."""
    node = _sub(parent, name)
    node.set("dependentId", dep.dependent_id)
    node.set("relationship", dep.relationship.value)
    if family:
        ident = dep.identity
        idn = _sub(node, "Identity")
        _sub(idn, "GivenNames", ident.given_names)
        _sub(idn, "FamilyName", ident.family_name)
        _sub(idn, "Sex", ident.sex.value)
        _sub(idn, "BirthDate", ident.birth_date.isoformat())
        _opt(idn, "Nin", ident.nin)


# --- one function per event type ---------------------------------------------------------------


def _affiliation(event: MemberEnrolled) -> OutboundMessage:
    p = event.payload
    branches = _css_branches(p.opted_branches)
    if not branches:
        raise UnsupportedEvent("member.enrolled without family or work_accident is not for CSS")
    root, mid = _document(event, KIND_AFFILIATION)
    ins = _sub(root, "Insured")
    ident = p.identity
    _sub(ins, "GivenNames", ident.given_names)
    _sub(ins, "FamilyName", ident.family_name)
    _sub(ins, "Sex", ident.sex.value)
    _sub(ins, "BirthDate", ident.birth_date.isoformat())
    _sub(ins, "Nin", ident.nin)
    _sub(ins, "Phone", ident.phone)
    _sub(root, "Region", p.region.value)
    _sub(root, "Departement", p.departement)
    _sub(root, "Trade", p.trade)
    _branches(root, branches)
    if Branch.FAMILY in branches and p.dependents:
        deps = _sub(root, "Dependents")
        for d in p.dependents:
            _dependent(deps, "Dependent", d, family=True)
    return _message(event, KIND_AFFILIATION, mid, root)


def _member_branches(event: CanonicalEvent, member: MemberProfile | None) -> tuple[Branch, ...]:
    if member is None:
        raise UnsupportedEvent(f"{event.event_type} for CSS needs the member's profile")
    return _css_branches(member.opted_branches)


def _affiliation_change(
    event: MemberUpdated | DependentAdded | DependentRemoved | MemberStatusChanged,
    member: MemberProfile | None,
) -> OutboundMessage:
    branches = _member_branches(event, member)
    # An update that takes the member out of both CSS branches still tells CSS (empty
    # Branches); any other change for a member with no CSS branch is not CSS's business.
    leaving = isinstance(event, MemberUpdated) and event.payload.changes.opted_branches
    if not branches and not leaving:
        raise UnsupportedEvent(f"{event.event_type}: member has no family or work_accident branch")
    if isinstance(event, MemberUpdated):
        action = "update"
    elif isinstance(event, DependentAdded):
        action = "dependent_added"
    elif isinstance(event, DependentRemoved):
        action = "dependent_removed"
    else:
        action = "status_changed"
    root, mid = _document(event, KIND_AFFILIATION_CHANGE, action=action)
    if isinstance(event, MemberUpdated):
        c = event.payload.changes
        node = _sub(root, "Changes")
        _opt(node, "GivenNames", c.given_names)
        _opt(node, "FamilyName", c.family_name)
        _opt(node, "Sex", c.sex.value if c.sex else None)
        _opt(node, "BirthDate", c.birth_date)
        _opt(node, "Nin", c.nin)
        _opt(node, "Phone", c.phone)
        _opt(node, "Region", c.region.value if c.region else None)
        _opt(node, "Departement", c.departement)
        _opt(node, "Trade", c.trade)
    elif isinstance(event, DependentAdded):
        family = Branch.FAMILY in branches
        _dependent(root, "DependentAdded", event.payload.dependent, family=family)
    elif isinstance(event, DependentRemoved):
        node = _sub(root, "DependentRemoved")
        node.set("dependentId", event.payload.dependent_id)
        node.set("reason", event.payload.reason.value)
        node.set("effectiveDate", event.payload.effective_date.isoformat())
    else:
        node = _sub(root, "StatusChange")
        node.set("status", event.payload.status.value)
        node.set("effectiveDate", event.payload.effective_date.isoformat())
        if event.payload.reason_code is not None:
            node.set("reasonCode", event.payload.reason_code)
    _branches(root, branches)
    return _message(event, KIND_AFFILIATION_CHANGE, mid, root)


def _contribution(event: ContributionPaid | ContributionReversed) -> OutboundMessage:
    p = event.payload
    shares = {b: p.allocation[b] for b in CSS_BRANCHES if p.allocation.get(b, 0) > 0}
    if not shares:
        raise UnsupportedEvent(f"{event.event_type} without a family or work_accident share")
    reversal = isinstance(event, ContributionReversed)
    nature = "reversal" if reversal else "payment"
    root, mid = _document(event, KIND_CONTRIBUTION, nature=nature)
    _sub(root, "Period", p.period)
    node = _sub(root, "Shares")
    for branch, amount in shares.items():
        _sub(node, _SHARE_ELEMENT[branch], str(amount))
    _sub(root, "Total", str(sum(shares.values())))
    _sub(root, "PaymentReference", p.payment_reference)
    if isinstance(event, ContributionPaid):
        _sub(root, "Channel", event.payload.channel.value)
    else:
        original = event.payload.original_event_id
        rev = _sub(root, "Reverses")
        rev.set("messageId", message_id(Institution.CSS, original, KIND_CONTRIBUTION))
        rev.set("eventId", str(original))
        rev.set("reason", event.payload.reason.value)
    return _message(event, KIND_CONTRIBUTION, mid, root)


def _work_accident(event: WorkAccidentDeclared) -> OutboundMessage:
    p = event.payload
    root, mid = _document(event, KIND_WORK_ACCIDENT)
    _sub(root, "AccidentId", p.accident_id)
    _sub(root, "AccidentAt", _utc(p.accident_at))
    _sub(root, "Region", p.region.value)
    _sub(root, "Departement", p.departement)
    _sub(root, "Place", p.place)
    _sub(root, "Activity", p.activity)
    _sub(root, "Description", p.description)
    _sub(root, "Injuries", p.injuries)
    _sub(root, "OnCommute", _text(p.on_commute))
    _sub(root, "Fatal", _text(p.fatal))
    _opt(root, "WorkStoppageDays", p.work_stoppage_days)
    _opt(root, "FirstCareProvider", p.first_care_provider)
    if p.witnesses:
        node = _sub(root, "Witnesses")
        for w in p.witnesses:
            wn = _sub(node, "Witness")
            _sub(wn, "GivenNames", w.given_names)
            _sub(wn, "FamilyName", w.family_name)
            _opt(wn, "Phone", w.phone)
    return _message(event, KIND_WORK_ACCIDENT, mid, root)


def _maternity(event: MaternityDeclared) -> OutboundMessage:
    p = event.payload
    if not p.cash_benefit_requested or p.leave_start is None:
        raise UnsupportedEvent("maternity.declared without a cash benefit is not for CSS")
    root, mid = _document(event, KIND_MATERNITY)
    _sub(root, "PregnancyId", p.pregnancy_id)
    _sub(root, "BeneficiaryId", p.beneficiary_id)
    _sub(root, "PregnancyConfirmedOn", p.pregnancy_confirmed_on.isoformat())
    _sub(root, "ExpectedDeliveryDate", p.expected_delivery_date.isoformat())
    _sub(root, "MultiplePregnancy", _text(p.multiple_pregnancy))
    _opt(root, "PrenatalProvider", p.prenatal_provider)
    _sub(root, "LeaveStart", p.leave_start.isoformat())
    return _message(event, KIND_MATERNITY, mid, root)


def translate(event: CanonicalEvent, member: MemberProfile | None) -> list[OutboundMessage]:
    """The CSS documents for ``event`` (one per event); same event, same bytes.

    Raises ``UnsupportedEvent`` for an event the routing table does not send to CSS.
    """
    if isinstance(event, MemberEnrolled):
        return [_affiliation(event)]
    if isinstance(event, MemberUpdated | DependentAdded | DependentRemoved | MemberStatusChanged):
        return [_affiliation_change(event, member)]
    if isinstance(event, ContributionPaid | ContributionReversed):
        return [_contribution(event)]
    if isinstance(event, WorkAccidentDeclared):
        return [_work_accident(event)]
    if isinstance(event, MaternityDeclared):
        return [_maternity(event)]
    raise UnsupportedEvent(f"{event.event_type} is not routed to CSS")
