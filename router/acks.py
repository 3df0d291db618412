"""Acknowledgements from the institutions, whichever way they come back, applied to deliveries.

``sent → accepted | rejected(reason)``. Applying the same ack twice changes nothing; an ack
for a message Jokko never sent, or one contradicting an earlier ack, is kept as an anomaly
(``ack_anomaly``) for the operators, never dropped. Acks arrive on the institution's ack
topic (``AckConsumer``), as ack files (``AckFilePicker``) or in the HTTP answer itself (the
push channel reports them directly to the delivery worker, which turns CMU's decisions into
events with ``adjudication_events``: the same ids whichever way a decision came).
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from sqlalchemy import Engine, Table, insert, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from adapters.base import Ack, AckStatus, Institution, MalformedAck, OutboundAdapter
from router.bulk import TRAIL, TRAIL_COLUMNS, copy_rows, update_rows
from router.canonical import publish_events
from router.errors import BrokerUnavailable
from router.store import (
    AckAnomalyRow,
    DeliveryState,
    MemberProfileRow,
    OutboxRow,
    ReceiptRow,
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


class AckConsumer:
    """Reads ``jokko.acks.<institution>.v1``; offsets are committed after the acks are applied
    and CMU's decisions published on the canonical topic, so a crash re-reads them and
    re-applying is harmless (the decisions' event ids are derived from the acks)."""

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
    ) -> None:
        """``vault`` seals the decisions published on ``canonical_topic``."""
        self._engine = engine
        self._producer = producer
        self._canonical = canonical_topic
        self._vault = vault
        # Joined lazily, in the intake's own thread: a broker that is away at start-up must
        # not stop the relay from delivering what it can.
        self._make_consumer = consumer
        self._consumer: KafkaConsumer | None = None
        self._institution = institution
        self._adapter = adapter
        self.report = AckReport()
        self.malformed = 0

    def poll_once(self, timeout_ms: int = 500) -> int:
        if self._consumer is None:
            self._consumer = self._make_consumer()
        batch = self._consumer.poll(timeout_ms=timeout_ms)
        acks: list[Ack] = []
        for records in batch.values():
            for record in records:
                try:
                    acks.extend(self._adapter.parse_ack(record.value or b""))
                except MalformedAck as exc:
                    self.malformed += 1
                    log.warning("malformed ack at %s:%s: %s", record.partition, record.offset, exc)
        applied = apply_acks(
            self._engine, self._institution, acks, channel="kafka", decisions=self._publish
        )
        self.report += applied
        if batch:
            self._consumer.commit()
        return sum(len(r) for r in batch.values())

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


class AckFilePicker:
    """Picks up ``*.ack`` files from the exchange directory, applies them, and moves each to
    ``processed/`` (or ``malformed/``) only after its acks are committed."""

    def __init__(
        self, engine: Engine, directory: Path, institution: Institution, adapter: OutboundAdapter
    ) -> None:
        self._engine = engine
        self._dir = directory
        self._institution = institution
        self._adapter = adapter
        self.report = AckReport()
        self.malformed: list[str] = []
        for sub in ("processed", "malformed"):
            (directory / sub).mkdir(parents=True, exist_ok=True)

    def poll_once(self) -> int:
        files = sorted(p for p in self._dir.glob("*.ack") if p.is_file())
        for path in files:
            try:
                acks = self._adapter.parse_ack(path.read_bytes())
            except MalformedAck as exc:
                log.warning("malformed ack file %s: %s", path.name, exc)
                self.malformed.append(path.name)
                shutil.move(path, self._dir / "malformed" / path.name)
                continue
            self.report += apply_acks(self._engine, self._institution, acks, channel="file")
            shutil.move(path, self._dir / "processed" / path.name)
        return len(files)

    def run(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        while not stop.is_set():
            try:
                if self.poll_once() == 0:
                    stop.wait(interval_s)
            except OperationalError as exc:
                log.warning("ack files for %s retrying: %r", self._institution, exc)
                stop.wait(1.0)
