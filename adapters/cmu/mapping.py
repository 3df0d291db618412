"""Canonical events -> FHIR R4B transaction Bundles (CMU wire format v2, see FORMAT.md).

Resources are built as plain JSON objects and serialised canonically (sorted keys, no
whitespace, UTF-8): the same event always gives the same bytes. ``validate`` parses them back
with ``fhir.resources.R4B``.
"""

from __future__ import annotations

import json
import uuid
from calendar import monthrange
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from adapters.base import Institution, MemberProfile, OutboundMessage, UnsupportedEvent, message_id
from adapters.cmu import systems as s
from schemas import (
    CanonicalEvent,
    ClaimAdjudicated,
    ClaimSubmitted,
    ContributionPaid,
    ContributionReversed,
    DependentAdded,
    DependentRemoved,
    MaternityDeclared,
    MemberEnrolled,
    MemberStatusChanged,
    MemberUpdated,
    ProviderAgreementSigned,
)
from schemas.payloads import (
    ClaimKind,
    Dependent,
    MemberChanges,
)
from schemas.types import Branch, MemberStatus, Package, Relationship

Json = dict[str, Any]

FORMAT_VERSION = 2
KIND = "fhir.transaction"
CONTENT_TYPE = "application/fhir+json"
MUTUAL_FOR_CMU = "CMU"
PLAN_CLASS = "Coverage.class.first()"
"""The FHIRPath of the Coverage's plan class, the one ``class`` every Coverage has."""
MUTUAL_DECISION_CLAIM_TYPE = "professional"
"""``ClaimResponse.type`` of a mutual's decision (claim-type): the claims it decides."""

_URN_NAMESPACE = UUID("0b6f3c7e-2a41-5d8e-9c3f-7e1a4b2d6c90")

_ROLE_CODES = {
    Relationship.SPOUSE: ("SPS", "spouse"),
    Relationship.CHILD: ("CHILD", "child"),
    Relationship.PARENT: ("PRN", "parent"),
    Relationship.WARD: ("WARD", "ward"),
}
_PACKAGE_NAMES = {Package.BASE: "Paquet de base", Package.COMPLEMENTARY: "Paquet complémentaire"}
_ORGANIZATION_NAMES = {MUTUAL_FOR_CMU: "Agence de la Couverture Maladie Universelle"}
"""Names of the organisations referenced by code; any other (the mutual) is named by its code."""
_COVERAGE_STATUS = {
    MemberStatus.ACTIVE: "active",
    MemberStatus.SUSPENDED: "cancelled",
    MemberStatus.LAPSED: "cancelled",
    MemberStatus.DECEASED: "cancelled",
}


# --- small builders ----------------------------------------------------------------------------


