"""Idempotent processing of canonical records: inbox + outbox in one transaction per batch.

The inbox row's primary key (``event_id``) is the idempotency check: a re-delivered event's
insert conflicts and the event produces nothing, in the same transaction that writes the
outbox rows of the new ones. There is no read-before-write to race.

A copy whose insert conflicts is compared with the content digest its inbox row kept: the same
digest is a duplicate (nothing to do), another digest is a *conflict*: the first stays applied
and the copy becomes a dead letter of its own (``conflicting_duplicate``), naming both digests
and the differing fields, never their values.

Each record's value is opened first (``router.envelope``: sealed on the topic under a keyring
key): one that does not open, altered on the topic or sealed under a key this keyring lacks,
is a dead letter of its own (``unsealable``), never applied, and the batch goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Executable,
    Select,
    String,
    Table,
    any_,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from adapters.base import (
    Institution,
    MemberProfile,
    OutboundAdapter,
    profile_after,
)
from router.bulk import TRAIL, TRAIL_COLUMNS, Columns, copy_rows
from router.envelope import UNSEALABLE, Unsealable, header, open_canonical
from router.identity import Owner, claim_identities
from router.routing import MemberUnknown, destinations
from router.sealing import DEAD_LETTER_AAD, writable_keys
from router.store import (
    DeadLetterRow,
    DeliveryState,
    InboxRow,
    MemberDuplicateRow,
    MemberProfileRow,
    OutboxRow,
    Stage,
    SubmittedEventRow,
    utcnow,
)
from router.vault import Vault
from schemas import Branch, CanonicalEvent, InvalidEvent, MemberEnrolled, MemberUpdated, parse_event
from schemas.errors import JokkoError
from schemas.fingerprint import Fingerprint, differing_fields, fingerprint, read_fields
from schemas.types import Package, Region

INBOX: Table = InboxRow.__table__  # type: ignore[assignment]
OUTBOX: Table = OutboxRow.__table__  # type: ignore[assignment]
PROFILE: Table = MemberProfileRow.__table__  # type: ignore[assignment]
DEAD: Table = DeadLetterRow.__table__  # type: ignore[assignment]
DUPLICATES: Table = MemberDuplicateRow.__table__  # type: ignore[assignment]
SUBMITTED: Table = SubmittedEventRow.__table__  # type: ignore[assignment]

# Column, PostgreSQL type, for COPY (``router.bulk.Columns``).
OUTBOX_COLUMNS: Columns = (
    ("message_id", "varchar"),
    ("event_id", "varchar"),
    ("institution", "varchar"),
    ("member_id", "varchar"),
    ("member_seq", "int4"),
    ("kind", "varchar"),
    ("content_type", "varchar"),
    ("format_version", "int4"),
    ("body", "bytea"),
    ("state", "varchar"),
    ("attempts", "int4"),
    ("created_at", "timestamptz"),
)
INBOX_COLUMNS: Columns = (
    ("event_id", "varchar"),
    ("event_type", "varchar"),
    ("member_id", "varchar"),
    ("recorded_at", "timestamptz"),
    ("topic", "varchar"),
    ("partition", "int4"),
    ("offset", "int8"),
    ("destinations", "varchar"),
    ("received_at", "timestamptz"),
    ("content_digest", "varchar"),
    ("field_digests", "text"),
)
# PostgreSQL: the batch's inbox rows are copied (binary COPY) into a temporary table of the
# session, then moved with one INSERT … SELECT … ON CONFLICT … RETURNING whose text never
# changes. Building one array parameter per column instead costs ~5x the client CPU.
_STAGE = "jokko_inbox_stage"
_INBOX_NAMES = ", ".join(f'"{c}"' for c, _ in INBOX_COLUMNS)
_PG_STAGE = f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (LIKE inbox) ON COMMIT DELETE ROWS"
_PG_CLAIM = (
    f"INSERT INTO inbox ({_INBOX_NAMES}) SELECT {_INBOX_NAMES} FROM {_STAGE} "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
# PostgreSQL: each (institution, member)'s last sequence number by one backward step on
# uq_outbox_member_seq, instead of reading every row of the member's history to take a max.
_PG_SEQS = text(
    "SELECT i.institution, m.member_id, s.seq"
    " FROM unnest(CAST(:members AS varchar[])) AS m(member_id)"
    " CROSS JOIN unnest(CAST(:institutions AS varchar[])) AS i(institution)"
    " CROSS JOIN LATERAL (SELECT o.member_seq AS seq FROM outbox AS o"
    " WHERE o.institution = i.institution AND o.member_id = m.member_id"
    " ORDER BY o.member_seq DESC LIMIT 1) AS s"
)
_PENDING = DeliveryState.PENDING.value
_RECEIVED, _ROUTED, _QUEUED = Stage.RECEIVED.value, Stage.ROUTED.value, Stage.QUEUED.value
_DUPLICATE_MEMBER = Stage.DUPLICATE_MEMBER.value
CONFLICTING_DUPLICATE = "conflicting_duplicate"
"""Dead-letter reason: the same ``event_id`` with other content than the copy applied."""


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A record as read from the canonical topic, before anything is trusted about it."""

    topic: str
    partition: int
    offset: int
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    """The record's headers: a sealed value is opened with its ``event_id``."""


