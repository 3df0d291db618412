"""Shared fixtures. Infrastructure is session-scoped and started only when a test asks for it,
so ``pytest -m unit`` never starts a broker; each test gets its own topics and schema."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from adapters.base import Institution
from router.broker import TopicSpec, ensure_topics, wait_until_ready
from router.db import make_engine
from services.settings import Settings, load_settings
from tests.infra import KafkaBroker, PostgresCluster

TIERS = ("unit", "contract", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test belongs to exactly one tier, so `-m unit` means what it says."""
    for item in items:
        tiers = [t for t in TIERS if item.get_closest_marker(t)]
        if len(tiers) != 1:
            raise pytest.UsageError(f"{item.nodeid}: needs exactly one tier marker, has {tiers}")


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    # /tmp, not pytest's tmp dirs: the paths stay short and the broker is ours to remove.
    with tempfile.TemporaryDirectory(prefix="jokko-kafka-") as d:
        broker = KafkaBroker(directory=Path(d) / "broker")
        broker.start()
        try:
            wait_until_ready(broker.bootstrap, timeout_s=60)
            yield broker
        finally:
            broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def make_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Callable[[int], str]:
    """Create a topic unique to this test, with the given number of partitions."""

    def _make(partitions: int = 1) -> str:
        name = f"test.{request.node.name[:40]}.{uuid.uuid4().hex[:8]}"
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
        ensure_topics(kafka_bootstrap, [TopicSpec(name, partitions)])
        return name

    return _make


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    with tempfile.TemporaryDirectory(prefix="jokko-pg-") as d:
        Path(d).chmod(0o755)  # the cluster runs as the postgres user
        cluster = PostgresCluster(directory=Path(d) / "cluster")
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
def pg_engine(postgres: PostgresCluster) -> Iterator[Engine]:
    """An engine whose search_path is a schema of this test's own, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(postgres.url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(postgres.url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def jokko_settings(
    pg_engine: Engine, postgres: PostgresCluster, kafka_bootstrap: str
) -> Callable[..., Settings]:
    """Settings for a Jokko of this test's own: its PostgreSQL schema, its topic prefix."""
    with pg_engine.connect() as conn:
        schema = conn.execute(text("select current_schema()")).scalar_one()
    prefix = f"j{uuid.uuid4().hex[:8]}."

    def _settings(**overrides: object) -> Settings:
        # Institutions in mode kafka read a test broker: their topics may carry messages in
        # clear unless a test says otherwise (tests/integration/test_topic_sealing.py seals
        # them, and checks the relay refuses a keyless one when this is off).
        for inst in Institution:
            given = overrides.get(inst.value, {})
            if isinstance(given, dict):
                overrides[inst.value] = {"allow_clear_topic": True, **given}
        values: dict[str, object] = {
            "kafka_bootstrap": kafka_bootstrap,
            "database_url": f"{postgres.url}?options=-csearch_path%3D{schema}",
            "canonical_topic": f"{prefix}jokko.events.v1",
            "topic_prefix": prefix,
            "router_group": f"{prefix}router",
            **overrides,
        }
        return load_settings(**values)

    return _settings