def canonical_json(document: Json) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _instant(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _identifier(system: str, value: str) -> Json:
    return {"system": system, "value": value}


def _ref(resource_type: str, system: str, value: str) -> Json:
    """A logical reference, by identifier only: for what CMU does not hold (the operator's
    payment). Everything CMU holds is referenced through ``_Bundle.ref``, which resolves."""
    return {"type": resource_type, "identifier": _identifier(system, value)}


def _coding(system: str, code: str, display: str | None = None) -> Json:
    coding: Json = {"system": system, "code": code}
    if display is not None:
        coding["display"] = display
    return coding


def _concept(system: str, code: str, display: str | None = None) -> Json:
    return {"coding": [_coding(system, code, display)]}


def _xof(amount: int) -> Json:
    """Money in whole CFA francs: an integer JSON number, never a float."""
    return {"value": amount, "currency": "XOF"}


def _beneficiary_system(member_id: str, beneficiary_id: str) -> str:
    return s.MEMBER_ID if beneficiary_id == member_id else s.DEPENDENT_ID


def _name(given: str, family: str) -> Json:
    # Senegalese given names are often compound ("Ndèye Fatou", "Serigne Saliou"): kept whole.
    return {"use": "official", "family": family, "given": [given]}


def _phone(number: str) -> Json:
    return {"system": "phone", "value": number, "use": "mobile"}


def _address(region: str, departement: str) -> Json:
    return {"use": "home", "state": region, "district": departement, "country": "SN"}


class _Bundle:
    """Collects the entries of one transaction; fullUrls are uuid5 of the event and the key.

    References resolve on a FHIR server (FORMAT.md §1, "References"): to a resource of this
    transaction by its ``urn:uuid`` fullUrl, to one created by an earlier message by a
    conditional reference (``Patient?identifier=<system>|<value>``), which the server resolves
    to its own id. Either way ``Reference.identifier`` is kept for readers.
    """

    def __init__(self, event: CanonicalEvent) -> None:
        self.event = event
        self.entries: list[Json] = []
        self._held: dict[str, str] = {}  # "<type>|<system>|<value>" -> fullUrl, in this bundle

    def _full_url(self, key: str) -> str:
        return f"urn:uuid:{uuid.uuid5(_URN_NAMESPACE, f'{self.event.event_id}:{key}')}"

    def _add(self, resource: Json, system: str, value: str, request: Json) -> None:
        key = f"{resource['resourceType']}|{system}|{value}"
        full_url = self._full_url(key)
        self._held[key] = full_url
        self.entries.append({"fullUrl": full_url, "resource": resource, "request": request})

    def create(self, resource: Json, system: str, value: str) -> None:
        """Conditional create: the partner creates it only if no resource has the identifier."""
        rtype = resource["resourceType"]
        request = {"method": "POST", "url": rtype, "ifNoneExist": f"identifier={system}|{value}"}
        self._add(resource, system, value, request)

    def update(self, resource: Json, system: str, value: str) -> None:
        """Conditional update: create or replace the one resource with the identifier."""
        rtype = resource["resourceType"]
        self._add(
            resource,
            system,
            value,
            {"method": "PUT", "url": f"{rtype}?identifier={system}|{value}"},
        )

    def patch(self, rtype: str, system: str, value: str, operations: list[Json]) -> None:
        """Conditional FHIRPath Patch of the one resource with the identifier."""
        self.entries.append(
            {
                "fullUrl": self._full_url(f"{rtype}|{system}|{value}|patch"),
                "resource": {"resourceType": "Parameters", "parameter": operations},
                "request": {"method": "PATCH", "url": f"{rtype}?identifier={system}|{value}"},
            }
        )

    def ref(self, rtype: str, system: str, value: str) -> Json:
        """A reference the server resolves: this transaction's entry if it holds the target,
        else a conditional reference to the resource an earlier message created."""
        target = self._held.get(f"{rtype}|{system}|{value}")
        if target is None:
            target = f"{rtype}?identifier={system}|{value}"
        return {"reference": target, "type": rtype, "identifier": _identifier(system, value)}

    def organization(self, code: str) -> Json:
        """The mutual (``MSNAS``) or CMU, created in this transaction if absent from the
        server, so that a reference to it never dangles."""
        if f"Organization|{s.MUTUAL}|{code}" not in self._held:
            self.create(
                {
                    "resourceType": "Organization",
                    "identifier": [_identifier(s.MUTUAL, code)],
                    "active": True,
                    "type": [_concept(s.ORGANIZATION_TYPE, "ins", "Insurance Company")],
                    "name": _ORGANIZATION_NAMES.get(code, code),
                },
                s.MUTUAL,
                code,
            )
        return self.ref("Organization", s.MUTUAL, code)

    def provider(self, agreement: str) -> Json:
        """A care provider by agreement number, created in this transaction if absent from the
        server (identifier only: its ``provider.agreement_signed`` conditional update, before
        or after, writes the whole provider)."""
        if f"Organization|{s.PROVIDER_AGREEMENT}|{agreement}" not in self._held:
            self.create(
                {
                    "resourceType": "Organization",
                    "identifier": [_identifier(s.PROVIDER_AGREEMENT, agreement)],
                    "type": [_concept(s.ORGANIZATION_TYPE, "prov", "Healthcare Provider")],
                },
                s.PROVIDER_AGREEMENT,
                agreement,
            )
        return self.ref("Organization", s.PROVIDER_AGREEMENT, agreement)

    def patient(self, member_id: str, beneficiary_id: str) -> Json:
        """The care recipient: the member's Patient or a dependent's."""
        return self.ref("Patient", _beneficiary_system(member_id, beneficiary_id), beneficiary_id)

    def coverage(self, member_id: str) -> Json:
        return self.ref("Coverage", s.COVERAGE_ID, member_id)

    def document(self, message: str) -> Json:
        e = self.event
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "identifier": _identifier(s.MESSAGE_ID, message),
            "meta": {"tag": [_coding(s.EVENT_TYPE, e.event_type)]},
            "timestamp": _instant(e.recorded_at),
            "entry": self.entries,
        }