class Outcome(StrEnum):
    ROUTED = "routed"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    """Same ``event_id``, other content: dead-lettered, the first copy's effects unchanged."""
    DEAD_LETTERED = "dead_lettered"


_Item = tuple[int, RawRecord, CanonicalEvent, Fingerprint]


def _profile_from_row(row: Any) -> MemberProfile:
    return MemberProfile(
        member_id=row.member_id,
        package=Package(row.package),
        opted_branches=frozenset(Branch(b) for b in row.opted_branches.split(",") if b),
        region=Region(row.region),
        departement=row.departement,
    )


class MemberErased(JokkoError):
    """The member's personal data was erased: nothing more is sent about them."""


class DuplicateMember(JokkoError):
    """The NIN is already enrolled under another member id, and the policy is to hold."""


class DuplicatePolicy(StrEnum):
    FLAG = "flag"
    """Route the second enrolment, and flag it (``member_duplicate``, a trail step)."""
    HOLD = "hold"
    """Route nothing: the second enrolment is a dead letter (``duplicate_member``) until an
    operator decides (replay once the other id is closed, or discard)."""


_REASONS: dict[type[JokkoError], str] = {
    MemberUnknown: "member_unknown",
    MemberErased: "member_erased",
    DuplicateMember: "duplicate_member",
}


def _duplicate_detail(owner: Owner) -> str:
    return f"NIN already enrolled as {owner[0]} ({owner[1]})"


def _duplicate_row(
    event: CanonicalEvent, owner: Owner, action: str, now: datetime
) -> dict[str, Any]:
    return {
        "event_id": str(event.event_id),
        "member_id": event.member_id,
        "other_member_id": owner[0],
        "mutual": event.source.mutual,
        "other_mutual": owner[1],
        "action": action,
        "created_at": now,
    }


