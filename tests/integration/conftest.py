"""Fixtures of the integration tier."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from router.db import make_engine
from router.migrate import upgrade
from tests.infra import FhirServer


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated store, once on the embedded SQLite and once on PostgreSQL: both are
    supported, so every test using it runs on both."""
    if request.param == "sqlite":
        e = make_engine(f"sqlite:///{tmp_path}/jokko.db")
        try:
            upgrade(e)
            yield e
        finally:
            e.dispose()
    else:
        pg: Engine = request.getfixturevalue("pg_engine")
        upgrade(pg)
        yield pg


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirServer]:
    """A real FHIR server (HAPI FHIR JPA, R4B), started once per session by the first test that
    asks for it; its database is in memory, so tests keep to their own identifiers."""
    with tempfile.TemporaryDirectory(prefix="jokko-fhir-") as d:
        server = FhirServer(directory=Path(d) / "server")
        try:
            # Inside the try: a start that times out still has its process stopped.
            server.start()
            yield server
        finally:
            server.stop()
