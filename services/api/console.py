"""The operator console: a few server-rendered pages over the API's own route functions.

Pages: the flow per institution (deliveries counted by state), an event's status trail found by
event id or member id, dead letters with replay and discard, reconciliation runs with their
report and chart (``services.reconcile_report``'s HTML, as the API serves it). Every read and
action calls the same function the API route does, with the operator as its principal, so the
console can neither see nor do more than the API, and replays, discards and reads of personal
data are audited by the same code (``services.api.access``; the member's events page, which
has no API twin, audits its own read). None of it is part of the API document
(``include_in_schema=False``).

Login: an operator client's id and secret get the OAuth2 client-credentials token the API
issues (``Authority.issue_token``), kept in an ``HttpOnly`` (no script can read it),
``SameSite=Strict``, ``Path=/console`` cookie that lives as long as the token; when it expires
the next page asks to log in again. Institutions' clients are refused: they are not operators.

CSRF, three layers, because ``SameSite`` alone is not enough here: a browser counts every port
of a host as the same *site*, and on an operator's machine or a deployment host other services
(the fake institutions, Prometheus, a partner's sandbox) share that host, so a page served by
any of them could post forms that carry a ``SameSite=Strict`` cookie. Hence:

* ``SameSite=Strict`` stops every cross-site request from carrying the session;
* every form carries a per-session token, a SHA-256 digest of the session's access token, which
  no other origin can compute because it cannot read the cookie; it is compared in constant time
  and needs no server-side state, so several API replicas agree on it;
* a POST whose ``Origin`` header is present and names another origin is refused outright (this
  also covers the login form, which has no session yet).
"""

from __future__ import annotations

import hashlib
import hmac
import pathlib
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, quote, urlsplit

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from adapters.base import Institution
from router.acks import refused_receipt_counts
from router.store import DeadLetterRow, DeliveryState, InboxRow, OutboxRow
from schemas.errors import JokkoError
from services.api import pagination, problems
from services.api.access import audit_read
from services.api.deps import JokkoDep, SessionDep
from services.api.routes import dead_letters, deliveries, events, reconcile
from services.api.routes.health import Readiness
from services.api.security import (
    AuthError,
    AuthorityDep,
    Principal,
    Scope,
    _rate_limit,
)

PREFIX = "/console"
COOKIE = "jokko_console"
_MAX_FORM_BYTES = 8192
_MEMBER_EVENTS = 200
"""Events listed for one member, newest first: a member has a few dozen a year."""
_OUTCOME = re.compile(r"^[a-z_]{1,32}$")

templates = Jinja2Templates(directory=pathlib.Path(__file__).parent / "templates")

_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    # Not "no-referrer": with it, browsers send "Origin: null" on form posts, which the
    # Origin check must refuse. "same-origin" still keeps ids out of other sites' logs.
    "Referrer-Policy": "same-origin",
    # No script at all; the report is framed from the console only.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}
_REPORT_HEADERS = {
    **_HEADERS,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'self'; base-uri 'none'",
}


@dataclass(frozen=True)
class Operator:
    """The logged-in operator of one console request."""

    principal: Principal
    csrf: str


class LoginRequired(JokkoError):
    """Answered by a redirect to the login page (and the stale cookie dropped)."""

    def __init__(self, next_path: str, *, expired: bool) -> None:
        super().__init__("log in to the console")
        self.next_path = next_path
        self.expired = expired


class Refused(JokkoError):
    """A console request refused before any work: rendered as an error page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def csrf_token(access_token: str) -> str:
    """The session's form token: only who can read the HttpOnly cookie can compute it."""
    return hashlib.sha256(b"jokko-console-csrf\x00" + access_token.encode()).hexdigest()


