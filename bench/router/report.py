"""The router record: its figures, and the notes saying how they were measured and what bounds
them."""

from __future__ import annotations

import os
import statistics
from typing import Any

from bench.harness.infra import PARTITIONS
from bench.harness.measure import Window, percentile
from bench.harness.workload import Workload
from bench.record import figure
from bench.router.processor import Split
from bench.router.scenarios import KillRun, Latency, Peers, ScaleOut

TARGET_EVENTS_PER_S = 3_000
TARGET_RATIO = 0.4


def throughput_figures(peers: Peers, scale: ScaleOut, load: Workload) -> list[dict[str, Any]]:
    one, two, three = scale.one, scale.two, scale.three
    ratio = one.rate / peers.passthrough
    return [
        figure(
            "router_events_per_s",
            one.rate,
            "events/s",
            peer="raw kafka-python passthrough",
            peer_value=peers.passthrough,
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
            peer_value=peers.fanout,
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
        figure("relay_messages_per_s", relay_rate(scale, load), "messages/s"),
        figure("relay_messages_per_s_router_idle", one.relay_alone, "messages/s"),
        figure("router_startup_s", one.startup_s, "s"),
    ]


def relay_rate(scale: ScaleOut, load: Workload) -> float:
    """Messages/s the relay published over the 1-router run."""
    one = scale.one
    return load.messages * one.events / len(load.events) / one.seconds


def latency_figures(lat: Latency) -> list[dict[str, Any]]:
    return [
        figure("router_latency_offered_events_per_s", lat.offered, "events/s"),
        figure("router_latency_p50_ms", percentile(lat.total_ms, 0.50), "ms"),
        figure("router_latency_p99_ms", percentile(lat.total_ms, 0.99), "ms"),
        figure("router_latency_to_router_p50_ms", percentile(lat.router_ms, 0.50), "ms"),
        figure("router_latency_to_router_p99_ms", percentile(lat.router_ms, 0.99), "ms"),
    ]


def kill_figures(k: KillRun, kills: int) -> list[dict[str, Any]]:
    return [
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
            target=f">= {kills}",
            met=k.kills >= kills,
        ),
        figure("kill_run_seconds", k.seconds, "s"),
        figure("kill_run_republished_copies", k.republished, "messages"),
    ]


def setup_notes(load: Workload, scale: ScaleOut, lat: Latency, k: KillRun, window: Window) -> str:
    return (
        f"Workload: {load.contributions:,} `contribution.paid` events (each one message to CMU, "
        f"CSS and IPRES) after the {len(load.events) - load.contributions:,} enrolments of their "
        f"members, on a canonical topic of {PARTITIONS} partitions: {load.messages:,} outbound "
        f"messages. Everything runs on this machine at once: the Kafka broker (JVM), "
        f"PostgreSQL, `jokko router` and `jokko relay` as separate processes (1-minute load "
        f"average {window.load_before[0]:.1f} when the run started, {window.load_after[0]:.1f} "
        f"when it ended, {window.seconds / 60:.1f} minutes). A rate counts "
        f"canonical events from the first inbox rows to the last outbox row marked published "
        f"(start-up and group join, {scale.one.startup_s:.1f} s, apart); the peer consumes a "
        f"batch, produces it with acks=all, flushes and commits, with Jokko's client settings. "
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


def bounds_notes(peers: Peers, scale: ScaleOut, load: Workload, split: Split) -> str:
    one = scale.one
    peer, fan = peers.passthrough, peers.fanout
    per_event = load.messages / len(load.events)
    routing = one.events / one.routed_s
    relaying = one.relay_alone / per_event
    slower = "relay" if relaying < routing else "router"
    scaled = "; ".join(
        f"{n} router{'s' if n > 1 else ''}: {r.rate:,.0f} events/s end to end, routing phase "
        f"{r.events / r.routed_s:,.0f} events/s, cores used: "
        + ", ".join(
            f"{k} {v * (os.cpu_count() or 1):.2f}" if k == "machine" else f"{k} {v:.2f}"
            for k, v in r.cores.items()
        )
        for n, r in scale.runs()
    )
    return (
        f"Scale-out (one consumer group, {PARTITIONS} partitions, the same backlog, the relay "
        f"throughout; `machine` is every busy core whoever used it): {scaled}. "
        f"What bounds it. The router alone: {split.describe()}. In the 1-router run it routed "
        f"the backlog at {routing:,.0f} events/s while sharing the two cores with the relay, "
        f"the broker and PostgreSQL; the relay finished {one.seconds - one.routed_s:.1f} s "
        f"after the router had every event in the inbox, publishing "
        f"{relay_rate(scale, load):,.0f} messages/s over the run and {one.relay_alone:,.0f}/s "
        f"once the router was idle ({relaying:,.0f} events/s at {per_event:.1f} messages an "
        f"event): in this run the "
        f"{slower} was the slower of the two, and each one's CPU slows the other. Kafka I/O "
        f"alone sets a ceiling too: kafka-python takes {1e6 / peer:,.0f} µs per event passed "
        f"through and {1e6 / fan:,.0f} µs per event fanned out to three topics, so a 1 -> 3 "
        f"fan-out reaches at most {fan / peer:.2f} of the passthrough before Jokko does any "
        f"work of its own; Jokko reaches {one.rate / fan:.2f} of that fan-out. " + PROFILE_NOTES
    )


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
