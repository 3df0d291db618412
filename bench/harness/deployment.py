"""One scenario's Jokko: real ``jokko`` processes with their own topic prefix, consumer group and
database schema, and the settings by which they reach the fake institutions."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, text

from adapters.base import Institution
from bench.harness.infra import PARTITIONS, Infra
from router.broker import ensure_topics
from router.topics import Topics

JOKKO = str(Path(sys.executable).parent / "jokko")


@dataclass
class Deployment:
    """One scenario's Jokko: its processes, topic prefix, consumer group and schema."""

    name: str
    engine: Engine
    env: dict[str, str]
    topics: Topics
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    kills: int = 0

    @classmethod
    def create(cls, infra: Infra, name: str, canonical: str, logs: Path) -> Deployment:
        engine, url = infra.schema_engine(name)
        prefix = f"{name}{uuid.uuid4().hex[:6]}."
        topics = Topics(canonical=canonical, prefix=prefix, partitions=PARTITIONS)
        ensure_topics(infra.bootstrap, topics.specs())
        env = {
            **os.environ,
            "JOKKO_KAFKA_BOOTSTRAP": infra.bootstrap,
            "JOKKO_DATABASE_URL": url,
            "JOKKO_CANONICAL_TOPIC": canonical,
            "JOKKO_TOPIC_PREFIX": prefix,
            "JOKKO_ROUTER_GROUP": f"{prefix}router",
            # A test broker: institutions in mode kafka get their messages in clear, as when
            # the recorded figures were measured (sealing's own cost: bench/seal.py).
            **{f"JOKKO_{i.value.upper()}__ALLOW_CLEAR_TOPIC": "true" for i in Institution},
        }
        logs.mkdir(parents=True, exist_ok=True)
        return cls(name, engine, env, topics, logs)

    def start(self, command: str, instance: str = "1") -> None:
        key = f"{command}-{instance}"
        env = {**self.env, "JOKKO_ROUTER_INSTANCE_ID": f"router-{instance}"}
        with (self.logs / f"{self.name}-{key}.log").open("ab") as out:
            self.procs[key] = subprocess.Popen(
                [JOKKO, command], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self, key: str) -> None:
        proc = self.procs[key]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.kills += 1

    def kill_router_after_progress(
        self, total: int, rng: random.Random, max_pause_s: float, timeout_s: float
    ) -> bool:
        """Start the router, wait until it routes one more event, SIGKILL it a random moment
        (up to ``max_pause_s``) later; whether the stream of ``total`` was under way then."""
        self.start("router")
        before = min(self.inbox(), total - 1)
        self.wait(lambda: self.inbox() > before, timeout_s, "router progress")
        time.sleep(rng.uniform(0.0, max_pause_s))
        self.kill("router-1")
        return 0 < self.inbox() < total

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.engine.dispose()

    def scalar(self, sql: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar() or 0)

    def inbox(self) -> int:
        return self.scalar("SELECT count(*) FROM inbox")

    def published(self) -> int:
        """Outbox rows handed to their institution (a full count: used once, at the end)."""
        return self.scalar("SELECT count(*) FROM outbox WHERE state NOT IN ('pending', 'dead')")

    def delivered(self, events: int) -> Callable[[], bool]:
        """Whether ``events`` events are in the inbox and nothing is left pending: the router
        writes an event's outbox rows in the transaction of its inbox row. Cheap enough to
        poll (the inbox, then the pending rows through their index), unlike a full count."""

        def done() -> bool:
            return self.inbox() >= events and not self.scalar(
                "SELECT count(*) FROM outbox WHERE state = 'pending'"
            )

        return done

    def wait(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            self.check_alive(f"waiting for {what}")
            if time.monotonic() > deadline:
                self.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.25)

    def check_alive(self, doing: str) -> None:
        """Fail the run, with the logs, if a process exited other than by our SIGKILL."""
        for key, proc in self.procs.items():
            if proc.poll() not in (None, -signal.SIGKILL, 0):
                self.fail(f"{key} exited with {proc.returncode} while {doing}")

    def fail(self, why: str) -> None:
        tails = {p.name: p.read_text(errors="replace")[-1500:] for p in self.logs.glob("*.log")}
        raise RuntimeError(f"{self.name}: {why}; logs: {tails}")


def partner_env(
    urls: Mapping[str, str],
    secrets: Mapping[str, str],
    ipres_dirs: tuple[str, str],
    push_batch: int,
) -> dict[str, str]:
    """How Jokko reaches the fake institutions, as the demo does (services/demo.py
    ``_environment``): CMU and CSS over signed HTTP at ``urls``, ``push_batch`` messages a
    request, IPRES by declaration files and ack files in ``ipres_dirs`` (outbox, acks)."""
    return {
        "JOKKO_CMU__MODE": "http",
        "JOKKO_CMU__URL": urls["cmu"],
        "JOKKO_CMU__SECRET": secrets["cmu"],
        "JOKKO_CMU__ALLOW_PLAIN_HTTP": "true",  # loopback fakes, figures as before TLS
        # HMAC as when the recorded figures were measured (bench/signing.py: Ed25519's cost).
        "JOKKO_CMU__SIGNATURE": "hmac",
        "JOKKO_CSS__SIGNATURE": "hmac",
        "JOKKO_CSS__MODE": "http",
        "JOKKO_CSS__URL": urls["css"],
        "JOKKO_CSS__SECRET": secrets["css"],
        "JOKKO_CSS__ALLOW_PLAIN_HTTP": "true",
        "JOKKO_CMU__BATCH_SIZE": str(push_batch),
        "JOKKO_CSS__BATCH_SIZE": str(push_batch),
        "JOKKO_IPRES__MODE": "file",
        "JOKKO_IPRES__OUTBOX_DIR": ipres_dirs[0],
        "JOKKO_IPRES__ACK_DIR": ipres_dirs[1],
    }
