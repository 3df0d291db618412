"""Idempotent processing of canonical records: inbox + outbox in one transaction per batch.

The inbox row's primary key (``event_id``) is the idempotency check: a re-delivered event's
insert conflicts and the event produces nothing, in the same transaction that writes the
outbox rows of the new ones. There is no read-before-write to race.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, case, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from adapters.base import (
    Institution,
    MemberProfile,
    OutboundAdapter,
    OutboundMessage,
    profile_after,
)
from router.routing import MemberUnknown, destinations
from router.store import (
    Base,
    DeadLetterRow,
    DeliveryState,
    InboxRow,
    MemberProfileRow,
    OutboxRow,
    Stage,
    TrailRow,
    utcnow,
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


def _insert(session: Session, model: type[Base]) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (PostgreSQL and SQLite alike)."""
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(model)


class Processor:
    """Turns canonical records into outbox rows, exactly once per ``event_id``.

    A polled batch is applied in one transaction. The inbox insert is
    ``INSERT … ON CONFLICT (event_id) DO NOTHING RETURNING event_id``: the primary key, not a
    read-before-write, decides which events are new, atomically, so a concurrent or repeated
    delivery of the same event cannot produce a second effect.
    """

    def __init__(self, engine: Engine, adapters: Mapping[Institution, OutboundAdapter]) -> None:
        self._engine = engine
        self._adapters = adapters

    def process(self, record: RawRecord) -> Outcome:
        return self.process_batch([record])[0]

    def process_batch(self, records: Sequence[RawRecord]) -> list[Outcome]:
        outcomes: list[Outcome] = [Outcome.DUPLICATE] * len(records)
        dead: list[dict[str, Any]] = []
        parsed: list[tuple[int, RawRecord, CanonicalEvent]] = []
        for i, record in enumerate(records):
            try:
                parsed.append((i, record, parse_event(record.value)))
            except InvalidEvent as exc:
                dead.append(_dead_row(record, exc, "invalid_event"))
                outcomes[i] = Outcome.DEAD_LETTERED
        with Session(self._engine) as session, session.begin():
            new = self._claim_new(session, parsed)
            batch = _Batch(session, {e.member_id for _, _, e in new})
            failed: list[str] = []
            for i, record, event in new:
                try:
                    batch.add(event, self._adapters)
                    outcomes[i] = Outcome.ROUTED
                except JokkoError as exc:  # unknown member, untranslatable: never will be
                    reason = (
                        "member_unknown" if isinstance(exc, MemberUnknown) else (type(exc).__name__)
                    )
                    dead.append(_dead_row(record, exc, reason))
                    failed.append(str(event.event_id))
                    outcomes[i] = Outcome.DEAD_LETTERED
            if failed:  # nothing half-done: their inbox rows go with the rest
                session.execute(delete(InboxRow).where(InboxRow.event_id.in_(failed)))
            batch.flush()
            if dead:
                session.execute(
                    _insert(session, DeadLetterRow)
                    .values(dead)
                    .on_conflict_do_nothing(index_elements=["topic", "partition", "offset"])
                )
        return outcomes

    @staticmethod
    def _claim_new(
        session: Session, parsed: list[tuple[int, RawRecord, CanonicalEvent]]
    ) -> list[tuple[int, RawRecord, CanonicalEvent]]:
        """Insert the inbox rows; only the events whose row was inserted are new."""
        first: dict[str, tuple[int, RawRecord, CanonicalEvent]] = {}
        for item in parsed:
            first.setdefault(str(item[2].event_id), item)
        if not first:
            return []
        rows = [
            {
                "event_id": eid,
                "event_type": e.event_type,
                "member_id": e.member_id,
                "recorded_at": e.recorded_at,
                "topic": r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "destinations": "",
                "received_at": utcnow(),
            }
            for eid, (_, r, e) in first.items()
        ]
        inserted = set(
            session.scalars(
                _insert(session, InboxRow)
                .values(rows)
                .on_conflict_do_nothing(index_elements=["event_id"])
                .returning(InboxRow.event_id)
            )
        )
        return [item for eid, item in first.items() if eid in inserted]


