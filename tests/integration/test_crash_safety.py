"""Break it on purpose: `jokko router` and `jokko relay` killed with SIGKILL mid-stream.

Real processes, the real broker, a real PostgreSQL schema of the test's own. Afterwards every
expected message exists exactly once in the store, and on the topics every message id appears
(a relay killed between publish and commit may republish: same message id, counted).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from adapters.base import Institution
from router.broker import ensure_topics, idempotent_producer, wait_until_ready
from router.canonical import publish_events
from router.migrate import upgrade
from router.store import DeadLetterRow, DeliveryState, InboxRow, OutboxRow
from router.topics import Topics
from router.vault import Vault
from services import keyring
from services.settings import load_settings
from tests.factories import contributions
from tests.infra import KafkaBroker, PostgresCluster
from tests.integration.test_relay import (
    assert_in_member_order_after_dedupe,
    assert_once_and_in_member_order,
    read_outbound,
)

pytestmark = pytest.mark.integration

JOKKO = str(Path(sys.executable).parent / "jokko")
POISON = [b"not json", b'{"event_type": "member.exploded"}', b"{}", b"\xff\x00"]


@dataclass
class Flow:
    """A Jokko deployment of this test's own: processes, topics, a PostgreSQL schema."""

    engine: Engine
    env: dict[str, str]
    topics: Topics
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    kills: Counter[str] = field(default_factory=Counter)

    def start(self, command: str) -> None:
        with (self.logs / f"{command}.log").open("ab") as log:  # the child keeps its copy
            self.procs[command] = subprocess.Popen(
                [JOKKO, command], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self, command: str) -> None:
        proc = self.procs[command]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.kills[command] += 1

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                # reaped here: a child still running when its Popen is collected warns, and
                # the warning (an error in this suite) would fail whichever test runs next
                proc.wait(10)

    def count(self, query: object) -> int:
        with Session(self.engine) as s:
            return s.scalar(query) or 0  # type: ignore[call-overload]

    def inbox(self) -> int:
        return self.count(select(func.count()).select_from(InboxRow))

    def dead(self) -> int:
        return self.count(select(func.count()).select_from(DeadLetterRow))

    def sent(self) -> int:
        return self.count(
            select(func.count()).select_from(OutboxRow).where(OutboxRow.state == DeliveryState.SENT)
        )

    def unsent(self) -> int:
        return self.count(
            select(func.count())
            .select_from(OutboxRow)
            .where(OutboxRow.state == DeliveryState.PENDING)
        )


def make_flow(engine: Engine, postgres: PostgresCluster, bootstrap: str, logs: Path) -> Flow:
    upgrade(engine)
    with engine.connect() as conn:
        schema = conn.execute(text("select current_schema()")).scalar_one()
    prefix = f"c{uuid.uuid4().hex[:8]}."
    topics = Topics(canonical=f"{prefix}jokko.events.v1", prefix=prefix, partitions=6)
    ensure_topics(bootstrap, topics.specs())
    env = {
        **os.environ,
        "JOKKO_KAFKA_BOOTSTRAP": bootstrap,
        "JOKKO_DATABASE_URL": f"{postgres.url}?options=-csearch_path%3D{schema}",
        "JOKKO_CANONICAL_TOPIC": topics.canonical,
        "JOKKO_TOPIC_PREFIX": prefix,
        "JOKKO_ROUTER_GROUP": f"{prefix}router",
        "JOKKO_ROUTER_INSTANCE_ID": "router-1",
        "JOKKO_RELAY_BATCH_SIZE": "200",
        # small transactions, so that kills and outages land in the middle of the stream
        "JOKKO_ROUTER_BATCH_SIZE": "10",
        # the institutions read this test broker in mode kafka: their topics in clear
        **{f"JOKKO_{inst.value.upper()}__ALLOW_CLEAR_TOPIC": "true" for inst in Institution},
    }
    return Flow(engine, env, topics, logs)


@pytest.fixture
def flow(
    pg_engine: Engine, postgres: PostgresCluster, kafka_bootstrap: str, tmp_path: Path
) -> Iterator[Flow]:
    f = make_flow(pg_engine, postgres, kafka_bootstrap, tmp_path)
    try:
        yield f
    finally:
        f.stop_all()


