"""Liveness, readiness and Prometheus metrics.

Store-derived gauges (deliveries by state, dead letters, retries, consumer lag) are computed
when Prometheus scrapes, from the store and the broker themselves, so every API replica
reports the same truth and nothing is counted in process memory that a restart would lose.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi import APIRouter, HTTPException, Request, Response
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from router.broker import admin_client, wait_until_ready
from router.errors import BrokerUnavailable
from router.store import DeadLetterRow, MemberDuplicateRow, OutboxRow
from services.api.problems import problem_responses
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
        try:
            with Session(self._jokko.engine) as s:
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
        wait_until_ready(bootstrap, timeout_s=2)
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


@router.get(
    "/readyz",
    response_model=Health,
    summary="The database and Kafka are reachable",
    responses=problem_responses(503),
)
def readyz(request: Request) -> Health:
    jokko: Jokko = request.app.state.jokko
    checks: dict[str, str] = {}
    try:
        with jokko.engine.connect() as conn:
            conn.execute(text("select 1"))
        checks["database"] = "ok"
    except SQLAlchemyError as exc:
        checks["database"] = type(exc).__name__
    try:
        wait_until_ready(jokko.settings.kafka_bootstrap, timeout_s=2)
        checks["kafka"] = "ok"
    except BrokerUnavailable:
        checks["kafka"] = "unreachable"
    if any(v != "ok" for v in checks.values()):
        raise HTTPException(503, "not ready: " + ", ".join(f"{k}={v}" for k, v in checks.items()))
    return Health(status="ok", checks=checks)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}}},
)
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=PROMETHEUS_TEXT)