def _replace(path: str, value_type: str, value: Any) -> Json:
    return {
        "name": "operation",
        "part": [
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": path},
            {"name": "value", f"value{value_type}": value},
        ],
    }


def _add(path: str, name: str, value_type: str, value: Any) -> Json:
    return {
        "name": "operation",
        "part": [
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": path},
            {"name": "name", "valueString": name},
            {"name": "value", f"value{value_type}": value},
        ],
    }


# --- members -----------------------------------------------------------------------------------


def _dependent_resources(b: _Bundle, member_id: str, dependent: Dependent, since: str) -> None:
    i = dependent.identity
    identifiers = [_identifier(s.DEPENDENT_ID, dependent.dependent_id)]
    if i.nin is not None:
        identifiers.append(_identifier(s.NIN, i.nin))
    b.create(
        {
            "resourceType": "Patient",
            "identifier": identifiers,
            "active": True,
            "name": [_name(i.given_names, i.family_name)],
            "gender": i.sex.value,
            "birthDate": i.birth_date.isoformat(),
        },
        s.DEPENDENT_ID,
        dependent.dependent_id,
    )
    code, display = _ROLE_CODES[dependent.relationship]
    b.create(
        {
            "resourceType": "RelatedPerson",
            "identifier": [_identifier(s.DEPENDENT_ID, dependent.dependent_id)],
            "active": True,
            "patient": b.ref("Patient", s.MEMBER_ID, member_id),
            "relationship": [_concept(s.ROLE_CODE, code, display)],
            "name": [_name(i.given_names, i.family_name)],
            "gender": i.sex.value,
            "birthDate": i.birth_date.isoformat(),
            "period": {"start": since},
        },
        s.DEPENDENT_ID,
        dependent.dependent_id,
    )


def _enrolled(b: _Bundle, e: MemberEnrolled) -> None:
    p, i = e.payload, e.payload.identity
    since = e.occurred_at.date().isoformat()
    b.create(
        {
            "resourceType": "Patient",
            "identifier": [_identifier(s.MEMBER_ID, e.member_id), _identifier(s.NIN, i.nin)],
            "active": True,
            "name": [_name(i.given_names, i.family_name)],
            "gender": i.sex.value,
            "birthDate": i.birth_date.isoformat(),
            "telecom": [_phone(i.phone)],
            "address": [_address(p.region.value, p.departement)],
            "extension": [{"url": s.EXT_OCCUPATION, "valueString": p.trade}],
        },
        s.MEMBER_ID,
        e.member_id,
    )
    for dependent in p.dependents:
        _dependent_resources(b, e.member_id, dependent, since)
    member = b.ref("Patient", s.MEMBER_ID, e.member_id)
    payor = b.organization(e.source.mutual)
    b.create(
        {
            "resourceType": "Coverage",
            "identifier": [_identifier(s.COVERAGE_ID, e.member_id)],
            "status": "active",
            "type": _concept(s.ACT_CODE, "HIP", "health insurance plan policy"),
            "policyHolder": member,
            "subscriber": member,
            "subscriberId": e.member_id,
            "beneficiary": member,
            "relationship": _concept(s.SUBSCRIBER_RELATIONSHIP, "self"),
            "period": {"start": since},
            "payor": [payor],
            "class": [_package_class(p.package)],
            "extension": [{"url": s.EXT_MEMBER_STATUS, "valueCode": MemberStatus.ACTIVE.value}],
        },
        s.COVERAGE_ID,
        e.member_id,
    )


def _package_class(package: Package) -> Json:
    return {
        "type": _concept(s.COVERAGE_CLASS, "plan"),
        "value": package.value,
        "name": _PACKAGE_NAMES[package],
    }


