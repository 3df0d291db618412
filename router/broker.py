"""Kafka I/O through kafka-python: the only module that builds Kafka clients.

Clients are built by functions, never at import, so tests and the composition root decide
which broker they talk to. Producers are idempotent with ``acks=all``: Jokko's promise
(every event once) starts with the broker never dropping or doubling a write on retry.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from router.errors import BrokerUnavailable


@dataclass(frozen=True)
class TopicSpec:
    """A topic Jokko owns; topics are created explicitly (auto-creation is off)."""

    name: str
    partitions: int
    replication_factor: int = 1


def admin_client(bootstrap: str, *, timeout_s: float = 10.0) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="jokko-admin",
            request_timeout_ms=int(timeout_s * 1000),
        )
    except KafkaError as exc:
        raise BrokerUnavailable(f"Kafka at {bootstrap} is not reachable: {exc}") from exc


def wait_until_ready(bootstrap: str, *, timeout_s: float = 30.0) -> None:
    """Block until the broker answers a metadata request.

    kafka-python 3.0 has no ``NoBrokersAvailable``; any ``KafkaError`` means "not yet".
    """
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        # A plain TCP probe first: kafka-python leaks its sockets when a client's
        # constructor fails to reach any broker.
        if not _any_listening(bootstrap):
            last = ConnectionRefusedError(f"nothing listens at {bootstrap}")
            time.sleep(0.2)
            continue
        try:
            admin = admin_client(bootstrap, timeout_s=min(5.0, timeout_s))
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except (KafkaError, BrokerUnavailable) as exc:
            last = exc
            time.sleep(0.2)
    raise BrokerUnavailable(f"Kafka at {bootstrap} did not answer within {timeout_s}s: {last}")


def _any_listening(bootstrap: str, *, timeout_s: float = 1.0) -> bool:
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return True
        except OSError:
            continue
    return False


def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec]) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = admin_client(bootstrap)
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor)
            for s in specs
            if s.name not in existing
        ]
        if missing:
            # Another process may create one between list and create: same outcome.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing, wait_for_metadata=True)
    finally:
        admin.close()


def idempotent_producer(
    bootstrap: str,
    *,
    client_id: str = "jokko",
    max_block_s: float = 60.0,
    delivery_timeout_s: float | None = None,
    reconnect_backoff_max_s: float | None = None,
) -> KafkaProducer:
    """``max_block_s`` bounds how long ``send`` waits for a topic's metadata (a missing topic
    blocks the sending thread that long before failing). ``delivery_timeout_s`` bounds how
    long a sent record is retried before its future fails (kafka-python's default, 120 s,
    when None); the request timeout is kept within it, as the client requires.
    ``reconnect_backoff_max_s`` caps the client's back-off between attempts to reach a broker
    that is down (30 s by default, so a client may notice a broker's return that late)."""
    extra: dict[str, int] = {}
    if delivery_timeout_s is not None:
        delivery_ms = int(delivery_timeout_s * 1000)
        extra["delivery_timeout_ms"] = delivery_ms
        extra["request_timeout_ms"] = min(30_000, max(1_000, delivery_ms - 100))
    if reconnect_backoff_max_s is not None:
        extra["reconnect_backoff_max_ms"] = int(reconnect_backoff_max_s * 1000)
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_block_ms=int(max_block_s * 1000),
        **extra,
    )


def check_reachable(bootstrap: str, *, timeout_s: float = 1.0) -> None:
    """One bounded look at the broker (a TCP probe, then a metadata request): returns, or
    raises ``BrokerUnavailable``. Unlike ``wait_until_ready`` it never waits for a broker
    that is down, so a readiness check answers at once."""
    if not _any_listening(bootstrap, timeout_s=timeout_s):
        raise BrokerUnavailable(f"nothing listens at {bootstrap}")
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="jokko-probe",
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
        )
    except KafkaError as exc:
        raise BrokerUnavailable(f"Kafka at {bootstrap} is not reachable: {exc}") from exc
    try:
        admin.list_topics()
    except KafkaError as exc:
        raise BrokerUnavailable(f"Kafka at {bootstrap} does not answer: {exc}") from exc
    finally:
        admin.close()


def group_consumer(
    bootstrap: str,
    group_id: str,
    topics: Iterable[str],
    *,
    client_id: str = "jokko",
    max_poll_records: int = 500,
    instance_id: str | None = None,
    session_timeout_ms: int = 10_000,
    metadata_timeout_s: float = 10.0,
) -> KafkaConsumer:
    """A consumer-group member that never commits by itself.

    Offsets are committed by the caller once its work is durable, so a crash re-delivers
    instead of losing (auto-commit would acknowledge before processing). With an
    ``instance_id`` (static membership) a restarted process takes its partitions back at
    once instead of waiting for its dead predecessor's session to expire.
    """
    topics = list(topics)
    consumer = KafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        group_instance_id=instance_id,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=min(3_000, session_timeout_ms // 3),
    )
    # Know the topics' partitions before joining: a group leader that assigns while its
    # metadata still lacks a freshly created topic hands out nothing, and the group then
    # sits idle until the next metadata refresh (minutes).
    deadline = time.monotonic() + metadata_timeout_s
    for topic in topics:
        while not consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
            time.sleep(0.1)
    return consumer
