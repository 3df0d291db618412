"""Acknowledgements from the institutions, whichever way they come back, applied to deliveries.

``sent → accepted | rejected(reason)``. Applying the same ack twice changes nothing; an ack
for a message Jokko never sent, or one contradicting an earlier ack, is kept as an anomaly
(``ack_anomaly``) for the operators, never dropped. Acks arrive on the institution's ack
topic (``AckConsumer``), as ack files (``AckFilePicker``) or in the HTTP answer itself (the
push channel reports them directly to the delivery worker, which turns CMU's decisions into
events with ``adjudication_events``: the same ids whichever way a decision came).

An institution that registered its keys signs its acks (``router.receipts``): a verified
record or file is applied with itself stored as the receipt; a refused one applies nothing
and is kept apart as a security event (``record_refusal``).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from sqlalchemy import Engine, Table, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from adapters.base import Ack, AckStatus, Institution, MalformedAck, OutboundAdapter
from router.bulk import TRAIL, TRAIL_COLUMNS, copy_rows, update_rows
from router.canonical import publish_events
from router.errors import BrokerUnavailable
from router.receipts import Receipt, Refusal, check_file_receipt, check_receipt
from router.sealing import DEAD_LETTER_AAD
from router.signing import (
    ID_HEADER,
    KEY_ID_HEADER,
    SIG_SUFFIX,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    JwksVerifier,
)
from router.store import (
    AckAnomalyRow,
    DeadLetterRow,
    DeliveryState,
    MemberProfileRow,
    OutboxRow,
    ReceiptRow,
    Stage,
    TrailRow,
    utcnow,
)
from router.vault import Vault
from schemas import ClaimAdjudicated
from schemas.envelope import SCHEMA_VERSION, Source
from schemas.errors import JokkoError
from schemas.payloads import ClaimAdjudicatedPayload
from schemas.types import Region

log = logging.getLogger(__name__)

OUTBOX: Table = OutboxRow.__table__  # type: ignore[assignment]
ANOMALY: Table = AckAnomalyRow.__table__  # type: ignore[assignment]
DEAD: Table = DeadLetterRow.__table__  # type: ignore[assignment]

RECEIPT_SOURCE = "receipt"
"""Dead letters of refused signed acks: ``receipt:kafka``, ``receipt:file`` (never replayed)."""

_FINAL = {AckStatus.ACCEPTED: DeliveryState.ACCEPTED, AckStatus.REJECTED: DeliveryState.REJECTED}


_ADJUDICATION_NS = uuid.UUID("9c4e2f1a-3b5d-4e6f-8a7b-0c1d2e3f4a5b")


@dataclass
class AckReport:
    applied: int = 0
    duplicates: int = 0
    anomalies: Counter[str] = field(default_factory=Counter)
    adjudications: list[ClaimAdjudicated] = field(default_factory=list)
    """CMU's decisions, as canonical events for the mutual (ids derived from the ack, so the
    same decision applied twice is one event)."""

    def __iadd__(self, other: AckReport) -> AckReport:
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.anomalies.update(other.anomalies)
        self.adjudications += other.adjudications
        return self


Decision = tuple[OutboxRow, ClaimAdjudicatedPayload, datetime | None]
"""The answered row, CMU's decision on it, and when CMU decided (if its answer says)."""


def _adjudication_event(
    payload: ClaimAdjudicatedPayload,
    row: OutboxRow,
    region: str | None,
    decided_at: datetime | None,
    now: datetime,
) -> ClaimAdjudicated:
    """The event id comes from the answered message, not the answer: CMU's decision read from
    the ack topic, an ack file, the API or the HTTP answer, once or five times, is one event.
    Its content must be the same each time too, or the router would take a second reading
    for a conflict: it occurred when CMU decided, not when Jokko read the answer (which is
    only ``recorded_at``, outside the content digest)."""
    occurred = min(decided_at, now) if decided_at is not None else now
    mutual, code = row.member_id.split("-")[:2]
    return ClaimAdjudicated(
        event_id=uuid.uuid5(_ADJUDICATION_NS, f"{row.institution}:{row.message_id}"),
        schema_version=SCHEMA_VERSION,
        occurred_at=occurred,
        recorded_at=now,
        source=Source(mutual=mutual, region=Region(region or f"SN-{code}"), agent_id="jokko-acks"),
        member_id=row.member_id,
        correlation_id=uuid.UUID(row.event_id),
        payload=payload,
    )


