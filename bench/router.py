"""Router + relay on a real broker and PostgreSQL: throughput next to a raw Kafka passthrough,
latency at a fixed offered rate, 1, 2 and 3 router processes, and a run under repeated SIGKILL.

Run: ``.venv/bin/python -m bench.router [--events 20000]``. It starts its own Kafka broker and
PostgreSQL cluster (``tests/infra.py``), publishes ``--events`` contribution events (each one
for CMU, CSS and IPRES), preceded by the enrolments of their members, to a canonical topic of
six partitions, and runs real ``jokko router`` / ``jokko relay`` processes against it, each
scenario with its own topic prefix, consumer group and database schema.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from sqlalchemy import Engine, text

from adapters.base import Institution, MemberProfile, OutboundAdapter, profile_after
from bench.record import figure, write_record
from router.broker import (
    TopicSpec,
    ensure_topics,
    group_consumer,
    idempotent_producer,
    wait_until_ready,
)
from router.canonical import record_headers
from router.db import make_engine
from router.migrate import upgrade
from router.processing import Processor, RawRecord
from router.registry import outbound_adapters
from router.routing import destinations
from router.topics import Topics
from schemas import CanonicalEvent, dump_event, parse_event
from tests.factories import contributions, enrolments
from tests.infra import REPO, KafkaBroker, PostgresCluster

JOKKO = str(Path(sys.executable).parent / "jokko")
PARTITIONS = 6
PER_MEMBER = 20
# The processor as it was before the batch was planned ahead and written with COPY
# (the last commit where router/processing.py had that shape), measured in the same run.
BASELINE_REV = "97488c91a841ac5f2923c465f1ddfab2c31e5fe4"
TARGET_EVENTS_PER_S = 3_000
TARGET_RATIO = 0.4


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- infrastructure


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


# --------------------------------------------------------------------------- workload


@dataclass
class Workload:
    """Enrolments first (so every member is known), then the contributions, interleaved."""

    events: list[CanonicalEvent]
    contributions: int
    expected: dict[str, int]
    """event_id -> how many outbound messages it must give (routing table x adapters)."""

    @property
    def messages(self) -> int:
        return sum(self.expected.values())


def workload(n_contributions: int, seed: str) -> Workload:
    per_member = min(PER_MEMBER, max(1, n_contributions))
    members = max(1, n_contributions // per_member)
    paid = contributions(members, per_member, seed=seed)
    # Unique enrolment ids per workload: each topic gets its own members' enrolments.
    enrolled = [
        e.model_copy(update={"event_id": uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}:{e.event_id}")})
        for e in enrolments(members)
    ]
    events: list[CanonicalEvent] = [*enrolled, *paid]
    return Workload(events, len(paid), expected_messages(events))


def with_profiles(
    events: Iterable[CanonicalEvent],
) -> Iterator[tuple[CanonicalEvent, MemberProfile | None]]:
    """Each event with its member's profile once it is applied, as the router keeps them."""
    known: dict[str, MemberProfile] = {}
    for e in events:
        profile = profile_after(known.get(e.member_id), e)
        if profile is not None:
            known[e.member_id] = profile
        yield e, profile


def expected_messages(events: Sequence[CanonicalEvent]) -> dict[str, int]:
    """What the router must produce, worked out here from the routing table and adapters."""
    adapters = outbound_adapters()
    return {
        str(e.event_id): sum(len(adapters[i].translate(e, p)) for i in destinations(e, p))
        for e, p in with_profiles(events)
    }


def publish(
    bootstrap: str, topic: str, events: Sequence[CanonicalEvent], rate: float | None = None
) -> None:
    """Keyed by member, acks=all; at ``rate`` events/s if given (CreateTime = send time).

    Clear records, which the router reads as records from before sealing: the routers run
    with a keyring of their own that this publisher does not share, so the figures here leave
    out opening a sealed record (its cost per record is in ``bench/seal.py``)."""
    producer = idempotent_producer(bootstrap, client_id="bench-publisher")
    try:
        start = time.perf_counter()
        for i, e in enumerate(events):
            if rate:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            producer.send(
                topic, key=e.member_id.encode(), value=dump_event(e), headers=record_headers(e)
            )
        producer.flush(timeout=120)
    finally:
        producer.close()