def _patient_operations(c: MemberChanges) -> list[Json]:
    ops: list[Json] = []
    name = "Patient.name.where(use='official')"
    if c.given_names is not None:
        ops.append(_replace(f"{name}.given", "String", c.given_names))
    if c.family_name is not None:
        ops.append(_replace(f"{name}.family", "String", c.family_name))
    if c.sex is not None:
        ops.append(_replace("Patient.gender", "Code", c.sex.value))
    if c.birth_date is not None:
        ops.append(_replace("Patient.birthDate", "Date", c.birth_date.isoformat()))
    if c.nin is not None:
        ops.append(
            _replace(
                f"Patient.identifier.where(system='{s.NIN}')",
                "Identifier",
                _identifier(s.NIN, c.nin),
            )
        )
    if c.phone is not None:
        ops.append(
            _replace("Patient.telecom.where(system='phone')", "ContactPoint", _phone(c.phone))
        )
    address = "Patient.address.where(use='home')"
    if c.region is not None:
        ops.append(_replace(f"{address}.state", "String", c.region.value))
    if c.departement is not None:
        ops.append(_replace(f"{address}.district", "String", c.departement))
    if c.trade is not None:
        ops.append(
            _replace(f"Patient.extension.where(url='{s.EXT_OCCUPATION}').value", "String", c.trade)
        )
    return ops


def _updated(b: _Bundle, e: MemberUpdated) -> None:
    c = e.payload.changes
    ops = _patient_operations(c)
    if ops:
        b.patch("Patient", s.MEMBER_ID, e.member_id, ops)
    if c.package is not None:
        # The plan is the Coverage's one class (class[0]): a path filtering on a nested element,
        # ``class.where(type.coding.code='plan')``, is one HAPI FHIR's patch engine refuses
        # (HAPI-2719), and the old package it could filter on instead is not in the event.
        b.patch(
            "Coverage",
            s.COVERAGE_ID,
            e.member_id,
            [
                _replace(f"{PLAN_CLASS}.value", "String", c.package.value),
                _replace(f"{PLAN_CLASS}.name", "String", _PACKAGE_NAMES[c.package]),
            ],
        )
    # Opted branches other than health are none of CMU's business: an update that changes only
    # them is an empty transaction, acknowledged like any other (CMU receives every member event).


def _dependent_added(b: _Bundle, e: DependentAdded) -> None:
    _dependent_resources(b, e.member_id, e.payload.dependent, e.occurred_at.date().isoformat())


def _dependent_removed(b: _Bundle, e: DependentRemoved) -> None:
    # The removal reason stays with the mutual: CMU only needs the end of coverage.
    p = e.payload
    last_day = (p.effective_date - timedelta(days=1)).isoformat()
    b.patch(
        "RelatedPerson",
        s.DEPENDENT_ID,
        p.dependent_id,
        [
            _replace("RelatedPerson.active", "Boolean", False),
            _add("RelatedPerson.period", "end", "DateTime", last_day),
        ],
    )


def _status_changed(b: _Bundle, e: MemberStatusChanged) -> None:
    p = e.payload
    b.patch(
        "Coverage",
        s.COVERAGE_ID,
        e.member_id,
        [
            _replace("Coverage.status", "Code", _COVERAGE_STATUS[p.status]),
            _replace(
                f"Coverage.extension.where(url='{s.EXT_MEMBER_STATUS}').value",
                "Code",
                p.status.value,
            ),
        ],
    )
    if p.status is MemberStatus.DECEASED:
        b.patch(
            "Patient",
            s.MEMBER_ID,
            e.member_id,
            [_add("Patient", "deceased", "DateTime", p.effective_date.isoformat())],
        )


# --- contributions -----------------------------------------------------------------------------


def _month(period: str) -> Json:
    year, month = int(period[:4]), int(period[5:])
    last = monthrange(year, month)[1]
    return {"start": f"{period}-01", "end": f"{period}-{last:02d}"}


def _payment_notice(
    b: _Bundle, e: ContributionPaid | ContributionReversed, status: str, share: int
) -> Json:
    payee, recipient = b.organization(e.source.mutual), b.organization(MUTUAL_FOR_CMU)
    return {
        "resourceType": "PaymentNotice",
        "identifier": [_identifier(s.CONTRIBUTION_ID, str(e.event_id))],
        "status": "active",
        "request": b.coverage(e.member_id),
        "created": _instant(e.occurred_at),
        # The operator's payment, which CMU does not hold: a logical reference by design.
        "payment": _ref("PaymentReconciliation", s.PAYMENT_REFERENCE, e.payload.payment_reference),
        "paymentDate": e.occurred_at.date().isoformat(),
        "payee": payee,
        "recipient": recipient,
        "amount": _xof(share),
        "paymentStatus": _concept(s.PAYMENT_STATUS, status),
        "extension": [{"url": s.EXT_CONTRIBUTION_PERIOD, "valuePeriod": _month(e.payload.period)}],
    }