def _regions(session: Session, members: Iterable[str]) -> dict[str, str]:
    return {
        member: region
        for member, region in session.execute(
            select(MemberProfileRow.member_id, MemberProfileRow.region).where(
                MemberProfileRow.member_id.in_(set(members))
            )
        )
    }


def adjudication_events(
    session: Session,
    decided: Sequence[Decision],
    now: datetime,
) -> list[ClaimAdjudicated]:
    """CMU's decisions on the rows they answer, as canonical events (for the HTTP path, whose
    answers the delivery worker records itself)."""
    if not decided:
        return []
    regions = _regions(session, (row.member_id for row, _, _ in decided))
    return [
        _adjudication_event(payload, row, regions.get(row.member_id), decided_at, now)
        for row, payload, decided_at in decided
    ]


class DecisionsUnpublished(JokkoError):
    """CMU's decisions could not be put on the canonical topic: whoever holds them must not
    commit their acks (the answer is asked again, and gives the same event ids)."""


class DecisionPublisher:
    """Publishes decisions on the canonical topic and waits for the broker (``acks=all``)."""

    def __init__(self, producer: KafkaProducer, canonical_topic: str, vault: Vault | None) -> None:
        self._producer = producer
        self._topic = canonical_topic
        self._vault = vault

    def __call__(self, events: Sequence[ClaimAdjudicated]) -> None:
        try:
            publish_events(self._producer, self._topic, events, vault=self._vault)
        except (KafkaError, BrokerUnavailable) as exc:
            raise DecisionsUnpublished(f"{self._topic}: {exc!r}") from exc


def apply_acks(
    engine: Engine,
    institution: Institution,
    acks: Sequence[Ack],
    *,
    channel: str,
    decisions: Callable[[Sequence[ClaimAdjudicated]], None] | None = None,
    receipt: Mapping[str, object] | None = None,
) -> AckReport:
    """Apply acks in one transaction; safe to call again with the same acks.

    ``receipt`` (the ``receipt`` table's columns but the message's: the verified signed
    document) is stored, in the same transaction, for each message the acks apply to.

    ``decisions`` publishes CMU's decisions the acks carry, *before* the transaction commits:
    if it raises, nothing is applied and the same acks applied again give the same events
    (ids from the answered message, times from the decision). Published after the commit, a
    failure would leave the acks applied and their decisions never published: the next
    reading finds the acks already applied and emits nothing."""
    report = AckReport()
    if not acks:
        return report
    now = utcnow()
    with Session(engine) as session, session.begin():
        rows = {
            r.message_id: r
            for r in session.scalars(
                select(OutboxRow)
                .where(
                    OutboxRow.institution == institution.value,
                    OutboxRow.message_id.in_({a.message_id for a in acks}),
                )
                .with_for_update()
            )
        }

        regions = _regions(session, (r.member_id for r in rows.values()))
        # State and reason as this batch leaves them: a later ack of the same message in the
        # batch is a duplicate or a conflict of the one applied before it. The loaded rows
        # are only read; the writes below are set-based (``router.bulk``).
        current = {m: (r.state, r.reason_code) for m, r in rows.items()}
        updates: dict[str, list[dict[str, object]]] = defaultdict(list)
        trail: list[tuple[object, ...]] = []
        anomalies: list[dict[str, object]] = []
        receipts: list[dict[str, object]] = []

        def anomaly(ack: Ack, kind: str, detail: str) -> None:
            report.anomalies[kind] += 1
            anomalies.append(
                {
                    "institution": institution.value,
                    "message_id": ack.message_id,
                    "kind": kind,
                    "status": ack.status.value,
                    "reason_code": ack.reason_code,
                    "detail": detail,
                    "channel": channel,
                    "received_at": now,
                }
            )

        for ack in acks:
            row = rows.get(ack.message_id)
            target = _FINAL[ack.status].value
            if row is None:
                anomaly(ack, "unknown_message", "no message with this id was sent")
                continue
            state, reason_code = current[row.message_id]
            if state == target and reason_code == ack.reason_code:
                report.duplicates += 1
                continue
            if state in (DeliveryState.ACCEPTED, DeliveryState.REJECTED):
                anomaly(ack, "conflicting_ack", f"already {state}; the first answer stands")
                continue
            if state in (DeliveryState.PENDING, DeliveryState.DEAD):
                # The institution has it although Jokko gave up on it, or before the
                # relay recorded sending it (killed in between): the ack is the truth.
                anomaly(ack, f"ack_while_{state}", "applied")
            if ack.adjudication is not None:
                report.adjudications.append(
                    _adjudication_event(
                        ack.adjudication, row, regions.get(row.member_id), ack.decided_at, now
                    )
                )
            current[row.message_id] = (target, ack.reason_code)
            updates[target].append(
                {
                    "id": row.id,
                    "state": target,
                    "acked_at": now,
                    "next_attempt_at": None,
                    "reason_code": ack.reason_code,
                    "reason_text": ack.reason_text,
                    "institution_ref": ack.institution_ref,
                }
            )
            trail.append(
                (row.event_id, target, row.institution, row.message_id, ack.reason_code, now)
            )
            report.applied += 1
            if receipt is not None:
                receipts.append(
                    {
                        **receipt,
                        "message_id": row.message_id,
                        "institution": row.institution,
                        "verified_at": now,
                    }
                )
        conn = session.connection()
        if receipts:
            conn.execute(insert(ReceiptRow), receipts)
        for group in updates.values():
            update_rows(conn, OUTBOX, group)
        copy_rows(conn, TRAIL.name, TRAIL_COLUMNS, trail)
        if anomalies:
            conn.execute(insert(ANOMALY), anomalies)
        if report.adjudications and decisions is not None:
            decisions(report.adjudications)
    return report


