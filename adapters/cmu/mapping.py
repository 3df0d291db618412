"""Canonical events -> FHIR R4B transaction Bundles (CMU wire format v1, see FORMAT.md).

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

FORMAT_VERSION = 1
KIND = "fhir.transaction"
CONTENT_TYPE = "application/fhir+json"
MUTUAL_FOR_CMU = "CMU"

_URN_NAMESPACE = UUID("0b6f3c7e-2a41-5d8e-9c3f-7e1a4b2d6c90")

_ROLE_CODES = {
    Relationship.SPOUSE: ("SPS", "spouse"),
    Relationship.CHILD: ("CHILD", "child"),
    Relationship.PARENT: ("PRN", "parent"),
    Relationship.WARD: ("WARD", "ward"),
}
_PACKAGE_NAMES = {Package.BASE: "Paquet de base", Package.COMPLEMENTARY: "Paquet complémentaire"}
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
    """A logical reference: CMU resolves it by identifier, whatever its own resource ids."""
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


def _patient_ref(member_id: str, beneficiary_id: str) -> Json:
    return _ref("Patient", _beneficiary_system(member_id, beneficiary_id), beneficiary_id)


def _coverage_ref(member_id: str) -> Json:
    return _ref("Coverage", s.COVERAGE_ID, member_id)


def _org_ref(code: str) -> Json:
    return _ref("Organization", s.MUTUAL, code)


def _provider_ref(agreement: str) -> Json:
    return _ref("Organization", s.PROVIDER_AGREEMENT, agreement)


def _name(given: str, family: str) -> Json:
    # Senegalese given names are often compound ("Ndèye Fatou", "Serigne Saliou"): kept whole.
    return {"use": "official", "family": family, "given": [given]}


def _phone(number: str) -> Json:
    return {"system": "phone", "value": number, "use": "mobile"}


def _address(region: str, departement: str) -> Json:
    return {"use": "home", "state": region, "district": departement, "country": "SN"}


class _Bundle:
    """Collects the entries of one transaction; fullUrls are uuid5 of the event and the key."""

    def __init__(self, event: CanonicalEvent) -> None:
        self.event = event
        self.entries: list[Json] = []

    def _full_url(self, key: str) -> str:
        return f"urn:uuid:{uuid.uuid5(_URN_NAMESPACE, f'{self.event.event_id}:{key}')}"

    def create(self, resource: Json, system: str, value: str) -> None:
        """Conditional create: the partner creates it only if no resource has the identifier."""
        rtype = resource["resourceType"]
        self.entries.append(
            {
                "fullUrl": self._full_url(f"{rtype}|{system}|{value}"),
                "resource": resource,
                "request": {
                    "method": "POST",
                    "url": rtype,
                    "ifNoneExist": f"identifier={system}|{value}",
                },
            }
        )

    def update(self, resource: Json, system: str, value: str) -> None:
        """Conditional update: create or replace the one resource with the identifier."""
        rtype = resource["resourceType"]
        self.entries.append(
            {
                "fullUrl": self._full_url(f"{rtype}|{system}|{value}"),
                "resource": resource,
                "request": {"method": "PUT", "url": f"{rtype}?identifier={system}|{value}"},
            }
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
            "patient": _ref("Patient", s.MEMBER_ID, member_id),
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
    member = _ref("Patient", s.MEMBER_ID, e.member_id)
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
            "payor": [_org_ref(e.source.mutual)],
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
        b.patch(
            "Coverage",
            s.COVERAGE_ID,
            e.member_id,
            [
                _replace(
                    "Coverage.class.where(type.coding.code='plan').value", "String", c.package.value
                ),
                _replace(
                    "Coverage.class.where(type.coding.code='plan').name",
                    "String",
                    _PACKAGE_NAMES[c.package],
                ),
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


def _payment_notice(e: ContributionPaid | ContributionReversed, status: str, share: int) -> Json:
    return {
        "resourceType": "PaymentNotice",
        "identifier": [_identifier(s.CONTRIBUTION_ID, str(e.event_id))],
        "status": "active",
        "request": _coverage_ref(e.member_id),
        "created": _instant(e.occurred_at),
        "payment": _ref("PaymentReconciliation", s.PAYMENT_REFERENCE, e.payload.payment_reference),
        "paymentDate": e.occurred_at.date().isoformat(),
        "payee": _org_ref(e.source.mutual),
        "recipient": _org_ref(MUTUAL_FOR_CMU),
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
    notice = _payment_notice(e, "paid", _health_share(e))
    notice["extension"].append({"url": s.EXT_PAYMENT_CHANNEL, "valueCode": e.payload.channel.value})
    b.create(notice, s.CONTRIBUTION_ID, str(e.event_id))


def _reversed(b: _Bundle, e: ContributionReversed) -> None:
    notice = _payment_notice(e, "reversed", _health_share(e))
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
    b.create(
        {
            "resourceType": "Claim",
            "identifier": [_identifier(s.CLAIM_ID, p.claim_id)],
            "status": "active",
            "type": _concept(s.CLAIM_TYPE, "institutional" if maternity else "professional"),
            "subType": _concept(s.CLAIM_KIND, p.kind.value),
            "use": "claim",
            "patient": _patient_ref(e.member_id, p.beneficiary_id),
            "billablePeriod": {"start": service_date, "end": service_date},
            "created": _instant(e.occurred_at),
            "insurer": _org_ref(MUTUAL_FOR_CMU),
            "provider": _provider_ref(p.provider_agreement),
            "priority": _concept(s.PROCESS_PRIORITY, "normal"),
            "insurance": [{"sequence": 1, "focal": True, "coverage": _coverage_ref(e.member_id)}],
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
    b.create(
        {
            "resourceType": "ClaimResponse",
            "identifier": [_identifier(s.CLAIM_DECISION_ID, decision_id)],
            "status": "active",
            # The decision does not repeat the claim's type: the referenced Claim has it.
            "type": {"text": "as in the referenced claim"},
            "use": "claim",
            "patient": _ref("Patient", s.MEMBER_ID, e.member_id),
            "created": _instant(e.occurred_at),
            "insurer": _org_ref(p.adjudicator),
            "request": _ref("Claim", s.CLAIM_ID, p.claim_id),
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
    episode: Json = {
        "resourceType": "EpisodeOfCare",
        "identifier": [_identifier(s.PREGNANCY_ID, p.pregnancy_id)],
        "status": "active",
        "type": [_concept(s.EPISODE_TYPE, "maternity", "Prenatal and delivery care")],
        "patient": _patient_ref(e.member_id, p.beneficiary_id),
        "period": {"start": p.pregnancy_confirmed_on.isoformat()},
        "extension": [
            {"url": s.EXT_EXPECTED_DELIVERY, "valueDate": p.expected_delivery_date.isoformat()},
            {"url": s.EXT_MULTIPLE_PREGNANCY, "valueBoolean": p.multiple_pregnancy},
        ],
    }
    if p.prenatal_provider is not None:
        episode["managingOrganization"] = _provider_ref(p.prenatal_provider)
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
