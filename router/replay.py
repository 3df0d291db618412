"""Re-drive chosen dead letters. A canonical record goes through the same idempotent processing;
a delivery that ran out of retries gets a fresh retry budget (its message, id and sequence
unchanged). Replaying twice, or replaying something that meanwhile got through, has no second
effect."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from router.acks import RECEIPT_SOURCE
from router.processing import Outcome, Processor, RawRecord
from router.sealing import open_original
from router.store import DeadLetterRow, DeliveryState, OutboxRow, Stage, TrailRow, utcnow


def replay(engine: Engine, processor: Processor, dead_letter_ids: Iterable[int]) -> dict[int, str]:
    """Returns, per id, what happened: an ``Outcome`` value, ``redelivered``,
    ``already_redelivered``, ``unknown``, ``discarded`` or ``not_replayable`` (a refused
    signed acknowledgement)."""
    results: dict[int, str] = {}
    for dl_id in dead_letter_ids:
        with Session(engine) as session:
            row = session.get(DeadLetterRow, dl_id)
            if row is None:
                results[dl_id] = "unknown"
                continue
            if row.discarded_at is not None:
                results[dl_id] = "discarded"
                continue
            if row.source.startswith(f"{RECEIPT_SOURCE}:"):
                # a forged or altered acknowledgement is evidence, never applied: the genuine
                # one applies when it comes; discard the letter once it is looked into
                results[dl_id] = "not_replayable"
                continue
            if row.source.startswith("delivery"):
                results[dl_id] = _redeliver(session, row)
                continue
            original = row.original
            if processor.vault is not None:
                original = open_original(session.connection(), processor.vault, row)
            # the event id it came with: a record sealed under a key the keyring lacked then
            # (``unsealable``) opens once that key is added
            headers = (("event_id", row.event_id.encode()),) if row.event_id else ()
            record = RawRecord(
                row.topic or "replay", row.partition or 0, row.offset or 0, original, headers
            )
        outcome = processor.process(record)
        if outcome in (Outcome.ROUTED, Outcome.DUPLICATE):
            with Session(engine) as session, session.begin():
                done = session.get_one(DeadLetterRow, dl_id)
                done.replayed_at = done.replayed_at or utcnow()
                done.attempts += 1
        results[dl_id] = outcome.value
    return results


def unknown_dead_letters(engine: Engine, dead_letter_ids: Iterable[int]) -> list[int]:
    """The ids no dead letter has, so an operator's typo is refused before anything is replayed."""
    wanted = set(dead_letter_ids)
    with Session(engine) as session:
        known = set(session.scalars(select(DeadLetterRow.id).where(DeadLetterRow.id.in_(wanted))))
    return sorted(wanted - known)


def _redeliver(session: Session, dead: DeadLetterRow) -> str:
    """Back to pending with a new budget; ``redelivered`` once, ``already_redelivered`` after."""
    row = session.scalars(
        select(OutboxRow).where(OutboxRow.message_id == dead.message_id).with_for_update()
    ).one_or_none()
    if row is None:
        return "unknown"
    if row.state != DeliveryState.DEAD:
        # Put back another way (a reconciliation re-drive, an earlier replay): the letter is
        # closed all the same, so the operator's open list shows only work still to do.
        if dead.replayed_at is None:
            dead.replayed_at = utcnow()
            session.commit()
        return "already_redelivered"
    now = utcnow()
    row.state = DeliveryState.PENDING
    row.attempts = 0
    row.next_attempt_at = None
    dead.replayed_at = now
    session.add(
        TrailRow(
            event_id=row.event_id,
            stage=Stage.QUEUED,
            institution=row.institution,
            message_id=row.message_id,
            detail=f"replay of dead letter {dead.id}",
            at=now,
        )
    )
    session.commit()
    return "redelivered"
