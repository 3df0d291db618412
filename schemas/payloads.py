"""Typed payloads of the v1 events: what each institution needs to act on the fact.

Rules that span fields of one payload live here; rules that compare the payload with the
envelope (dates against ``occurred_at``, ids against ``member_id``) live in ``schemas.events``.
"""

from __future__ import annotations

from datetime import date, timedelta
from enum import StrEnum
from typing import Annotated, Self
from uuid import UUID

from pydantic import Field, ValidationInfo, field_validator, model_validator

from schemas.envelope import CanonicalModel
from schemas.errors import field_error
from schemas.types import (
    MOBILE_MONEY_CHANNELS,
    AccidentId,
    AgreementNumber,
    BeneficiaryId,
    BirthDate,
    Branch,
    Branches,
    Channel,
    ClaimId,
    Count,
    DependentId,
    Icd10Code,
    ItemCode,
    Label,
    MemberStatus,
    MutualCode,
    Name,
    Narrative,
    Nin,
    Ninea,
    Package,
    Packages,
    PastDate,
    PaymentReference,
    Period,
    PhoneE164,
    PregnancyId,
    ReasonCode,
    Region,
    Relationship,
    Sex,
    UtcDatetime,
    Xof,
    XofOrZero,
)

# --- members -----------------------------------------------------------------------------------


class MemberIdentity(CanonicalModel):
    """The insured worker as the institutions register them."""

    given_names: Name
    family_name: Name
    sex: Sex
    birth_date: BirthDate
    nin: Nin
    phone: PhoneE164


class DependentIdentity(CanonicalModel):
    """A dependent's identity; young children have no ID card yet, hence no NIN."""

    given_names: Name
    family_name: Name
    sex: Sex
    birth_date: BirthDate
    nin: Nin | None = None


class Dependent(CanonicalModel):
    """A person covered through the member (CMU coverage, CSS family benefits)."""

    dependent_id: DependentId = Field(description="The member's id plus -Dnn.")
    relationship: Relationship = Field(description="Relationship to the member.")
    identity: DependentIdentity


def _distinct_dependents(dependents: tuple[Dependent, ...]) -> tuple[Dependent, ...]:
    ids = [d.dependent_id for d in dependents]
    if len(set(ids)) != len(ids):
        raise field_error("duplicate_dependent", "must not list a dependent_id twice")
    return dependents


class MemberEnrolledPayload(CanonicalModel):
    identity: MemberIdentity
    region: Region = Field(description="Region of residence and activity.")
    departement: Label = Field(description="Département within the region.")
    trade: Label = Field(description="Trade (métier), e.g. menuisier, couturière.")
    package: Package
    opted_branches: Branches = Field(
        description="Branches the member opted into; a set, stored in declaration order."
    )
    dependents: Annotated[tuple[Dependent, ...], Field(max_length=99)] = ()

    _distinct = field_validator("dependents")(_distinct_dependents)


class MemberChanges(CanonicalModel):
    """New values of the fields that changed; a field left out (or null) is unchanged."""

    given_names: Name | None = None
    family_name: Name | None = None
    sex: Sex | None = None
    birth_date: BirthDate | None = None
    nin: Nin | None = None
    phone: PhoneE164 | None = None
    region: Region | None = None
    departement: Label | None = None
    trade: Label | None = None
    package: Package | None = None
    opted_branches: Branches | None = None

    @model_validator(mode="after")
    def _something_changed(self) -> Self:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise field_error("no_change", "must change at least one field")
        return self


class MemberUpdatedPayload(CanonicalModel):
    changes: MemberChanges


class DependentAddedPayload(CanonicalModel):
    dependent: Dependent


class RemovalReason(StrEnum):
    DECEASED = "deceased"
    DIVORCE = "divorce"
    AGE_LIMIT = "age_limit"
    NO_LONGER_DEPENDENT = "no_longer_dependent"
    ENTRY_ERROR = "entry_error"


class DependentRemovedPayload(CanonicalModel):
    dependent_id: DependentId
    reason: RemovalReason
    effective_date: date = Field(description="Last day of coverage is the day before.")


class MemberStatusChangedPayload(CanonicalModel):
    status: MemberStatus
    effective_date: date
    reason_code: ReasonCode | None = Field(
        default=None, description="Mutual's reason code, e.g. UNPAID_3_MONTHS."
    )


# --- contributions -----------------------------------------------------------------------------

