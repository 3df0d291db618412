"""The console's pages: login, the flow per institution, deliveries, events and their trails,
dead letters with replay and discard, reconciliation runs and their reports. Each calls the
API's own route function with the operator as its principal."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from adapters.base import Institution
from router.acks import refused_receipt_counts
from router.store import DeadLetterRow, DeliveryState, InboxRow, OutboxRow
from services.api import pagination, problems
from services.api.access import audit_read
from services.api.auth import AuthError, AuthorityDep, Principal, Scope, rate_limit
from services.api.console import pages
from services.api.console.login import (
    COOKIE,
    PREFIX,
    Form,
    LoginRequired,
    Operator,
    OperatorDep,
    Refused,
    checked,
    need,
)
from services.api.console.pages import REPORT_HEADERS, failed, render, safe_next, see_other
from services.api.deps import JokkoDep, SessionDep
from services.api.routes import dead_letters, deliveries, events, reconcile

_MEMBER_EVENTS = 200
"""Events listed for one member, newest first: a member has a few dozen a year."""
_OUTCOME = re.compile(r"^[a-z_]{1,32}$")


router = APIRouter(prefix=PREFIX, include_in_schema=False)


# --- login ------------------------------------------------------------------------------------


@router.get("/login")
def login_page(
    request: Request,
    next: Annotated[str | None, Query(max_length=512)] = None,
    expired: bool = False,
) -> Response:
    return render(request, "login.html", None, next=safe_next(next), expired=expired)


@router.post("/login")
async def login(request: Request, form: Form, authority: AuthorityDep) -> Response:
    client_id, secret = form.get("client_id", "").strip(), form.get("client_secret", "")
    target = safe_next(form.get("next"))

    async def refused(message: str, status: int = 401) -> Response:
        return await run_in_threadpool(
            lambda: render(
                request,
                "login.html",
                None,
                status,
                next=target,
                error=message,
                client_id=client_id,
            )
        )

    if not client_id or not secret:
        return await refused("Give the operator client's id and secret.", 400)
    rate_limit(request, f"token:{client_id[:64]}")
    try:
        answer = await run_in_threadpool(authority.issue_token, client_id, secret)
        who = await run_in_threadpool(authority.verify, answer.access_token)
    except AuthError:
        return await refused("Client authentication failed.")
    if who.institution is not None:
        return await refused("This is an institution's client, not an operator's.", 403)
    await run_in_threadpool(authority.audit, who.client_id, "console.login")
    response = see_other(target)
    response.set_cookie(
        COOKIE,
        answer.access_token,
        max_age=answer.expires_in,
        path=PREFIX,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/logout")
def logout(op: OperatorDep, form: Form, authority: AuthorityDep) -> Response:
    checked(op, form)
    authority.audit(op.principal.client_id, "console.logout")
    response = see_other(f"{PREFIX}/login")
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
    return response


# --- flow -------------------------------------------------------------------------------------


@router.get("/")
def flow(request: Request, session: SessionDep, op: OperatorDep) -> Response:
    """Deliveries by institution and state: the store's truth, as the metrics gauges count it."""
    need(op, Scope.DELIVERIES_READ)
    counts: Counter[tuple[str, str]] = Counter()
    for inst, state, n in session.execute(
        select(OutboxRow.institution, OutboxRow.state, func.count()).group_by(
            OutboxRow.institution, OutboxRow.state
        )
    ):
        counts[(inst, state)] = n
    open_dead = session.scalar(
        select(func.count())
        .select_from(DeadLetterRow)
        .where(DeadLetterRow.replayed_at.is_(None), DeadLetterRow.discarded_at.is_(None))
    )
    # security events: institutions' answers whose signature was refused (never applied)
    refused_receipts: Counter[str] = Counter()
    for (inst, _reason), n in refused_receipt_counts(session).items():
        refused_receipts[inst] += n
    rows = [
        {
            "institution": i.value,
            "refused_receipts": refused_receipts.get(i.value, 0),
            "counts": {s.value: counts[(i.value, s.value)] for s in DeliveryState},
            "total": sum(counts[(i.value, s.value)] for s in DeliveryState),
        }
        for i in Institution
    ]
    return render(
        request, "flow.html", op, rows=rows, states=list(DeliveryState), open_dead=open_dead or 0
    )


