"""How the console answers: its pages rendered from the templates with the dependency banners
and the security headers, its redirects, and its error pages."""

from __future__ import annotations

import pathlib
from typing import Any
from urllib.parse import quote

from fastapi import HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from services.api import problems
from services.api.console.login import COOKIE, PREFIX, LoginRequired, Operator, Refused
from services.api.routes.health import Readiness

templates = Jinja2Templates(directory=pathlib.Path(__file__).parent.parent / "templates")


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
REPORT_HEADERS = {
    **_HEADERS,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'self'; base-uri 'none'",
}


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


def render(
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


def safe_next(path: str | None) -> str:
    """Only a console path: never another site (``//host``) after logging in."""
    if path and path.startswith(PREFIX + "/") and not path.startswith("//") and "\\" not in path:
        return path
    return PREFIX + "/"


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


def failed(request: Request, op: Operator | None, exc: HTTPException) -> Response:
    return render(request, "error.html", op, exc.status_code, message=str(exc.detail))


def login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    query = f"?next={quote(safe_next(exc.next_path), safe='')}"
    response = see_other(f"{PREFIX}/login{query}{'&expired=true' if exc.expired else ''}")
    if exc.expired:
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
    return response


def refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return render(request, "error.html", None, exc.status, message=exc.message)


def unavailable(request: Request, exc: Exception) -> Response:
    """The API's 503 (counted and logged there); on a console page, the error page with its
    banner and the same ``Retry-After``."""
    answer = problems.on_unavailable(request, exc)
    if answer.status_code != 503 or not request.url.path.startswith(PREFIX + "/"):
        return answer
    retry_after = answer.headers["Retry-After"]
    message = f"Service indisponible : réessayer dans {retry_after} s."
    return render(
        request, "error.html", None, 503, headers={"Retry-After": retry_after}, message=message
    )
