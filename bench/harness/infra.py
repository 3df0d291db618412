"""The Kafka broker and PostgreSQL a benchmark starts for itself (``tests/infra.py``'s), and a
fresh, migrated schema per scenario so that scenarios never see each other's rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, text

from router.broker import wait_until_ready
from router.db import make_engine
from router.migrate import upgrade
from tests.infra import KafkaBroker, PostgresCluster

PARTITIONS = 6
"""Partitions of every topic a benchmark creates (canonical, outbound, acks)."""


@dataclass
class Infra:
    broker: KafkaBroker
    pg: PostgresCluster

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def schema_engine(self, name: str) -> tuple[Engine, str]:
        """A fresh schema, migrated, and an engine (plus URL) whose search_path is it."""
        schema = f"b_{name}_{uuid.uuid4().hex[:6]}"
        admin = make_engine(self.pg.url)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        admin.dispose()
        engine = make_engine(self.pg.url, connect_args={"options": f"-csearch_path={schema}"})
        upgrade(engine)
        return engine, f"{self.pg.url}?options=-csearch_path%3D{schema}"


@contextmanager
def infrastructure(directory: Path) -> Iterator[Infra]:
    directory.chmod(0o755)  # the cluster runs as the postgres user
    broker = KafkaBroker(directory=directory / "broker")
    pg = PostgresCluster(directory=directory / "cluster")
    broker.start()
    try:
        pg.start()
        try:
            wait_until_ready(broker.bootstrap, timeout_s=60)
            yield Infra(broker, pg)
        finally:
            pg.stop()
    finally:
        broker.stop()