def _health_share(e: ContributionPaid | ContributionReversed) -> int:
    share = e.payload.allocation.get(Branch.HEALTH, 0)
    if share <= 0:
        raise UnsupportedEvent(f"{e.event_type} without a health share is not routed to CMU")
    return share


def _paid(b: _Bundle, e: ContributionPaid) -> None:
    notice = _payment_notice(b, e, "paid", _health_share(e))
    notice["extension"].append({"url": s.EXT_PAYMENT_CHANNEL, "valueCode": e.payload.channel.value})
    b.create(notice, s.CONTRIBUTION_ID, str(e.event_id))


def _reversed(b: _Bundle, e: ContributionReversed) -> None:
    notice = _payment_notice(b, e, "reversed", _health_share(e))
    notice["extension"] += [
        {
            "url": s.EXT_REVERSAL_OF,
            "valueIdentifier": _identifier(s.CONTRIBUTION_ID, str(e.payload.original_event_id)),
        },
        {"url": s.EXT_REVERSAL_REASON, "valueCode": e.payload.reason.value},
    ]
    b.create(notice, s.CONTRIBUTION_ID, str(e.event_id))


# --- claims, maternity, providers --------------------------------------------------------------


def _claim_submitted(b: _Bundle, e: ClaimSubmitted) -> None:
    p = e.payload
    maternity = p.kind is ClaimKind.MATERNITY
    service_date = p.service_date.isoformat()
    insurer, provider = b.organization(MUTUAL_FOR_CMU), b.provider(p.provider_agreement)
    b.create(
        {
            "resourceType": "Claim",
            "identifier": [_identifier(s.CLAIM_ID, p.claim_id)],
            "status": "active",
            "type": _concept(s.CLAIM_TYPE, "institutional" if maternity else "professional"),
            "subType": _concept(s.CLAIM_KIND, p.kind.value),
            "use": "claim",
            "patient": b.patient(e.member_id, p.beneficiary_id),
            "billablePeriod": {"start": service_date, "end": service_date},
            "created": _instant(e.occurred_at),
            "insurer": insurer,
            "provider": provider,
            "priority": _concept(s.PROCESS_PRIORITY, "normal"),
            "insurance": [{"sequence": 1, "focal": True, "coverage": b.coverage(e.member_id)}],
            "diagnosis": [
                {"sequence": n, "diagnosisCodeableConcept": _concept(s.ICD10, code)}
                for n, code in enumerate(p.diagnoses, start=1)
            ],
            "item": [
                {
                    "sequence": n,
                    "diagnosisSequence": list(range(1, len(p.diagnoses) + 1)),
                    "productOrService": _concept(s.TARIFF, item.code, item.description),
                    "servicedDate": service_date,
                    "quantity": {"value": item.quantity},
                    "unitPrice": _xof(item.unit_price),
                    "net": _xof(item.amount),
                }
                for n, item in enumerate(p.items, start=1)
            ],
            "total": _xof(p.total),
        },
        s.CLAIM_ID,
        p.claim_id,
    )


def _claim_adjudicated(b: _Bundle, e: ClaimAdjudicated) -> None:
    p = e.payload
    if p.adjudicator == MUTUAL_FOR_CMU:
        raise UnsupportedEvent("CMU's own decisions are never sent back to CMU")
    decision_id = f"{p.claim_id}/{p.adjudicator}"
    insurer = b.organization(p.adjudicator)
    # A conditional update, not a create: a re-adjudication (same decision id, new content)
    # replaces the decision CMU holds instead of being matched and dropped.
    b.update(
        {
            "resourceType": "ClaimResponse",
            "identifier": [_identifier(s.CLAIM_DECISION_ID, decision_id)],
            "status": "active",
            # The event does not carry the claim's kind: the mutual decides on the claims of
            # its health package (professional care); maternity care is CMU's to decide.
            "type": _concept(s.CLAIM_TYPE, MUTUAL_DECISION_CLAIM_TYPE),
            "use": "claim",
            "patient": b.ref("Patient", s.MEMBER_ID, e.member_id),
            "created": _instant(e.occurred_at),
            "insurer": insurer,
            "request": b.ref("Claim", s.CLAIM_ID, p.claim_id),
            "outcome": "complete",
            "disposition": p.outcome.value,
            "total": [
                {
                    "category": _concept(s.ADJUDICATION, "submitted"),
                    "amount": _xof(p.claimed_amount),
                },
                {
                    "category": _concept(s.ADJUDICATION, "benefit"),
                    "amount": _xof(p.approved_amount),
                },
            ],
            **(
                {
                    "adjudication": [
                        {
                            "category": _concept(s.ADJUDICATION, "benefit"),
                            "reason": _concept(s.ADJUDICATION_REASON, code),
                        }
                        for code in p.reason_codes
                    ]
                }
                if p.reason_codes
                else {}
            ),
        },
        s.CLAIM_DECISION_ID,
        decision_id,
    )


