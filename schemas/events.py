"""The v1 canonical events, their discriminated union, and the one way in and out of bytes."""

from __future__ import annotations

import json
from functools import cache
from typing import Annotated, Any, Final, Literal, Self

from pydantic import Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import PydanticSerializationError, to_json

from schemas.envelope import Envelope
from schemas.errors import ROOT_LOC, FieldError, InvalidEvent, field_error
from schemas.payloads import (
    ClaimAdjudicatedPayload,
    ClaimSubmittedPayload,
    ContributionPaidPayload,
    ContributionReversedPayload,
    DependentAddedPayload,
    DependentRemovedPayload,
    MaternityDeclaredPayload,
    MemberEnrolledPayload,
    MemberStatusChangedPayload,
    MemberUpdatedPayload,
    ProviderAgreementSignedPayload,
    WorkAccidentDeclaredPayload,
)
from schemas.types import AgreementNumber, MemberStatus, period_of


def _belongs_to(member_id: str, some_id: str) -> bool:
    return some_id == member_id or some_id.startswith(member_id + "-D")


class MemberEnrolled(Envelope):
    """A worker joined the mutual: CMU always; CSS and IPRES per opted branches."""

    event_type: Literal["member.enrolled"] = "member.enrolled"
    payload: MemberEnrolledPayload

    @model_validator(mode="after")
    def _dependents_are_the_members(self) -> Self:
        for i, dependent in enumerate(self.payload.dependents):
            if not _belongs_to(self.member_id, dependent.dependent_id):
                raise field_error(
                    "dependent_id_mismatch",
                    "must start with the member_id",
                    at=f"payload.dependents.{i}.dependent_id",
                )
        return self


class MemberUpdated(Envelope):
    """A change or correction to a member's registration; carries only what changed."""

    event_type: Literal["member.updated"] = "member.updated"
    payload: MemberUpdatedPayload


class DependentAdded(Envelope):
    """A new dependent is covered through the member (birth, marriage...)."""

    event_type: Literal["member.dependent_added"] = "member.dependent_added"
    payload: DependentAddedPayload

    @model_validator(mode="after")
    def _dependent_is_the_members(self) -> Self:
        if not _belongs_to(self.member_id, self.payload.dependent.dependent_id):
            raise field_error(
                "dependent_id_mismatch",
                "must start with the member_id",
                at="payload.dependent.dependent_id",
            )
        return self


class DependentRemoved(Envelope):
    """A dependent stops being covered through the member."""

    event_type: Literal["member.dependent_removed"] = "member.dependent_removed"
    payload: DependentRemovedPayload

    @model_validator(mode="after")
    def _dependent_is_the_members(self) -> Self:
        if not _belongs_to(self.member_id, self.payload.dependent_id):
            raise field_error(
                "dependent_id_mismatch", "must start with the member_id", at="payload.dependent_id"
            )
        return self


class MemberStatusChanged(Envelope):
    """Coverage starts, pauses or ends: institutions suspend or close their records."""

    event_type: Literal["member.status_changed"] = "member.status_changed"
    payload: MemberStatusChangedPayload

    @model_validator(mode="after")
    def _death_is_not_foreseen(self) -> Self:
        p = self.payload
        if p.status is MemberStatus.DECEASED and p.effective_date > self.occurred_at.date():
            raise field_error(
                "date_after_event",
                "a death must not be dated after occurred_at",
                at="payload.effective_date",
            )
        return self


class ContributionPaid(Envelope):
    """A member paid; each branch's share goes to the institution that serves it."""

    event_type: Literal["contribution.paid"] = "contribution.paid"
    payload: ContributionPaidPayload

    @model_validator(mode="after")
    def _period_not_after_payment(self) -> Self:
        if self.payload.period > period_of(self.occurred_at):
            raise field_error(
                "period_in_future",
                "must not be a month after the payment (occurred_at)",
                at="payload.period",
            )
        return self


class ContributionReversed(Envelope):
    """An earlier payment is cancelled (duplicate, failed, refunded), branch by branch."""

    event_type: Literal["contribution.reversed"] = "contribution.reversed"
    payload: ContributionReversedPayload


class ClaimSubmitted(Envelope):
    """A provider's invoice for care given to the member or a dependent (CMU)."""

    event_type: Literal["claim.submitted"] = "claim.submitted"
    payload: ClaimSubmittedPayload

    @model_validator(mode="after")
    def _beneficiary_covered_by_member(self) -> Self:
        if not _belongs_to(self.member_id, self.payload.beneficiary_id):
            raise field_error(
                "beneficiary_mismatch",
                "must be the member_id or one of its dependents",
                at="payload.beneficiary_id",
            )
        if self.payload.service_date > self.occurred_at.date():
            raise field_error(
                "date_after_event", "must not be after occurred_at", at="payload.service_date"
            )
        return self