Allocation = Annotated[
    dict[Branch, Xof],
    Field(
        min_length=1,
        description="Share of the amount per branch; the shares add up exactly to the amount.",
    ),
]


_BRANCHES = tuple(Branch)
"""Declaration order, taken once: iterating the enum class per event cost 2.6 µs, this 0.6."""


def _allocation_adds_up(allocation: dict[Branch, int], info: ValidationInfo) -> dict[Branch, int]:
    amount = info.data.get("amount")
    if amount is not None and sum(allocation.values()) != amount:
        raise field_error("allocation_mismatch", "shares must add up exactly to amount")
    # Declaration order, whatever order the producer wrote: equal events compare equal.
    return {b: allocation[b] for b in _BRANCHES if b in allocation}


class ContributionPaidPayload(CanonicalModel):
    amount: Xof
    period: Period
    allocation: Allocation
    channel: Channel
    payment_reference: PaymentReference = Field(
        description="Reference of the payment at the operator (Wave, Orange Money, bank...)."
    )
    payer_phone: PhoneE164 | None = Field(
        default=None, description="Paying wallet; required for mobile-money channels."
    )

    _adds_up = field_validator("allocation")(_allocation_adds_up)

    @model_validator(mode="after")
    def _wallet_known(self) -> Self:
        if self.channel in MOBILE_MONEY_CHANNELS and self.payer_phone is None:
            raise field_error(
                "payer_phone_missing",
                "is required for a mobile-money payment",
                at="payer_phone",
            )
        return self


class ReversalReason(StrEnum):
    DUPLICATE_PAYMENT = "duplicate_payment"
    PAYMENT_FAILED = "payment_failed"
    CHARGEBACK = "chargeback"
    ENTRY_ERROR = "entry_error"
    REFUND = "refund"


class ContributionReversedPayload(CanonicalModel):
    """Cancels all or part of an earlier ``contribution.paid``, branch by branch."""

    original_event_id: UUID = Field(description="event_id of the contribution.paid reversed.")
    payment_reference: PaymentReference
    period: Period
    amount: Xof = Field(description="Amount reversed.")
    allocation: Allocation
    reason: ReversalReason

    _adds_up = field_validator("allocation")(_allocation_adds_up)


# --- claims ------------------------------------------------------------------------------------


class ClaimKind(StrEnum):
    HEALTH = "health"
    MATERNITY = "maternity"


class ClaimItem(CanonicalModel):
    """One invoice line: an act, a drug or a stay, from the provider's tariff."""

    code: ItemCode
    description: Label
    quantity: Count
    unit_price: Xof
    amount: Xof = Field(description="quantity x unit_price.")

    @field_validator("amount")
    @classmethod
    def _line_total(cls, amount: int, info: ValidationInfo) -> int:
        quantity, unit_price = info.data.get("quantity"), info.data.get("unit_price")
        if quantity is not None and unit_price is not None and amount != quantity * unit_price:
            raise field_error("amount_mismatch", "must equal quantity x unit_price")
        return amount


class ClaimSubmittedPayload(CanonicalModel):
    claim_id: ClaimId
    kind: ClaimKind
    beneficiary_id: BeneficiaryId
    provider_agreement: AgreementNumber = Field(description="Agreement number of the provider.")
    service_date: PastDate
    diagnoses: Annotated[tuple[Icd10Code, ...], Field(min_length=1, max_length=20)]
    items: Annotated[tuple[ClaimItem, ...], Field(min_length=1, max_length=200)]
    total: Xof = Field(description="Sum of the items' amounts.")

    @field_validator("total")
    @classmethod
    def _sum_of_items(cls, total: int, info: ValidationInfo) -> int:
        items: tuple[ClaimItem, ...] | None = info.data.get("items")
        if items is not None and total != sum(item.amount for item in items):
            raise field_error("total_mismatch", "must equal the sum of the items' amounts")
        return total


class ClaimOutcome(StrEnum):
    APPROVED = "approved"
    PARTIALLY_APPROVED = "partially_approved"
    REJECTED = "rejected"


