"""Liveness, readiness and Prometheus metrics.

Store-derived gauges (deliveries by state, dead letters, retries, consumer lag) are computed
when Prometheus scrapes, from the store and the broker themselves, so every API replica
reports the same truth and nothing is counted in process memory that a restart would lose.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from router.acks import refused_receipt_counts
from router.broker import admin_client, check_reachable
from router.errors import BrokerUnavailable
from router.store import DeadLetterRow, MemberDuplicateRow, OutboxRow
from services.api.problems import DEPENDENCY_NAMES, TITLES, problem, problem_responses
from services.bootstrap import Jokko

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

PROMETHEUS_TEXT = "text/plain; version=0.0.4"


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


class Metrics:
    """The app's own registry (no process-global state) and the counters the API updates."""

    def __init__(self, jokko: Jokko) -> None:
        self.registry = CollectorRegistry()
        self.events_in = Counter(
            "jokko_api_events_total",
            "Events submitted through the API, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.unavailable = Counter(
            "jokko_api_unavailable_total",
            "Requests refused with 503 because a dependency was down, by dependency.",
            ["dependency"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "jokko_api_request_seconds",
            "API request latency by route.",
            ["route", "method"],
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(jokko))


class _StoreCollector(Collector):
    def __init__(self, jokko: Jokko) -> None:
        self._jokko = jokko

    def collect(self) -> Iterator[Metric]:
        deliveries = GaugeMetricFamily(
            "jokko_deliveries",
            "Deliveries by institution and state.",
            labels=["institution", "state"],
        )
        retries = GaugeMetricFamily(
            "jokko_delivery_retries",
            "Attempts beyond the first, by institution.",
            labels=["institution"],
        )
        dead = GaugeMetricFamily(
            "jokko_dead_letters_open", "Dead letters neither replayed nor discarded."
        )
        dead_by_reason = GaugeMetricFamily(
            "jokko_dead_letters_open_by_reason",
            "Open dead letters by source and reason (conflicting_duplicate: the same event id "
            "came again with other content).",
            labels=["source", "reason"],
        )
        duplicates = GaugeMetricFamily(
            "jokko_member_duplicates_open",
            "Enrolments whose NIN another member id holds, not yet reviewed, by action "
            "(flagged: routed; held: a dead letter).",
            labels=["action"],
        )
        refused = CounterMetricFamily(
            "jokko_receipts_refused",
            "Institutions' answers whose signature was refused (never applied), by institution "
            "and reason (bad_signature, unknown_key, stale_timestamp, replayed, missing_header, "
            "unsigned, wrong_id): security events, each on the message's trail (an ack record or "
            "file naming no message Jokko sent: once, as its dead letter).",
            labels=["institution", "reason"],
        )
        try:
            with Session(self._jokko.engine) as s:
                for (inst, reason), n in sorted(refused_receipt_counts(s).items()):
                    refused.add_metric([inst, reason], n)
                for inst, state, n, _attempts in s.execute(
                    select(
                        OutboxRow.institution,
                        OutboxRow.state,
                        func.count(),
                        func.coalesce(func.sum(OutboxRow.attempts), 0),
                    ).group_by(OutboxRow.institution, OutboxRow.state)
                ):
                    deliveries.add_metric([inst, state], n)
                extra = s.execute(
                    select(
                        OutboxRow.institution,
                        func.coalesce(func.sum(OutboxRow.attempts - 1), 0),
                    )
                    .where(OutboxRow.attempts > 1)
                    .group_by(OutboxRow.institution)
                )
                for inst, n in extra:
                    retries.add_metric([inst], n)
                open_letters = s.execute(
                    select(DeadLetterRow.source, DeadLetterRow.reason, func.count())
                    .where(
                        DeadLetterRow.replayed_at.is_(None),
                        DeadLetterRow.discarded_at.is_(None),
                    )
                    .group_by(DeadLetterRow.source, DeadLetterRow.reason)
                ).all()
                for source, reason, n in open_letters:
                    dead_by_reason.add_metric([source, reason], n)
                dead.add_metric([], sum(n for _, _, n in open_letters))
                for action, n in s.execute(
                    select(MemberDuplicateRow.action, func.count())
                    .where(MemberDuplicateRow.reviewed_at.is_(None))
                    .group_by(MemberDuplicateRow.action)
                ):
                    duplicates.add_metric([action], n)
        except SQLAlchemyError as exc:
            log.warning("metrics: store unavailable: %s", type(exc).__name__)
        yield deliveries
        yield retries
        yield dead
        yield dead_by_reason
        yield duplicates
        yield refused
        lag = GaugeMetricFamily("jokko_router_consumer_lag", "Canonical records not yet routed.")
        value = router_lag(self._jokko)
        if value is not None:
            lag.add_metric([], value)
        yield lag


def router_lag(jokko: Jokko) -> int | None:
    """End offsets minus the router group's committed offsets, or None if the broker is away."""
    bootstrap = jokko.settings.kafka_bootstrap
    topic = jokko.topics.canonical
    group = jokko.settings.router_group
    try:
        check_reachable(bootstrap, timeout_s=1)
        admin = admin_client(bootstrap, timeout_s=2)
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    except (KafkaError, BrokerUnavailable):
        return None
    try:
        committed = admin.list_group_offsets(group).get(group, {})
        parts = [TopicPartition(topic, p) for p in range(jokko.topics.partitions)]
        ends = consumer.end_offsets(parts)
        lag: int = sum(ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in parts)
        return lag
    except KafkaError:
        return None
    finally:
        consumer.close()
        admin.close()


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


class Readiness:
    """Whether the database and the broker answer, each within ``timeout_s``: what ``/readyz``
    reports and what the console's banner shows. ``down`` reuses a check younger than
    ``max_age_s``, so pages do not probe the broker on every render."""

    def __init__(self, jokko: Jokko, *, timeout_s: float = 1.0, max_age_s: float = 2.0) -> None:
        self._jokko = jokko
        self._timeout_s = timeout_s
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._last: tuple[float, dict[str, str]] | None = None

    def check(self) -> dict[str, str]:
        """``{"database": "ok" | reason, "kafka": "ok" | reason}``, probed now."""
        checks: dict[str, str] = {}
        try:
            with self._jokko.engine.connect() as conn:
                conn.execute(text("select 1"))
            checks["database"] = "ok"
        except SQLAlchemyError as exc:
            checks["database"] = type(exc).__name__
        try:
            check_reachable(self._jokko.settings.kafka_bootstrap, timeout_s=self._timeout_s)
            checks["kafka"] = "ok"
        except BrokerUnavailable:
            checks["kafka"] = "unreachable"
        with self._lock:
            self._last = (time.monotonic(), checks)
        return checks

    def down(self) -> list[str]:
        """The dependencies that are down (``database``, ``kafka``), from a recent check."""
        with self._lock:
            last = self._last
        if last is None or time.monotonic() - last[0] > self._max_age_s:
            checks = self.check()
        else:
            checks = last[1]
        return [name for name, state in checks.items() if state != "ok"]


@router.get(
    "/readyz",
    response_model=Health,
    summary="The database and Kafka are reachable",
    responses=problem_responses(503),
)
def readyz(request: Request) -> Response:
    """200 when both answer; else a 503 problem whose ``dependency`` names what is down."""
    readiness: Readiness = request.app.state.readiness
    checks = readiness.check()
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        jokko: Jokko = request.app.state.jokko
        detail = "not ready: " + "; ".join(
            f"{DEPENDENCY_NAMES[name]} is unavailable ({checks[name]})" for name in down
        )
        return problem(
            503,
            TITLES[503],
            detail,
            kind="unavailable",
            dependency=",".join(down),
            headers={"Retry-After": str(jokko.settings.api_retry_after_s)},
        )
    return JSONResponse(Health(status="ok", checks=checks).model_dump())


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}}},
)
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=PROMETHEUS_TEXT)
