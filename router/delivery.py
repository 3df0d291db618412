"""Per-institution delivery: claim due outbox rows in member order, hand them to the
institution's channel, record what happened.

Every institution has its own ``DeliveryWorker`` (its own thread in ``jokko relay``), its own
back-off schedule and its own circuit breaker, so CSS being down never delays CMU or IPRES.

Retries are *scheduled*, not slept: a failed row gets ``attempts + 1`` and a
``next_attempt_at`` from tenacity's exponential back-off with jitter, in the same transaction
that claimed it. The schedule survives restarts, other rows keep flowing meanwhile, and a
member's later rows wait behind the one backing off (per-member order). When the retry budget
is spent the row becomes ``dead`` and a dead letter carries the reason, the original message
and the attempt count.

A channel (Kafka topic, HTTP push, file drop) only moves bytes and reports per message; it
never touches the store.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import pybreaker
from sqlalchemy import Engine, Table, insert, or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from tenacity import RetryCallState, wait_exponential_jitter

from adapters.base import Institution
from router import msglog
from router.acks import Decision, DecisionsUnpublished, adjudication_events
from router.bulk import TRAIL, TRAIL_COLUMNS, copy_rows, update_rows
from router.msglog import Sent
from router.receipts import Receipt
from router.sealing import member_keys, open_body
from router.store import DeadLetterRow, DeliveryState, OutboxRow, ReceiptRow, Stage, utcnow
from router.vault import SealError, Vault
from schemas import ClaimAdjudicated
from schemas.errors import JokkoError
from schemas.payloads import ClaimAdjudicatedPayload

log = logging.getLogger(__name__)

OUTBOX: Table = OutboxRow.__table__  # type: ignore[assignment]
DEAD: Table = DeadLetterRow.__table__  # type: ignore[assignment]
RECEIPT: Table = ReceiptRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Parcel:
    """What a channel needs of an outbox row (the row itself stays in the store layer)."""

    message_id: str
    event_id: str
    member_id: str
    member_seq: int
    kind: str
    content_type: str
    format_version: int
    body: bytes

    @classmethod
    def of(cls, row: OutboxRow) -> Parcel:
        return cls(
            row.message_id,
            row.event_id,
            row.member_id,
            row.member_seq,
            row.kind,
            row.content_type,
            row.format_version,
            row.body,
        )


class Result(StrEnum):
    SENT = "sent"
    """Handed over; the acknowledgement comes later (ack topic, ack file)."""
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"
    """Transient: try again later."""
    UNDELIVERABLE = "undeliverable"
    """Permanent: the institution will never take it as it is (dead letter at once)."""


_STAGES = {
    Result.SENT: Stage.PUBLISHED,
    Result.ACCEPTED: Stage.ACCEPTED,
    Result.REJECTED: Stage.REJECTED,
}


@dataclass(frozen=True, slots=True)
class Delivery:
    """A channel's report about one message."""

    message_id: str
    result: Result
    reason_code: str | None = None
    reason_text: str | None = None
    institution_ref: str | None = None
    batch_ref: str | None = None
    adjudication: ClaimAdjudicatedPayload | None = None
    """CMU's decision, when its answer carried one (HTTP push): a ``claim.adjudicated``."""
    decided_at: datetime | None = None
    """When CMU decided, from its answer (``Ack.decided_at``)."""
    receipt: Receipt | None = None
    """The institution's signed answer, verified: stored with the ack (``receipt`` table)."""
    receipt_refused: str | None = None
    """Why the answer's signature was refused (``router.signing.Reason`` or ``unsigned``,
    ``wrong_id``): the answer is not applied, the message is retried."""
    sent: Sent | None = None
    """What carried it (a push, a Kafka record, or a batch or file shared with others), for
    the message log; None when nothing was sent (held back, unreadable)."""


class ChannelUnavailable(JokkoError):
    """The whole batch failed before anything is known to be delivered (partner down,
    broker unreachable, topic missing): every row of it is retried."""


