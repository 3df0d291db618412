"""A member's personal data erased on request, once the legal retention period is over.

Erasure is the destruction of the member's data key (``router.vault``): every message body
Jokko keeps for them becomes unreadable at once, wherever it is, without rewriting a row. Their
NIN token and the originals of their dead letters are deleted. What the accounting needs stays:
the inbox, the outbox rows' states, acknowledgements and institution references, the status
trail, reconciliation items (ids, periods and amounts, no identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session

from router.audit import append as append_audit
from router.store import (
    DeadLetterRow,
    InboxRow,
    MemberIdentityRow,
    MemberKeyRow,
    OutboxRow,
    utcnow,
)
from schemas.errors import JokkoError

ERASED = b""
"""What an erased dead letter's original becomes."""


class ErasureRefused(JokkoError):
    """Not erased: unknown member, already erased, or still within the retention period."""


@dataclass(frozen=True)
class ErasureReport:
    member_id: str
    messages: int
    """Outbox bodies made unreadable (their rows stay)."""
    dead_letters: int
    tokens: int

    def __str__(self) -> str:
        return (
            f"{self.member_id}: personal data erased; {self.messages} messages unreadable from "
            f"now on, {self.dead_letters} dead-letter originals and {self.tokens} NIN tokens "
            "deleted; states, acknowledgements and the trail kept"
        )


def erase_member(
    engine: Engine,
    member_id: str,
    *,
    retention_days: int,
    actor: str,
    reason: str,
    now: datetime | None = None,
) -> ErasureReport:
    now = now or utcnow()
    with Session(engine) as s, s.begin():
        key = s.get(MemberKeyRow, member_id, with_for_update=True)
        last = s.scalar(
            select(func.max(InboxRow.recorded_at)).where(InboxRow.member_id == member_id)
        )
        if key is None and last is None:
            raise ErasureRefused(f"{member_id}: no such member")
        if key is not None and key.erased_at is not None:
            raise ErasureRefused(f"{member_id}: already erased on {key.erased_at:%Y-%m-%d}")
        if last is not None and last + timedelta(days=retention_days) > now:
            until = last + timedelta(days=retention_days)
            raise ErasureRefused(
                f"{member_id}: last event recorded {last:%Y-%m-%d}; the retention period "
                f"({retention_days} days) ends {until:%Y-%m-%d}"
            )
        if key is None:  # never routed with a key: later events are refused all the same
            key = MemberKeyRow(member_id=member_id, kek_id="-", created_at=now)
            s.add(key)
        key.wrapped_dek = None
        key.erased_at = now
        key.erasure_reason = reason
        messages = s.scalar(
            select(func.count()).select_from(OutboxRow).where(OutboxRow.member_id == member_id)
        )
        letters = s.scalars(
            update(DeadLetterRow)
            .where(DeadLetterRow.member_id == member_id, DeadLetterRow.original != ERASED)
            .values(original=ERASED)
            .returning(DeadLetterRow.id)
        ).all()
        tokens = s.scalars(
            delete(MemberIdentityRow)
            .where(MemberIdentityRow.member_id == member_id)
            .returning(MemberIdentityRow.token)
        ).all()
        append_audit(
            s,
            actor=actor,
            action="member.erase",
            target=member_id,
            member_id=member_id,
            detail=reason,
            at=now,
        )
    return ErasureReport(member_id, messages or 0, len(letters), len(tokens))