class Processor:
    """Turns canonical records into outbox rows, exactly once per ``event_id``.

    A polled batch is applied in one transaction. The inbox insert is
    ``INSERT … ON CONFLICT (event_id) DO NOTHING RETURNING event_id``: the primary key, not a
    read-before-write, decides which events are new, atomically, so a concurrent or repeated
    delivery of the same event cannot produce a second effect.

    To spare a round trip, the batch is routed and translated *before* that insert, on the
    assumption that every event in it is new (after a crash some are not): the inbox rows then
    carry their destinations from the start. If the insert reports a duplicate, the new events
    are routed again without it, and any inbox row whose destinations changed is corrected,
    before anything else is written.
    """

    def __init__(
        self,
        engine: Engine,
        adapters: Mapping[Institution, OutboundAdapter],
        vault: Vault | None = None,
        duplicate_policy: DuplicatePolicy = DuplicatePolicy.FLAG,
    ) -> None:
        """``vault`` None stores bodies in clear and finds no duplicate member (it holds the
        NIN-token keys): only for tests of other concerns; every process built by
        ``services.bootstrap`` has one."""
        self._engine = engine
        self._adapters = adapters
        self._vault = vault
        self._hold_duplicates = duplicate_policy is DuplicatePolicy.HOLD
        self._postgres = engine.dialect.name == "postgresql"
        insert_ = pg_insert if self._postgres else sqlite_insert
        # Statements built once: executemany with them hits SQLAlchemy's compiled cache.
        self._claim_stmt = (
            insert_(INBOX)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(INBOX.c.event_id)
        )
        profile = insert_(PROFILE)
        self._profile_stmt = profile.on_conflict_do_update(
            index_elements=["member_id"],
            set_={
                c.name: profile.excluded[c.name] for c in PROFILE.columns if c.name != "member_id"
            },
        )
        self._dead_stmt = insert_(DEAD).on_conflict_do_nothing(
            index_elements=["topic", "partition", "offset"]
        )
        self._submitted_stmt = delete(SUBMITTED).where(
            SUBMITTED.c.event_id.in_(bindparam("ids", expanding=True))
        )
        self._digests_stmt = select(
            INBOX.c.event_id, INBOX.c.content_digest, INBOX.c.field_digests
        ).where(INBOX.c.event_id.in_(bindparam("ids", expanding=True)))
        members = (
            any_(bindparam("members", type_=ARRAY(String)))
            if self._postgres  # one array parameter, not one parameter per member
            else bindparam("members", expanding=True)
        )

        def of_members(column: ColumnElement[str]) -> ColumnElement[bool]:
            return column == members if self._postgres else column.in_(members)

        self._profiles_stmt: Select[Any] = select(PROFILE).where(of_members(PROFILE.c.member_id))
        self._seqs_stmt: Executable = (
            _PG_SEQS.bindparams(institutions=[i.value for i in Institution])
            if self._postgres
            else select(OUTBOX.c.institution, OUTBOX.c.member_id, func.max(OUTBOX.c.member_seq))
            .where(of_members(OUTBOX.c.member_id))
            .group_by(OUTBOX.c.institution, OUTBOX.c.member_id)
        )

    @property
    def vault(self) -> Vault | None:
        return self._vault

    def process(self, record: RawRecord) -> Outcome:
        return self.process_batch([record])[0]

    def process_batch(self, records: Sequence[RawRecord]) -> list[Outcome]:
        outcomes: list[Outcome] = [Outcome.DUPLICATE] * len(records)
        dead: list[dict[str, Any]] = []
        trail: list[tuple[Any, ...]] = []
        first: dict[str, _Item] = {}  # the first copy of each event in the batch, in order
        repeats: list[_Item] = []  # later copies in the batch, compared with the first
        for i, record in enumerate(records):
            try:
                clear = open_canonical(self._vault, record.value, record.headers)
                if clear is not record.value:  # from here on, and in a dead letter, in clear
                    record = replace(record, value=clear)
                event = parse_event(clear)
            except Unsealable as exc:  # altered on the topic, or a key this keyring lacks
                dead.append(_dead_row(record, exc, UNSEALABLE, event_id=_header_id(record)))
                outcomes[i] = Outcome.DEAD_LETTERED
                continue
            except InvalidEvent as exc:
                dead.append(_dead_row(record, exc, "invalid_event"))
                outcomes[i] = Outcome.DEAD_LETTERED
                continue
            item = (i, record, event, fingerprint(event))
            if first.setdefault(str(event.event_id), item) is not item:
                repeats.append(item)
        with self._engine.begin() as conn:
            if first:
                members = {e.member_id for _, _, e, _ in first.values()}
                known = self._known(conn, members)
                if self._vault is not None:
                    known.seal = _sealer(self._vault, writable_keys(conn, self._vault, members))
                    enrolments = [
                        e for _, _, e, _ in first.values() if isinstance(e, MemberEnrolled)
                    ]
                    known.duplicates = claim_identities(conn, self._vault, enrolments)
                    known.hold_duplicates = self._hold_duplicates
                plan = _Plan(known, first.values(), self._adapters)
                inserted = self._claim(conn, plan.inbox_rows())
                if inserted:  # the API's record of them is the inbox's from now on
                    conn.execute(self._submitted_stmt, {"ids": sorted(inserted)})
                if len(inserted) < len(first):  # duplicates: route the new events alone
                    guessed = plan.routes
                    new = [item for eid, item in first.items() if eid in inserted]
                    plan = _Plan(known, new, self._adapters)
                    _fix_routes(conn, guessed, plan.routes)
                    repeats += [item for eid, item in first.items() if eid not in inserted]
                for i, dl, step in self._conflicts(conn, repeats, first, inserted):
                    dead.append(dl)
                    trail.append(step)
                    outcomes[i] = Outcome.CONFLICT
                for i, record, _, err in plan.failed:  # unknown member, untranslatable: never
                    reason = _REASONS.get(type(err), type(err).__name__)
                    dead.append(_dead_row(record, err, reason, event=event))
                    outcomes[i] = Outcome.DEAD_LETTERED
                duplicates = plan.duplicates + [
                    _duplicate_row(e, plan.known.duplicates[str(e.event_id)], "held", plan.now)
                    for _, _, e, err in plan.failed
                    if isinstance(err, DuplicateMember)
                ]
                if duplicates:
                    conn.execute(insert(DUPLICATES), duplicates)
                if plan.failed:  # nothing half-done: their inbox rows go with the rest
                    failed_ids = [str(e.event_id) for _, _, e, _ in plan.failed]
                    conn.execute(delete(INBOX).where(INBOX.c.event_id.in_(failed_ids)))
                for i in plan.routed:
                    outcomes[i] = Outcome.ROUTED
                if plan.changed:
                    conn.execute(self._profile_stmt, plan.profile_rows())
                copy_rows(conn, OUTBOX.name, OUTBOX_COLUMNS, plan.outbox)
                copy_rows(conn, TRAIL.name, TRAIL_COLUMNS, plan.trail + trail)
            if dead:
                if self._vault is not None:  # the record may hold a whole identity
                    for d in dead:
                        d["original"] = self._vault.seal(d["original"], DEAD_LETTER_AAD)
                conn.execute(self._dead_stmt, dead)
        return outcomes

    def _conflicts(
        self,
        conn: Connection,
        repeats: Sequence[_Item],
        first: Mapping[str, _Item],
        inserted: set[str],
    ) -> Iterable[tuple[int, dict[str, Any], tuple[Any, ...]]]:
        """The repeated copies whose content differs from the copy that was applied: the one
        inserted by this batch, or the one whose digests the inbox kept."""
        if not repeats:
            return
        stored: dict[str, tuple[str | None, str | None]] = {}
        earlier = sorted({str(e.event_id) for _, _, e, _ in repeats} - inserted)
        if earlier:
            rows = conn.execute(self._digests_stmt, {"ids": earlier})
            stored = {eid: (digest, fields) for eid, digest, fields in rows}
        now = utcnow()
        for i, record, event, fp in repeats:
            eid = str(event.event_id)
            if eid in inserted:
                applied = first[eid][3]
                digest, fields = applied.digest, applied.fields
            else:
                kept_digest, kept_fields = stored.get(eid, (None, None))
                if kept_digest is None:  # routed before digests were kept: a duplicate
                    continue
                digest, fields = kept_digest, read_fields(kept_fields)
            if digest == fp.digest:
                continue
            detail = _conflict_detail(eid, digest, fp, differing_fields(fields, fp.fields))
            dead_letter = _dead_row(record, None, CONFLICTING_DUPLICATE, detail=detail, event=event)
            yield i, dead_letter, (eid, Stage.CONFLICT.value, None, None, detail, now)

    def _known(self, conn: Connection, members: set[str]) -> _Known:
        params = {"members": sorted(members)}
        profiles = {
            row.member_id: _profile_from_row(row)
            for row in conn.execute(self._profiles_stmt, params)
        }
        seqs = {(inst, member): seq for inst, member, seq in conn.execute(self._seqs_stmt, params)}
        return _Known(profiles, seqs)

    def _claim(self, conn: Connection, rows: list[tuple[Any, ...]]) -> set[str]:
        """Insert the inbox rows; only the events whose row was inserted are new."""
        if not self._postgres:
            names = [c for c, _ in INBOX_COLUMNS]
            params = [dict(zip(names, r, strict=True)) for r in rows]
            return set(conn.execute(self._claim_stmt, params).scalars())
        conn.exec_driver_sql(_PG_STAGE)  # every time: a rolled-back batch may have made it
        copy_rows(conn, _STAGE, INBOX_COLUMNS, rows)
        return {eid for (eid,) in conn.exec_driver_sql(_PG_CLAIM)}