@dataclass(frozen=True)
class Refused:
    """A signed acknowledgement refused on the ack topic or as an ack file."""

    refusal: Refusal
    original: bytes
    """The record's value or the file's bytes, exactly as received."""
    position: tuple[str, int, int]
    """Where it was read (topic, partition, offset; a file: ``ackfile:<institution>``, 0 and
    a digest of its name and bytes): read again after a crash, it is recorded once."""
    evidence: str
    """What carried its signature (headers, the ``.sig`` file), for whoever investigates."""


def record_refusal(
    engine: Engine,
    institution: Institution,
    refused: Refused,
    acks: Sequence[Ack],
    *,
    channel: str,
    vault: Vault | None,
) -> int:
    """Keep a refused acknowledgement apart, nothing of it applied: a dead letter (source
    ``receipt:<channel>``, reason the refusal's, the original sealed as every dead letter's),
    which the console lists with the other work an operator must look at, and a
    ``receipt_refused`` trail step on each message ``acks`` names, counted in
    ``jokko_receipts_refused_total``; one transaction. Returns the steps written (0 when the
    same refusal was recorded before)."""
    now = utcnow()
    ids = {a.message_id for a in acks}
    with Session(engine) as session, session.begin():
        named = (
            session.execute(
                select(OutboxRow.event_id, OutboxRow.message_id, OutboxRow.member_id)
                .where(OutboxRow.institution == institution.value, OutboxRow.message_id.in_(ids))
                .order_by(OutboxRow.id)
            ).all()
            if ids
            else []
        )
        conn = session.connection()
        topic, partition, offset = refused.position
        first = named[0] if named else None
        names = ", ".join(m for _, m, _ in named) or "no message Jokko sent"
        upsert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        stmt = (
            upsert(DEAD)
            .values(
                source=f"{RECEIPT_SOURCE}:{channel}",
                reason=refused.refusal.refused,
                detail=f"{refused.refusal.text} (names {names}; {refused.evidence})",
                event_id=first.event_id if first else None,
                message_id=first.message_id if first else None,
                member_id=first.member_id if first else None,
                institution=institution.value,
                topic=topic,
                partition=partition,
                offset=offset,
                original=vault.seal(refused.original, DEAD_LETTER_AAD)
                if vault is not None
                else refused.original,
                attempts=1,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["topic", "partition", "offset"])
            .returning(DEAD.c.id)
        )
        if conn.execute(stmt).first() is None:
            return 0
        copy_rows(
            conn,
            TRAIL.name,
            TRAIL_COLUMNS,
            [
                (
                    event_id,
                    Stage.RECEIPT_REFUSED.value,
                    institution.value,
                    message_id,
                    refused.refusal.refused,
                    now,
                )
                for event_id, message_id, _ in named
            ],
        )
    log.warning(
        "acknowledgement from %s refused (%s): %s", institution.value, channel, refused.refusal.text
    )
    return len(named)