def read_all(bootstrap: str, topics: Sequence[str]) -> list[Any]:
    """Every record now on ``topics`` (from the beginning to the current end offsets)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, max_poll_records=5000
    )
    try:
        tps: list[TopicPartition] = []
        for t in topics:
            deadline = time.monotonic() + 30
            while not consumer.partitions_for_topic(t) and time.monotonic() < deadline:
                consumer.topics()  # refresh metadata
                time.sleep(0.1)
            tps += [TopicPartition(t, p) for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + 300
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topics}: still short of the end offsets")
            for batch in consumer.poll(timeout_ms=500).values():
                records += batch
        return records
    finally:
        consumer.close()


def headers(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers or ()}


# --------------------------------------------------------------------------- in-process processor


def _baseline_processor_module() -> types.ModuleType:
    src = subprocess.run(
        ["git", "show", f"{BASELINE_REV}:router/processing.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("bench_baseline_processing")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(src, f"{BASELINE_REV[:10]}:router/processing.py", "exec"), module.__dict__)
    return module


class TimedAdapter:
    """An outbound adapter whose ``translate`` adds its time to ``seconds``."""

    def __init__(self, adapter: OutboundAdapter) -> None:
        self._adapter = adapter
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    def translate(self, event: CanonicalEvent, member: MemberProfile | None) -> Any:
        start = time.perf_counter()
        try:
            return self._adapter.translate(event, member)
        finally:
            self.seconds += time.perf_counter() - start


def processor_rate(
    infra: Infra,
    events: Sequence[CanonicalEvent],
    make: Callable[[Engine], Any],
    raw: type,
    on_start: Callable[[], None] | None = None,
) -> float:
    """Events/s of ``Processor.process_batch`` on PostgreSQL, batches of the router's size;
    the members' enrolments are applied first, untimed."""
    engine, _ = infra.schema_engine("proc")
    try:
        processor = make(engine)
        records = [raw("bench", 0, i, dump_event(e)) for i, e in enumerate(events)]
        enrol = sum(1 for e in events if e.event_type == "member.enrolled")
        for i in range(0, enrol, 500):
            processor.process_batch(records[i : min(i + 500, enrol)])
        rest = records[enrol:]
        if on_start:
            on_start()
        start = time.perf_counter()
        for i in range(0, len(rest), 500):
            processor.process_batch(rest[i : i + 500])
        return len(rest) / (time.perf_counter() - start)
    finally:
        engine.dispose()


@dataclass
class Split:
    """Where one event's time goes in ``Processor.process_batch`` (microseconds)."""

    total_us: float
    parse_us: float
    translate_us: dict[str, float]

    @property
    def store_us(self) -> float:
        """PostgreSQL round trips, COPY and commit, plus the router's own bookkeeping."""
        return self.total_us - self.parse_us - sum(self.translate_us.values())

    def describe(self) -> str:
        per = ", ".join(f"{k.upper()} {v:.0f}" for k, v in self.translate_us.items())
        return (
            f"{self.total_us:.0f} µs per event: parsing and validating the canonical JSON "
            f"{self.parse_us:.0f} µs, translation {sum(self.translate_us.values()):.0f} µs "
            f"({per}), the store (PostgreSQL round trips, COPY, commit) and the router's own "
            f"bookkeeping {self.store_us:.0f} µs"
        )


def processor_split(infra: Infra, events: Sequence[CanonicalEvent]) -> Split:
    timed = {inst: TimedAdapter(a) for inst, a in outbound_adapters().items()}
    adapters = cast(dict[Institution, OutboundAdapter], timed)

    def reset() -> None:  # the enrolments, applied untimed, do not count
        for t in timed.values():
            t.seconds = 0.0

    rate = processor_rate(infra, events, lambda e: Processor(e, adapters), RawRecord, reset)
    paid = [e for e in events if e.event_type != "member.enrolled"]
    n = len(paid)
    values = [dump_event(e) for e in paid]
    start = time.perf_counter()
    for v in values:
        parse_event(v)
    parse_s = time.perf_counter() - start
    return Split(
        total_us=1e6 / rate,
        parse_us=parse_s / n * 1e6,
        translate_us={inst.value: t.seconds / n * 1e6 for inst, t in timed.items()},
    )


