"""Who may use the console and post its forms: the operator's login cookie, the CSRF token of
each form, the same-origin check of every POST and the scopes a page needs (see the package's
docstring for why all three layers)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qsl, urlsplit

from fastapi import Depends, Request

from schemas.errors import JokkoError
from services.api.auth import AuthError, AuthorityDep, Principal, Scope, rate_limit

PREFIX = "/console"
COOKIE = "jokko_console"
_MAX_FORM_BYTES = 8192


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
    rate_limit(request, who.client_id)
    return Operator(who, csrf_token(token))


OperatorDep = Annotated[Operator, Depends(_operator)]


def need(op: Operator, *scopes: Scope) -> Principal:
    missing = [s.value for s in scopes if not op.principal.has(s)]
    if missing:
        raise Refused(403, f"This operator client lacks the scope {', '.join(missing)}.")
    return op.principal


def checked(op: Operator, form: dict[str, str]) -> None:
    if not hmac.compare_digest(form.get("csrf", ""), op.csrf):
        raise Refused(403, "The form has expired or did not come from this console; reload it.")