def refused_receipt_counts(session: Session) -> Counter[tuple[str, str]]:
    """Refused signed acknowledgements by (institution, reason): a step on each message one
    named, and once each refused record or file that named none Jokko sent (its dead letter)."""
    counts: Counter[tuple[str, str]] = Counter()
    for inst, reason, n in session.execute(
        select(TrailRow.institution, TrailRow.detail, func.count())
        .where(TrailRow.stage == Stage.RECEIPT_REFUSED.value)
        .group_by(TrailRow.institution, TrailRow.detail)
    ):
        counts[(inst or "", reason or "")] += n
    for inst, reason, n in session.execute(
        select(DeadLetterRow.institution, DeadLetterRow.reason, func.count())
        .where(
            DeadLetterRow.source.startswith(f"{RECEIPT_SOURCE}:"),
            DeadLetterRow.message_id.is_(None),
        )
        .group_by(DeadLetterRow.institution, DeadLetterRow.reason)
    ):
        counts[(inst or "", reason)] += n
    return counts


def _shown(value: str, limit: int = 200) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


class AckConsumer:
    """Reads ``jokko.acks.<institution>.v1``; offsets are committed after the acks are applied
    and CMU's decisions published on the canonical topic, so a crash re-reads them and
    re-applying is harmless (the decisions' event ids are derived from the acks).

    With ``receipts`` (the institution's registered keys) each record's Standard Webhooks
    ``v1a`` headers are checked (``router.receipts.check_receipt``) before its value is
    applied: a verified record's acks are applied with the record as their receipt; a
    refused one (forged, altered, unsigned when ``require_signed_acks``, replayed, stale)
    applies nothing and is kept apart (``record_refusal``), and its offset is committed all
    the same: a forged record never blocks the partition, and the genuine one applies when it
    comes. A record is judged at its Kafka timestamp, not when it is read: a consumer that was
    away refuses nothing genuine. A batch that fails part-way (database, broker) is read again
    from its first record."""

    def __init__(
        self,
        engine: Engine,
        consumer: Callable[[], KafkaConsumer],
        institution: Institution,
        adapter: OutboundAdapter,
        *,
        producer: KafkaProducer | None = None,
        canonical_topic: str | None = None,
        vault: Vault | None,
        receipts: JwksVerifier | None = None,
        require_signed_acks: bool = False,
    ) -> None:
        """``vault`` seals the decisions published on ``canonical_topic`` and the originals
        of refused records."""
        if require_signed_acks and receipts is None:
            raise ValueError(f"signed acks from {institution} need its public keys")
        self._engine = engine
        self._producer = producer
        self._canonical = canonical_topic
        self._vault = vault
        self._receipts = receipts
        self._require_signed = require_signed_acks
        # Joined lazily, in the intake's own thread: a broker that is away at start-up must
        # not stop the relay from delivering what it can.
        self._make_consumer = consumer
        self._consumer: KafkaConsumer | None = None
        self._institution = institution
        self._adapter = adapter
        self.report = AckReport()
        self.malformed = 0
        self.refused = 0

    def poll_once(self, timeout_ms: int = 500) -> int:
        if self._consumer is None:
            self._consumer = self._make_consumer()
        batch = self._consumer.poll(timeout_ms=timeout_ms)
        try:
            self._take([r for records in batch.values() for r in records])
        except BaseException:
            # nothing committed: read the batch again from its start, not from past it
            for tp, records in batch.items():
                if records:
                    self._consumer.seek(tp, records[0].offset)
            raise
        if batch:
            self._consumer.commit()
        return sum(len(r) for r in batch.values())

    def _take(self, records: Sequence[ConsumerRecord]) -> None:
        """Apply the batch in record order: unsigned acks together, each signed record with
        its own receipt, each refused one kept apart."""
        unsigned: list[Ack] = []

        def flush() -> None:
            self.report += apply_acks(
                self._engine, self._institution, unsigned, channel="kafka", decisions=self._publish
            )
            unsigned.clear()

        for record in records:
            value = record.value or b""
            checked = self._check(record, value)
            if isinstance(checked, Refusal):
                flush()
                self._refuse(record, value, checked)
                continue
            try:
                acks = self._adapter.parse_ack(value)
            except MalformedAck as exc:
                self.malformed += 1
                log.warning("malformed ack at %s:%s: %s", record.partition, record.offset, exc)
                continue
            if checked is None:
                unsigned.extend(acks)
                continue
            flush()
            self.report += apply_acks(
                self._engine,
                self._institution,
                acks,
                channel="kafka",
                decisions=self._publish,
                receipt=checked.columns(),
            )
        flush()

    def _check(self, record: ConsumerRecord, value: bytes) -> Receipt | Refusal | None:
        if self._receipts is None:
            return None
        headers = {k: v.decode("utf-8", "replace") for k, v in (record.headers or []) if v}
        written = record.timestamp / 1000 if record.timestamp and record.timestamp > 0 else None
        return check_receipt(
            self._receipts,
            headers,
            value,
            required=self._require_signed,
            now=written,
            carrier=(record.topic, record.partition, record.offset),
        )

    def _refuse(self, record: ConsumerRecord, value: bytes, refusal: Refusal) -> None:
        try:
            named = self._adapter.parse_ack(value)
        except MalformedAck:
            named = []
        headers = {k.lower(): v.decode("utf-8", "replace") for k, v in (record.headers or []) if v}
        carried = " ".join(
            f"{h}={_shown(headers[h])}"
            for h in (ID_HEADER, TIMESTAMP_HEADER, KEY_ID_HEADER, SIGNATURE_HEADER)
            if h in headers
        )
        where = f"record {record.topic}[{record.partition}]@{record.offset}"
        refused = Refused(
            refusal,
            value,
            (record.topic, record.partition, record.offset),
            f"{where}, {carried or 'no signature headers'}",
        )
        record_refusal(
            self._engine, self._institution, refused, named, channel="kafka", vault=self._vault
        )
        self.refused += 1

    def _publish(self, events: Sequence[ClaimAdjudicated]) -> None:
        if self._producer is not None and self._canonical:
            publish_events(self._producer, self._canonical, events, vault=self._vault)

    @property
    def institution(self) -> Institution:
        return self._institution

    def close(self) -> None:
        """Leaves the group; the producer is shared and belongs to the caller."""
        if self._consumer is not None:
            self._consumer.close()

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.poll_once()
                except (KafkaError, BrokerUnavailable, OperationalError) as exc:
                    log.warning("ack consumer for %s retrying: %r", self._institution, exc)
                    stop.wait(1.0)
        finally:
            self.close()