def processor_figures(infra: Infra, n: int) -> tuple[list[dict[str, Any]], Split]:
    events = workload(n, seed="proc").events
    log(f"processor on PostgreSQL: {n:,} contribution events, batches of 500")
    after = max(
        processor_rate(infra, events, lambda e: Processor(e, outbound_adapters()), RawRecord)
        for _ in range(2)
    )
    log(f"  now                 {after:>8,.0f} events/s")
    before: float | None = None
    why = None
    try:
        old = _baseline_processor_module()
        before = max(
            processor_rate(
                infra, events, lambda e: old.Processor(e, outbound_adapters()), old.RawRecord
            )
            for _ in range(2)
        )
        log(f"  before ({BASELINE_REV[:7]})  {before:>8,.0f} events/s")
    except Exception as exc:  # the old code no longer runs against today's store, or no git
        why = f"baseline {BASELINE_REV[:7]} could not run: {exc!r}"[:300]
        log(f"  before: {why}")
    split = processor_split(infra, events)
    log(f"  {split.describe()}")
    fig = figure(
        "processor_events_per_s",
        after,
        "events/s",
        peer=f"Processor before (commit {BASELINE_REV[:7]})",
        peer_value=before,
    )
    if why:
        fig["peer_why_missing"] = why
    return [fig], split


# --------------------------------------------------------------------------- peer


def passthrough(bootstrap: str, source: str, total: int, fanout: int = 1) -> tuple[float, int]:
    """kafka-python alone: consume a batch, produce each record (acks=all) to ``fanout``
    scratch topics, flush, commit: the shape of the router's loop without the work, and with
    ``fanout=3`` the Kafka I/O Jokko cannot avoid (one record in, one out per institution).
    Returns (events/s, records consumed)."""
    tag = f"{source}.peer{fanout}.{uuid.uuid4().hex[:6]}"
    scratch = [f"{tag}.{i}" for i in range(fanout)]
    ensure_topics(bootstrap, [TopicSpec(t, PARTITIONS) for t in scratch])
    consumer = group_consumer(bootstrap, f"{tag}.group", [source], client_id="bench-peer")
    producer: KafkaProducer = idempotent_producer(bootstrap, client_id="bench-peer")
    try:
        seen = 0
        first: float | None = None
        first_batch = 0
        deadline = time.monotonic() + 300
        while seen < total and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            n = 0
            for records in batch.values():
                for r in records:
                    for t in scratch:
                        producer.send(t, key=r.key, value=r.value, headers=r.headers)
                    n += 1
            producer.flush()
            consumer.commit()
            seen += n
            if first is None and n:
                first, first_batch = time.perf_counter(), n
        if first is None or seen < total:
            raise TimeoutError(f"passthrough saw {seen} of {total} records")
        return (seen - first_batch) / (time.perf_counter() - first), seen
    finally:
        consumer.close()
        producer.close()


# --------------------------------------------------------------------------- Jokko processes


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
            for key, proc in self.procs.items():
                if proc.poll() not in (None, -signal.SIGKILL, 0):
                    self.fail(f"{key} exited with {proc.returncode} while waiting for {what}")
            if time.monotonic() > deadline:
                self.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.25)

    def fail(self, why: str) -> None:
        tails = {p.name: p.read_text(errors="replace")[-1500:] for p in self.logs.glob("*.log")}
        raise RuntimeError(f"{self.name}: {why}; logs: {tails}")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU of one process so far (/proc), to tell a CPU bound from waiting;
    with ``children``, also its live children's and what its reaped children used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                child = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # exited meanwhile
                continue
            if int(child[1]) == pid:
                ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def infra_cpu(infra: Infra) -> dict[str, float]:
    """CPU seconds so far of the broker (JVM) and PostgreSQL (postmaster and backends)."""
    broker = int((infra.broker.directory / "kafka.pid").read_text().split()[0])
    postmaster = int((infra.pg.directory / "data" / "postmaster.pid").read_text().split()[0])
    return {"broker": cpu_seconds(broker), "postgres": cpu_seconds(postmaster, children=True)}


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot (/proc/stat; idle and iowait not busy)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