class ClaimAdjudicatedPayload(CanonicalModel):
    claim_id: ClaimId
    adjudicator: MutualCode = Field(description="Who decided: CMU, or the mutual itself.")
    outcome: ClaimOutcome
    claimed_amount: Xof
    approved_amount: XofOrZero
    reason_codes: Annotated[tuple[ReasonCode, ...], Field(max_length=20)] = Field(
        default=(), description="Why not all was approved; required unless approved."
    )

    @model_validator(mode="after")
    def _outcome_matches_amounts(self) -> Self:
        approved, claimed = self.approved_amount, self.claimed_amount
        consistent = {
            ClaimOutcome.APPROVED: approved == claimed,
            ClaimOutcome.PARTIALLY_APPROVED: 0 < approved < claimed,
            ClaimOutcome.REJECTED: approved == 0,
        }[self.outcome]
        if not consistent:
            raise field_error(
                "approved_amount_mismatch",
                "does not match the outcome (approved: all, partial: some, rejected: none)",
                at="approved_amount",
            )
        if self.outcome is not ClaimOutcome.APPROVED and not self.reason_codes:
            raise field_error(
                "reason_missing", "must give a reason unless approved", at="reason_codes"
            )
        return self


# --- work accidents and maternity --------------------------------------------------------------


class Witness(CanonicalModel):
    given_names: Name
    family_name: Name
    phone: PhoneE164 | None = None


class WorkAccidentDeclaredPayload(CanonicalModel):
    """What CSS needs to open an AT/MP file."""

    accident_id: AccidentId
    accident_at: UtcDatetime = Field(description="When the accident happened.")
    region: Region
    departement: Label
    place: Label = Field(description="Where: workshop, market, road...")
    activity: Label = Field(description="What the member was doing.")
    description: Narrative = Field(description="How it happened.")
    injuries: Label = Field(description="Nature and seat of the injuries.")
    on_commute: bool = Field(description="Accident on the way to or from work (trajet).")
    fatal: bool
    work_stoppage_days: Annotated[int, Field(ge=0, le=3650)] | None = Field(
        default=None, description="Days off work on the initial medical certificate."
    )
    first_care_provider: AgreementNumber | None = None
    witnesses: Annotated[tuple[Witness, ...], Field(max_length=5)] = ()


MAX_PREGNANCY = timedelta(days=300)


class MaternityDeclaredPayload(CanonicalModel):
    """Care part for CMU; cash benefit (maternity leave allowance) for CSS."""

    pregnancy_id: PregnancyId
    beneficiary_id: BeneficiaryId = Field(description="The member or a dependent spouse.")
    pregnancy_confirmed_on: PastDate
    expected_delivery_date: date
    multiple_pregnancy: bool
    prenatal_provider: AgreementNumber | None = None
    cash_benefit_requested: bool = Field(description="Only for the insured woman herself.")
    leave_start: date | None = Field(default=None, description="Required with a cash benefit.")

    @model_validator(mode="after")
    def _dates_consistent(self) -> Self:
        edd, confirmed = self.expected_delivery_date, self.pregnancy_confirmed_on
        if not confirmed < edd <= confirmed + MAX_PREGNANCY:
            raise field_error(
                "delivery_date_implausible",
                "must fall within 300 days after the pregnancy was confirmed",
                at="expected_delivery_date",
            )
        if self.cash_benefit_requested and self.leave_start is None:
            raise field_error(
                "leave_start_missing", "is required with a cash benefit", at="leave_start"
            )
        if self.leave_start is not None and not confirmed <= self.leave_start <= edd:
            raise field_error(
                "leave_start_implausible",
                "must fall between confirmation and expected delivery",
                at="leave_start",
            )
        return self


# --- providers ---------------------------------------------------------------------------------


class ProviderType(StrEnum):
    HOSPITAL = "hospital"
    HEALTH_CENTRE = "health_centre"
    HEALTH_POST = "health_post"
    CLINIC = "clinic"
    PHARMACY = "pharmacy"
    LABORATORY = "laboratory"
    IMAGING_CENTRE = "imaging_centre"


class ProviderSector(StrEnum):
    PUBLIC = "public"
    PRIVATE = "private"
    COMMUNITY = "community"


class ProviderAgreementSignedPayload(CanonicalModel):
    agreement_number: AgreementNumber = Field(description="Equals the envelope's member_id.")
    name: Label = Field(description="Name of the facility.")
    provider_type: ProviderType
    sector: ProviderSector
    region: Region
    departement: Label
    ninea: Ninea | None = None
    phone: PhoneE164 | None = None
    packages: Packages = Field(description="Packages whose care the provider may bill.")
    signed_on: PastDate
    valid_from: date
    valid_until: date | None = None

    @model_validator(mode="after")
    def _validity(self) -> Self:
        if self.valid_until is not None and self.valid_until <= self.valid_from:
            raise field_error(
                "validity_inverted", "must be later than valid_from", at="valid_until"
            )
        return self