class Channel(Protocol):
    """One way of reaching one institution."""

    @property
    def institution(self) -> Institution: ...

    @property
    def name(self) -> str: ...

    def deliver(self, parcels: Sequence[Parcel]) -> list[Delivery]:
        """Deliver in order; one ``Delivery`` per parcel, or raise ``ChannelUnavailable``."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How long an institution is given: ``max_attempts`` tries, back-off doubling from
    ``initial_s`` up to ``max_s``, with jitter so that retries of many rows spread out; after
    ``breaker_failures`` batches failed whole, one message probes every ``breaker_reset_s``."""

    max_attempts: int = 12
    initial_s: float = 1.0
    max_s: float = 300.0
    jitter_s: float = 1.0
    breaker_failures: int = 5
    breaker_reset_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th failure (tenacity's formula)."""
        wait = wait_exponential_jitter(
            multiplier=self.initial_s, max=self.max_s, jitter=min(self.jitter_s, self.initial_s)
        )
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return float(wait(state))


def _in_order(
    claimed: Sequence[OutboxRow], pending: Sequence[tuple[str, str, int]]
) -> list[OutboxRow]:
    """The claimed rows that can leave now: no earlier pending row of their member is held
    elsewhere (another relay's claim, or backing off). ``pending`` is (institution,
    member_id, id) of pending rows."""
    mine = {r.id for r in claimed}
    first_gap: dict[tuple[str, str], int] = {}
    for inst, member, row_id in sorted(pending, key=lambda p: p[2]):
        key = (inst, member)
        if row_id not in mine and key not in first_gap:
            first_gap[key] = row_id
    return [r for r in claimed if r.id < first_gap.get((r.institution, r.member_id), r.id + 1)]


class DeliveryWorker:
    """Delivers one institution's outbox through one channel.

    Several workers for the same institution may share a PostgreSQL store: rows are claimed
    with ``FOR UPDATE SKIP LOCKED`` and a member's rows leave only when all its earlier
    pending rows are in the same claim.
    """

    def __init__(
        self,
        engine: Engine,
        channel: Channel,
        *,
        policy: RetryPolicy | None = None,
        batch_size: int = 500,
        clock: Callable[[], datetime] = utcnow,
        decisions: Callable[[Sequence[ClaimAdjudicated]], None] | None = None,
        vault: Vault | None = None,
    ) -> None:
        self._engine = engine
        self._vault = vault
        # Called inside the claim's transaction, before it commits: decisions that cannot be
        # published (``DecisionsUnpublished``) roll the answers back, the rows are sent again
        # and the partner, which applies a message once, gives the same decision again.
        self._decisions = decisions
        self._channel = channel
        self._institution = channel.institution.value
        self._policy = policy or RetryPolicy()
        self._batch_size = batch_size
        # Once open, one row probes the partner every reset_timeout instead of every row
        # hammering it (no retry storm against a partner that is down).
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=self._policy.breaker_failures,
            reset_timeout=self._policy.breaker_reset_s,
            name=f"delivery-{self._institution}",
        )
        self._clock = clock
        self._skip_locked = engine.dialect.name == "postgresql"
        self.attempted = 0
        self.delivered = 0

    @property
    def institution(self) -> Institution:
        return self._channel.institution

    @property
    def channel(self) -> Channel:
        return self._channel

    def close(self) -> None:
        self._channel.close()

    def deliver_once(self) -> int:
        """One claim → deliver → record cycle; returns the rows that got a final or sent
        state (0 when there was nothing due, or the circuit is open)."""
        with Session(self._engine) as session, session.begin():
            rows = self._claim(session)
            if not rows:
                return 0
            if self.breaker.current_state != pybreaker.STATE_CLOSED:
                rows = rows[:1]  # a probe, not a flood, while the partner is in doubt
            try:
                reports = self._call(session, rows)
            except pybreaker.CircuitBreakerError:
                if not self._called:
                    return 0  # open: nothing was tried, the claim is released unchanged
                reports = self._all_failed(rows, "circuit open after repeated failures")
            except ChannelUnavailable as exc:
                reports = self._all_failed(rows, str(exc))
            return self._record(session, rows, reports)

    def _claim(self, session: Session) -> list[OutboxRow]:
        now = self._clock()
        query = (
            select(OutboxRow)
            .where(
                OutboxRow.institution == self._institution,
                OutboxRow.state == DeliveryState.PENDING,
                or_(OutboxRow.next_attempt_at.is_(None), OutboxRow.next_attempt_at <= now),
            )
            .order_by(OutboxRow.id)
            .limit(self._batch_size)
        )
        if self._skip_locked:
            query = query.with_for_update(skip_locked=True)
        claimed = session.scalars(query).all()
        if not claimed:
            return []
        pending = session.execute(
            select(OutboxRow.institution, OutboxRow.member_id, OutboxRow.id).where(
                OutboxRow.institution == self._institution,
                OutboxRow.state == DeliveryState.PENDING,
                OutboxRow.member_id.in_({r.member_id for r in claimed}),
                OutboxRow.id <= max(r.id for r in claimed),
            )
        ).all()
        return _in_order(claimed, [(p[0], p[1], p[2]) for p in pending])

    def _open(
        self, session: Session, rows: Sequence[OutboxRow]
    ) -> tuple[list[Parcel], dict[str, Delivery]]:
        """The rows as parcels with their bodies in clear; a body that cannot be opened (the
        member erased, the bytes altered) is never sent: its row is undeliverable."""
        deks: dict[str, bytes | None] = {}
        if self._vault is not None:
            deks = member_keys(session.connection(), self._vault, {r.member_id for r in rows})
        parcels, refused = [], {}
        for r in rows:
            try:
                body = open_body(self._vault, deks, r.member_id, r.message_id, r.body)
            except SealError as exc:
                refused[r.message_id] = Delivery(
                    r.message_id, Result.UNDELIVERABLE, "unreadable", str(exc)
                )
                continue
            parcels.append(replace(Parcel.of(r), body=body))
        return parcels, refused

    def _call(self, session: Session, rows: Sequence[OutboxRow]) -> list[Delivery]:
        self._called = False
        parcels, refused = self._open(session, rows)
        if not parcels:
            return [refused[r.message_id] for r in rows]

        def attempt() -> list[Delivery]:
            self._called = True
            self.attempted += len(parcels)
            reports = self._channel.deliver(parcels)
            if len(reports) != len(parcels):
                raise ChannelUnavailable(
                    f"{self._channel.name} answered {len(reports)} of {len(parcels)} messages"
                )
            if all(d.result == Result.FAILED for d in reports):
                raise _BatchFailed(reports)
            return reports

        try:
            sent = self.breaker.call(attempt)
        except _BatchFailed as exc:
            sent = exc.reports
        except pybreaker.CircuitBreakerError as exc:
            tripped = exc.__context__
            if not isinstance(tripped, _BatchFailed):
                raise
            # this batch's failure opened the circuit: its own reasons (a refused TLS
            # handshake, HTTP 503) are what the operator needs, not only "circuit open"
            sent = [
                replace(d, reason_text=f"{d.reason_text} (circuit now open)")
                for d in tripped.reports
            ]
        if not refused:
            return sent
        answered = iter(sent)
        return [refused.get(r.message_id) or next(answered) for r in rows]

    @staticmethod
    def _all_failed(rows: Sequence[OutboxRow], why: str) -> list[Delivery]:
        return [Delivery(r.message_id, Result.FAILED, reason_text=why) for r in rows]

    def _record(
        self, session: Session, rows: Sequence[OutboxRow], reports: Sequence[Delivery]
    ) -> int:
        """Write what happened, in the claim's transaction, as a few set-based statements:
        one UPDATE per target state (the rows' own values, by primary key), one insert of
        the dead letters, one COPY (PostgreSQL) or executemany (SQLite) of the trail rows.

        The claimed ``OutboxRow`` objects are read, never changed, so the ORM has nothing to
        flush at commit (that flush was a third of the relay's CPU). Each row gets the values
        the ORM path gave it, and the failures' trail rows still come before the delivered
        ones' (the API reads a trail in id order)."""
        now = self._clock()
        by_id = {d.message_id: d for d in reports}
        decided: list[Decision] = []
        updates: dict[str, list[dict[str, Any]]] = defaultdict(list)
        dead: list[dict[str, Any]] = []
        failed_trail: list[tuple[Any, ...]] = []
        trail: list[tuple[Any, ...]] = []
        blocked: set[str] = set()  # members whose earlier row failed in this batch
        receipts: list[dict[str, Any]] = []
        for row in rows:
            d = by_id.get(row.message_id) or Delivery(
                row.message_id, Result.FAILED, reason_text="no answer for this message"
            )
            if row.member_id in blocked and d.result != Result.FAILED:
                # Delivered out of its member's order by the partner's own doing; keep it,
                # the failed earlier row is re-sent and carries its own sequence number.
                log.warning("message %s delivered after an earlier failure", row.message_id)
            if d.receipt_refused is not None:
                # a security event: kept apart, never applied (the trail shows it, the
                # metrics count it by reason)
                log.warning(
                    "receipt from %s for %s refused: %s",
                    self._institution,
                    row.message_id,
                    d.reason_text,
                )
                failed_trail.append(_trail_row(row, Stage.RECEIPT_REFUSED, now, d.receipt_refused))
            if d.result in (Result.FAILED, Result.UNDELIVERABLE):
                attempts = row.attempts + 1
                batch_ref = d.batch_ref or row.batch_ref
                if d.result == Result.FAILED:
                    blocked.add(row.member_id)
                    if attempts < self._policy.max_attempts:
                        updates["retry"].append(
                            {
                                "id": row.id,
                                "attempts": attempts,
                                "batch_ref": batch_ref,
                                "last_error": d.reason_text,
                                "next_attempt_at": now
                                + timedelta(seconds=self._policy.delay(attempts)),
                            }
                        )
                        failed_trail.append(_trail_row(row, Stage.RETRYING, now, d.reason_text))
                        continue
                    reason, last_error = "retries_exhausted", d.reason_text
                else:
                    reason, last_error = d.reason_code or "undeliverable", row.last_error
                updates["dead"].append(
                    {
                        "id": row.id,
                        "attempts": attempts,
                        "batch_ref": batch_ref,
                        "last_error": last_error,
                        "state": DeliveryState.DEAD.value,
                        "next_attempt_at": None,
                        "reason_code": d.reason_code,
                        "reason_text": d.reason_text,
                    }
                )
                dead.append(self._dead_letter(row, reason, d, attempts, now))
                failed_trail.append(
                    _trail_row(row, Stage.DEAD, now, f"{reason}: {d.reason_text or ''}")
                )
                continue
            acked = d.result in (Result.ACCEPTED, Result.REJECTED)
            if acked and d.receipt is not None:
                receipts.append(self._receipt_row(row, d.receipt, now))
            if acked and d.adjudication is not None:
                decided.append((row, d.adjudication, d.decided_at))
            updates[d.result.value].append(
                {
                    "id": row.id,
                    "state": d.result.value,
                    "attempts": row.attempts + 1,
                    "sent_at": row.sent_at or now,
                    "next_attempt_at": None,
                    "last_error": None,
                    "batch_ref": d.batch_ref or row.batch_ref,
                    "acked_at": now if acked else None,
                    "reason_code": d.reason_code if acked else row.reason_code,
                    "reason_text": d.reason_text if acked else row.reason_text,
                    "institution_ref": d.institution_ref if acked else row.institution_ref,
                }
            )
            trail.append(_trail_row(row, _STAGES[d.result], now, d.reason_code))
        conn = session.connection()
        for group in updates.values():
            update_rows(conn, OUTBOX, group)
        if dead:
            conn.execute(insert(DEAD), dead)
        if receipts:
            conn.execute(insert(RECEIPT), receipts)
        copy_rows(conn, TRAIL.name, TRAIL_COLUMNS, failed_trail + trail)
        self._publish_decisions(session, decided, now)
        # last, so the message log's lock (one chain for every institution) is held only
        # for the append and the commit, never while decisions are published
        msglog.append(conn, _requests(reports), institution=self._institution, at=now)
        self.delivered += len(trail)
        return len(trail)

    def _receipt_row(self, row: OutboxRow, r: Receipt, now: datetime) -> dict[str, Any]:
        return {
            **r.columns(),
            "message_id": row.message_id,
            "institution": row.institution,
            "verified_at": now,
        }

    def _dead_letter(
        self, row: OutboxRow, reason: str, d: Delivery, attempts: int, now: datetime
    ) -> dict[str, Any]:
        return {
            "source": f"delivery:{self._channel.name}",
            "reason": reason,
            "detail": d.reason_text or reason,
            "event_id": row.event_id,
            "message_id": row.message_id,
            "member_id": row.member_id,
            "institution": row.institution,
            "original": row.body,
            "attempts": attempts,
            "created_at": now,
        }

    def _publish_decisions(
        self,
        session: Session,
        decided: Sequence[Decision],
        now: datetime,
    ) -> None:
        if not decided:
            return
        if self._decisions is None:
            log.warning(
                "%d decisions of %s not published: no canonical topic",
                len(decided),
                self._institution,
            )
            return
        self._decisions(adjudication_events(session, decided, now))

    def run(self, stop: threading.Event, idle_s: float = 0.05) -> None:
        """Deliver until ``stop``; database trouble is waited out, never fatal."""
        log.info("delivery to %s over %s started", self._institution, self._channel.name)
        failures = 0
        while not stop.is_set():
            try:
                done = self.deliver_once()
                failures = 0
            except OperationalError as exc:
                failures += 1
                log.warning("delivery to %s: database unavailable: %s", self._institution, exc)
                stop.wait(self._policy.delay(failures))
                continue
            except DecisionsUnpublished as exc:
                failures += 1
                log.warning("delivery to %s: answers held back: %s", self._institution, exc)
                stop.wait(self._policy.delay(failures))
                continue
            if done == 0:
                opened = self.breaker.current_state == pybreaker.STATE_OPEN
                stop.wait(max(idle_s, 0.5) if opened else idle_s)
        log.info("delivery to %s stopped: %d delivered", self._institution, self.delivered)


class _BatchFailed(Exception):
    """Every message of a batch failed: counts as one failure for the circuit breaker."""

    def __init__(self, reports: list[Delivery]) -> None:
        super().__init__("every message of the batch failed")
        self.reports = reports


def _trail_row(row: OutboxRow, stage: Stage, at: datetime, detail: str | None) -> tuple[Any, ...]:
    """A trail row in ``TRAIL_COLUMNS`` order."""
    return (row.event_id, stage.value, row.institution, row.message_id, detail, at)


def _requests(reports: Sequence[Delivery]) -> list[tuple[Sent, dict[str, str]]]:
    """Each request sent once (a batch's is shared by its messages), in the order sent,
    with what its answer said per message."""
    requests: dict[int, tuple[Sent, dict[str, str]]] = {}
    for d in reports:
        if d.sent is None:
            continue
        _, outcome = requests.setdefault(id(d.sent), (d.sent, {}))
        why = d.reason_code or (d.reason_text if d.result == Result.FAILED else None)
        outcome[d.message_id] = f"{d.result.value}: {why}" if why else d.result.value
    return list(requests.values())