@dataclass
class Run:
    events: int
    seconds: float
    startup_s: float
    routed_s: float
    """When the router had every event in the inbox (the relay finishes at ``seconds``)."""
    messages: int
    published_when_routed: int
    cores: dict[str, float] = field(default_factory=dict)
    """Cores each kind of Jokko process used over the run (router processes summed), and
    ``machine``: the share of all cores busy, whoever used them (broker, PostgreSQL, others)."""

    @property
    def relay_alone(self) -> float:
        """Messages/s the relay published once the router had nothing left to do."""
        tail = self.seconds - self.routed_s
        return (self.messages - self.published_when_routed) / tail if tail > 0 else math.inf

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def throughput(
    infra: Infra, name: str, canonical: str, load: Workload, logs: Path, routers: int
) -> Run:
    """Router(s) + relay from a backlog of ``load`` until every expected row is published.

    The clock starts when the first inbox rows appear (process start-up and the group join
    are reported apart) and stops when the last expected outbox row is marked published; the
    events already in the inbox when the clock starts are not counted."""
    d = Deployment.create(infra, name, canonical, logs)
    try:
        launched = time.perf_counter()
        d.start("relay")
        for i in range(routers):
            d.start("router", str(i + 1))
        d.wait(lambda: d.inbox() > 0, 120, "the first event")
        start, at_start = time.perf_counter(), d.inbox()
        cpu0 = {k: cpu_seconds(p.pid) for k, p in d.procs.items()}
        infra0 = infra_cpu(infra)
        busy0, total0 = machine_jiffies()
        d.wait(lambda: d.inbox() >= len(load.events), 900, "every event in the inbox")
        routed = time.perf_counter() - start
        published_when_routed = d.published()
        d.wait(d.delivered(len(load.events)), 900, "every message published")
        seconds = time.perf_counter() - start
        cores: dict[str, float] = {}
        for k, p in d.procs.items():
            kind = k.split("-")[0]
            cores[kind] = cores.get(kind, 0.0) + (cpu_seconds(p.pid) - cpu0[k]) / seconds
        for k, v in infra_cpu(infra).items():
            cores[k] = (v - infra0[k]) / seconds
        busy1, total1 = machine_jiffies()
        cores["machine"] = (busy1 - busy0) / (total1 - total0)
        assert d.inbox() == len(load.events), (d.inbox(), len(load.events))
        assert d.published() == load.messages, (d.published(), load.messages)
        return Run(
            len(load.events) - at_start,
            seconds,
            start - launched,
            routed,
            load.messages,
            published_when_routed,
            cores,
        )
    finally:
        d.stop()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Latency:
    total_ms: list[float]
    """Per event: CreateTime of its last outbound record minus its canonical record's."""
    router_ms: list[float]
    """Per event: when the router planned its batch (inbox ``received_at``) minus the
    canonical record's CreateTime; the rest is the commit and the relay."""
    events: int
    offered: float


