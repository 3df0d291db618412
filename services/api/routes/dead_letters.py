"""Dead letters for operators: list, inspect, replay, discard with a reason. Every replay and
discard is written to the audit log with who did it, and so is every read of a dead letter's
original record (personal data: ``services.api.access``)."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from router.audit import append as append_audit
from router.replay import replay
from router.sealing import open_original
from router.store import DeadLetterRow, InboxRow, OutboxRow, utcnow
from router.vault import SealError
from schemas.types import MEMBER_ID_PATTERN
from services.api import pagination
from services.api.access import audit_read
from services.api.auth import Principal, Scope, require
from services.api.deps import JokkoDep, SessionDep
from services.api.problems import PROBLEM_RESPONSES, problem_responses

router = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"], responses=PROBLEM_RESPONSES)

Operator = Annotated[Principal, require(Scope.DEAD_LETTERS)]
DeadLetterId = Annotated[int, Path(ge=1, le=pagination.MAX_ID)]


class DeadLetter(BaseModel):
    id: int
    source: str
    reason: str
    detail: str
    event_id: str | None
    message_id: str | None
    institution: str | None
    topic: str | None
    partition: int | None
    offset: int | None
    attempts: int
    created_at: datetime
    published_at: datetime | None
    replayed_at: datetime | None
    discarded_at: datetime | None


class DeadLetterDetail(DeadLetter):
    original_base64: str = Field(description="The record or message exactly as it failed.")


class Discard(BaseModel):
    reason: str = Field(min_length=3, max_length=500, pattern=pagination.NO_NUL)


class ReplayResult(BaseModel):
    id: int
    outcome: str


def _one(session: SessionDep, dead_letter_id: int) -> DeadLetterRow:
    row = session.get(DeadLetterRow, dead_letter_id)
    if row is None:
        raise HTTPException(404, "no such dead letter")
    return row


@router.get("", response_model=pagination.Page[DeadLetter], responses=problem_responses(400))
def list_dead_letters(
    session: SessionDep,
    _operator: Operator,
    reason: Annotated[str | None, Query(max_length=64, pattern=pagination.NO_NUL)] = None,
    open_only: Annotated[bool, Query(description="Neither replayed nor discarded.")] = True,
    cursor: pagination.Cursor = None,
    limit: pagination.Limit = 100,
) -> pagination.Page[DeadLetter]:
    query = select(DeadLetterRow).where(DeadLetterRow.id > pagination.decode(cursor))
    if reason is not None:
        query = query.where(DeadLetterRow.reason == reason)
    if open_only:
        query = query.where(
            DeadLetterRow.replayed_at.is_(None), DeadLetterRow.discarded_at.is_(None)
        )
    rows = session.scalars(query.order_by(DeadLetterRow.id).limit(limit + 1)).all()
    page = rows[:limit]
    return pagination.Page[DeadLetter](
        items=[DeadLetter.model_validate(r, from_attributes=True) for r in page],
        next_cursor=pagination.encode(page[-1].id) if len(rows) > limit else None,
    )


@router.get(
    "/{dead_letter_id}", response_model=DeadLetterDetail, responses=problem_responses(404, 410)
)
def inspect_dead_letter(
    dead_letter_id: DeadLetterId,
    request: Request,
    session: SessionDep,
    jokko: JokkoDep,
    operator: Operator,
) -> DeadLetterDetail:
    """The original record is personal data: each read is audited (caller, member, time)."""
    row = _one(session, dead_letter_id)
    base = DeadLetter.model_validate(row, from_attributes=True)
    try:
        original = open_original(session.connection(), jokko.vault, row)
    except SealError as exc:
        raise HTTPException(410, f"the original cannot be read: {exc}") from None
    detail = DeadLetterDetail(
        **base.model_dump(), original_base64=base64.b64encode(original).decode()
    )
    audit_read(session, request, operator, "read.dead_letter", _members(session, row, original))
    return detail


_MEMBER_ID = re.compile(MEMBER_ID_PATTERN)


def _members(session: Session, row: DeadLetterRow, original: bytes) -> list[str]:
    """The member a dead letter is about: its own, its delivery's, its event's, else the one
    its original names (a poison record: only a well-formed member id, never whatever is there)."""
    if row.member_id is not None:
        return [row.member_id]
    if row.message_id is not None:
        member = session.scalar(
            select(OutboxRow.member_id).where(OutboxRow.message_id == row.message_id)
        )
        if member is not None:
            return [member]
    if row.event_id is not None:
        member = session.scalar(select(InboxRow.member_id).where(InboxRow.event_id == row.event_id))
        if member is not None:
            return [member]
    try:
        doc = json.loads(original)
    except (ValueError, UnicodeDecodeError):
        return []
    member = doc.get("member_id") if isinstance(doc, dict) else None
    return [member] if isinstance(member, str) and _MEMBER_ID.fullmatch(member) else []


@router.post(
    "/{dead_letter_id}/replay", response_model=ReplayResult, responses=problem_responses(404, 409)
)
def replay_dead_letter(
    dead_letter_id: DeadLetterId, session: SessionDep, jokko: JokkoDep, operator: Operator
) -> ReplayResult:
    _one(session, dead_letter_id)
    outcome = replay(jokko.engine, jokko.processor(), [dead_letter_id])[dead_letter_id]
    if outcome == "discarded":
        raise HTTPException(409, "this dead letter was discarded")
    jokko_audit(jokko, operator, "dead_letter.replay", dead_letter_id, outcome)
    return ReplayResult(id=dead_letter_id, outcome=outcome)


@router.post(
    "/{dead_letter_id}/discard", response_model=DeadLetter, responses=problem_responses(400, 404)
)
def discard_dead_letter(
    dead_letter_id: DeadLetterId,
    body: Discard,
    session: SessionDep,
    jokko: JokkoDep,
    operator: Operator,
) -> DeadLetter:
    row = _one(session, dead_letter_id)
    if row.discarded_at is None:
        row.discarded_at = utcnow()
        row.detail = f"{row.detail} | discarded: {body.reason}"
        session.commit()
        jokko_audit(jokko, operator, "dead_letter.discard", dead_letter_id, body.reason)
    return DeadLetter.model_validate(row, from_attributes=True)


def jokko_audit(
    jokko: JokkoDep, who: Principal, action: str, target: int, detail: str | None
) -> None:
    with Session(jokko.engine) as session, session.begin():
        row = session.get(DeadLetterRow, target)
        members = []
        if row is not None:
            try:
                original = open_original(session.connection(), jokko.vault, row)
            except SealError:  # erased: the letter still names its member when it knew one
                original = b""
            members = _members(session, row, original)
        append_audit(
            session,
            actor=who.client_id,
            action=action,
            target=f"dead_letter:{target}",
            member_id=members[0] if members else None,
            detail=detail,
        )