@router.get("/deliveries")
def delivery_list(
    request: Request,
    session: SessionDep,
    op: OperatorDep,
    institution: Institution | None = None,
    state: DeliveryState | None = None,
    member_id: Annotated[str | None, Query(max_length=64, pattern=pagination.NO_NUL)] = None,
    cursor: pagination.Cursor = None,
) -> Response:
    who = need(op, Scope.DELIVERIES_READ)
    page = deliveries.list_deliveries(
        request,
        session,
        who,
        institution=institution,
        state=state,
        member_id=member_id or None,
        cursor=cursor,
        limit=100,
    )
    return render(
        request,
        "deliveries.html",
        op,
        page=page,
        institution=institution,
        state=state,
        member_id=member_id or "",
    )


# --- events -----------------------------------------------------------------------------------


@router.get("/events")
def event_search(
    request: Request,
    session: SessionDep,
    op: OperatorDep,
    q: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    """An event id opens its trail; anything else is a member id, listing the member's events."""
    need(op, Scope.EVENTS_READ)
    q = q.strip()
    if not q:
        return render(request, "events.html", op, q="", found=None)
    if "\x00" in q:
        return render(request, "events.html", op, 400, q="", found=None, error="Not an id.")
    try:
        uuid.UUID(q)
    except ValueError:
        pass
    else:
        if session.get(InboxRow, q) is not None:
            return see_other(f"{PREFIX}/events/{quote(q)}")
    found = [
        _MemberEvent(e.event_id, e.event_type, e.recorded_at, e.received_at, e.destinations)
        for e in session.scalars(
            select(InboxRow)
            .where(InboxRow.member_id == q)
            .order_by(InboxRow.received_at.desc(), InboxRow.event_id)
            .limit(_MEMBER_EVENTS)
        )
    ]
    if found:  # q is then a member id, not whatever was typed
        audit_read(session, request, op.principal, "read.member_events", [q])
    return render(request, "events.html", op, q=q, found=found, limit=_MEMBER_EVENTS)


@dataclass(frozen=True)
class _MemberEvent:
    """What the member's events page shows, held past the audit's commit (which expires rows)."""

    event_id: str
    event_type: str
    recorded_at: datetime
    received_at: datetime
    destinations: str


@router.get("/events/{event_id}")
def event_page(
    request: Request,
    event_id: Annotated[str, Path(max_length=36, pattern=pagination.NO_NUL)],
    session: SessionDep,
    op: OperatorDep,
) -> Response:
    who = need(op, Scope.EVENTS_READ)
    try:
        status = events.event_status(event_id, request, session, who)
    except HTTPException as exc:
        return failed(request, op, exc)
    rows = session.scalars(
        select(OutboxRow).where(OutboxRow.event_id == event_id).order_by(OutboxRow.id)
    ).all()
    held = [deliveries.Delivery.of(r) for r in rows if who.may_see(r.institution)]
    return render(request, "event.html", op, event=status, deliveries=held)


# --- dead letters -----------------------------------------------------------------------------


@router.get("/dead-letters")
def dead_letter_list(
    request: Request,
    session: SessionDep,
    op: OperatorDep,
    show: Literal["open", "all"] = "open",
    cursor: pagination.Cursor = None,
    done: Annotated[int | None, Query(ge=1, le=pagination.MAX_ID)] = None,
    outcome: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    who = need(op, Scope.DEAD_LETTERS)
    return _dead_letters(request, session, op, who, show, cursor, done, outcome)


def _dead_letters(
    request: Request,
    session: Session,
    op: Operator,
    who: Principal,
    show: str,
    cursor: str | None,
    done: int | None = None,
    outcome: str | None = None,
    status_code: int = 200,
    error: str | None = None,
) -> Response:
    try:
        page = dead_letters.list_dead_letters(
            session, who, open_only=show == "open", cursor=cursor, limit=100
        )
    except HTTPException as exc:
        return failed(request, op, exc)
    notice = None
    if done is not None and outcome is not None and _OUTCOME.match(outcome):
        notice = f"Dead letter {done}: {outcome.replace('_', ' ')}."
    return render(
        request,
        "dead_letters.html",
        op,
        status_code,
        page=page,
        show=show,
        notice=notice,
        error=error,
    )


@router.post("/dead-letters/{dead_letter_id}/replay")
def replay(
    dead_letter_id: dead_letters.DeadLetterId,
    request: Request,
    form: Form,
    session: SessionDep,
    jokko: JokkoDep,
    op: OperatorDep,
) -> Response:
    """The API's replay (audited there): a dead delivery gets a fresh retry budget."""
    checked(op, form)
    who = need(op, Scope.DEAD_LETTERS)
    try:
        result = dead_letters.replay_dead_letter(dead_letter_id, session, jokko, who)
    except HTTPException as exc:
        return failed(request, op, exc)
    return see_other(f"{PREFIX}/dead-letters?done={result.id}&outcome={result.outcome}")


@router.post("/dead-letters/{dead_letter_id}/discard")
def discard(
    dead_letter_id: dead_letters.DeadLetterId,
    request: Request,
    form: Form,
    session: SessionDep,
    jokko: JokkoDep,
    op: OperatorDep,
) -> Response:
    """The API's discard (audited there, with the reason)."""
    checked(op, form)
    who = need(op, Scope.DEAD_LETTERS)
    try:
        body = dead_letters.Discard(reason=form.get("reason", "").strip())
    except ValidationError:
        return _dead_letters(
            request,
            session,
            op,
            who,
            "open",
            None,
            status_code=422,
            error=f"Dead letter {dead_letter_id}: a reason of 3 to 500 characters is needed.",
        )
    try:
        dead_letters.discard_dead_letter(dead_letter_id, body, session, jokko, who)
    except HTTPException as exc:
        return failed(request, op, exc)
    return see_other(f"{PREFIX}/dead-letters?done={dead_letter_id}&outcome=discarded")


# --- reconciliation ---------------------------------------------------------------------------


@router.get("/reconciliations")
def run_list(
    request: Request, session: SessionDep, op: OperatorDep, cursor: pagination.Cursor = None
) -> Response:
    who = need(op, Scope.RECONCILE)
    try:
        page = reconcile.list_runs(session, who, cursor=cursor, limit=50)
    except HTTPException as exc:
        return failed(request, op, exc)
    return render(request, "runs.html", op, page=page)


@router.get("/reconciliations/{run_id}")
def run_page(
    request: Request, run_id: reconcile.RunId, session: SessionDep, op: OperatorDep
) -> Response:
    who = need(op, Scope.RECONCILE)
    try:
        run = reconcile.get_run(run_id, session, who)
    except HTTPException as exc:
        return failed(request, op, exc)
    return render(request, "run.html", op, run=run)


@router.get("/reconciliations/{run_id}/report")
def run_report(
    request: Request,
    run_id: reconcile.RunId,
    session: SessionDep,
    op: OperatorDep,
    format: Literal["json", "csv", "html"] = "html",
) -> Response:
    """The API's report as it is (``reconcile_report.to_html`` draws the chart), framed by the
    run page; CSV and JSON download under the run's number."""
    who = need(op, Scope.RECONCILE)
    try:
        report = reconcile.get_report(run_id, request, session, who, format=format)
    except HTTPException as exc:
        return failed(request, op, exc)
    report.headers.update(REPORT_HEADERS)
    if format != "html":
        report.headers["Content-Disposition"] = (
            f'attachment; filename="reconciliation-{run_id}.{format}"'
        )
    return report


def install(app: FastAPI) -> None:
    """Mount the console on ``app``: its pages and the answers its dependencies raise."""
    app.include_router(router)
    app.add_exception_handler(LoginRequired, pages.login_required)
    app.add_exception_handler(Refused, pages.refused)
    for dependency_error in problems.UNAVAILABLE:
        app.add_exception_handler(dependency_error, pages.unavailable)