class ClaimAdjudicated(Envelope):
    """The decision on a claim, usually CMU's answer flowing back to the mutual."""

    event_type: Literal["claim.adjudicated"] = "claim.adjudicated"
    payload: ClaimAdjudicatedPayload


class WorkAccidentDeclared(Envelope):
    """An accident at work or on the way to it (CSS, AT/MP branch)."""

    event_type: Literal["work_accident.declared"] = "work_accident.declared"
    payload: WorkAccidentDeclaredPayload

    @model_validator(mode="after")
    def _accident_before_declaration(self) -> Self:
        if self.payload.accident_at > self.occurred_at:
            raise field_error(
                "date_after_event", "must not be after occurred_at", at="payload.accident_at"
            )
        return self


class MaternityDeclared(Envelope):
    """A pregnancy: prenatal and delivery care (CMU) and maternity leave allowance (CSS)."""

    event_type: Literal["maternity.declared"] = "maternity.declared"
    payload: MaternityDeclaredPayload

    @model_validator(mode="after")
    def _beneficiary_covered_by_member(self) -> Self:
        p = self.payload
        if not _belongs_to(self.member_id, p.beneficiary_id):
            raise field_error(
                "beneficiary_mismatch",
                "must be the member_id or one of its dependents",
                at="payload.beneficiary_id",
            )
        if p.cash_benefit_requested and p.beneficiary_id != self.member_id:
            raise field_error(
                "cash_benefit_not_insured",
                "only the insured member herself can receive the cash benefit",
                at="payload.cash_benefit_requested",
            )
        return self


class ProviderAgreementSigned(Envelope):
    """A care provider signed an agreement; claims may cite it from ``valid_from``.

    Not about a member: the ordering key ``member_id`` carries the agreement number, so one
    provider's events stay in order like a member's do.
    """

    event_type: Literal["provider.agreement_signed"] = "provider.agreement_signed"
    member_id: AgreementNumber = Field(
        description="Ordering key: the agreement number, e.g. CONV-TH-00042."
    )
    payload: ProviderAgreementSignedPayload

    @model_validator(mode="after")
    def _keyed_by_agreement(self) -> Self:
        if self.payload.agreement_number != self.member_id:
            raise field_error(
                "agreement_number_mismatch",
                "must equal member_id (the ordering key)",
                at="payload.agreement_number",
            )
        return self


CanonicalEvent = Annotated[
    MemberEnrolled
    | MemberUpdated
    | DependentAdded
    | DependentRemoved
    | MemberStatusChanged
    | ContributionPaid
    | ContributionReversed
    | ClaimSubmitted
    | ClaimAdjudicated
    | WorkAccidentDeclared
    | MaternityDeclared
    | ProviderAgreementSigned,
    Field(discriminator="event_type"),
]
"""Any v1 canonical event; ``event_type`` selects the class."""

EVENT_CLASSES: Final[dict[str, type[Envelope]]] = {
    cls.model_fields["event_type"].default: cls
    for cls in (
        MemberEnrolled,
        MemberUpdated,
        DependentAdded,
        DependentRemoved,
        MemberStatusChanged,
        ContributionPaid,
        ContributionReversed,
        ClaimSubmitted,
        ClaimAdjudicated,
        WorkAccidentDeclared,
        MaternityDeclared,
        ProviderAgreementSigned,
    )
}
"""Event class by ``event_type``, in the order of ``CanonicalEvent``."""

EVENT_TYPES: Final[tuple[str, ...]] = tuple(EVENT_CLASSES)


@cache
def event_adapter() -> TypeAdapter[CanonicalEvent]:
    """Built on first use, not at import."""
    return TypeAdapter(CanonicalEvent)


def parse_event(raw: bytes | str | dict[str, Any]) -> CanonicalEvent:
    """Validate one event and return its precise class.

    A dict is validated as the JSON document it stands for, so every producer gets the same
    rules whatever it hands in. Raises ``InvalidEvent`` with one ``FieldError`` per problem.
    """
    if isinstance(raw, dict):
        try:
            raw = to_json(raw)
        except PydanticSerializationError:
            raise InvalidEvent(
                [FieldError(ROOT_LOC, "Input should be JSON-serialisable", "json_invalid")]
            ) from None
    elif not isinstance(raw, str | bytes | bytearray):
        raise InvalidEvent(
            [FieldError(ROOT_LOC, "Input should be JSON text or an object", "json_invalid")]
        )
    try:
        return event_adapter().validate_json(raw)
    except ValidationError as exc:
        raise InvalidEvent.from_validation_error(exc, union_tags=EVENT_TYPES) from None


def dump_event(event: CanonicalEvent) -> bytes:
    """Canonical JSON: UTF-8, sorted keys, no whitespace; equal events give equal bytes."""
    return json.dumps(
        event.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
