"""The shape every institution adapter shares: what goes out, what comes back, and why it failed.

Each outbound adapter package (``adapters/cmu``, ``adapters/css``, ``adapters/ipres``) exposes
the same public names::

    INSTITUTION: Institution
    FORMAT_VERSION: int
    def translate(event: CanonicalEvent, member: MemberProfile | None) -> list[OutboundMessage]
    def parse_ack(raw: bytes) -> list[Ack]
    def validate(message: OutboundMessage) -> None      # the institution's own schema

All of them are pure: data in, data out. ``member`` is the mutual's current view of the member
(package and opted branches), which most events do not repeat; the router keeps it and passes
it in, so adapters never look anything up.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol
from uuid import UUID

from schemas import (
    Branch,
    CanonicalEvent,
    ClaimAdjudicatedPayload,
    MemberEnrolled,
    MemberUpdated,
    Package,
    Region,
)
from schemas.errors import FieldError, JokkoError


class Institution(StrEnum):
    CMU = "cmu"
    CSS = "css"
    IPRES = "ipres"


@dataclass(frozen=True, slots=True)
class MemberProfile:
    """What routing and translation need to know about a member beyond the event at hand."""

    member_id: str
    package: Package
    opted_branches: frozenset[Branch]
    region: Region
    departement: str

    @classmethod
    def from_enrolment(cls, event: MemberEnrolled) -> MemberProfile:
        p = event.payload
        return cls(
            member_id=event.member_id,
            package=p.package,
            opted_branches=frozenset(p.opted_branches),
            region=p.region,
            departement=p.departement,
        )

    def updated(self, event: MemberUpdated) -> MemberProfile:
        c = event.payload.changes
        return MemberProfile(
            member_id=self.member_id,
            package=c.package or self.package,
            opted_branches=(
                frozenset(c.opted_branches) if c.opted_branches else self.opted_branches
            ),
            region=c.region or self.region,
            departement=c.departement or self.departement,
        )


def profile_after(current: MemberProfile | None, event: CanonicalEvent) -> MemberProfile | None:
    """The member's profile once ``event`` is applied: enrolments set it, updates change it."""
    if isinstance(event, MemberEnrolled):
        return MemberProfile.from_enrolment(event)
    if isinstance(event, MemberUpdated) and current is not None:
        return current.updated(event)
    return current


_MESSAGE_NAMESPACE = UUID("5f1c2a8e-7d3b-4c51-9a0e-6b8d2f4e1c37")


def message_id(institution: Institution, event_id: UUID, kind: str, seq: int = 0) -> str:
    """A message id derived from its event: translating twice gives the same id, so the
    institution (and Jokko's outbox) can recognise a re-sent message as the same one."""
    return str(uuid.uuid5(_MESSAGE_NAMESPACE, f"{institution}:{event_id}:{kind}:{seq}"))


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message for one institution, already in its wire format."""

    message_id: str
    institution: Institution
    event_id: UUID
    member_id: str
    kind: str
    content_type: str
    body: bytes
    format_version: int = 1


class AckStatus(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Ack:
    """An institution's answer about one message it received."""

    message_id: str
    institution: Institution
    status: AckStatus
    reason_code: str | None = None
    reason_text: str | None = None
    institution_ref: str | None = None
    """The institution's own identifier for what it stored (FHIR id, CSS file number...)."""
    adjudication: ClaimAdjudicatedPayload | None = None
    """CMU's decision on a claim, which flows back to the mutual as ``claim.adjudicated``."""
    decided_at: datetime | None = None
    """When the institution decided, as its answer says (FHIR ``ClaimResponse.created``): the
    decision's event then has the same content however often the answer is read."""


class WireFormatError(JokkoError):
    """A message or an ack does not conform to the institution's format; retrying cannot help.

    ``errors`` locate each problem inside the document (a JSON path, an XPath, a line:column).
    """

    def __init__(self, institution: Institution, what: str, errors: list[FieldError]) -> None:
        self.institution = institution
        self.errors = tuple(errors)
        detail = "; ".join(str(e) for e in self.errors)
        super().__init__(f"{institution} {what}: {detail}")


class MalformedAck(WireFormatError):
    """An acknowledgement that cannot be read, or that answers nothing Jokko sent."""


class InvalidMessage(WireFormatError):
    """A translated message that the institution's own schema refuses (a bug in Jokko)."""


class UnsupportedEvent(JokkoError):
    """The event is not routed to this institution: the routing table and adapter disagree."""


class OutboundAdapter(Protocol):
    """The module interface of ``adapters.cmu``, ``adapters.css`` and ``adapters.ipres``."""

    @property
    def INSTITUTION(self) -> Institution: ...  # noqa: N802 - a module constant in adapters

    @property
    def FORMAT_VERSION(self) -> int: ...  # noqa: N802

    def translate(
        self, event: CanonicalEvent, member: MemberProfile | None
    ) -> list[OutboundMessage]: ...

    def parse_ack(self, raw: bytes) -> list[Ack]: ...

    def validate(self, message: OutboundMessage) -> None: ...