def latency(infra: Infra, logs: Path, rate: float, seconds: float) -> Latency:
    """Router + relay running; events offered at ``rate`` for ``seconds``."""
    canonical = f"lat{uuid.uuid4().hex[:6]}.jokko.events.v1"
    ensure_topics(infra.bootstrap, [TopicSpec(canonical, PARTITIONS)])
    n = max(1, int(rate * seconds))
    members = max(1, n // PER_MEMBER)
    warm = [
        e.model_copy(update={"event_id": uuid.uuid5(uuid.NAMESPACE_URL, f"lat:{e.event_id}")})
        for e in enrolments(members)
    ]
    offered = contributions(members, math.ceil(n / members), seed="lat")[:n]
    d = Deployment.create(infra, "lat", canonical, logs)
    try:
        d.start("relay")
        d.start("router")
        publish(infra.bootstrap, canonical, warm)
        d.wait(d.delivered(len(warm)), 120, "the warm-up enrolments")
        start = time.perf_counter()
        publish(infra.bootstrap, canonical, offered, rate=rate)
        achieved = n / (time.perf_counter() - start)
        d.wait(d.delivered(len(warm) + n), 300, "the offered events published")
        with d.engine.connect() as conn:
            received = {
                eid: at.timestamp() * 1000
                for eid, at in conn.execute(text("SELECT event_id, received_at FROM inbox"))
            }
    finally:
        d.stop()
    sent = {headers(r)["event_id"]: r.timestamp for r in read_all(infra.bootstrap, [canonical])}
    last: dict[str, int] = {}
    outbound = [d.topics.outbound(i) for i in Institution]
    for r in read_all(infra.bootstrap, outbound):
        eid = headers(r)["event_id"]
        last[eid] = max(last.get(eid, 0), r.timestamp)
    ids = [str(e.event_id) for e in offered]
    return Latency(
        total_ms=[float(last[i] - sent[i]) for i in ids],
        router_ms=[received[i] - sent[i] for i in ids],
        events=n,
        offered=achieved,
    )


@dataclass
class KillRun:
    kills: int
    mid_stream: int
    seconds: float
    inbox: int
    store_rows: int
    store_distinct: int
    wrong_events: int
    missing_on_topics: int
    republished: int

    @property
    def exactly_once(self) -> bool:
        return (
            self.store_rows == self.store_distinct
            and self.wrong_events == 0
            and self.missing_on_topics == 0
        )


def progress_since(d: Deployment, before: int) -> Callable[[], bool]:
    return lambda: d.inbox() > before


def kill_run(
    infra: Infra, canonical: str, load: Workload, logs: Path, kills: int, seed: int
) -> KillRun:
    """The relay runs throughout; the router is SIGKILLed ``kills`` times, each time at a
    random moment after it made progress, and restarted; then it runs to the end."""
    rng = random.Random(seed)
    d = Deployment.create(infra, "kill", canonical, logs)
    total = len(load.events)
    try:
        start = time.perf_counter()
        d.start("relay")
        mid = 0
        while d.kills < kills:
            d.start("router")
            d.wait(progress_since(d, min(d.inbox(), total - 1)), 120, "router progress")
            time.sleep(rng.uniform(0.0, 0.8))
            d.kill("router-1")
            mid += int(0 < d.inbox() < total)
        d.start("router")
        d.wait(d.delivered(total), 900, "the backlog after the kills")
        seconds = time.perf_counter() - start
        with d.engine.connect() as conn:
            per_event: dict[str, int] = {
                eid: n
                for eid, n in conn.execute(
                    text("SELECT event_id, count(*) FROM outbox GROUP BY event_id")
                )
            }
            rows, distinct = conn.execute(
                text("SELECT count(*), count(DISTINCT message_id) FROM outbox")
            ).one()
            ids = set(conn.execute(text("SELECT message_id FROM outbox")).scalars())
        inbox = d.inbox()
    finally:
        d.stop()
    wrong = sum(1 for eid, n in load.expected.items() if per_event.get(eid, 0) != n)
    on_topics = Counter(
        headers(r)["message_id"]
        for r in read_all(infra.bootstrap, [d.topics.outbound(i) for i in Institution])
    )
    return KillRun(
        kills=d.kills,
        mid_stream=mid,
        seconds=seconds,
        inbox=inbox,
        store_rows=int(rows),
        store_distinct=int(distinct),
        wrong_events=wrong + int(inbox != total),
        missing_on_topics=len(ids - set(on_topics)),
        republished=sum(on_topics.values()) - len(on_topics),
    )


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.router", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="contribution events")
    parser.add_argument("--processor-events", type=int, default=4_000)
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offered events/s for the latency run (default: half the measured throughput, "
        "at most 300)",
    )
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=20261129)
    args = parser.parse_args(argv)

    figures: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="jokko-bench-") as tmp,
        infrastructure(Path(tmp)) as infra,
    ):
        logs = Path(tmp) / "logs"
        bench_started = time.perf_counter()
        load_before = os.getloadavg()[0]

        procs, split = processor_figures(infra, args.processor_events)
        figures += procs

        load = workload(args.events, seed=f"b{args.seed}")
        canonical = f"bench{uuid.uuid4().hex[:6]}.jokko.events.v1"
        ensure_topics(infra.bootstrap, [TopicSpec(canonical, PARTITIONS)])
        publish(infra.bootstrap, canonical, load.events)
        log(
            f"published {len(load.events):,} events ({load.contributions:,} contributions after "
            f"their members' enrolments) -> {load.messages:,} outbound messages expected"
        )

        peer, peer_n = passthrough(infra.bootstrap, canonical, len(load.events))
        log(f"raw kafka-python passthrough  {peer:>8,.0f} events/s ({peer_n:,} records)")
        fan, _ = passthrough(infra.bootstrap, canonical, len(load.events), fanout=3)
        log(f"raw kafka-python 1 -> 3 fan-out {fan:>6,.0f} events/s")
        one = throughput(infra, "one", canonical, load, logs, routers=1)
        log(
            f"router + relay (1 router)     {one.rate:>8,.0f} events/s ({one.events:,} events "
            f"in {one.seconds:.1f} s, all routed after {one.routed_s:.1f} s; "
            f"start-up {one.startup_s:.1f} s)"
        )
        two = throughput(infra, "two", canonical, load, logs, routers=2)
        log(
            f"router + relay (2 routers)    {two.rate:>8,.0f} events/s ({two.events:,} events "
            f"in {two.seconds:.1f} s, all routed after {two.routed_s:.1f} s; "
            f"start-up {two.startup_s:.1f} s)"
        )
        three = throughput(infra, "three", canonical, load, logs, routers=3)
        log(
            f"router + relay (3 routers)    {three.rate:>8,.0f} events/s ({three.events:,} "
            f"events in {three.seconds:.1f} s, all routed after {three.routed_s:.1f} s; "
            f"start-up {three.startup_s:.1f} s)"
        )
        for run in (one, two, three):
            log(f"  cores used: {', '.join(f'{k} {v:.2f}' for k, v in run.cores.items())}")
        ratio = one.rate / peer
        relay_rate = load.messages * one.events / len(load.events) / one.seconds
        figures += [
            figure(
                "router_events_per_s",
                one.rate,
                "events/s",
                peer="raw kafka-python passthrough",
                peer_value=peer,
                target=f">= {TARGET_RATIO}",
                met=ratio >= TARGET_RATIO,
            ),
            figure(
                "router_events_per_s_absolute",
                one.rate,
                "events/s",
                target=f">= {TARGET_EVENTS_PER_S:,}",
                met=one.rate >= TARGET_EVENTS_PER_S,
            ),
            figure(
                "router_events_per_s_vs_fanout",
                one.rate,
                "events/s",
                peer="raw kafka-python 1 -> 3 fan-out",
                peer_value=fan,
            ),
            figure(
                "router_2_processes_events_per_s",
                two.rate,
                "events/s",
                peer="1 router process",
                peer_value=one.rate,
            ),
            figure(
                "router_3_processes_events_per_s",
                three.rate,
                "events/s",
                peer="1 router process",
                peer_value=one.rate,
            ),
            figure("router_only_events_per_s", one.events / one.routed_s, "events/s"),
            figure(
                "router_only_2_processes_events_per_s",
                two.events / two.routed_s,
                "events/s",
                peer="1 router process",
                peer_value=one.events / one.routed_s,
            ),
            figure(
                "router_only_3_processes_events_per_s",
                three.events / three.routed_s,
                "events/s",
                peer="1 router process",
                peer_value=one.events / one.routed_s,
            ),
            figure(
                "machine_cores_busy_3_routers",
                three.cores["machine"] * (os.cpu_count() or 1),
                "cores",
                peer="cores",
                peer_value=os.cpu_count() or 1,
            ),
            figure("relay_messages_per_s", relay_rate, "messages/s"),
            figure("relay_messages_per_s_router_idle", one.relay_alone, "messages/s"),
            figure("router_startup_s", one.startup_s, "s"),
        ]

        rate = args.rate or min(300.0, max(10.0, round(one.rate / 2, -1)))
        lat = latency(infra, logs, rate, args.latency_seconds)
        p50, p99 = percentile(lat.total_ms, 0.50), percentile(lat.total_ms, 0.99)
        r50, r99 = percentile(lat.router_ms, 0.50), percentile(lat.router_ms, 0.99)
        log(
            f"latency at {lat.offered:,.0f} events/s offered ({lat.events:,} events): "
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(lat.total_ms):.0f} ms; "
            f"until the router had it: p50 {r50:.0f} ms, p99 {r99:.0f} ms"
        )
        figures += [
            figure("router_latency_offered_events_per_s", lat.offered, "events/s"),
            figure("router_latency_p50_ms", p50, "ms"),
            figure("router_latency_p99_ms", p99, "ms"),
            figure("router_latency_to_router_p50_ms", r50, "ms"),
            figure("router_latency_to_router_p99_ms", r99, "ms"),
        ]

        k = kill_run(infra, canonical, load, logs, args.kills, args.seed)
        log(
            f"kill run: {k.kills} SIGKILLs ({k.mid_stream} mid-stream), {k.seconds:.1f} s, "
            f"inbox {k.inbox:,}/{len(load.events):,}, store rows {k.store_rows:,} "
            f"({k.store_distinct:,} distinct, {k.wrong_events} events with a wrong count), "
            f"missing on topics {k.missing_on_topics}, republished copies {k.republished}"
        )
        figures += [
            figure(
                "kill_run_exactly_once",
                float(k.exactly_once),
                "1 = yes",
                target="1",
                met=k.exactly_once,
            ),
            figure(
                "kill_run_router_kills",
                k.kills,
                "SIGKILLs",
                target=f">= {args.kills}",
                met=k.kills >= args.kills,
            ),
            figure("kill_run_seconds", k.seconds, "s"),
            figure("kill_run_republished_copies", k.republished, "messages"),
        ]
        elapsed = time.perf_counter() - bench_started
        load_after = os.getloadavg()[0]
        log(f"bench ran {elapsed:.0f} s (after infrastructure start)")

    setup = (
        f"Workload: {load.contributions:,} `contribution.paid` events (each one message to CMU, "
        f"CSS and IPRES) after the {len(load.events) - load.contributions:,} enrolments of their "
        f"members, on a canonical topic of {PARTITIONS} partitions: {load.messages:,} outbound "
        f"messages. Everything runs on this machine at once: the Kafka broker (JVM), "
        f"PostgreSQL, `jokko router` and `jokko relay` as separate processes (1-minute load "
        f"average {load_before:.1f} when the run started, {load_after:.1f} when it ended, "
        f"{elapsed / 60:.1f} minutes). A rate counts "
        f"canonical events from the first inbox rows to the last outbox row marked published "
        f"(start-up and group join, {one.startup_s:.1f} s, apart); the peer consumes a batch, "
        f"produces it with acks=all, flushes and commits, with Jokko's client settings. "
        f"Latency: {lat.events:,} contributions offered at {lat.offered:,.0f}/s to a running "
        f"router + relay, per event the CreateTime of its last outbound record minus that of "
        f"its canonical record (mean {statistics.mean(lat.total_ms):.0f} ms); the "
        f"`to_router` figures stop at the router picking the event up (the inbox row's "
        f"`received_at`), the rest being its commit and the relay. Kill run: the relay runs "
        f"throughout, the router is SIGKILLed {k.kills} times ({k.mid_stream} with the stream "
        f"under way) at a random moment after it made progress, and restarted; afterwards "
        f"every expected message is in the store exactly once and on the topics "
        f"({'yes' if k.exactly_once else 'NO'}), {k.republished} republished copies."
    )
    per_event = load.messages / len(load.events)
    routing = one.events / one.routed_s
    relaying = one.relay_alone / per_event
    slower = "relay" if relaying < routing else "router"
    scale = "; ".join(
        f"{n} router{'s' if n > 1 else ''}: {r.rate:,.0f} events/s end to end, routing phase "
        f"{r.events / r.routed_s:,.0f} events/s, cores used: "
        + ", ".join(
            f"{k} {v * (os.cpu_count() or 1):.2f}" if k == "machine" else f"{k} {v:.2f}"
            for k, v in r.cores.items()
        )
        for n, r in ((1, one), (2, two), (3, three))
    )
    bounds = (
        f"Scale-out (one consumer group, {PARTITIONS} partitions, the same backlog, the relay "
        f"throughout; `machine` is every busy core whoever used it): {scale}. "
        f"What bounds it. The router alone: {split.describe()}. In the 1-router run it routed "
        f"the backlog at {routing:,.0f} events/s while sharing the two cores with the relay, "
        f"the broker and PostgreSQL; the relay finished {one.seconds - one.routed_s:.1f} s "
        f"after the router had every event in the inbox, publishing {relay_rate:,.0f} "
        f"messages/s over the run and {one.relay_alone:,.0f}/s once the router was idle "
        f"({relaying:,.0f} events/s at {per_event:.1f} messages an event): in this run the "
        f"{slower} was the slower of the two, and each one's CPU slows the other. Kafka I/O "
        f"alone sets a ceiling too: kafka-python takes {1e6 / peer:,.0f} µs per event passed "
        f"through and {1e6 / fan:,.0f} µs per event fanned out to three topics, so a 1 -> 3 "
        f"fan-out reaches at most {fan / peer:.2f} of the passthrough before Jokko does any "
        f"work of its own; Jokko reaches {one.rate / fan:.2f} of that fan-out. " + PROFILE_NOTES
    )
    write_record("router", figures, setup + "\n\n" + bounds)
    return 0 if k.exactly_once and k.kills >= args.kills else 1