def feed(flow: Flow, bootstrap: str, members: int, per_member: int) -> int:
    """Publish contributions (three institutions each) with poison records interleaved."""
    events = contributions(members, per_member, seed=uuid.uuid4().hex[:4])
    # sealed under the keyring the processes read (the same settings, the same file)
    vault = Vault(keyring.load(load_settings().keyring_file, create=True))
    producer = idempotent_producer(bootstrap)
    try:
        step = len(events) // (len(POISON) + 1)
        for i in range(0, len(events), step):
            publish_events(producer, flow.topics.canonical, events[i : i + step], vault=vault)
            if i // step < len(POISON):
                producer.send(flow.topics.canonical, key=b"poison", value=POISON[i // step])
        producer.flush()
    finally:
        producer.close()
    return len(events)


def wait_for(
    predicate: object, timeout_s: float, what: str, flow: Flow, poll_s: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            logs = {p.name: p.read_text()[-2000:] for p in flow.logs.glob("*.log")}
            raise AssertionError(f"timed out waiting for {what}; logs: {logs}")
        time.sleep(poll_s)


def assert_store_exact(flow: Flow, n_events: int) -> set[str]:
    assert flow.inbox() == n_events
    assert flow.dead() == len(POISON), "each poison record dead-lettered once"
    with Session(flow.engine) as s:
        ids = list(s.scalars(select(OutboxRow.message_id)))
    assert len(ids) == 3 * n_events
    assert len(set(ids)) == len(ids)
    return set(ids)


def test_router_killed_ten_times_loses_and_doubles_nothing(
    flow: Flow, kafka_bootstrap: str
) -> None:
    n = feed(flow, kafka_bootstrap, members=40, per_member=40)
    rng = random.Random(20261128)
    flow.start("relay")
    progress = []
    while flow.kills["router"] < 10:
        before = flow.inbox()
        flow.start("router")
        # kill once it is working: a random moment after its first new inbox row
        wait_for(lambda b=before: flow.inbox() > b, 60, "the router to make progress", flow)
        time.sleep(rng.uniform(0.0, 0.2))
        flow.kill("router")
        progress.append(flow.inbox())
    mid_stream = [p for p in progress if 0 < p < n]
    assert len(mid_stream) >= 3, f"kills should land mid-stream; inbox at kills: {progress}"

    flow.start("router")
    wait_for(lambda: flow.inbox() == n and flow.unsent() == 0, 180, "the backlog", flow)
    ids = assert_store_exact(flow, n)
    got = read_outbound(kafka_bootstrap, flow.topics, len(ids))
    assert {h["message_id"] for h in got} == ids
    assert_once_and_in_member_order(got, len(ids))  # the relay was never killed here
    print(f"router kills: {flow.kills['router']}, inbox at each kill: {progress}")


def test_relay_killed_repeatedly_loses_nothing_and_republishes_with_the_same_id(
    flow: Flow, kafka_bootstrap: str
) -> None:
    """The router first routes the whole stream, so every relay life starts with a backlog; each
    is killed at a random point of it, in the middle of draining."""
    flow.env["JOKKO_ROUTER_BATCH_SIZE"] = "500"
    flow.env["JOKKO_RELAY_BATCH_SIZE"] = "100"  # a life overshoots its target by a batch or so
    n = feed(flow, kafka_bootstrap, members=50, per_member=60)
    flow.start("router")
    wait_for(lambda: flow.inbox() == n, 120, "the router to route the stream", flow)
    rng = random.Random(11)
    kills = 12
    sent_at_kill = []
    while flow.kills["relay"] < kills:
        # a random point of the stream, not of the clock: however fast the machine, each life
        # is killed while rows remain
        target = flow.sent() + rng.randint(1, 3 * n // (2 * kills))
        flow.start("relay")
        wait_for(lambda t=target: flow.sent() >= t, 60, "the relay's progress", flow, poll_s=0.01)
        flow.kill("relay")
        sent_at_kill.append(flow.sent())
    assert sent_at_kill[-1] < 3 * n, f"every kill lands mid-stream; sent at kills: {sent_at_kill}"
    flow.start("relay")
    wait_for(lambda: flow.unsent() == 0, 180, "the backlog", flow)

    ids = assert_store_exact(flow, n)
    got = read_outbound(kafka_bootstrap, flow.topics, len(ids))
    counts = Counter(h["message_id"] for h in got)
    assert set(counts) == ids, "nothing missing, and every copy is of a message in the store"
    republished = assert_in_member_order_after_dedupe(got, ids)
    print(
        f"relay kills: {flow.kills['relay']}, outbound messages: {len(ids)}, "
        f"republished copies: {republished}, sent at each kill: {sent_at_kill}"
    )


def test_broker_stopped_mid_stream_then_everything_arrives(
    pg_engine: Engine, postgres: PostgresCluster, tmp_path: Path
) -> None:
    """The broker goes away for a while under a running router and relay, then comes back."""
    broker = KafkaBroker(directory=tmp_path / "broker")
    broker.start()
    f: Flow | None = None
    try:
        wait_until_ready(broker.bootstrap)
        f = make_flow(pg_engine, postgres, broker.bootstrap, tmp_path)
        n = feed(f, broker.bootstrap, members=40, per_member=10)
        f.start("router")
        f.start("relay")
        wait_for(lambda: f is not None and f.inbox() > 20, 60, "the router to start", f)
        broker.stop()
        at_stop = f.inbox()
        time.sleep(5)  # router and relay now retry against a dead broker
        assert f.procs["router"].poll() is None, "the router must survive a broker outage"
        assert f.procs["relay"].poll() is None, "the relay must survive a broker outage"
        broker.restart()
        wait_for(lambda: f is not None and f.inbox() == n and f.unsent() == 0, 180, "recovery", f)
        ids = assert_store_exact(f, n)
        got = read_outbound(broker.bootstrap, f.topics, len(ids))
        assert {h["message_id"] for h in got} == ids
        # A batch in flight when the broker went away is retried whole with the same ids:
        # consumers dedupe those copies, and what they keep is in each member's order.
        copies = assert_in_member_order_after_dedupe(got, ids)
        print(
            f"broker stopped with {at_stop}/{n} events routed; all {len(ids)} delivered after, "
            f"{copies} republished copies"
        )
    finally:
        if f is not None:
            f.stop_all()
        broker.stop()
