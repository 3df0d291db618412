"""Normalized records of what an institution holds, for reconciliation.

Every institution's extract (CMU FHIR NDJSON, CSS CSV statement, IPRES statement file) and the
mutual's ledger are read into the same flat tuple, so one comparison serves all three. The
tuple's first six fields are the business key and its order is the sort order of a
reconciliation: member first, so a member's records for every institution sit together and a
ledger sorted by member streams straight into the merge.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from adapters.base import Institution, WireFormatError
from schemas.errors import FieldError


class RecordKind(StrEnum):
    AFFILIATION = "affiliation"
    CONTRIBUTION = "contribution"
    CLAIM = "claim"


class Rec(NamedTuple):
    """One record held (or expected) at an institution; ``key()`` is its identity.

    ``period`` is ``YYYY-MM`` for contributions and claims (the service month), ``""`` for
    affiliations; ``branch`` is the contribution's branch, else ``""``; ``ref`` is the claim id,
    else ``""``. ``package``/``status``/``dependents`` are compared only when the institution
    holds them (``""`` / ``-1`` mean "not held"). ``event_id`` is the mutual's canonical event that
    carried the record (ledger side only), which is how a missing record is re-driven.
    ``compared_period`` is a period that is a compared fact rather than part of the key: the
    comparison moves a claim's service month there, since a claim id alone is its identity.
    """

    member_id: str
    institution: str
    kind: str
    period: str
    branch: str
    ref: str
    amount: int = 0
    package: str = ""
    status: str = ""
    dependents: int = -1
    event_id: str = ""
    compared_period: str = ""

    def key(self) -> tuple[str, str, str, str, str, str]:
        return (self.member_id, self.institution, self.kind, self.period, self.branch, self.ref)


COMPARED_FIELDS = ("amount", "period", "package", "status", "dependents")


def region_of(member_id: str) -> str:
    """The enrolling region, which a member id carries (``MSNAS-DK-000123`` -> ``SN-DK``)."""
    parts = member_id.split("-")
    return f"SN-{parts[1]}" if len(parts) > 2 else ""


class MalformedExtract(WireFormatError):
    """An institution's extract (or the mutual's ledger) that cannot be read."""

    def __init__(self, institution: Institution, errors: list[FieldError]) -> None:
        super().__init__(institution, "extract", errors)
