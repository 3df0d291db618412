"""Submitting canonical events, and reading an event's status trail.

An event is accepted (202) only once it is on the canonical topic with ``acks=all``: from then
on the router's guarantees hold. The body is validated against the canonical schema first, so
a bad event is a field-level 422 and never reaches the topic; an event id already known with
other content is a 409 (``services.api.submissions``); a body that is not declared JSON is a
415, never parsed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from router.canonical import OutcomeUnknown, Published, publish_events
from router.errors import BrokerUnavailable
from router.store import InboxRow, TrailRow
from schemas import CanonicalEvent, InvalidEvent, parse_event
from services.api import idempotency, pagination
from services.api.access import audit_read
from services.api.auth import Principal, Scope, require
from services.api.deps import JokkoDep, ProducerDep, SessionDep, require_json
from services.api.problems import (
    PROBLEM_JSON,
    PROBLEM_RESPONSES,
    FieldProblem,
    field_problems,
    problem_responses,
)
from services.api.submissions import ConflictingEvent, Screening

router = APIRouter(prefix="/v1/events", tags=["events"], responses=PROBLEM_RESPONSES)
JSON_ONLY = [Depends(require_json)]

MAX_BATCH = 1000

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Retry-safe submission: the same key and body get the same answer.",
    ),
]
EVENT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "https://jokko.sn/schemas/v1/event.json"},
            }
        },
    }
}


class Accepted(BaseModel):
    event_id: str
    event_type: str
    status: Literal["accepted"] = "accepted"
    partition: int
    offset: int


class ItemResult(BaseModel):
    index: int
    status: Literal["accepted", "invalid", "conflict"]
    event_id: str | None = None
    errors: list[FieldProblem] | None = None


class BatchResult(BaseModel):
    accepted: int
    invalid: int
    conflicts: int = 0
    items: list[ItemResult]


CONFLICT_PROBLEM = FieldProblem(
    loc="event_id",
    code="conflicting_duplicate",
    msg="already submitted with other content; the first one stands",
)


class TrailStep(BaseModel):
    stage: str
    at: datetime
    institution: str | None = None
    message_id: str | None = None
    detail: str | None = None


class EventStatus(BaseModel):
    event_id: str
    event_type: str
    member_id: str
    recorded_at: datetime
    received_at: datetime
    destinations: list[str]
    trail: list[TrailStep]


def _publish(jokko: JokkoDep, producer: ProducerDep, events: list[CanonicalEvent]) -> list[Any]:
    """On the canonical topic within ``api_broker_timeout_s``, or ``BrokerUnavailable`` (503)."""
    timeout_s = jokko.settings.api_broker_timeout_s
    return publish_events(
        producer, jokko.topics.canonical, events, vault=jokko.vault, timeout_s=timeout_s
    )


@dataclass(frozen=True)
class Submission:
    """The events a request publishes, and its answer once they are on the topic."""

    events: list[CanonicalEvent]
    answer: Callable[[list[Published]], tuple[int, dict[str, Any]]]
    accepted: Callable[[], None]
    """Counts the accepted events (in the metrics) once they are."""
    remember: Callable[[], None] = lambda: None
    """Keeps the published events' digests (``Screening.remember``), when the request itself
    saw them on the topic (not from the producer's thread, for an outcome known later)."""


def _idempotent(
    request_body: bytes,
    key: str | None,
    principal: Principal,
    jokko: JokkoDep,
    producer: ProducerDep,
    outcomes: idempotency.Outcomes,
    submission: Submission,
) -> Response:
    """Publish and answer; with a key, claim it first and record the answer, or replay the
    stored one (see ``services.api.idempotency`` for what an unknown outcome leaves)."""
    if key is None:
        published = _publish(jokko, producer, submission.events) if submission.events else []
        submission.accepted()
        submission.remember()
        status, payload = submission.answer(published)
        return JSONResponse(payload, status_code=status)
    client = principal.client_id
    digest = idempotency.body_hash(request_body)
    takeover_after_s = jokko.settings.api_broker_delivery_timeout_s + idempotency.TAKEOVER_MARGIN_S
    # One connection for the claim and the answer: one pool check-out (and pre-ping) less.
    with jokko.engine.connect() as conn:
        claimed = idempotency.claim(
            conn,
            client,
            key,
            digest,
            [str(e.event_id) for e in submission.events],
            takeover_after_s=takeover_after_s,
        )
        if isinstance(claimed, idempotency.StoredAnswer):
            return _stored(claimed, replayed=True)

        def answer(published: list[Published] | None) -> idempotency.StoredAnswer | None:
            if published is None:
                return None
            status, payload = submission.answer(published)
            return idempotency.StoredAnswer(status, json.dumps(payload).encode())

        def settled(published: list[Published] | None) -> None:  # the producer's I/O thread
            if published is not None:
                submission.accepted()
            outcomes.record(client, key, claimed, answer(published))

        def record(outcome: idempotency.StoredAnswer | None) -> idempotency.StoredAnswer | None:
            try:
                return idempotency.apply(conn, client, key, claimed, outcome)
            except SQLAlchemyError:  # the database went away meanwhile: record it later
                outcomes.record(client, key, claimed, outcome)
                return outcome

        try:
            published = _publish(jokko, producer, submission.events) if submission.events else []
        except OutcomeUnknown as exc:
            exc.in_flight.on_settled(settled)  # the key stays pending until then
            raise
        except BrokerUnavailable:
            record(None)  # nothing was stored: the re-send publishes afresh
            raise
        submission.accepted()
        submission.remember()
        stored = record(answer(published))
    assert stored is not None
    return _stored(stored, replayed=False)


def _stored(answer: idempotency.StoredAnswer, *, replayed: bool) -> Response:
    return Response(
        answer.body,
        status_code=answer.status_code,
        media_type="application/json",
        headers={"Idempotent-Replayed": "true" if replayed else "false"},
    )


@router.post(
    "",
    status_code=202,
    response_model=Accepted,
    openapi_extra=EVENT_BODY,
    summary="Submit one canonical event",
    description=(
        "409 when the event id is already known (submitted or routed) with other content: "
        "the first content stands; a correction is a new event with an id of its own."
    ),
    responses=problem_responses(400, 409, 415, 503),
    dependencies=JSON_ONLY,
)
async def submit_event(
    request: Request,
    jokko: JokkoDep,
    producer: ProducerDep,
    principal: Annotated[Principal, require(Scope.EVENTS_SUBMIT)],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    body = await request.body()
    if idempotency_key is not None:
        idempotency.check_key(idempotency_key)
    events_in = request.app.state.metrics.events_in

    def submit() -> Response:
        try:
            event = parse_event(body)  # InvalidEvent → 422 with the fields
        except InvalidEvent:
            events_in.labels("invalid").inc()
            raise
        screening = Screening([event])
        screening.check(jokko.engine, required=idempotency_key is not None)
        if screening.conflicts:
            events_in.labels("conflict").inc()
            raise ConflictingEvent(str(event.event_id))

        def answer(published: list[Published]) -> tuple[int, dict[str, Any]]:
            [where] = published
            return 202, Accepted(
                event_id=str(event.event_id),
                event_type=event.event_type,
                partition=where.partition,
                offset=where.offset,
            ).model_dump()

        accepted = events_in.labels("accepted").inc
        return _idempotent(
            body,
            idempotency_key,
            principal,
            jokko,
            producer,
            request.app.state.outcomes,
            Submission([event], answer, accepted, lambda: screening.remember(jokko.engine)),
        )

    # Async only to read the body; validation, the acks=all wait and the idempotency rows
    # block, so they run in the threadpool and never stall the event loop.
    return await run_in_threadpool(submit)


@router.post(
    "/batch",
    status_code=202,
    response_model=BatchResult,
    summary="Submit up to 1,000 events; each item gets its own result",
    description=(
        "202 when at least one item was accepted; otherwise 409 when some item's event id is "
        "already known with other content (`conflict`), else 422."
    ),
    dependencies=JSON_ONLY,
    responses={
        **problem_responses(400, 415, 503),
        409: {
            "description": "No item was accepted, some conflict: the per-item results "
            "(or a problem, for a reused Idempotency-Key)",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/BatchResult"}},
                PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}},
            },
        },
        422: {
            "description": "No item was accepted: the per-item results (or a problem)",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/BatchResult"}},
                PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}},
            },
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "maxItems": MAX_BATCH,
                        "items": {"$ref": "https://jokko.sn/schemas/v1/event.json"},
                    }
                }
            },
        }
    },
)
async def submit_batch(
    request: Request,
    jokko: JokkoDep,
    producer: ProducerDep,
    principal: Annotated[Principal, require(Scope.EVENTS_SUBMIT)],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    body = await request.body()
    return await run_in_threadpool(
        _submit_batch, body, request, jokko, producer, principal, idempotency_key
    )


def _submit_batch(
    body: bytes,
    request: Request,
    jokko: JokkoDep,
    producer: ProducerDep,
    principal: Principal,
    idempotency_key: str | None,
) -> Response:
    """The blocking part of a batch (parsing up to 1,000 events, Kafka, idempotency rows)."""
    try:
        items = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "the body is not JSON") from None
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise HTTPException(400, f"the body must be a JSON array of 1 to {MAX_BATCH} events")
    if idempotency_key is not None:
        idempotency.check_key(idempotency_key)
    events_in = request.app.state.metrics.events_in
    results: list[ItemResult] = []
    valid: list[tuple[int, CanonicalEvent]] = []
    for i, item in enumerate(items):
        try:
            valid.append((i, parse_event(item)))
        except InvalidEvent as exc:
            results.append(
                ItemResult(index=i, status="invalid", errors=field_problems(exc.errors, ""))
            )
    screening = Screening([e for _, e in valid])
    if valid:
        screening.check(jokko.engine, required=idempotency_key is not None)
    for n, (i, event) in enumerate(valid):
        conflict = n in screening.conflicts
        results.append(
            ItemResult(
                index=i,
                status="conflict" if conflict else "accepted",
                event_id=str(event.event_id),
                errors=[CONFLICT_PROBLEM] if conflict else None,
            )
        )
    results.sort(key=lambda r: r.index)
    good = screening.accepted
    if len(items) > len(valid):
        events_in.labels("invalid").inc(len(items) - len(valid))
    if screening.conflicts:
        events_in.labels("conflict").inc(len(screening.conflicts))
    result = BatchResult(
        accepted=len(good),
        invalid=len(items) - len(valid),
        conflicts=len(screening.conflicts),
        items=results,
    )
    status = 202 if good else 409 if screening.conflicts else 422

    def answer(_published: list[Published]) -> tuple[int, dict[str, Any]]:
        return status, result.model_dump(exclude_none=True)

    def accepted() -> None:
        if good:
            events_in.labels("accepted").inc(len(good))

    def remember() -> None:
        if good:
            screening.remember(jokko.engine)

    return _idempotent(
        body,
        idempotency_key,
        principal,
        jokko,
        producer,
        request.app.state.outcomes,
        Submission(good, answer, accepted, remember),
    )


@router.get(
    "/{event_id}",
    response_model=EventStatus,
    summary="An event's status trail",
    responses=problem_responses(404),
)
def event_status(
    event_id: Annotated[str, Path(max_length=36, pattern=pagination.NO_NUL)],
    request: Request,
    session: SessionDep,
    principal: Annotated[Principal, require(Scope.EVENTS_READ)],
) -> EventStatus:
    inbox = session.get(InboxRow, event_id)
    if inbox is None:
        raise HTTPException(404, "no event with this id has been routed (yet)")
    steps = session.scalars(
        select(TrailRow).where(TrailRow.event_id == event_id).order_by(TrailRow.id)
    ).all()
    status = EventStatus(
        event_id=inbox.event_id,
        event_type=inbox.event_type,
        member_id=inbox.member_id,
        recorded_at=inbox.recorded_at,
        received_at=inbox.received_at,
        destinations=[d for d in inbox.destinations.split(",") if d],
        trail=[
            TrailStep(
                stage=t.stage,
                at=t.at,
                institution=t.institution,
                message_id=t.message_id,
                detail=t.detail,
            )
            for t in steps
            if t.institution is None or principal.may_see(t.institution)
        ],
    )
    audit_read(session, request, principal, "read.event", [status.member_id])
    return status