Seal = Callable[[str, str, bytes], bytes]
"""(member id, message id, body) -> what the outbox keeps."""


def _clear(_member: str, _message: str, body: bytes) -> bytes:
    return body


def _sealer(vault: Vault, deks: Mapping[str, bytes | None]) -> Seal:
    ciphers: dict[str, AESGCM] = {}

    def seal(member: str, message: str, body: bytes) -> bytes:
        cipher = ciphers.get(member)
        if cipher is None:
            dek = deks.get(member)
            if dek is None:
                raise MemberErased(f"{member}: personal data erased, nothing is sent")
            cipher = ciphers[member] = AESGCM(dek)
        return vault.seal_for_member(cipher, body, message.encode())

    return seal


class _Known:
    """What the store holds, as the transaction starts, about the batch's members."""

    def __init__(
        self, profiles: dict[str, MemberProfile], seqs: dict[tuple[str, str], int]
    ) -> None:
        self.profiles = profiles
        self.seqs = seqs
        self.seal: Seal = _clear
        self.duplicates: dict[str, Owner] = {}
        """Enrolments (by event id) whose NIN another member holds."""
        self.hold_duplicates = False


class _Plan:
    """Everything a batch writes, worked out in memory: inbox, outbox and trail rows, the
    profiles it changes, the per-member sequence numbers. ``known`` is left untouched, so a
    plan can be made again for a subset of the events."""

    def __init__(
        self,
        known: _Known,
        items: Iterable[_Item],
        adapters: Mapping[Institution, OutboundAdapter],
    ) -> None:
        self.items = list(items)
        self.known = known
        self._seal = known.seal
        self.duplicates: list[dict[str, Any]] = []
        self.profiles = dict(known.profiles)
        self.seqs = dict(known.seqs)
        self.changed: set[str] = set()
        self.routes: dict[str, str] = {}
        """event_id -> its destinations, for the events that were routed."""
        self.routed: list[int] = []
        self.failed: list[tuple[int, RawRecord, CanonicalEvent, JokkoError]] = []
        self.outbox: list[tuple[Any, ...]] = []
        self.trail: list[tuple[Any, ...]] = []
        self.now = utcnow()
        for i, record, event, _ in self.items:
            try:
                self._add(event, adapters)
            except JokkoError as exc:
                self.failed.append((i, record, event, exc))
            else:
                self.routed.append(i)

    def _add(self, event: CanonicalEvent, adapters: Mapping[Institution, OutboundAdapter]) -> None:
        """Route and translate one event; raises before changing anything if it cannot."""
        owner = self.known.duplicates.get(str(event.event_id))
        if owner is not None and self.known.hold_duplicates:
            raise DuplicateMember(_duplicate_detail(owner) + "; held for an operator")
        profile = profile_after(self.profiles.get(event.member_id), event)
        targets = destinations(event, profile)
        messages = [m for inst in targets for m in adapters[inst].translate(event, profile)]
        bodies = [self._seal(m.member_id, m.message_id, m.body) for m in messages]
        if profile is not None and isinstance(event, MemberEnrolled | MemberUpdated):
            self.profiles[event.member_id] = profile
            self.changed.add(event.member_id)
        event_id, now = str(event.event_id), self.now
        routed = self.routes[event_id] = ",".join(t.value for t in targets)
        trail = self.trail
        trail.append((event_id, _RECEIVED, None, None, None, now))
        if owner is not None:
            trail.append((event_id, _DUPLICATE_MEMBER, None, None, _duplicate_detail(owner), now))
            self.duplicates.append(_duplicate_row(event, owner, "flagged", now))
        trail.append((event_id, _ROUTED, None, None, routed, now))
        for m, body in zip(messages, bodies, strict=True):
            inst = m.institution.value
            key = (inst, m.member_id)
            seq = self.seqs[key] = self.seqs.get(key, 0) + 1
            self.outbox.append(
                (
                    m.message_id,
                    event_id,
                    inst,
                    m.member_id,
                    seq,
                    m.kind,
                    m.content_type,
                    m.format_version,
                    body,
                    _PENDING,
                    0,
                    now,
                )
            )
            trail.append((event_id, _QUEUED, inst, m.message_id, None, now))

    def inbox_rows(self) -> list[tuple[Any, ...]]:
        """One row per event (``INBOX_COLUMNS``), routed or not: a failed event's row is
        deleted once it is known to be new, so that a duplicate is still recognised as one."""
        now, routes = self.now, self.routes
        return [
            (
                eid := str(e.event_id),
                e.event_type,
                e.member_id,
                e.recorded_at,
                r.topic,
                r.partition,
                r.offset,
                routes.get(eid, ""),
                now,
                fp.digest,
                fp.fields_json(),
            )
            for _, r, e, fp in self.items
        ]

    def profile_rows(self) -> list[dict[str, Any]]:
        return [_profile_row(self.profiles[m], self.now) for m in sorted(self.changed)]


