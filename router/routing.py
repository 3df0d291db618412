"""The routing table of DESIGN.md §3, as data.

One row per event type; each cell says on what condition an institution receives the event.
Adding an institution is one more column here and one adapter package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from adapters.base import Institution, MemberProfile
from schemas import (
    Branch,
    CanonicalEvent,
    ClaimAdjudicated,
    ContributionPaid,
    ContributionReversed,
    MaternityDeclared,
)
from schemas.errors import JokkoError


class MemberUnknown(JokkoError):
    """A member event arrived before the member's enrolment: it cannot be routed yet."""


Condition = Callable[[CanonicalEvent, MemberProfile | None], bool]


@dataclass(frozen=True)
class Cell:
    """One cell of the table: a readable rule and its predicate."""

    rule: str
    applies: Condition


def _always(_event: CanonicalEvent, _member: MemberProfile | None) -> bool:
    return True


def _opted(*branches: Branch) -> Cell:
    def applies(_event: CanonicalEvent, member: MemberProfile | None) -> bool:
        if member is None:
            raise MemberUnknown("member event before the member's enrolment")
        return bool(member.opted_branches & set(branches))

    return Cell(f"if opted into {' or '.join(branches)}", applies)


def _share(*branches: Branch) -> Cell:
    """Contributions go where their allocation has a share, whatever the member opted."""

    def applies(event: CanonicalEvent, _member: MemberProfile | None) -> bool:
        assert isinstance(event, ContributionPaid | ContributionReversed)
        return any(event.payload.allocation.get(b, 0) > 0 for b in branches)

    return Cell(f"{' + '.join(branches)} share", applies)


def _not_adjudicated_by_cmu(event: CanonicalEvent, _member: MemberProfile | None) -> bool:
    # CMU's own decisions come back from CMU as claim.adjudicated: never echo them to it.
    assert isinstance(event, ClaimAdjudicated)
    return event.payload.adjudicator != "CMU"


def _cash_benefit(event: CanonicalEvent, _member: MemberProfile | None) -> bool:
    assert isinstance(event, MaternityDeclared)
    return event.payload.cash_benefit_requested


ALWAYS = Cell("always", _always)
_MEMBER_ROW: Mapping[Institution, Cell] = {
    Institution.CMU: ALWAYS,
    Institution.CSS: _opted(Branch.FAMILY, Branch.WORK_ACCIDENT),
    Institution.IPRES: _opted(Branch.OLD_AGE),
}
_CONTRIBUTION_ROW: Mapping[Institution, Cell] = {
    Institution.CMU: _share(Branch.HEALTH),
    Institution.CSS: _share(Branch.FAMILY, Branch.WORK_ACCIDENT),
    Institution.IPRES: _share(Branch.OLD_AGE),
}

ROUTING_TABLE: Mapping[str, Mapping[Institution, Cell]] = {
    "member.enrolled": _MEMBER_ROW,
    "member.updated": _MEMBER_ROW,
    "member.dependent_added": _MEMBER_ROW,
    "member.dependent_removed": _MEMBER_ROW,
    "member.status_changed": _MEMBER_ROW,
    "contribution.paid": _CONTRIBUTION_ROW,
    "contribution.reversed": _CONTRIBUTION_ROW,
    "claim.submitted": {Institution.CMU: ALWAYS},
    "claim.adjudicated": {Institution.CMU: Cell("unless CMU decided it", _not_adjudicated_by_cmu)},
    "maternity.declared": {
        Institution.CMU: Cell("care part", _always),
        Institution.CSS: Cell("cash benefit, if requested", _cash_benefit),
    },
    "work_accident.declared": {Institution.CSS: ALWAYS},
    "provider.agreement_signed": {Institution.CMU: ALWAYS},
}


def destinations(event: CanonicalEvent, member: MemberProfile | None) -> list[Institution]:
    """The institutions that must receive ``event``, in a fixed order.

    ``member`` is the member's profile *including* this event when it is an enrolment or
    an update (so a member who opts into old age is affiliated with IPRES by that update).
    Raises ``MemberUnknown`` for a member event whose member was never enrolled.
    """
    row = ROUTING_TABLE[event.event_type]
    return [inst for inst in Institution if inst in row and row[inst].applies(event, member)]
