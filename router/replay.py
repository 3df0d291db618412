"""Re-drive chosen dead letters. A replay goes through the same idempotent processing, so
replaying twice, or replaying something that meanwhile got through, has no second effect."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from router.processing import Outcome, Processor, RawRecord
from router.store import DeadLetterRow, utcnow


def replay(engine: Engine, processor: Processor, dead_letter_ids: Iterable[int]) -> dict[int, str]:
    """Returns, per id, what happened: an ``Outcome`` value, ``unknown`` or ``discarded``."""
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
            record = RawRecord(
                row.topic or "replay", row.partition or 0, row.offset or 0, row.original
            )
        outcome = processor.process(record)
        if outcome in (Outcome.ROUTED, Outcome.DUPLICATE):
            with Session(engine) as session, session.begin():
                done = session.get_one(DeadLetterRow, dl_id)
                done.replayed_at = done.replayed_at or utcnow()
                done.attempts += 1
        results[dl_id] = outcome.value
    return results
