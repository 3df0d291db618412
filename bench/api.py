"""The REST API's ingest on a real ``jokko api`` (uvicorn, one worker) with a real broker and
PostgreSQL: events/s submitted in batches next to the raw kafka-python producer publishing
the same events, and the latency of single-event POSTs offered open loop at a fixed rate.

Run: ``.venv/bin/python -m bench.api [--events 20000] [--rate 300] [--seconds 20]``. It starts
its own Kafka broker and PostgreSQL cluster (``bench.harness.infra``), a ``jokko api``
process on a free port with its own schema and canonical topic, and a client holding the
``events:submit`` scope. ``--profile DIR`` also records py-spy profiles of the API process.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.harness.api_client import add_submitter, offer, post, token, wait_ready
from bench.harness.broker import canonical_topic, records_on
from bench.harness.deployment import Deployment
from bench.harness.infra import PARTITIONS, Infra, infrastructure
from bench.harness.measure import Window, log, percentile
from bench.harness.workload import workload
from bench.record import figure, write_record
from router.broker import TopicSpec, ensure_topics, idempotent_producer
from router.canonical import publish_events
from router.vault import Keyring, KeySet, Vault, new_key
from schemas import CanonicalEvent, dump_event, parse_event
from tests.infra import free_port

PY_SPY = Path(sys.executable).parent / "py-spy"
TARGET_BATCH_EVENTS_PER_S = 1_500
TARGET_P99_MS = 50.0
WARMUP_BATCHES = 2
MAX_CONNECTIONS = 256
ANSWER_WITHIN_S = 10.0


# --------------------------------------------------------------------------- the API process


@dataclass
class ApiServer:
    """``jokko api`` alone, in a deployment of its own (schema, canonical topic, client)."""

    deployment: Deployment
    url: str
    port: int
    secret: str
    bootstrap: str

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.deployment.procs["api-1"]

    def token(self) -> str:
        """A fresh access token (they live five minutes; each phase takes its own)."""
        return token(self.url, self.secret)

    def accepted_metric(self) -> float:
        """``jokko_api_events_total{outcome="accepted"}`` as the API itself counts it."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        m = re.search(r'^jokko_api_events_total\{outcome="accepted"\} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    def on_topic(self) -> int:
        """Records on the canonical topic (end offsets: an idempotent, non-transactional
        producer leaves no gaps), so every 202 can be checked against the broker."""
        return records_on(self.bootstrap, self.deployment.topics.canonical)


@contextmanager
def api_server(infra: Infra, logs: Path) -> Iterator[ApiServer]:
    d = Deployment.create(infra, "api", canonical_topic(infra.bootstrap, "benchapi"), logs)
    secret = add_submitter(d.engine)
    port = free_port()
    d.env["JOKKO_API_PORT"] = str(port)
    url = f"http://127.0.0.1:{port}"
    try:
        d.start("api")
        if not wait_ready(url, 90, gone=lambda: d.procs["api-1"].poll() is not None):
            d.fail("jokko api did not start")
        yield ApiServer(d, url, port, secret, infra.bootstrap)
    finally:
        d.stop()


