"""The FastAPI application: built from a bootstrapped ``Jokko`` (the composition root), never at
import time, so tests and ``jokko api`` run the same app with their own settings."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from kafka import KafkaProducer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.broker import idempotent_producer
from services.api import console, openapi, problems
from services.api.auth import Authority, RateLimiter, security_router
from services.api.idempotency import Outcomes
from services.api.routes import (
    dead_letters,
    deliveries,
    events,
    health,
    message_keys,
    msnas,
    reconcile,
)
from services.api.routes.health import Metrics, Readiness
from services.bootstrap import Jokko

API_VERSION = "1.0.0"
MAX_BODY_BYTES = 5 * 1024 * 1024
"""A month-end CSV export of a regional unit fits; anything larger is refused before reading."""


class BodyLimit:
    """Refuses bodies over the limit with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _too_large(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(scope, receive, send)


class Timing:
    """Request latency by route. Plain ASGI, not ``@app.middleware``: Starlette's
    ``BaseHTTPMiddleware`` runs each request in an extra task and stream, a visible share
    of a single-event POST's CPU (bench/api.py)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request_seconds.labels(path, scope["method"]).observe(
                time.perf_counter() - start
            )


class _TooLarge(Exception):
    pass


async def _too_large(scope: Scope, receive: Receive, send: Send) -> None:
    response = problems.problem(413, "Request too large", f"at most {MAX_BODY_BYTES} bytes")
    await response(scope, receive, send)


def create_app(
    jokko: Jokko,
    *,
    producer: KafkaProducer | None = None,
    authority: Authority | None = None,
    rate_limiter: RateLimiter | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = producer is None
        settings = jokko.settings
        # Bounded: a broker that is down costs a submission api_broker_timeout_s, then a 503.
        app.state.producer = producer or idempotent_producer(
            settings.kafka_bootstrap,
            client_id="jokko-api",
            max_block_s=settings.api_broker_timeout_s,
            delivery_timeout_s=settings.api_broker_delivery_timeout_s,
            reconnect_backoff_max_s=1.0,  # back in service within a second of the broker
        )
        try:
            yield
        finally:
            if owned:
                app.state.producer.close()  # settles what is in flight: outcomes recorded
            app.state.outcomes.close()

    app = FastAPI(
        title="Jokko",
        version=API_VERSION,
        summary="Interoperability middleware of Senegal's RSPC: MSNAS → CMU, CSS, IPRES.",
        description=(
            "Submit canonical events, follow each one to every institution, collect "
            "acknowledgements, manage dead letters. OAuth2 client credentials; errors are "
            "`application/problem+json` (RFC 9457)."
        ),
        lifespan=lifespan,
    )
    app.state.jokko = jokko
    app.state.authority = authority or Authority(jokko.engine, vault=jokko.vault)
    app.state.rate_limiter = rate_limiter
    app.state.metrics = Metrics(jokko)
    app.state.readiness = Readiness(jokko)
    app.state.outcomes = Outcomes(jokko.engine)
    problems.install(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    app.add_middleware(Timing, metrics=app.state.metrics)

    app.include_router(security_router())
    for module in (events, deliveries, dead_letters, msnas, reconcile, health, message_keys):
        app.include_router(module.router)
    console.install(app)  # not in the API document
    openapi.install(app)
    return app
