"""Reconciliation runs over the API: start one on files already in the reconciliation folder
(``JOKKO_RECONCILE_DIR``, default ``.jokko/reconcile``: extracts are large and arrive by file
transfer, not in a request body), scoped to institutions and months (a scheduler can post
``{"institutions": ["css"], "period": "previous"}`` every month unchanged), list and follow
runs, read a report as JSON, CSV or HTML, and re-drive its missing records. Every run and
re-drive is audited with the caller."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, BackgroundTasks, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from router.store import ReconciliationRunRow
from services.api import pagination
from services.api.access import audit_read
from services.api.auth import Principal, Scope, require
from services.api.deps import JokkoDep, SessionDep
from services.api.pagination import MAX_ID
from services.api.problems import PROBLEM_RESPONSES, problem_responses
from services.reconcile import PERIOD_HELP, parse_period
from services.reconcile import Scope as RunScope
from services.reconcile_cli import SourceError, resolve_sources, run_dict
from services.reconcile_report import to_csv, to_html, to_json
from services.reconcile_runs import (
    LEDGER_NAME,
    create_run,
    execute_run,
    items,
    reconcile_dir,
    redrive,
)

router = APIRouter(
    prefix="/v1/reconciliations", tags=["reconciliation"], responses=PROBLEM_RESPONSES
)

Operator = Annotated[Principal, require(Scope.RECONCILE)]
RunId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
InstitutionName = Literal["cmu", "css", "ipres"]
State = Literal["running", "done", "failed"]


class RunRequest(BaseModel):
    ledger: FileName = Field(
        default=LEDGER_NAME, description="MSNAS ledger CSV in the reconciliation folder."
    )
    cmu: FileName | None = None
    css: FileName | None = None
    ipres: FileName | None = None
    institutions: list[InstitutionName] | None = Field(
        default=None,
        min_length=1,
        max_length=3,
        description="Only these institutions; each reads the file named for it, else its usual "
        "one (cmu.ndjson, css.csv, ipres.txt). Absent: the files named, else every usual file "
        "in the folder.",
    )
    period: str | None = Field(
        default=None,
        pattern=r"^(previous|[0-9]{4}-[0-9]{2}(\.\.[0-9]{4}-[0-9]{2})?)$",
        description=f"Months to report on: {PERIOD_HELP}, resolved when the run starts. "
        "Absent: every month.",
    )


class Run(BaseModel):
    id: int
    state: str
    actor: str
    institutions: list[str]
    period_from: str | None = Field(description="First month reported on; null: every month.")
    period_to: str | None
    started_at: str
    finished_at: str | None
    error: str | None
    summary: dict[str, object] | None


class RunListItem(BaseModel):
    id: int
    state: str
    actor: str
    institutions: list[str]
    period_from: str | None
    period_to: str | None
    started_at: str
    finished_at: str | None
    discrepancies: int | None = Field(description="Total found; null until the run is done.")


class RedriveRequest(BaseModel):
    item_ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(
        default=None, max_length=10_000, description="Discrepancy ids; all missing ones if absent."
    )


class RedriveResult(BaseModel):
    outcomes: dict[int, str]


def _run(session: Session, run_id: int) -> ReconciliationRunRow:
    run = session.get(ReconciliationRunRow, run_id)
    if run is None:
        raise HTTPException(404, "no such reconciliation run")
    return run


def _public(run: ReconciliationRunRow) -> Run:
    d = run_dict(run)
    d.pop("sources")
    return Run.model_validate(d)


@router.post("", status_code=202, response_model=Run, responses=problem_responses(422))
def start_run(
    body: RunRequest,
    jokko: JokkoDep,
    session: SessionDep,
    operator: Operator,
    tasks: BackgroundTasks,
) -> Run:
    """Starts a run in the background; poll ``GET /v1/reconciliations/{id}`` until ``done``."""
    folder = reconcile_dir()
    named = {i: folder / n if n else None for i, n in (("cmu", body.cmu), ("css", body.css),
                                                       ("ipres", body.ipres))}  # fmt: skip
    try:
        scope = (
            RunScope(*parse_period(body.period, datetime.now(UTC).date()))
            if body.period
            else RunScope()
        )
        ledger, extracts = resolve_sources(
            folder, folder / body.ledger, named, list(body.institutions or [])
        )
    except SourceError as exc:
        name = exc.path.name if exc.path else ""
        raise HTTPException(
            422, f"no file {name} in the reconciliation folder" if name else str(exc)
        ) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    run_id = create_run(jokko.engine, operator.client_id, ledger, extracts, scope)

    def work() -> None:
        with contextlib.suppress(Exception):  # the run row says "failed" and why
            execute_run(jokko.engine, run_id, ledger, extracts)

    tasks.add_task(work)
    return _public(_run(session, run_id))


@router.get("", response_model=pagination.Page[RunListItem], responses=problem_responses(400))
def list_runs(
    session: SessionDep,
    _operator: Operator,
    institution: Annotated[InstitutionName | None, Query()] = None,
    state: Annotated[State | None, Query()] = None,
    cursor: pagination.Cursor = None,
    limit: pagination.Limit = 100,
) -> pagination.Page[RunListItem]:
    """Runs kept, newest first (a scheduled run of last month is on the first page)."""
    query = select(ReconciliationRunRow)
    before = pagination.decode(cursor)
    if before:
        query = query.where(ReconciliationRunRow.id < before)
    if state is not None:
        query = query.where(ReconciliationRunRow.state == state)
    if institution is not None:  # institutions is a comma list such as "cmu,ipres"
        query = query.where(
            ("," + ReconciliationRunRow.institutions + ",").like(f"%,{institution},%")
        )
    rows = session.scalars(query.order_by(ReconciliationRunRow.id.desc()).limit(limit + 1)).all()
    page = rows[:limit]
    return pagination.Page[RunListItem](
        items=[_listed(r) for r in page],
        next_cursor=pagination.encode(page[-1].id) if len(rows) > limit else None,
    )


def _listed(run: ReconciliationRunRow) -> RunListItem:
    d = run_dict(run)
    summary = d.pop("summary")
    d.pop("sources")
    d.pop("error")
    return RunListItem.model_validate({**d, "discrepancies": summary["total"] if summary else None})


@router.get("/{run_id}", response_model=Run, responses=problem_responses(404))
def get_run(run_id: RunId, session: SessionDep, _operator: Operator) -> Run:
    return _public(_run(session, run_id))


@router.get(
    "/{run_id}/report",
    responses={
        **problem_responses(404, 409),
        200: {"content": {"application/json": {}, "text/csv": {}, "text/html": {}}},
    },
)
def get_report(
    run_id: RunId,
    request: Request,
    session: SessionDep,
    operator: Operator,
    format: Annotated[Literal["json", "csv", "html"], Query()] = "json",
) -> Response:
    """The run's report: JSON (summary + discrepancies), CSV (one row each), or an HTML page."""
    run = _run(session, run_id)
    if run.state != "done":
        raise HTTPException(409, f"run is {run.state}")
    meta = {k: v for k, v in run_dict(run).items() if k != "sources"}
    rows = items(session, run_id)
    if format == "csv":
        report: Response = PlainTextResponse(to_csv(rows), media_type="text/csv")
    elif format == "html":
        report = HTMLResponse(to_html(meta, rows))
    else:
        report = Response(to_json(meta, rows), media_type="application/json")
    # A done run's discrepancies never change, so the run id names the members shown; a
    # report may list 100,000 of them, which the audit row does not copy.
    audit_read(
        session,
        request,
        operator,
        "read.reconciliation_report",
        detail=f"run {run_id}: {len(rows)} discrepancies, {format}",
    )
    return report


@router.post(
    "/{run_id}/redrive", response_model=RedriveResult, responses=problem_responses(404, 409)
)
def redrive_run(
    run_id: RunId, body: RedriveRequest, jokko: JokkoDep, session: SessionDep, operator: Operator
) -> RedriveResult:
    """Re-sends missing records through the router, once each (see ``services.reconcile_runs``)."""
    if _run(session, run_id).state != "done":
        raise HTTPException(409, "run is not done")
    return RedriveResult(outcomes=redrive(jokko.engine, run_id, body.item_ids, operator.client_id))
