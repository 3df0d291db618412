"""Idempotent processing of one canonical record: inbox + outbox in one transaction.

The inbox row's primary key (``event_id``) is the idempotency check: a re-delivered event
fails its insert with ``IntegrityError`` and the whole transaction (outbox rows included) is
rolled back, so a duplicate has no second effect. There is no read-before-write to race.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapters.base import Institution, MemberProfile, OutboundAdapter, OutboundMessage
from router.routing import MemberUnknown, destinations
from router.store import (
    DeadLetterRow,
    DeliveryState,
    InboxRow,
    MemberProfileRow,
    OutboxRow,
    Stage,
    TrailRow,
)
from schemas import Branch, CanonicalEvent, InvalidEvent, MemberEnrolled, MemberUpdated, parse_event
from schemas.errors import JokkoError
from schemas.types import Package, Region


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A record as read from the canonical topic, before anything is trusted about it."""

    topic: str
    partition: int
    offset: int
    value: bytes


class Outcome(StrEnum):
    ROUTED = "routed"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"


def _profile_from_row(row: MemberProfileRow) -> MemberProfile:
    return MemberProfile(
        member_id=row.member_id,
        package=Package(row.package),
        opted_branches=frozenset(Branch(b) for b in row.opted_branches.split(",") if b),
        region=Region(row.region),
        departement=row.departement,
    )


def _save_profile(session: Session, profile: MemberProfile) -> None:
    session.merge(
        MemberProfileRow(
            member_id=profile.member_id,
            package=profile.package.value,
            opted_branches=",".join(sorted(profile.opted_branches)),
            region=profile.region.value,
            departement=profile.departement,
        )
    )


def _next_seqs(
    session: Session, member_id: str, institutions: set[Institution]
) -> dict[Institution, int]:
    """The next per-member sequence number for each institution, in one query."""
    rows = session.execute(
        select(OutboxRow.institution, func.max(OutboxRow.member_seq))
        .where(
            OutboxRow.member_id == member_id,
            OutboxRow.institution.in_([i.value for i in institutions]),
        )
        .group_by(OutboxRow.institution)
    ).all()
    current = {Institution(inst): seq for inst, seq in rows}
    return {i: current.get(i, 0) + 1 for i in institutions}


def _dead_letter_poison(engine: Engine, record: RawRecord, exc: JokkoError, reason: str) -> None:
    with Session(engine) as session:
        try:
            with session.begin():
                session.add(
                    DeadLetterRow(
                        source="canonical",
                        reason=reason,
                        detail=str(exc),
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        original=record.value,
                    )
                )
        except IntegrityError:
            pass  # this very record was dead-lettered before a crash: once is enough


class Processor:
    """Turns canonical records into outbox rows, exactly once per ``event_id``."""

    def __init__(self, engine: Engine, adapters: Mapping[Institution, OutboundAdapter]) -> None:
        self._engine = engine
        self._adapters = adapters

    def process(self, record: RawRecord) -> Outcome:
        try:
            event = parse_event(record.value)
        except InvalidEvent as exc:
            _dead_letter_poison(self._engine, record, exc, "invalid_event")
            return Outcome.DEAD_LETTERED
        with Session(self._engine) as session:
            try:
                with session.begin():
                    return self._apply(session, record, event)
            except _Duplicate:
                return Outcome.DUPLICATE
            except MemberUnknown as exc:
                _dead_letter_poison(self._engine, record, exc, "member_unknown")
                return Outcome.DEAD_LETTERED
            except JokkoError as exc:  # the event cannot be translated: never will be
                _dead_letter_poison(self._engine, record, exc, type(exc).__name__)
                return Outcome.DEAD_LETTERED

    def _apply(self, session: Session, record: RawRecord, event: CanonicalEvent) -> Outcome:
        event_id = str(event.event_id)
        inbox = InboxRow(
            event_id=event_id,
            event_type=event.event_type,
            member_id=event.member_id,
            recorded_at=event.recorded_at,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            destinations="",
        )
        session.add(inbox)
        try:
            session.flush()
        except IntegrityError as exc:
            raise _Duplicate from exc

        profile = self._profile_after(session, event)
        targets = destinations(event, profile)
        messages: list[OutboundMessage] = [
            m for inst in targets for m in self._adapters[inst].translate(event, profile)
        ]
        inbox.destinations = ",".join(t.value for t in targets)
        session.add(TrailRow(event_id=event_id, stage=Stage.RECEIVED))
        session.add(TrailRow(event_id=event_id, stage=Stage.ROUTED, detail=inbox.destinations))
        seqs = (
            _next_seqs(session, event.member_id, {m.institution for m in messages})
            if messages
            else {}
        )
        for m in messages:
            seq = seqs[m.institution]
            seqs[m.institution] += 1
            session.add(
                OutboxRow(
                    message_id=m.message_id,
                    event_id=event_id,
                    institution=m.institution.value,
                    member_id=m.member_id,
                    member_seq=seq,
                    kind=m.kind,
                    content_type=m.content_type,
                    format_version=m.format_version,
                    body=m.body,
                    state=DeliveryState.PENDING,
                )
            )
            session.add(
                TrailRow(
                    event_id=event_id,
                    stage=Stage.QUEUED,
                    institution=m.institution.value,
                    message_id=m.message_id,
                )
            )
        return Outcome.ROUTED

    def _profile_after(self, session: Session, event: CanonicalEvent) -> MemberProfile | None:
        """The member's profile including this event, saved in the same transaction."""
        if isinstance(event, MemberEnrolled):
            enrolled = MemberProfile.from_enrolment(event)
            _save_profile(session, enrolled)
            return enrolled
        row = session.get(MemberProfileRow, event.member_id)
        profile = _profile_from_row(row) if row else None
        if isinstance(event, MemberUpdated) and profile is not None:
            profile = profile.updated(event)
            _save_profile(session, profile)
        return profile


class _Duplicate(Exception):
    """The event's inbox row exists: it was processed before."""
