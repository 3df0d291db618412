"""Real infrastructure for tests: a Kafka broker, a PostgreSQL cluster and a FHIR server (HAPI
FHIR's JPA server), each started by the project's own scripts on free loopback ports in a
temporary directory."""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(script: str, action: str, env: dict[str, str], timeout: float = 180) -> None:
    subprocess.run(
        [str(SCRIPTS / script), action],
        env={**os.environ, **env},
        check=True,
        timeout=timeout,
    )


@dataclass
class KafkaBroker:
    """One single-node KRaft broker; ``restart`` keeps its storage (topics and offsets)."""

    directory: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def _env(self) -> dict[str, str]:
        return {
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "JOKKO_KAFKA_DIR": str(self.directory),
        }

    def start(self) -> None:
        _run("kafka.sh", "start", self._env)

    def stop(self) -> None:
        _run("kafka.sh", "stop", self._env)

    def restart(self) -> None:
        """Start again on the same storage (stopping it first if it runs)."""
        _run("kafka.sh", "restart", self._env)


@dataclass
class PostgresCluster:
    directory: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def _env(self) -> dict[str, str]:
        return {"PG_PORT": str(self.port), "JOKKO_PG_DIR": str(self.directory)}

    def start(self) -> None:
        _run("postgres.sh", "start", self._env)

    def stop(self) -> None:
        _run("postgres.sh", "stop", self._env)

    def crash(self) -> None:
        """``pg_ctl -m immediate``: the server dies on the spot, its data kept."""
        _run("postgres.sh", "crash", self._env)

    def resume(self) -> None:
        """Start again on the kept data (crash recovery first); back once it is ready."""
        _run("postgres.sh", "resume", self._env)


# HAPI's JPA server builds its Spring context and H2 schema at start: 32-40 s of CPU, measured
# 35 s on 2 cores at a load of 2, 60 s at 5, but 4-7 minutes on a machine loaded by other runs
# (load 20+). Idle, it costs nothing (0.3% of a core) and holds ~720 MB. The script gives up
# first.
FHIR_START_TIMEOUT_S = 600


@dataclass
class FhirServer:
    """HAPI FHIR's JPA server (FHIR R4B) on an in-memory H2 database: every start is empty."""

    directory: Path
    port: int = field(default_factory=free_port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def _env(self) -> dict[str, str]:
        return {
            "FHIR_PORT": str(self.port),
            "JOKKO_FHIR_DIR": str(self.directory),
            "FHIR_START_TIMEOUT": str(FHIR_START_TIMEOUT_S),
        }

    def start(self) -> None:
        _run("fhir.sh", "start", self._env, timeout=FHIR_START_TIMEOUT_S + 60)

    def stop(self) -> None:
        _run("fhir.sh", "stop", self._env)
