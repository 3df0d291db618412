"""Reconciliation runs over the API: start one on files already in the reconciliation folder
(``JOKKO_RECONCILE_DIR``, default ``.jokko/reconcile``: extracts are large and arrive by file
transfer, not in a request body), follow its state, read its report as JSON, CSV or HTML, and
re-drive its missing records. Every run and re-drive is audited with the caller."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, BackgroundTasks, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from router.store import ReconciliationRunRow
from services.api.deps import JokkoDep, SessionDep
from services.api.pagination import MAX_ID
from services.api.problems import PROBLEM_RESPONSES, problem_responses
from services.api.security import Principal, Scope, require
from services.reconcile_cli import run_dict
from services.reconcile_report import to_csv, to_html, to_json
from services.reconcile_runs import create_run, execute_run, items, redrive

router = APIRouter(
    prefix="/v1/reconciliations", tags=["reconciliation"], responses=PROBLEM_RESPONSES
)

Operator = Annotated[Principal, require(Scope.RECONCILE)]
RunId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


def reconcile_dir() -> Path:
    return Path(os.environ.get("JOKKO_RECONCILE_DIR", ".jokko/reconcile")).resolve()


class RunRequest(BaseModel):
    ledger: FileName = Field(description="MSNAS ledger CSV in the reconciliation folder.")
    cmu: FileName | None = None
    css: FileName | None = None
    ipres: FileName | None = None


class Run(BaseModel):
    id: int
    state: str
    actor: str
    institutions: list[str]
    started_at: str
    finished_at: str | None
    error: str | None
    summary: dict[str, object] | None


class RedriveRequest(BaseModel):
    item_ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(
        default=None, max_length=10_000, description="Discrepancy ids; all missing ones if absent."
    )


class RedriveResult(BaseModel):
    outcomes: dict[int, str]


def _file(name: str) -> Path:
    path = reconcile_dir() / name
    if not path.is_file():
        raise HTTPException(422, f"no file {name} in the reconciliation folder")
    return path


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
    ledger = _file(body.ledger)
    extracts = {
        i: _file(n) for i, n in (("cmu", body.cmu), ("css", body.css), ("ipres", body.ipres)) if n
    }
    if not extracts:
        raise HTTPException(422, "give at least one institution's extract")
    run_id = create_run(jokko.engine, operator.client_id, ledger, extracts)

    def work() -> None:
        with contextlib.suppress(Exception):  # the run row says "failed" and why
            execute_run(jokko.engine, run_id, ledger, extracts)

    tasks.add_task(work)
    return _public(_run(session, run_id))


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
    session: SessionDep,
    _operator: Operator,
    format: Annotated[Literal["json", "csv", "html"], Query()] = "json",
) -> Response:
    """The run's report: JSON (summary + discrepancies), CSV (one row each), or an HTML page."""
    run = _run(session, run_id)
    if run.state != "done":
        raise HTTPException(409, f"run is {run.state}")
    meta = {k: v for k, v in run_dict(run).items() if k != "sources"}
    rows = items(session, run_id)
    if format == "csv":
        return PlainTextResponse(to_csv(rows), media_type="text/csv")
    if format == "html":
        return HTMLResponse(to_html(meta, rows))
    return Response(to_json(meta, rows), media_type="application/json")


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
