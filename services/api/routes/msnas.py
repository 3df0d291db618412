"""The mutual's own formats in: the mobile agents' webhook and CSV bulk exports.

Good records become canonical events on the topic; bad ones come back as a row-level report
(row, field, reason — never the value). A bad record never costs the good ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from adapters.msnas import CSV_KINDS, parse_csv, parse_webhook
from adapters.msnas.report import ImportReport
from services.api.deps import JokkoDep, ProducerDep
from services.api.problems import PROBLEM_RESPONSES, problem_responses
from services.api.routes.events import _publish
from services.api.security import Principal, Scope, require

router = APIRouter(prefix="/v1/msnas", tags=["msnas"], responses=PROBLEM_RESPONSES)


class RowProblem(BaseModel):
    row: int
    field: str
    code: str
    msg: str


class ImportResult(BaseModel):
    accepted: int
    rejected_rows: int
    event_ids: list[str]
    errors: list[RowProblem]


def _submit(
    request: Request, parse: Callable[[], ImportReport], jokko: JokkoDep, producer: ProducerDep
) -> ImportResult:
    """Parse and publish; blocking (CPU, then the acks=all wait), so run in the threadpool."""
    report = parse()
    if report.events:
        _publish(jokko, producer, list(report.events))
        request.app.state.metrics.events_in.labels("accepted").inc(len(report.events))
    return ImportResult(
        accepted=len(report.events),
        rejected_rows=len({e.row for e in report.errors}),
        event_ids=[str(e.event_id) for e in report.events],
        errors=[
            RowProblem(row=e.row, field=e.field, code=e.type, msg=e.message) for e in report.errors
        ],
    )


@router.post(
    "/webhook",
    response_model=ImportResult,
    status_code=202,
    summary="Records from the mobile agents (one object or a list)",
    responses=problem_responses(503),
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}
    },
)
async def webhook(
    request: Request,
    jokko: JokkoDep,
    producer: ProducerDep,
    _mutual: Annotated[Principal, require(Scope.EVENTS_SUBMIT)],
) -> ImportResult:
    body = await request.body()
    return await run_in_threadpool(_submit, request, lambda: parse_webhook(body), jokko, producer)


@router.post(
    "/csv/{kind}",
    response_model=ImportResult,
    status_code=202,
    summary="A CSV export (see adapters/msnas/FORMAT.md for the kinds and columns)",
    responses=problem_responses(404, 503),
    openapi_extra={
        "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}
    },
)
async def csv_upload(
    kind: str,
    request: Request,
    jokko: JokkoDep,
    producer: ProducerDep,
    _mutual: Annotated[Principal, require(Scope.EVENTS_SUBMIT)],
) -> ImportResult:
    if kind not in CSV_KINDS:
        raise HTTPException(404, f"unknown export kind; known: {', '.join(sorted(CSV_KINDS))}")
    body = await request.body()
    return await run_in_threadpool(_submit, request, lambda: parse_csv(body, kind), jokko, producer)