def _same_origin(request: Request) -> bool:
    """False only when the browser says the request comes from another origin."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return (parts.scheme, parts.netloc) == (request.url.scheme, request.headers.get("host", ""))


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form of at most 8 KiB; a cross-origin POST is refused before parsing."""
    if not _same_origin(request):
        raise Refused(403, "This form was posted from another site.")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise Refused(400, "Not a form.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise Refused(400, "The form is too large.")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "The form is malformed.") from None
    return dict(pairs)


Form = Annotated[dict[str, str], Depends(_form)]


def _operator(request: Request, authority: AuthorityDep) -> Operator:
    token = request.cookies.get(COOKIE)
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if not token:
        raise LoginRequired(path, expired=False)
    try:
        who = authority.verify(token)
    except AuthError:
        raise LoginRequired(path, expired=True) from None
    _rate_limit(request, who.client_id)
    return Operator(who, csrf_token(token))


OperatorDep = Annotated[Operator, Depends(_operator)]


def _need(op: Operator, *scopes: Scope) -> Principal:
    missing = [s.value for s in scopes if not op.principal.has(s)]
    if missing:
        raise Refused(403, f"This operator client lacks the scope {', '.join(missing)}.")
    return op.principal


def _checked(op: Operator, form: dict[str, str]) -> None:
    if not hmac.compare_digest(form.get("csrf", ""), op.csrf):
        raise Refused(403, "The form has expired or did not come from this console; reload it.")


OUTAGES = {
    "database": (
        "Base de données indisponible",
        "les pages et les soumissions sont refusées (503) jusqu'à son retour ; "
        "rien de ce qui a été accepté n'est perdu.",
    ),
    "kafka": (
        "Courtier Kafka indisponible",
        "les soumissions d'événements sont refusées (503) et l'acheminement attend son retour ; "
        "rien de ce qui a été accepté n'est perdu.",
    ),
}
"""The banner each page shows while a dependency is down (``Readiness``, as ``/readyz``)."""


def _page(
    request: Request,
    name: str,
    op: Operator | None,
    status_code: int = 200,
    *,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response:
    """A page, with a banner per dependency that is down. Blocking (a readiness check at most
    every few seconds): call it from a threadpool, never on the event loop."""
    readiness: Readiness = request.app.state.readiness
    down = readiness.down()
    context = {
        "operator": op,
        "prefix": PREFIX,
        "outages": [OUTAGES[d] for d in OUTAGES if d in down],
        **context,
    }
    return templates.TemplateResponse(
        request, name, context, status_code=status_code, headers={**_HEADERS, **(headers or {})}
    )


def _safe_next(path: str | None) -> str:
    """Only a console path: never another site (``//host``) after logging in."""
    if path and path.startswith(PREFIX + "/") and not path.startswith("//") and "\\" not in path:
        return path
    return PREFIX + "/"


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


router = APIRouter(prefix=PREFIX, include_in_schema=False)


# --- login ------------------------------------------------------------------------------------


@router.get("/login")
def login_page(
    request: Request,
    next: Annotated[str | None, Query(max_length=512)] = None,
    expired: bool = False,
) -> Response:
    return _page(request, "login.html", None, next=_safe_next(next), expired=expired)


@router.post("/login")
async def login(request: Request, form: Form, authority: AuthorityDep) -> Response:
    client_id, secret = form.get("client_id", "").strip(), form.get("client_secret", "")
    target = _safe_next(form.get("next"))

    async def refused(message: str, status: int = 401) -> Response:
        return await run_in_threadpool(
            lambda: _page(
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
    _rate_limit(request, f"token:{client_id[:64]}")
    try:
        answer = await run_in_threadpool(authority.issue_token, client_id, secret)
        who = await run_in_threadpool(authority.verify, answer.access_token)
    except AuthError:
        return await refused("Client authentication failed.")
    if who.institution is not None:
        return await refused("This is an institution's client, not an operator's.", 403)
    await run_in_threadpool(authority.audit, who.client_id, "console.login")
    response = _see_other(target)
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
    _checked(op, form)
    authority.audit(op.principal.client_id, "console.logout")
    response = _see_other(f"{PREFIX}/login")
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
    return response


# --- flow -------------------------------------------------------------------------------------


@router.get("/")
def flow(request: Request, session: SessionDep, op: OperatorDep) -> Response:
    """Deliveries by institution and state: the store's truth, as the metrics gauges count it."""
    _need(op, Scope.DELIVERIES_READ)
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
    return _page(
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
    who = _need(op, Scope.DELIVERIES_READ)
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
    return _page(
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
    _need(op, Scope.EVENTS_READ)
    q = q.strip()
    if not q:
        return _page(request, "events.html", op, q="", found=None)
    if "\x00" in q:
        return _page(request, "events.html", op, 400, q="", found=None, error="Not an id.")
    try:
        uuid.UUID(q)
    except ValueError:
        pass
    else:
        if session.get(InboxRow, q) is not None:
            return _see_other(f"{PREFIX}/events/{quote(q)}")
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
    return _page(request, "events.html", op, q=q, found=found, limit=_MEMBER_EVENTS)


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
    who = _need(op, Scope.EVENTS_READ)
    try:
        status = events.event_status(event_id, request, session, who)
    except HTTPException as exc:
        return _failed(request, op, exc)
    rows = session.scalars(
        select(OutboxRow).where(OutboxRow.event_id == event_id).order_by(OutboxRow.id)
    ).all()
    held = [deliveries.Delivery.of(r) for r in rows if who.may_see(r.institution)]
    return _page(request, "event.html", op, event=status, deliveries=held)


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
    who = _need(op, Scope.DEAD_LETTERS)
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
        return _failed(request, op, exc)
    notice = None
    if done is not None and outcome is not None and _OUTCOME.match(outcome):
        notice = f"Dead letter {done}: {outcome.replace('_', ' ')}."
    return _page(
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
    _checked(op, form)
    who = _need(op, Scope.DEAD_LETTERS)
    try:
        result = dead_letters.replay_dead_letter(dead_letter_id, session, jokko, who)
    except HTTPException as exc:
        return _failed(request, op, exc)
    return _see_other(f"{PREFIX}/dead-letters?done={result.id}&outcome={result.outcome}")


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
    _checked(op, form)
    who = _need(op, Scope.DEAD_LETTERS)
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
        return _failed(request, op, exc)
    return _see_other(f"{PREFIX}/dead-letters?done={dead_letter_id}&outcome=discarded")


# --- reconciliation ---------------------------------------------------------------------------


@router.get("/reconciliations")
def run_list(
    request: Request, session: SessionDep, op: OperatorDep, cursor: pagination.Cursor = None
) -> Response:
    who = _need(op, Scope.RECONCILE)
    try:
        page = reconcile.list_runs(session, who, cursor=cursor, limit=50)
    except HTTPException as exc:
        return _failed(request, op, exc)
    return _page(request, "runs.html", op, page=page)


@router.get("/reconciliations/{run_id}")
def run_page(
    request: Request, run_id: reconcile.RunId, session: SessionDep, op: OperatorDep
) -> Response:
    who = _need(op, Scope.RECONCILE)
    try:
        run = reconcile.get_run(run_id, session, who)
    except HTTPException as exc:
        return _failed(request, op, exc)
    return _page(request, "run.html", op, run=run)


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
    who = _need(op, Scope.RECONCILE)
    try:
        report = reconcile.get_report(run_id, request, session, who, format=format)
    except HTTPException as exc:
        return _failed(request, op, exc)
    report.headers.update(_REPORT_HEADERS)
    if format != "html":
        report.headers["Content-Disposition"] = (
            f'attachment; filename="reconciliation-{run_id}.{format}"'
        )
    return report


# --- errors -----------------------------------------------------------------------------------


def _failed(request: Request, op: Operator | None, exc: HTTPException) -> Response:
    return _page(request, "error.html", op, exc.status_code, message=str(exc.detail))


def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    query = f"?next={quote(_safe_next(exc.next_path), safe='')}"
    response = _see_other(f"{PREFIX}/login{query}{'&expired=true' if exc.expired else ''}")
    if exc.expired:
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
    return response


def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return _page(request, "error.html", None, exc.status, message=exc.message)


def _unavailable(request: Request, exc: Exception) -> Response:
    """The API's 503 (counted and logged there); on a console page, the error page with its
    banner and the same ``Retry-After``."""
    answer = problems.on_unavailable(request, exc)
    if answer.status_code != 503 or not request.url.path.startswith(PREFIX + "/"):
        return answer
    retry_after = answer.headers["Retry-After"]
    message = f"Service indisponible : réessayer dans {retry_after} s."
    return _page(
        request, "error.html", None, 503, headers={"Retry-After": retry_after}, message=message
    )


def install(app: FastAPI) -> None:
    """Mount the console on ``app``: its pages and the answers its dependencies raise."""
    app.include_router(router)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(Refused, _refused)
    for dependency_error in problems.UNAVAILABLE:
        app.add_exception_handler(dependency_error, _unavailable)
