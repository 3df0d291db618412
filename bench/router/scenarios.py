"""The router benchmark's scenarios on real ``jokko router`` / ``jokko relay`` processes: the raw
kafka-python peers, throughput from a backlog with 1, 2 and 3 routers, latency at an offered
rate, and a backlog routed while the router is SIGKILLed again and again."""

from __future__ import annotations

import math
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaProducer
from sqlalchemy import text

from adapters.base import Institution
from bench.harness.broker import canonical_topic, headers, publish, read_all
from bench.harness.cpu import CoreMeter, process_cpu
from bench.harness.deployment import Deployment
from bench.harness.infra import PARTITIONS, Infra
from bench.harness.measure import log, percentile
from bench.harness.workload import PER_MEMBER, Workload
from router.broker import TopicSpec, ensure_topics, group_consumer, idempotent_producer
from tests.factories import contributions, enrolments

# --------------------------------------------------------------------------- peers


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


@dataclass
class Peers:
    passthrough: float
    """Events/s of kafka-python passing the backlog through."""
    fanout: float
    """Events/s of kafka-python fanning the backlog out to three topics."""


def kafka_peers(infra: Infra, canonical: str, total: int) -> Peers:
    peer, peer_n = passthrough(infra.bootstrap, canonical, total)
    log(f"raw kafka-python passthrough  {peer:>8,.0f} events/s ({peer_n:,} records)")
    fan, _ = passthrough(infra.bootstrap, canonical, total, fanout=3)
    log(f"raw kafka-python 1 -> 3 fan-out {fan:>6,.0f} events/s")
    return Peers(peer, fan)


# --------------------------------------------------------------------------- throughput


def backlog(infra: Infra, load: Workload) -> str:
    """``load`` published to a fresh canonical topic, for every scenario to route; its name."""
    canonical = canonical_topic(infra.bootstrap, "bench")
    publish(infra.bootstrap, canonical, load.events)
    log(
        f"published {len(load.events):,} events ({load.contributions:,} contributions after "
        f"their members' enrolments) -> {load.messages:,} outbound messages expected"
    )
    return canonical


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
        meter = CoreMeter(lambda: process_cpu(infra, d.procs))
        d.wait(lambda: d.inbox() >= len(load.events), 900, "every event in the inbox")
        routed = time.perf_counter() - start
        published_when_routed = d.published()
        d.wait(d.delivered(len(load.events)), 900, "every message published")
        seconds = time.perf_counter() - start
        cores = meter.cores(seconds)
        cores["machine"] = meter.machine()
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


@dataclass
class ScaleOut:
    """The same backlog routed by 1, 2 and 3 router processes in one consumer group."""

    one: Run
    two: Run
    three: Run

    def runs(self) -> tuple[tuple[int, Run], ...]:
        return (1, self.one), (2, self.two), (3, self.three)


def scale_out(infra: Infra, canonical: str, load: Workload, logs: Path) -> ScaleOut:
    runs = []
    for n, name in ((1, "one"), (2, "two"), (3, "three")):
        r = throughput(infra, name, canonical, load, logs, routers=n)
        label = f"router + relay ({n} router{'s' if n > 1 else ''})"
        log(
            f"{label:<30}{r.rate:>8,.0f} events/s ({r.events:,} events in {r.seconds:.1f} s, "
            f"all routed after {r.routed_s:.1f} s; start-up {r.startup_s:.1f} s)"
        )
        runs.append(r)
    for r in runs:
        log(f"  cores used: {', '.join(f'{k} {v:.2f}' for k, v in r.cores.items())}")
    return ScaleOut(*runs)


# --------------------------------------------------------------------------- latency


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
    canonical = canonical_topic(infra.bootstrap, "lat")
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
    lat = Latency(
        total_ms=[float(last[i] - sent[i]) for i in ids],
        router_ms=[received[i] - sent[i] for i in ids],
        events=n,
        offered=achieved,
    )
    p50, p99 = percentile(lat.total_ms, 0.50), percentile(lat.total_ms, 0.99)
    r50, r99 = percentile(lat.router_ms, 0.50), percentile(lat.router_ms, 0.99)
    log(
        f"latency at {lat.offered:,.0f} events/s offered ({lat.events:,} events): "
        f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(lat.total_ms):.0f} ms; "
        f"until the router had it: p50 {r50:.0f} ms, p99 {r99:.0f} ms"
    )
    return lat


# --------------------------------------------------------------------------- kill run


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
            mid += int(d.kill_router_after_progress(total, rng, max_pause_s=0.8, timeout_s=120))
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
    k = KillRun(
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
    log(
        f"kill run: {k.kills} SIGKILLs ({k.mid_stream} mid-stream), {k.seconds:.1f} s, "
        f"inbox {k.inbox:,}/{total:,}, store rows {k.store_rows:,} "
        f"({k.store_distinct:,} distinct, {k.wrong_events} events with a wrong count), "
        f"missing on topics {k.missing_on_topics}, republished copies {k.republished}"
    )
    return k