@contextmanager
def profiled(pid: int, out: Path | None, seconds: float) -> Iterator[None]:
    """py-spy of the API for the phase, if asked for: samples of the thread holding the GIL,
    the one resource a single worker cannot add more of."""
    if out is None or not PY_SPY.exists():
        yield
        return
    spy = subprocess.Popen(
        [
            *(str(PY_SPY), "record", "--pid", str(pid), "--format", "raw", "--rate", "100"),
            *("--duration", str(int(seconds)), "--output", str(out), "--nonblocking", "--gil"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(2)  # SIGINT: py-spy writes what it has
        spy.wait(60)


# --------------------------------------------------------------------------- (a) batches


@dataclass
class Batches:
    rate: float
    """Events/s the API took in batches."""
    timed: int
    peer: float
    """Events/s of the API's own Kafka call alone, before the API run and after it."""
    peer_after: float
    validation_us: float
    """``parse_event`` per event, in the bench process."""

    @property
    def peer_best(self) -> float:
        return max(self.peer, self.peer_after)


def batch_bodies(events: Sequence[CanonicalEvent], size: int) -> list[bytes]:
    dumped = [dump_event(e) for e in events]
    return [b"[" + b",".join(dumped[i : i + size]) + b"]" for i in range(0, len(dumped), size)]


def batches(server: ApiServer, bodies: Sequence[bytes], warmup: int) -> tuple[float, int]:
    """One client, one request in flight, each with its own Idempotency-Key; the first
    ``warmup`` batches are not timed. Returns (events/s, events timed)."""
    headers = {"Authorization": f"Bearer {server.token()}", "content-type": "application/json"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:

        def post_batch(body: bytes) -> int:
            r = client.post(
                "/v1/events/batch", content=body, headers={"Idempotency-Key": str(uuid.uuid4())}
            )
            if r.status_code != 202 or r.json()["invalid"]:
                raise RuntimeError(f"batch refused: {r.status_code} {r.text[:500]}")
            accepted: int = r.json()["accepted"]
            return accepted

        for body in bodies[:warmup]:
            post_batch(body)
        start = time.perf_counter()
        n = sum(post_batch(body) for body in bodies[warmup:])
        return n / (time.perf_counter() - start), n


def peer_producer(bootstrap: str, events: Sequence[CanonicalEvent], size: int) -> float:
    """What the API does per batch with Kafka, alone: ``publish_events`` (the same call, the
    same idempotent acks=all producer settings) on the already-parsed events, batch by batch."""
    topic = f"benchapi.peer.{uuid.uuid4().hex[:6]}"
    ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS)])
    producer = idempotent_producer(bootstrap, client_id="bench-peer")
    key = KeySet("bench", {"bench": new_key()})
    vault = Vault(Keyring(data=key, token=key))  # sealed, as the API seals
    try:
        publish_events(producer, topic, events[:size], vault=vault)  # metadata, connections
        start = time.perf_counter()
        for i in range(0, len(events), size):
            publish_events(producer, topic, events[i : i + size], vault=vault)
        return len(events) / (time.perf_counter() - start)
    finally:
        producer.close()


def parse_us(events: Sequence[CanonicalEvent]) -> float:
    """Microseconds per event of ``parse_event`` (the API's validation), in this process."""
    values = [dump_event(e) for e in events]
    start = time.perf_counter()
    for v in values:
        parse_event(v)
    return (time.perf_counter() - start) / len(values) * 1e6


def batch_phase(
    infra: Infra,
    server: ApiServer,
    events: Sequence[CanonicalEvent],
    size: int,
    profile: Path | None,
) -> Batches:
    """(a) The raw producer, the API in batches of ``size``, the raw producer again."""
    peer = peer_producer(infra.bootstrap, events, size)
    log(f"raw producer, publish_events per {size}   {peer:>8,.0f} events/s")
    with profiled(server.proc.pid, profile / "batch.txt" if profile else None, 600):
        rate, timed = batches(server, batch_bodies(events, size), WARMUP_BATCHES)
    log(f"API, batches of {size} (1 client)        {rate:>8,.0f} events/s ({timed:,})")
    peer_after = peer_producer(infra.bootstrap, events, size)
    log(f"raw producer again                          {peer_after:>8,.0f} events/s")
    return Batches(rate, timed, peer, peer_after, parse_us(events[:5000]))


# --------------------------------------------------------------------------- (b) open loop


@dataclass
class OpenLoop:
    latencies_ms: list[float]
    """Per request: response complete minus its *scheduled* send time."""
    send_lag_ms: list[float]
    """Per request: when the generator wrote it minus when it was scheduled."""
    statuses: Counter[int]
    offered: float
    connections: int
    served: float
    """Requests answered (cut ones excluded) a second, from the first scheduled send to the
    last answer or cut."""


def open_loop(
    server: ApiServer, events: Sequence[CanonicalEvent], rate: float, keyed: bool
) -> OpenLoop:
    """Single-event POSTs at ``rate`` (``bench.harness.api_client.offer``); a request cut at
    ``ANSWER_WITHIN_S`` counts at that latency."""
    bearer = server.token()
    requests = [
        post("/v1/events", dump_event(e), bearer, str(uuid.uuid4()) if keyed else None)
        for e in events
    ]
    o = offer(server.port, requests, rate, MAX_CONNECTIONS, ANSWER_WITHIN_S, time.perf_counter)
    latencies = [
        (ANSWER_WITHIN_S if answered is None else answered - scheduled) * 1000
        for scheduled, answered in zip(o.scheduled, o.answered, strict=True)
    ]
    return OpenLoop(latencies, o.lag_ms, o.statuses, rate, o.connections, o.served)


@dataclass
class SinglePhases:
    keyed: OpenLoop
    """Each request with its own Idempotency-Key."""
    unkeyed: OpenLoop
    warmups: list[OpenLoop]


def single_phases(
    server: ApiServer,
    single: Sequence[CanonicalEvent],
    rate: float,
    sizes: tuple[int, int],
    profile: Path | None,
) -> SinglePhases:
    """(b) With an Idempotency-Key, then without: each phase of ``sizes[1]`` events starts
    with ``sizes[0]`` as a warm-up at the rate (connections, caches), then the measured window."""
    warm_n, phase_n = sizes
    phases: dict[bool, OpenLoop] = {}
    warmups: list[OpenLoop] = []
    for keyed, chunk in ((True, single[:phase_n]), (False, single[phase_n:])):
        warmups.append(open_loop(server, chunk[:warm_n], rate, keyed))
        name = "single.txt" if keyed else "single-nokey.txt"
        with profiled(server.proc.pid, profile / name if profile else None, 600):
            ol = phases[keyed] = open_loop(server, chunk[warm_n:], rate, keyed)
        lat = ol.latencies_ms
        log(
            f"open loop at {ol.offered:,.0f} req/s, {len(lat):,} single events "
            f"{'with' if keyed else 'without'} Idempotency-Key: p50 "
            f"{percentile(lat, 0.5):.1f} ms, p99 {percentile(lat, 0.99):.1f} ms, max "
            f"{max(lat):.1f} ms; served {ol.served:,.0f} req/s; statuses "
            f"{dict(ol.statuses)}; {ol.connections} connections; generator lag p99 "
            f"{percentile(ol.send_lag_ms, 0.99):.1f} ms"
        )
    return SinglePhases(phases[True], phases[False], warmups)


# --------------------------------------------------------------------------- every 202 on the topic


@dataclass
class TopicCheck:
    submitted: int
    answered: int
    """Events answered 202 (a request cut at the deadline may still have been published)."""
    on_topic: int
    counted: float
    """What the API's own metric says it accepted."""

    @property
    def consistent(self) -> bool:
        return self.on_topic == self.counted and self.answered <= self.on_topic <= self.submitted


def topic_check(server: ApiServer, batched: int, single: int, phases: SinglePhases) -> TopicCheck:
    answered = batched + sum(
        ph.statuses[202] for ph in (*phases.warmups, phases.keyed, phases.unkeyed)
    )
    check = TopicCheck(batched + single, answered, server.on_topic(), server.accepted_metric())
    log(
        f"on the topic {check.on_topic:,}; {check.answered:,} answered 202 of "
        f"{check.submitted:,} sent; the metric says {check.counted:,.0f}"
    )
    return check


# --------------------------------------------------------------------------- the record


def figures(a: Batches, b: SinglePhases, check: TopicCheck, size: int) -> list[dict[str, Any]]:
    with_key, no_key = b.keyed, b.unkeyed
    ok_statuses = all(set(ph.statuses) == {202} for ph in (with_key, no_key))
    k50, k99 = percentile(with_key.latencies_ms, 0.5), percentile(with_key.latencies_ms, 0.99)
    b50, b99 = percentile(no_key.latencies_ms, 0.5), percentile(no_key.latencies_ms, 0.99)
    return [
        figure(
            "api_batch_events_per_s",
            a.rate,
            "events/s",
            peer=f"raw kafka-python producer, publish_events per {size}",
            peer_value=a.peer_best,
            target=f">= {TARGET_BATCH_EVENTS_PER_S:,}",
            met=a.rate >= TARGET_BATCH_EVENTS_PER_S,
        ),
        figure("api_single_offered_req_per_s", with_key.offered, "req/s"),
        figure("api_single_served_req_per_s", with_key.served, "req/s"),
        figure("api_single_latency_p50_ms", k50, "ms"),
        figure(
            "api_single_latency_p99_ms",
            k99,
            "ms",
            target=f"< {TARGET_P99_MS:.0f}",
            met=k99 < TARGET_P99_MS and ok_statuses,
        ),
        figure("api_single_latency_max_ms", max(with_key.latencies_ms), "ms"),
        figure("api_single_no_key_served_req_per_s", no_key.served, "req/s"),
        figure("api_single_no_key_latency_p50_ms", b50, "ms"),
        figure(
            "api_single_no_key_latency_p99_ms",
            b99,
            "ms",
            peer="with Idempotency-Key",
            peer_value=k99,
            target=f"< {TARGET_P99_MS:.0f}",
            met=b99 < TARGET_P99_MS and ok_statuses,
        ),
        figure("api_single_no_key_latency_max_ms", max(no_key.latencies_ms), "ms"),
        figure(
            "api_every_202_on_the_topic",
            float(check.consistent),
            "1 = yes",
            target="1",
            met=check.consistent,
        ),
    ]


def described(ph: OpenLoop) -> str:
    return (
        f"mean {statistics.mean(ph.latencies_ms):,.1f} ms, served {ph.served:,.0f} req/s, "
        f"statuses {dict(ph.statuses)}, {ph.connections} connections, requests written "
        f"at most {max(ph.send_lag_ms):,.1f} ms after their scheduled time (p99 "
        f"{percentile(ph.send_lag_ms, 0.99):,.1f} ms)"
    )


def notes(
    a: Batches, b: SinglePhases, check: TopicCheck, window: Window, size: int, seconds: float
) -> str:
    with_key, no_key = b.keyed, b.unkeyed
    return (
        f"Setup: `jokko api` (uvicorn, one worker, uvloop + httptools, the default rate limit) on "
        f"PostgreSQL and a single-node broker, canonical topic of {PARTITIONS} partitions, "
        f"all on this 2-core machine with the client and other engineers' test runs "
        f"(1-minute load average {window.load_before[0]:.1f} at the start, "
        f"{window.load_after[0]:.1f} at the end; {window.seconds:.0f} s after the "
        f"infrastructure started). (a) {a.timed:,} events "
        f"(`contribution.paid` and their members' enrolments) POSTed to `/v1/events/batch` in "
        f"batches of {size}, one request in flight, each with its own "
        f"`Idempotency-Key`, after {WARMUP_BATCHES} untimed batches; the peer is "
        f"`publish_events` (the API's own Kafka call: idempotent producer, acks=all, flush per "
        f"batch) on the same, already parsed events from the bench process, before and after "
        f"the API run ({a.peer:,.0f} and {a.peer_after:,.0f} events/s; the better one is "
        f"shown). (b) single "
        f"events POSTed to `/v1/events` open loop at {with_key.offered:,.0f} req/s for "
        f"{seconds:.0f} s after a 2 s warm-up, {len(with_key.latencies_ms):,} with an "
        f"`Idempotency-Key` each ({described(with_key)}), then {len(no_key.latencies_ms):,} "
        f"without ({described(no_key)}); latency runs from each request's scheduled send time "
        f"to the end of its answer, at most {MAX_CONNECTIONS} connections open at once (a bare "
        f"HTTP/1.1 client on asyncio streams); a request not answered "
        f"{ANSWER_WITHIN_S:.0f} s after its scheduled time is cut and counted at "
        f"{ANSWER_WITHIN_S:.0f} s (status 0), so percentiles at that cap are lower bounds. "
        f"Afterwards the canonical topic held {check.on_topic:,} records for "
        f"{check.answered:,} events answered 202 of {check.submitted:,} sent, and the API's "
        f'`jokko_api_events_total{{outcome="accepted"}}` said {check.counted:,.0f}.'
        f"\n\nWhat bounds it. (a) {1e6 / a.rate:,.0f} µs per event in batches, of which "
        f"Kafka (the peer) is {1e6 / a.peer_best:,.0f} µs and `parse_event` validation "
        f"{a.validation_us:,.0f} µs (measured apart, in the bench process); the rest is the "
        f"request around them (reading and `json.loads` of the body, the per-item results, "
        f"serialising the answer, the idempotency rows). " + PROFILE_NOTES
    )


# --------------------------------------------------------------------------- main


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="events sent in batches")
    parser.add_argument("--batch", type=int, default=250, help="events per batch request")
    parser.add_argument("--rate", type=float, default=300.0, help="single-event POSTs a second")
    parser.add_argument("--seconds", type=float, default=20.0, help="open-loop duration")
    parser.add_argument("--profile", type=Path, default=None, help="write py-spy profiles here")
    parser.add_argument("--seed", type=int, default=20261203)
    args = parser.parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        if not PY_SPY.exists() and shutil.which("py-spy") is None:
            log("py-spy is not installed in the venv: no profiles")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    events = workload(args.events + WARMUP_BATCHES * args.batch, seed=f"a{args.seed}").events
    warm_n = int(args.rate * 2)
    phase_n = warm_n + int(args.rate * args.seconds)
    single = workload(2 * phase_n, seed=f"s{args.seed}").events[: 2 * phase_n]
    with (
        tempfile.TemporaryDirectory(prefix="jokko-bench-api-") as tmp,
        infrastructure(Path(tmp)) as infra,
        api_server(infra, Path(tmp) / "logs") as server,
    ):
        window = Window()
        a = batch_phase(infra, server, events, args.batch, args.profile)
        b = single_phases(server, single, args.rate, (warm_n, phase_n), args.profile)
        check = topic_check(server, len(events), len(single), b)
        window.close()
    figures_ = figures(a, b, check, args.batch)
    write_record("api", figures_, notes(a, b, check, window, args.batch, args.seconds))
    return 0 if check.consistent else 1