def _fix_routes(conn: Connection, guessed: Mapping[str, str], actual: Mapping[str, str]) -> None:
    """Correct the inbox rows routed on the wrong guess that every event was new."""
    wrong = [
        {"eid": eid, "dest": dest} for eid, dest in actual.items() if guessed.get(eid, "") != dest
    ]
    if wrong:
        conn.execute(
            update(INBOX)
            .where(INBOX.c.event_id == bindparam("eid"))
            .values(destinations=bindparam("dest")),
            wrong,
        )


def _profile_row(profile: MemberProfile, now: datetime) -> dict[str, Any]:
    return {
        "member_id": profile.member_id,
        "package": profile.package.value,
        "opted_branches": ",".join(sorted(profile.opted_branches)),
        "region": profile.region.value,
        "departement": profile.departement,
        "updated_at": now,
    }


def _conflict_detail(event_id: str, applied: str, copy: Fingerprint, fields: list[str]) -> str:
    """Both digests and the differing fields' names: enough to investigate, no values."""
    return (
        f"event {event_id} was already applied with other content; the first copy stands "
        f"(digest {applied}), this copy is not applied (digest {copy.digest}); "
        f"differing fields: {', '.join(fields) or 'unknown'}"
    )


def _header_id(record: RawRecord) -> str | None:
    return header(record.headers, "event_id")


def _dead_row(
    record: RawRecord,
    exc: JokkoError | None,
    reason: str,
    *,
    detail: str = "",
    event: CanonicalEvent | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "source": "canonical",
        "reason": reason,
        "detail": detail or str(exc),
        "event_id": str(event.event_id) if event is not None else event_id,
        "member_id": event.member_id if event is not None else None,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "original": record.value,
        "attempts": 1,
        "created_at": utcnow(),
    }
