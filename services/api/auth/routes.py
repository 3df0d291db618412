"""The FastAPI side of API security: the token endpoint (OAuth2 client credentials), the JWKS,
and the dependencies that turn a bearer token into the request's ``Principal`` (401), check its
scopes (403) and its client's rate (429)."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Any
from urllib.parse import parse_qsl, unquote_plus

from fastapi import APIRouter, Depends, HTTPException, Request, Security
from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlows
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from services.api.auth.authority import CLIENT_ID, Authority, TokenResponse
from services.api.auth.errors import AuthError, BadTokenRequest, SigningKeyUnavailable
from services.api.auth.ratelimit import RateLimiter
from services.api.auth.scopes import SCOPE_HELP, Principal, Scope
from services.api.problems import problem_responses

TOKEN_PATH = "/v1/oauth/token"
JWKS_PATH = "/.well-known/jwks.json"

_MAX_FORM_BYTES = 4096


class OAuthErrorBody(BaseModel):
    """RFC 6749 §5.2 error response."""

    error: str
    error_description: str | None = None


_REALM = 'Bearer realm="jokko"'

oauth2_scheme = OAuth2(
    flows=OAuthFlows(
        clientCredentials=OAuthFlowClientCredentials(
            tokenUrl=TOKEN_PATH, scopes={s.value: h for s, h in SCOPE_HELP.items()}
        )
    ),
    scheme_name="OAuth2ClientCredentials",
    description="OAuth2 client credentials; access tokens are ES256 JWTs (see the JWKS).",
    auto_error=False,
)


async def get_authority(request: Request) -> Authority:
    """``async``: it only reads ``app.state``, no threadpool hop needed."""
    authority: Authority = request.app.state.authority
    return authority


AuthorityDep = Annotated[Authority, Depends(get_authority)]


def rate_limit(request: Request, key: str) -> None:
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        return
    wait = limiter.acquire(key)
    if wait > 0:
        raise HTTPException(
            429,
            "too many requests from this client; retry later",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )


def principal(
    request: Request,
    authority: AuthorityDep,
    authorization: Annotated[str | None, Depends(oauth2_scheme)],
) -> Principal:
    """The caller, from ``Authorization: Bearer``; 401 if absent or invalid, 429 over its rate.

    Kept on ``request.state`` so a route with several ``require`` costs one token only.
    """
    known: Principal | None = getattr(request.state, "jokko_principal", None)
    if known is not None:
        return known
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401, "an access token is required", headers={"WWW-Authenticate": _REALM}
        )
    try:
        who = authority.verify(token.strip())
    except SigningKeyUnavailable:
        raise  # a 503 problem (the keyring, not the caller, is wrong)
    except AuthError as exc:
        raise HTTPException(
            401, exc.message, headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'}
        ) from None
    rate_limit(request, who.client_id)
    request.state.jokko_principal = who
    return who


PrincipalDep = Annotated[Principal, Depends(principal)]


def require(*scopes: Scope) -> Any:
    """``Annotated[Principal, require(Scope.X)]``: the caller, 403 unless it holds every scope.

    Declared with ``Security`` so OpenAPI lists each operation's scopes.
    """
    needed = frozenset(s.value for s in scopes)

    async def _has_scopes(who: PrincipalDep) -> Principal:  # no I/O: no threadpool hop
        if not needed <= who.scopes:
            challenge = f'{_REALM}, error="insufficient_scope", scope="{" ".join(sorted(needed))}"'
            raise HTTPException(
                403,
                "this client lacks the scope for this operation",
                headers={"WWW-Authenticate": challenge},
            )
        return who

    return Security(_has_scopes, scopes=sorted(needed))


_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = OAuthErrorBody(error=error, error_description=description)
    return JSONResponse(
        body.model_dump(exclude_none=True), status, headers={**_NO_STORE, **(headers or {})}
    )


def _basic_credentials(authorization: str) -> tuple[str, str]:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded, then joined by ':' and base64-ed."""
    try:
        decoded = base64.b64decode(authorization, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise BadTokenRequest("invalid_request", "malformed Basic credentials") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise BadTokenRequest("invalid_request", "malformed Basic credentials")
    return unquote_plus(client_id), unquote_plus(secret)


def _token_request(content_type: str, body: bytes, authorization: str | None) -> dict[str, str]:
    if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise BadTokenRequest("invalid_request", "use application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise BadTokenRequest("invalid_request", "malformed form body") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise BadTokenRequest("invalid_request", "a parameter is repeated")
    if form.get("grant_type") is None:
        raise BadTokenRequest("invalid_request", "grant_type is required")
    if form["grant_type"] != "client_credentials":
        raise BadTokenRequest("unsupported_grant_type", "only client_credentials is supported")
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        if "client_secret" in form:
            raise BadTokenRequest("invalid_request", "use one client authentication method only")
        client_id, secret = _basic_credentials(credentials.strip())
        if form.get("client_id", client_id) != client_id:
            raise BadTokenRequest("invalid_request", "client_id does not match the credentials")
        form["client_id"], form["client_secret"] = client_id, secret
    if not form.get("client_id") or "client_secret" not in form:
        raise BadTokenRequest("invalid_request", "client_id and client_secret are required")
    return form


_FORM_SCHEMA = {
    "type": "object",
    "required": ["grant_type"],
    "properties": {
        "grant_type": {"type": "string", "enum": ["client_credentials"]},
        "client_id": {"type": "string", "description": "Or in HTTP Basic authentication."},
        "client_secret": {"type": "string", "description": "Or in HTTP Basic authentication."},
        "scope": {"type": "string", "description": "Space-separated; default: all granted."},
    },
}


def security_router() -> APIRouter:
    """The token endpoint and the JWKS, using the ``Authority`` on ``app.state.authority``."""
    router = APIRouter(tags=["auth"])

    @router.post(
        TOKEN_PATH,
        response_model=TokenResponse,
        summary="Access token (OAuth2 client credentials)",
        responses={
            400: {"model": OAuthErrorBody, "description": "RFC 6749 error"},
            401: {"model": OAuthErrorBody, "description": "Client authentication failed"},
            429: {"description": "Too many requests; see Retry-After"},
            **problem_responses(503),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/x-www-form-urlencoded": {"schema": _FORM_SCHEMA}},
            }
        },
    )
    async def token(request: Request) -> JSONResponse:
        authority: Authority = request.app.state.authority
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_FORM_BYTES:
                return _oauth_error(400, "invalid_request", "the request is too large")
        authorization = request.headers.get("Authorization")
        try:
            form = _token_request(request.headers.get("content-type", ""), body, authorization)
        except BadTokenRequest as exc:
            return _oauth_error(400, exc.error, exc.description)
        client_id = form["client_id"]
        if CLIENT_ID.match(client_id):
            rate_limit(request, f"token:{client_id}")
        try:
            answer = await run_in_threadpool(
                authority.issue_token, client_id, form["client_secret"], form.get("scope")
            )
        except AuthError as exc:
            # RFC 6749 §5.2: a 401 carries the challenge of the Basic scheme it accepts.
            challenge = {"WWW-Authenticate": 'Basic realm="jokko"'} if exc.status == 401 else {}
            return _oauth_error(exc.status, exc.code, exc.message, challenge)
        return JSONResponse(answer.model_dump(), headers=_NO_STORE)

    @router.get(JWKS_PATH, summary="Public keys verifying access tokens (JWKS)")
    def jwks(authority: AuthorityDep) -> JSONResponse:
        return JSONResponse(authority.jwks(), headers={"Cache-Control": "public, max-age=60"})

    return router