PROFILE_NOTES = (
    "Profiles (py-spy `--gil` at 100 Hz of `jokko api`, a separate shorter run with "
    "`--profile`, 2026-12-03, on asyncio + h11 before uvloop and httptools were installed and "
    "before phone numbers were memoised, load average 10-20 from other test runs): in batches "
    "the GIL is held 47% in `parse_event` (pydantic-core; phone-number validation 14%; the "
    "allocation check, since made a tuple walk, was ~4% measured apart), 33% in "
    "`publish_events` (re-serialising each parsed "
    "event with `dump_event` 12%, `KafkaProducer.send` 18%), 6% in the producer's network "
    "thread, and 2% in the idempotency rows: a batch is bound by validation and kafka-python's "
    "per-record cost, both per event, so it scales with CPU, not with the HTTP stack. A "
    "single-event POST is the opposite: validation and Kafka are ~10% of its GIL time; the "
    "rest is the request itself (uvicorn's h11 parser, Starlette/FastAPI routing and "
    "`solve_dependencies` 17-27% with the bearer-token check 3-6%, two threadpool hops ~10%), "
    "and with an `Idempotency-Key` the two PostgreSQL transactions (look-up, insert; pool "
    "check-out with pre-ping) another 23%. Yet keyed requests are served at about a third "
    "of the rate of unkeyed ones (the `served` figures): the rest of their cost is waiting on "
    "PostgreSQL, five round trips and a commit flush per request from up to 40 threads on "
    "two cores shared with the broker, the client and PostgreSQL itself; which of them "
    "dominates is not pinned down yet (a larger pool, one connection for both statements "
    "and `synchronous_commit=off` for the insert did not move it beyond this machine's "
    "noise). One uvicorn worker is one GIL: offered more than it serves, open loop, requests "
    "queue without bound and the p99 is the queue, not the work. "
    "What would move it: more uvicorn workers or API replicas (the API is stateless; the "
    "rate limiter is per process), a lighter framework path per request than FastAPI's "
    "dependency solving, and clients sending batches (the figure (a) path: ~0.3-1 ms an "
    "event)."
)


if __name__ == "__main__":
    sys.exit(main())
