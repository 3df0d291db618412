"""Errors as ``application/problem+json`` (RFC 9457), with field-level detail for bad input.

Bodies never carry a stack trace or the offending values (they may be a member's name, NIN or
phone number): a location and a reason are enough to fix a request.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kafka.errors import KafkaError
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from adapters.base import WireFormatError
from router import errors
from schemas.errors import FieldError, InvalidEvent, JokkoError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_TYPES = "https://jokko.sn/problems/"


class FieldProblem(BaseModel):
    loc: str = Field(description="Where in the request: a dotted path (body.payload.amount).")
    code: str = Field(description="Machine-readable reason, e.g. string_pattern_mismatch.")
    msg: str = Field(description="Human-readable reason, without the offending value.")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(default="about:blank", description="A URI identifying the problem type.")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldProblem] | None = Field(
        default=None, description="One entry per invalid field, for validation problems."
    )
    dependency: str | None = Field(
        default=None,
        description="For a 503: what is unavailable (database, kafka); retry after Retry-After.",
    )


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    kind: str | None = None,
    errors: list[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
    dependency: str | None = None,
) -> JSONResponse:
    body = Problem(
        type=f"{_TYPES}{kind}" if kind else "about:blank",
        title=title,
        status=status,
        detail=detail,
        errors=errors,
        dependency=dependency,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def field_problems(
    errors: tuple[FieldError, ...] | list[FieldError], prefix: str
) -> list[FieldProblem]:
    return [
        FieldProblem(loc=".".join(p for p in (prefix, e.loc) if p), code=e.type, msg=e.message)
        for e in errors
    ]


def _validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        FieldProblem(
            loc=".".join(str(p) for p in err.get("loc", ())),
            code=str(err.get("type", "invalid")),
            msg=str(err.get("msg", "invalid")),
        )
        for err in exc.errors()
    ]
    return problem(422, "Invalid request", kind="validation", errors=errors)


TITLES: dict[int, str] = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    410: "Gone",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    503: "Service unavailable",
}
"""The title of each status the API answers with a problem."""


def _http(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    title = TITLES.get(exc.status_code, "Error")
    return problem(exc.status_code, title, detail, headers=dict(exc.headers or {}))


def _invalid_event(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidEvent)
    return problem(
        422,
        "Invalid event",
        "the event does not conform to the canonical schema",
        kind="invalid-event",
        errors=field_problems(exc.errors, "body"),
    )


def _wire_format(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, WireFormatError)
    return problem(
        422,
        "Malformed document",
        f"the {exc.institution} document does not conform to its format",
        kind="wire-format",
        errors=field_problems(exc.errors, "body"),
    )


def _jokko(_request: Request, exc: Exception) -> JSONResponse:
    status: int = getattr(exc, "status", 422)
    title: str = getattr(exc, "title", type(exc).__name__)
    kind: str = getattr(exc, "kind", "jokko-error")
    return problem(status, title, str(exc), kind=kind)


UNAVAILABLE: tuple[type[Exception], ...] = (errors.RetryableError, KafkaError, SQLAlchemyError)
"""The exceptions ``_unavailable`` looks at (``router.errors.unavailable`` decides)."""

CLIENT_GONE = 499
"""nginx's convention: the client hung up before its request was read; nobody gets the answer."""


def _client_gone(request: Request, exc: Exception) -> Response:
    """Not a server error: the body was never read, so nothing was accepted. An overloaded
    API used to log each one with its traceback (16% of its CPU when clients gave up),
    which made the overload worse."""
    log.info("client gone before its %s %s was read", request.method, request.url.path)
    return Response(status_code=CLIENT_GONE)


DEPENDENCY_NAMES = {"database": "the database", "kafka": "the event stream (Kafka)"}
DEFAULT_RETRY_AFTER_S = 2


def unavailable(request: Request, dependency: str, detail: str | None = None) -> JSONResponse:
    """503 with ``Retry-After``: a dependency this request needs is down. Nothing was carried
    out (for a submission: nothing was accepted), so the same request may be sent again."""
    jokko = getattr(request.app.state, "jokko", None)
    retry_after = jokko.settings.api_retry_after_s if jokko else DEFAULT_RETRY_AFTER_S
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.unavailable.labels(dependency).inc()
    name = DEPENDENCY_NAMES.get(dependency, dependency)
    return problem(
        503,
        TITLES[503],
        f"{detail or f'{name} is unavailable; nothing was done'}: retry in {retry_after} s",
        kind="unavailable",
        dependency=dependency,
        headers={"Retry-After": str(retry_after)},
    )


def on_unavailable(request: Request, exc: Exception) -> Response:
    """A dependency's failure (``RetryableError``, a Kafka client's error, a database that
    refuses or drops connections or has none to lend) is a 503; any other database error
    remains an unexpected one."""
    retryable = errors.unavailable(exc)
    if retryable is None:
        return _unexpected(request, exc)
    log.warning(
        "%s unavailable (%s) on %s %s",
        retryable.dependency,
        type(exc).__name__,
        request.method,
        request.url.path,
    )
    return unavailable(request, retryable.dependency, retryable.detail)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Logged with the exception type and route only: the message may hold personal data.
    log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return problem(500, "Internal error", "the error was logged; nothing was half-applied")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(InvalidEvent, _invalid_event)
    app.add_exception_handler(WireFormatError, _wire_format)
    app.add_exception_handler(JokkoError, _jokko)
    for dependency_error in UNAVAILABLE:
        app.add_exception_handler(dependency_error, on_unavailable)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route or router: these statuses answer ``application/problem+json``
    (the app's OpenAPI completion files the ``Problem`` schema under that media type)."""
    return {
        status: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": TITLES[status]}
        for status in statuses
    }


PROBLEM_RESPONSES = problem_responses(401, 403, 422, 503)
"""What every authenticated route may answer: a token check needs the database (503 while it
is down)."""
