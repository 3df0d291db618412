"""Deliveries (one per message and institution) and the acknowledgements institutions post.

An institution's client sees only its own: another institution's records answer 404, exactly
as if they did not exist, so their existence does not leak. Deliveries name members and what
was sent about them: every read that returns some is audited (``services.api.access``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from adapters.base import Ack, Institution
from router.acks import apply_acks
from router.canonical import publish_events
from router.receipts import Refusal, check_receipt
from router.signing import JwksVerifier
from router.store import DeliveryState, OutboxRow, Stage, TrailRow, utcnow
from schemas import ClaimAdjudicated
from services.api import pagination
from services.api.access import audit_read
from services.api.auth import Principal, Scope, require
from services.api.deps import JokkoDep, ProducerDep, SessionDep
from services.api.problems import PROBLEM_RESPONSES, problem_responses
from services.bootstrap import receipt_verifier

log = logging.getLogger(__name__)

router = APIRouter(tags=["deliveries"], responses=PROBLEM_RESPONSES)


class Delivery(BaseModel):
    message_id: str
    event_id: str
    institution: Institution
    member_id: str
    member_seq: int
    kind: str
    content_type: str
    state: DeliveryState
    attempts: int
    reason_code: str | None
    reason_text: str | None
    institution_ref: str | None
    batch_ref: str | None
    created_at: datetime
    sent_at: datetime | None
    acked_at: datetime | None
    next_attempt_at: datetime | None

    @classmethod
    def of(cls, row: OutboxRow) -> Delivery:
        return cls.model_validate(row, from_attributes=True)


class AckResult(BaseModel):
    applied: int
    duplicates: int
    anomalies: dict[str, int]


def _not_found() -> HTTPException:
    return HTTPException(404, "no such delivery")


@router.get(
    "/v1/deliveries",
    response_model=pagination.Page[Delivery],
    responses=problem_responses(400, 404),
)
def list_deliveries(
    request: Request,
    session: SessionDep,
    principal: Annotated[Principal, require(Scope.DELIVERIES_READ)],
    institution: Annotated[Institution | None, Query()] = None,
    state: Annotated[DeliveryState | None, Query()] = None,
    member_id: Annotated[str | None, Query(max_length=64, pattern=pagination.NO_NUL)] = None,
    since: Annotated[datetime | None, Query(description="Created at or after.")] = None,
    until: Annotated[datetime | None, Query(description="Created before.")] = None,
    cursor: pagination.Cursor = None,
    limit: pagination.Limit = 100,
) -> pagination.Page[Delivery]:
    if principal.institution is not None:
        if institution is not None and institution != principal.institution:
            raise _not_found()
        institution = principal.institution
    query = select(OutboxRow).where(OutboxRow.id > pagination.decode(cursor))
    if institution is not None:
        query = query.where(OutboxRow.institution == institution.value)
    if state is not None:
        query = query.where(OutboxRow.state == state.value)
    if member_id is not None:
        query = query.where(OutboxRow.member_id == member_id)
    if since is not None:
        query = query.where(OutboxRow.created_at >= since)
    if until is not None:
        query = query.where(OutboxRow.created_at < until)
    rows = session.scalars(query.order_by(OutboxRow.id).limit(limit + 1)).all()
    page = rows[:limit]
    result = pagination.Page[Delivery](
        items=[Delivery.of(r) for r in page],
        next_cursor=pagination.encode(page[-1].id) if len(rows) > limit else None,
    )
    if result.items:
        audit_read(
            session, request, principal, "read.deliveries", (d.member_id for d in result.items)
        )
    return result


@router.get(
    "/v1/deliveries/{message_id}", response_model=Delivery, responses=problem_responses(404)
)
def get_delivery(
    message_id: Annotated[str, Path(max_length=36, pattern=pagination.NO_NUL)],
    request: Request,
    session: SessionDep,
    principal: Annotated[Principal, require(Scope.DELIVERIES_READ)],
) -> Delivery:
    row = session.scalars(select(OutboxRow).where(OutboxRow.message_id == message_id)).first()
    if row is None or not principal.may_see(row.institution):
        raise _not_found()
    delivery = Delivery.of(row)
    audit_read(session, request, principal, "read.delivery", [delivery.member_id])
    return delivery


@router.post(
    "/v1/acks/{institution}",
    response_model=AckResult,
    summary="Acknowledgements in the institution's own format",
    responses=problem_responses(404),
    description=(
        "CMU: a FHIR transaction-response Bundle, OperationOutcome, ClaimResponse or "
        "batch-response (application/fhir+json). CSS: an Acknowledgement document "
        "(application/xml). IPRES: an acknowledgement file (text/plain). Signed by the "
        "institution (Standard Webhooks v1a headers webhook-id, webhook-timestamp, "
        "webhook-signature, webhook-key-id over the body) when it registered its keys: a "
        "signature that fails is refused with 401 'receipt refused: <reason>' and nothing "
        "is applied; a valid one is stored as each applied message's receipt."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/fhir+json": {"schema": {"type": "object"}},
                "application/xml": {"schema": {"type": "string"}},
                "text/plain": {"schema": {"type": "string"}},
            },
        }
    },
)
async def post_acks(
    institution: Institution,
    request: Request,
    jokko: JokkoDep,
    producer: ProducerDep,
    principal: Annotated[Principal, require(Scope.ACKS_WRITE)],
) -> AckResult:
    if not principal.may_see(institution):
        raise HTTPException(404, "no such institution endpoint")
    body = await request.body()
    headers = dict(request.headers)
    verifiers: dict[Institution, JwksVerifier | None] = request.app.state.__dict__.setdefault(
        "ack_verifiers", {}
    )
    if institution not in verifiers:  # one per institution: it remembers what it accepted
        verifiers[institution] = receipt_verifier(institution, jokko.partner(institution))
    verifier = verifiers[institution]
    return await run_in_threadpool(_apply, institution, body, headers, verifier, jokko, producer)


def _apply(
    institution: Institution,
    body: bytes,
    headers: dict[str, str],
    verifier: JwksVerifier | None,
    jokko: JokkoDep,
    producer: ProducerDep,
) -> AckResult:
    """Parse, apply in the store, publish adjudications: blocking, run in the threadpool."""
    acks = jokko.adapters[institution].parse_ack(body)  # MalformedAck → 422, located
    receipt = None
    if verifier is not None:
        required = jokko.partner(institution).require_signed_acks
        checked = check_receipt(verifier, headers, body, required=required)
        if isinstance(checked, Refusal):
            _refused(jokko, institution, acks, checked)
            raise HTTPException(401, checked.text)
        if checked is not None:
            receipt = checked.columns()

    def decisions(events: Sequence[ClaimAdjudicated]) -> None:
        """Before the acks commit: a 503 here applies nothing, and the institution's
        re-sent ack gives the same events."""
        timeout_s = jokko.settings.api_broker_timeout_s
        publish_events(
            producer, jokko.topics.canonical, events, vault=jokko.vault, timeout_s=timeout_s
        )

    report = apply_acks(
        jokko.engine, institution, acks, channel="api", decisions=decisions, receipt=receipt
    )
    return AckResult(
        applied=report.applied, duplicates=report.duplicates, anomalies=dict(report.anomalies)
    )


def _refused(jokko: JokkoDep, institution: Institution, acks: Sequence[Ack], why: Refusal) -> None:
    """A security event on the trail of each message the refused document names (nothing
    applied): counted in ``jokko_receipts_refused_total``, shown on the console."""
    log.warning("acknowledgement from %s refused: %s", institution.value, why.text)
    now = utcnow()
    with Session(jokko.engine) as session, session.begin():
        named = session.execute(
            select(OutboxRow.event_id, OutboxRow.message_id).where(
                OutboxRow.institution == institution.value,
                OutboxRow.message_id.in_({a.message_id for a in acks}),
            )
        ).all()
        session.add_all(
            TrailRow(
                event_id=event_id,
                stage=Stage.RECEIPT_REFUSED.value,
                institution=institution.value,
                message_id=message_id,
                detail=why.refused,
                at=now,
            )
            for event_id, message_id in named
        )