PROFILE_NOTES = (
    "The store's share of the router is PostgreSQL inserting, per event, one inbox row, three "
    "outbox rows and five trail rows, in five statements and two COPY streams per batch of "
    "500: the outbox rows dominate, and of their cost the secondary indexes of `outbox` took "
    "~50% and the foreign key to `inbox` ~30% (COPY of the same rows into a copy of the "
    "table: 43 µs per event with the primary key only, 163 with all indexes, 232 with the "
    "foreign key as well; 2026-11-28). Since then (2026-12-03, each measured on its own, "
    "before/after alternated on this shared machine): migration 0006 folds the overlapping "
    "outbox indexes into a partial index on pending rows and a member-first unique index "
    "(7 -> 5 secondary indexes; COPY of 5,000 events' outbox rows 453 -> 348 µs per event, "
    "median of 4); the relay writes a delivered batch set-based like the router (one UPDATE "
    "per target state by id, COPY of the trail rows, `router/bulk.py`), which took its CPU "
    "from ~440 to ~305 µs per message (1,484-1,595 -> 1,797-1,911 messages/s on a 9,450-"
    "message backlog); phone-number validation, the largest part of `parse_event` (~45 µs a "
    "number), is memoised (~0.1 µs on a repeat; the workload here repeats its 500 members' "
    "phones, production's millions of members would not), and the allocation check walks a "
    "tuple (2.6 -> 0.55 µs; it was ~4% of `parse_event`, not the 21% an earlier profile "
    "gave it). Profiles before those changes (py-spy at 100 Hz, 14,000 contributions; CPU, "
    "not time waiting on PostgreSQL): `jokko router` spent 45% of its CPU in the adapters' "
    "`translate` (CMU 21%: JSON + uuid5 message ids; CSS 15%: lxml; IPRES 9%), 28% in "
    "`parse_event`, 5% formatting the COPY streams, 3% polling Kafka; `jokko relay` 36% in "
    "the SQLAlchemy ORM flush at commit (now gone), 15% in `KafkaProducer.send` and 14% in "
    "the producer's network thread. What is left to move the figure: cheaper translation "
    "(CMU's JSON and uuid5 ids, CSS's lxml trees) on the router's CPU, and kafka-python's "
    "per-record cost on both: it caps a 1 -> 3 fan-out near half the passthrough rate, "
    "below the 0.4 target once any work is added; a client with a C core (confluent-kafka, "
    "librdkafka) is the step beyond the card's kafka-python. Router processes scale with "
    "partitions, but on two cores shared with the broker, PostgreSQL and the relay more "
    "routers only shorten the routing phase (1, 2 and 3 routers above)."
)


if __name__ == "__main__":
    sys.exit(main())