class _Batch:
    """What one batch adds: outbox and trail rows, profile changes, per-member sequences."""

    def __init__(self, session: Session, members: set[str]) -> None:
        self._session = session
        self.profiles: dict[str, MemberProfile] = {}
        self.changed: set[str] = set()
        self.seqs: dict[tuple[str, str], int] = {}
        self.outbox: list[dict[str, Any]] = []
        self.trail: list[dict[str, Any]] = []
        self.routed: list[dict[str, Any]] = []
        if members:
            for row in session.scalars(
                select(MemberProfileRow).where(MemberProfileRow.member_id.in_(members))
            ):
                self.profiles[row.member_id] = _profile_from_row(row)
            for inst, member, seq in session.execute(
                select(OutboxRow.institution, OutboxRow.member_id, func.max(OutboxRow.member_seq))
                .where(OutboxRow.member_id.in_(members))
                .group_by(OutboxRow.institution, OutboxRow.member_id)
            ):
                self.seqs[(inst, member)] = seq

    def add(self, event: CanonicalEvent, adapters: Mapping[Institution, OutboundAdapter]) -> None:
        """Route and translate one new event; raises before changing anything if it cannot."""
        profile = profile_after(self.profiles.get(event.member_id), event)
        targets = destinations(event, profile)
        messages: list[OutboundMessage] = [
            m for inst in targets for m in adapters[inst].translate(event, profile)
        ]
        if profile is not None and isinstance(event, MemberEnrolled | MemberUpdated):
            self.profiles[event.member_id] = profile
            self.changed.add(event.member_id)
        event_id = str(event.event_id)
        now = utcnow()
        routed = ",".join(t.value for t in targets)
        self.routed.append({"event_id": event_id, "destinations": routed})
        self.trail.append(_trail(event_id, Stage.RECEIVED, now))
        self.trail.append(_trail(event_id, Stage.ROUTED, now, detail=routed))
        for m in messages:
            key = (m.institution.value, m.member_id)
            seq = self.seqs[key] = self.seqs.get(key, 0) + 1
            self.outbox.append(
                {
                    "message_id": m.message_id,
                    "event_id": event_id,
                    "institution": m.institution.value,
                    "member_id": m.member_id,
                    "member_seq": seq,
                    "kind": m.kind,
                    "content_type": m.content_type,
                    "format_version": m.format_version,
                    "body": m.body,
                    "state": DeliveryState.PENDING.value,
                    "attempts": 0,
                    "created_at": now,
                }
            )
            self.trail.append(
                _trail(event_id, Stage.QUEUED, now, m.institution.value, m.message_id)
            )

    def flush(self) -> None:
        s = self._session
        if self.routed:
            routes = {r["event_id"]: r["destinations"] for r in self.routed}
            s.execute(
                update(InboxRow)
                .where(InboxRow.event_id.in_(routes))
                .values(destinations=case(routes, value=InboxRow.event_id))
            )
        if self.changed:
            rows = [_profile_row(self.profiles[m]) for m in sorted(self.changed)]
            stmt = _insert(s, MemberProfileRow).values(rows)
            s.execute(
                stmt.on_conflict_do_update(
                    index_elements=["member_id"],
                    set_={c: getattr(stmt.excluded, c) for c in rows[0] if c != "member_id"},
                )
            )
        # Core executemany: one cached statement, psycopg pipelines the rows.
        conn = s.connection()
        for model, rows in ((OutboxRow, self.outbox), (TrailRow, self.trail)):
            if rows:
                conn.execute(insert(Base.metadata.tables[model.__tablename__]), rows)


def _trail(
    event_id: str,
    stage: Stage,
    at: datetime,
    institution: str | None = None,
    message_id: str | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "stage": stage.value,
        "institution": institution,
        "message_id": message_id,
        "detail": detail,
        "at": at,
    }


def _profile_row(profile: MemberProfile) -> dict[str, Any]:
    return {
        "member_id": profile.member_id,
        "package": profile.package.value,
        "opted_branches": ",".join(sorted(profile.opted_branches)),
        "region": profile.region.value,
        "departement": profile.departement,
        "updated_at": utcnow(),
    }


def _dead_row(record: RawRecord, exc: JokkoError, reason: str) -> dict[str, Any]:
    return {
        "source": "canonical",
        "reason": reason,
        "detail": str(exc),
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "original": record.value,
        "attempts": 1,
        "created_at": utcnow(),
    }
