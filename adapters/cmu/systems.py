"""Identifier systems, code systems and extension URLs of the CMU wire format (v2).

Jokko defines them (no Senegalese FHIR implementation guide publishes any); FORMAT.md lists
them with their meaning. They are part of the format: changing one is a new FORMAT_VERSION.
"""

from __future__ import annotations

from typing import Final

# --- identifier systems ------------------------------------------------------------------------
MEMBER_ID: Final = "https://msnas.sn/fhir/member-id"
"""The mutual's member id (``MSNAS-DK-000123``): Patient of a member."""
DEPENDENT_ID: Final = "https://msnas.sn/fhir/dependent-id"
"""A dependent's id (``MSNAS-DK-000123-D01``): Patient and RelatedPerson of a dependent."""
NIN: Final = "https://daf.sn/fhir/nin"
"""National identification number of the CEDEAO biometric ID card, issued by the DAF."""
COVERAGE_ID: Final = "https://msnas.sn/fhir/coverage-id"
"""The member's family health coverage; its value is the member id."""
CLAIM_ID: Final = "https://msnas.sn/fhir/claim-id"
CLAIM_DECISION_ID: Final = "https://msnas.sn/fhir/claim-decision-id"
"""A mutual's own decision on a claim: ``<claim id>/<adjudicator>``."""
CONTRIBUTION_ID: Final = "https://msnas.sn/fhir/contribution-event-id"
"""A contribution (or its reversal), identified by the canonical event id."""
PAYMENT_REFERENCE: Final = "https://msnas.sn/fhir/payment-reference"
"""The payment's reference at the operator (Wave, Orange Money, bank...)."""
PREGNANCY_ID: Final = "https://msnas.sn/fhir/pregnancy-id"
PROVIDER_AGREEMENT: Final = "https://msnas.sn/fhir/provider-agreement"
"""A care provider's agreement (convention) number, ``CONV-TH-00042``."""
NINEA: Final = "https://ansd.sn/fhir/ninea"
MUTUAL: Final = "https://msnas.sn/fhir/mutual-code"
"""Organisations by code: the mutual (``MSNAS``) and ``CMU`` itself."""
MESSAGE_ID: Final = "https://jokko.sn/fhir/message-id"
"""Jokko's message id: ``Bundle.identifier`` of every message and of its transaction-response."""
BATCH_ID: Final = "https://jokko.sn/fhir/batch-id"
"""Jokko's batch id: ``Bundle.identifier`` of a batch of messages (the id its request is signed
with); never a message id, so an ack cannot be mistaken for one."""

# --- code systems ------------------------------------------------------------------------------
ICD10: Final = "http://hl7.org/fhir/sid/icd-10"
CLAIM_TYPE: Final = "http://terminology.hl7.org/CodeSystem/claim-type"
CLAIM_KIND: Final = "https://jokko.sn/fhir/CodeSystem/claim-kind"
"""``health`` | ``maternity``: Claim.subType."""
PROCESS_PRIORITY: Final = "http://terminology.hl7.org/CodeSystem/processpriority"
ADJUDICATION: Final = "http://terminology.hl7.org/CodeSystem/adjudication"
ADJUDICATION_REASON: Final = "https://msnas.sn/fhir/CodeSystem/adjudication-reason"
TARIFF: Final = "https://msnas.sn/fhir/CodeSystem/tariff"
"""Act, drug and stay codes of the providers' agreed tariff (``CONS-GEN``)."""
ORGANIZATION_TYPE: Final = "http://terminology.hl7.org/CodeSystem/organization-type"
"""``ins`` (the mutual, CMU) | ``prov`` (a care provider): Organizations Jokko creates."""
COVERAGE_CLASS: Final = "http://terminology.hl7.org/CodeSystem/coverage-class"
ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ROLE_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
SUBSCRIBER_RELATIONSHIP: Final = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
MEMBER_STATUS: Final = "https://jokko.sn/fhir/CodeSystem/member-status"
PAYMENT_STATUS: Final = "https://jokko.sn/fhir/CodeSystem/payment-status"
"""``paid`` | ``reversed``: PaymentNotice.paymentStatus."""
EPISODE_TYPE: Final = "https://jokko.sn/fhir/CodeSystem/episode-type"
PROVIDER_TYPE: Final = "https://jokko.sn/fhir/CodeSystem/provider-type"
PROVIDER_SECTOR: Final = "https://jokko.sn/fhir/CodeSystem/provider-sector"
EVENT_TYPE: Final = "https://jokko.sn/fhir/CodeSystem/event-type"
"""``Bundle.meta.tag``: the canonical event type a message translates."""
REJECTION_REASON: Final = "https://cmu.sn/fhir/CodeSystem/rejection-reason"
"""CMU's reason codes (``R042``) in ``OperationOutcome.issue.details.coding``."""

# --- extensions --------------------------------------------------------------------------------
_EXT: Final = "https://jokko.sn/fhir/StructureDefinition/"
EXT_MESSAGE_ID: Final = _EXT + "message-id"
"""valueString: the message an OperationOutcome or a ClaimResponse answers."""
EXT_MEMBER_STATUS: Final = _EXT + "member-status"
EXT_OCCUPATION: Final = _EXT + "occupation"
EXT_CONTRIBUTION_PERIOD: Final = _EXT + "contribution-period"
EXT_PAYMENT_CHANNEL: Final = _EXT + "payment-channel"
EXT_REVERSAL_OF: Final = _EXT + "reversal-of"
EXT_REVERSAL_REASON: Final = _EXT + "reversal-reason"
EXT_EXPECTED_DELIVERY: Final = _EXT + "expected-delivery-date"
EXT_MULTIPLE_PREGNANCY: Final = _EXT + "multiple-pregnancy"
EXT_BILLABLE_PACKAGE: Final = _EXT + "billable-package"