def _maternity(b: _Bundle, e: MaternityDeclared) -> None:
    p = e.payload
    provider = None if p.prenatal_provider is None else b.provider(p.prenatal_provider)
    episode: Json = {
        "resourceType": "EpisodeOfCare",
        "identifier": [_identifier(s.PREGNANCY_ID, p.pregnancy_id)],
        "status": "active",
        "type": [_concept(s.EPISODE_TYPE, "maternity", "Prenatal and delivery care")],
        "patient": b.patient(e.member_id, p.beneficiary_id),
        "period": {"start": p.pregnancy_confirmed_on.isoformat()},
        "extension": [
            {"url": s.EXT_EXPECTED_DELIVERY, "valueDate": p.expected_delivery_date.isoformat()},
            {"url": s.EXT_MULTIPLE_PREGNANCY, "valueBoolean": p.multiple_pregnancy},
        ],
    }
    if provider is not None:
        episode["managingOrganization"] = provider
    b.create(episode, s.PREGNANCY_ID, p.pregnancy_id)


def _provider(b: _Bundle, e: ProviderAgreementSigned) -> None:
    p = e.payload
    validity: Json = {"start": p.valid_from.isoformat()}
    if p.valid_until is not None:
        validity["end"] = p.valid_until.isoformat()
    identifiers = [{**_identifier(s.PROVIDER_AGREEMENT, p.agreement_number), "period": validity}]
    if p.ninea is not None:
        identifiers.append(_identifier(s.NINEA, p.ninea))
    org: Json = {
        "resourceType": "Organization",
        "identifier": identifiers,
        "active": True,
        "type": [
            _concept(s.PROVIDER_TYPE, p.provider_type.value),
            _concept(s.PROVIDER_SECTOR, p.sector.value),
        ],
        "name": p.name,
        "address": [{"state": p.region.value, "district": p.departement, "country": "SN"}],
        "extension": [{"url": s.EXT_BILLABLE_PACKAGE, "valueCode": pk.value} for pk in p.packages],
    }
    if p.phone is not None:
        org["telecom"] = [{"system": "phone", "value": p.phone, "use": "work"}]
    b.update(org, s.PROVIDER_AGREEMENT, p.agreement_number)


_HANDLERS: dict[type[Any], Callable[[_Bundle, Any], None]] = {
    MemberEnrolled: _enrolled,
    MemberUpdated: _updated,
    DependentAdded: _dependent_added,
    DependentRemoved: _dependent_removed,
    MemberStatusChanged: _status_changed,
    ContributionPaid: _paid,
    ContributionReversed: _reversed,
    ClaimSubmitted: _claim_submitted,
    ClaimAdjudicated: _claim_adjudicated,
    MaternityDeclared: _maternity,
    ProviderAgreementSigned: _provider,
}


def translate(event: CanonicalEvent, member: MemberProfile | None) -> list[OutboundMessage]:
    """One transaction Bundle per routed event. ``member`` is not needed: every CMU message
    is self-contained (the package travels with the enrolment and its updates)."""
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise UnsupportedEvent(f"{event.event_type} is not routed to CMU")
    bundle = _Bundle(event)
    handler(bundle, event)
    mid = message_id(Institution.CMU, event.event_id, KIND)
    return [
        OutboundMessage(
            message_id=mid,
            institution=Institution.CMU,
            event_id=event.event_id,
            member_id=event.member_id,
            kind=KIND,
            content_type=CONTENT_TYPE,
            body=canonical_json(bundle.document(mid)),
            format_version=FORMAT_VERSION,
        )
    ]
