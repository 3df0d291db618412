"""The mutual's own formats in: the mobile agents' webhook and CSV bulk exports.

Good records become canonical events on the topic; bad ones come back as a row-level report
(row, field, reason — never the value). A bad record never costs the good ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from adapters.msnas import CSV_KINDS, parse_csv, parse_webhook
from adapters.msnas.report import ImportReport
from services.api.auth import Principal, Scope, require
from services.api.deps import JokkoDep, ProducerDep, require_json
from services.api.problems import PROBLEM_RESPONSES, problem_responses
from services.api.routes.events import CONFLICT_PROBLEM, _publish
from services.api.submissions import Screening

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
    """Parse and publish; blocking (CPU, then the acks=all wait), so run in the threadpool.

    A record whose id_fiche was already sent with other content is refused at its row: the
    mutual's correction is a new record (modification, annulation), never a rewrite."""
    report = parse()
    screening = Screening(report.events)
    if report.events:
        screening.check(jokko.engine)
    good = screening.accepted
    events_in = request.app.state.metrics.events_in
    if good:
        _publish(jokko, producer, good)
        screening.remember(jokko.engine)
        events_in.labels("accepted").inc(len(good))
    if screening.conflicts:
        events_in.labels("conflict").inc(len(screening.conflicts))
    errors = [
        RowProblem(row=e.row, field=e.field, code=e.type, msg=e.message) for e in report.errors
    ] + [
        RowProblem(
            row=report.rows[i],
            field="id_fiche",
            code=CONFLICT_PROBLEM.code,
            msg=CONFLICT_PROBLEM.msg,
        )
        for i in sorted(screening.conflicts)
    ]
    return ImportResult(
        accepted=len(good),
        rejected_rows=len({e.row for e in errors}),
        event_ids=[str(e.event_id) for e in good],
        errors=sorted(errors, key=lambda e: e.row),
    )


@router.post(
    "/webhook",
    response_model=ImportResult,
    status_code=202,
    summary="Records from the mobile agents (one object or a list)",
    responses=problem_responses(415, 503),
    dependencies=[Depends(require_json)],
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