_PLACES = ("processed", "malformed", "refused")


class AckFilePicker:
    """Picks up ``*.ack`` files from the exchange directory, applies them, and moves each to
    ``processed/`` (or ``malformed/``) only after its acks are committed.

    With ``receipts`` (the institution's registered keys) an ack file is checked with its
    detached signature ``<name>.ack.sig`` (``router.receipts.check_file_receipt``): verified,
    its acks are applied with the file as their receipt; refused (or missing after the grace
    period when ``require_signed_acks``), nothing is applied, the refusal is kept apart
    (``record_refusal``) and the file goes to ``refused/`` with its ``.sig``.

    The grace rule: an institution writes the ``.sig`` first, then the ``.ack``; a ``.ack``
    seen without its ``.sig`` is left where it is until ``signature_grace_s`` after it was
    written (its modification time), then judged as unsigned: refused when signatures are
    required, applied without a receipt otherwise. A ``.sig`` left without its ``.ack`` that
    long follows its ack where that went (``refused/`` when it is nowhere)."""

    def __init__(
        self,
        engine: Engine,
        directory: Path,
        institution: Institution,
        adapter: OutboundAdapter,
        *,
        receipts: JwksVerifier | None = None,
        require_signed_acks: bool = False,
        signature_grace_s: float = 60.0,
        vault: Vault | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if require_signed_acks and receipts is None:
            raise ValueError(f"signed acks from {institution} need its public keys")
        self._engine = engine
        self._dir = directory
        self._institution = institution
        self._adapter = adapter
        self._receipts = receipts
        self._require_signed = require_signed_acks
        self._grace_s = signature_grace_s
        self._vault = vault
        self._clock = clock
        self.report = AckReport()
        self.malformed: list[str] = []
        self.refused: list[str] = []
        for sub in _PLACES:
            (directory / sub).mkdir(parents=True, exist_ok=True)

    def poll_once(self) -> int:
        """The ack files taken (applied, malformed or refused); those waiting are not."""
        files = sorted(p for p in self._dir.glob("*.ack") if p.is_file())
        taken = sum(1 for path in files if self._take(path))
        self._sweep_signatures()
        return taken

    def _age(self, path: Path) -> float | None:
        try:
            return self._clock() - path.stat().st_mtime
        except FileNotFoundError:
            return None

    def _take(self, path: Path) -> bool:
        sig_path = path.with_name(path.name + SIG_SUFFIX)
        try:
            signature: bytes | None = sig_path.read_bytes()
        except FileNotFoundError:
            signature = None
        if self._receipts is not None and signature is None:
            age = self._age(path)
            if age is None or age < self._grace_s:
                return False  # its signature may still be on its way
        content = path.read_bytes()
        checked: Receipt | Refusal | None = None
        if self._receipts is not None:
            checked = check_file_receipt(
                self._receipts, path.name, content, signature, required=self._require_signed
            )
        if isinstance(checked, Refusal):
            self._refuse(path, content, signature, checked)
            return True
        try:
            acks = self._adapter.parse_ack(content)
        except MalformedAck as exc:
            log.warning("malformed ack file %s: %s", path.name, exc)
            self.malformed.append(path.name)
            self._move(path, "malformed")
            return True
        receipt = checked.columns() if checked is not None else None
        self.report += apply_acks(
            self._engine, self._institution, acks, channel="file", receipt=receipt
        )
        self._move(path, "processed")
        return True

    def _refuse(self, path: Path, content: bytes, signature: bytes | None, why: Refusal) -> None:
        try:
            named = self._adapter.parse_ack(content)
        except MalformedAck:
            named = []
        digest = hashlib.sha256(
            b"\0".join((path.name.encode(), content, signature or b""))
        ).digest()
        carried = (
            f"{path.name}{SIG_SUFFIX}: {_shown(signature.decode('ascii', 'replace').strip())}"
            if signature is not None
            else f"no {path.name}{SIG_SUFFIX}"
        )
        refused = Refused(
            why,
            content,
            (f"ackfile:{self._institution.value}", 0, int.from_bytes(digest[:8]) >> 1),
            f"file {path.name}, {carried}",
        )
        record_refusal(
            self._engine, self._institution, refused, named, channel="file", vault=self._vault
        )
        self.refused.append(path.name)
        self._move(path, "refused")

    def _move(self, path: Path, place: str) -> None:
        """The ack, then its signature (a signature left behind is swept to it)."""
        shutil.move(path, self._dir / place / path.name)
        sig = path.with_name(path.name + SIG_SUFFIX)
        if sig.exists():
            shutil.move(sig, self._dir / place / sig.name)

    def _sweep_signatures(self) -> None:
        for sig in self._dir.glob(f"*.ack{SIG_SUFFIX}"):
            ack = sig.with_name(sig.name.removesuffix(SIG_SUFFIX))
            if ack.exists():
                continue
            age = self._age(sig)
            if age is None or age < self._grace_s:
                continue  # its ack may still be on its way
            place = next((p for p in _PLACES if (self._dir / p / ack.name).exists()), "refused")
            log.warning("signature %s without its ack file: moved to %s/", sig.name, place)
            shutil.move(sig, self._dir / place / sig.name)

    def run(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        while not stop.is_set():
            try:
                if self.poll_once() == 0:
                    stop.wait(interval_s)
            except OperationalError as exc:
                log.warning("ack files for %s retrying: %r", self._institution, exc)
                stop.wait(1.0)
