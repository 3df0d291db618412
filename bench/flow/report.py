"""The flow record: its figures, the stages' log lines, and the notes saying how they were
measured, what bounds them, and what the fake institutions cost."""

from __future__ import annotations

import os
import statistics
from typing import Any

from bench.flow.scenario import MAX_CONNECTIONS, FlowRun
from bench.flow.timeline import TARGET_P99_MS, stats
from bench.harness.measure import log, percentile
from bench.record import figure


def log_stages(run: FlowRun) -> None:
    t = run.timeline
    log(f"API answer      {stats(t.api_ms)}")
    log(f"routed (inbox)  {stats(t.routed_ms)}")
    log(f"handed over     {stats(t.sent_ms)}")
    log(f"last ack        {stats(t.acked_ms)}")
    for inst, v in sorted(t.per_institution.items()):
        log(f"  {inst:<5} ack     {stats(v)}")


def sustained(run: FlowRun) -> float:
    """Events/s end to end: the contributions over the first send to the last ack."""
    t = run.timeline
    return run.paid / (max(t.acked_at) - min(t.submitted))


def acked_rate(run: FlowRun) -> dict[str, float]:
    """Messages/s each institution acknowledged, from the first send."""
    t = run.timeline
    first = min(t.submitted)
    return {i: len(v) / (max(v) - first) for i, v in t.institution_acked_at.items()}


def flow_figures(run: FlowRun, rate: float) -> list[dict[str, Any]]:
    t = run.timeline
    p99 = percentile(t.acked_ms, 0.99)
    return [
        figure("flow_offered_events_per_s", run.paid / run.offer_s, "events/s"),
        figure(
            "flow_sustained_events_per_s",
            sustained(run),
            "events/s",
            peer="offered",
            peer_value=rate,
        ),
        figure("flow_latency_p50_ms", percentile(t.acked_ms, 0.5), "ms"),
        figure(
            "flow_latency_p99_ms",
            p99,
            "ms",
            target=f"< {TARGET_P99_MS:.0f}",
            met=p99 < TARGET_P99_MS and run.all_ok,
        ),
        figure("flow_latency_max_ms", max(t.acked_ms), "ms"),
        figure("flow_api_answer_p99_ms", percentile(t.api_ms, 0.99), "ms"),
        figure("flow_to_router_p99_ms", percentile(t.routed_ms, 0.99), "ms"),
        figure("flow_to_handover_p99_ms", percentile(t.sent_ms, 0.99), "ms"),
        *(
            figure(f"flow_{inst}_ack_p99_ms", percentile(v, 0.99), "ms")
            for inst, v in sorted(t.per_institution.items())
        ),
        *(
            figure(f"flow_{inst}_acked_per_s", v, "messages/s", peer="offered", peer_value=rate)
            for inst, v in sorted(acked_rate(run).items())
        ),
        *(
            figure(f"flow_cores_{k}", v, "cores", peer="cores", peer_value=os.cpu_count())
            for k, v in run.cores.items()
        ),
    ]


def bounds_notes(run: FlowRun, rate: float) -> str:
    t = run.timeline
    stage_p99 = {
        "the API's answer": percentile(t.api_ms, 0.99),
        "routing (to the inbox)": percentile(t.routed_ms, 0.99),
        "the outbox, up to the hand-over to the institution": percentile(t.sent_ms, 0.99),
        "the institution's ack": percentile(t.acked_ms, 0.99),
    }
    names, values = list(stage_p99), list(stage_p99.values())
    added = {names[i]: values[i] - (values[i - 1] if i else 0.0) for i in range(len(values))}
    worst = max(added, key=lambda k: added[k])
    return (
        "What bounds it. Where the queue builds, from the p99 of each stage counted from the "
        "scheduled send: "
        + ", ".join(f"{k} adds {v:,.0f} ms" for k, v in added.items())
        + f", so the time goes to {worst}. Institutions acknowledged "
        + ", ".join(f"{i.upper()} {v:,.0f}/s" for i, v in sorted(acked_rate(run).items()))
        + f" of {rate:,.0f}/s offered. "
        + BOUND_NOTES
    )


def flow_notes(run: FlowRun, rate: float, seconds: float, batch: int, push_batch: int) -> str:
    t, offered = run.timeline, run.offered
    return (
        f"Setup: `jokko api` (one uvicorn worker), `jokko router`, `jokko relay` as processes, "
        f"the fake institutions in a process of their own (`python -m tests.fakes`: CMU and CSS "
        f"over signed HTTP, {push_batch} messages a request in their batch envelopes "
        f"(`JOKKO_CMU__BATCH_SIZE`, `JOKKO_CSS__BATCH_SIZE`), IPRES by declaration and ack "
        f"files), a single-node broker and "
        f"PostgreSQL, all on this 2-core machine with the bench client (1-minute load average "
        f"{run.load_before[0]:.1f} when the offer started, {run.load_end_offer[0]:.1f} when it "
        f"ended, {run.load_after[0]:.1f} when every ack was in; another engineer's benchmark "
        f"may have run meanwhile). {run.enrolled:,} enrolments submitted first and "
        f"acknowledged, untimed; then {run.paid:,} `contribution.paid` events (each one message "
        f"to CMU, CSS and IPRES) offered open loop at {rate:,.0f} events/s for {seconds:.0f} s "
        f"as {run.requests:,} POSTs of {batch} to "
        f"`{'/v1/events' if batch == 1 else '/v1/events/batch'}` (one client on asyncio "
        f"streams, at most {MAX_CONNECTIONS} connections; single-event POSTs top out near "
        f"300 req/s on this API alone, see the api record, so 500/s needs batches), no "
        f"Idempotency-Key; statuses {dict(offered.statuses)}, requests written at most "
        f"{max(offered.lag_ms):,.0f} ms late. Latency per event from its request's scheduled "
        f"send to the `acked_at` of its last outbox row (mean "
        f"{statistics.mean(t.acked_ms):,.0f} ms); stages, each from the same scheduled send: "
        f"the API's answer {stats(t.api_ms)}; in the inbox (routed) {stats(t.routed_ms)}; "
        f"handed to the last institution {stats(t.sent_ms)}; per institution's ack "
        + "; ".join(f"{i.upper()} {stats(v)}" for i, v in sorted(t.per_institution.items()))
        + f". Every message acknowledged {run.drained_s:.0f} s after the first send (outbox "
        f"states {run.states}); sustained {sustained(run):,.0f} events/s end to end. Cores "
        f"used from the first send to the last ack, by process: "
        + ", ".join(f"{k} {v:.2f}" for k, v in run.cores.items())
        + f" (of {os.cpu_count()}; the fakes are the institutions' side, not Jokko's).\n\n"
        + bounds_notes(run, rate)
    )


def fakes_figures(costs: dict[str, dict[str, float]], rate: float) -> list[dict[str, Any]]:
    return [
        *(
            figure(
                f"flow_fake_{name}_us_per_message",
                c["checked"],
                "µs",
                peer="without its schema checks",
                peer_value=c["unchecked"],
            )
            for name, c in costs.items()
        ),
        figure(
            "flow_fakes_with_checks_events_per_s",
            capacity(costs),
            "events/s",
            peer="offered",
            peer_value=rate,
        ),
    ]


def capacity(costs: dict[str, dict[str, float]]) -> float:
    """Events/s the fake CMU and CSS, one process between them, could answer with checks."""
    return 1e6 / (costs["cmu"]["checked"] + costs["css"]["checked"])


def fakes_notes(costs: dict[str, dict[str, float]], rate: float, checks: bool) -> str:
    return (
        f"\n\nThe institutions' side: the fake CMU and CSS, one Python process (one GIL) between "
        f"them, cost {costs['cmu']['checked']:,.0f} and {costs['css']['checked']:,.0f} µs a "
        f"message with their independent schema checks (fhir.resources R4B models, xmlschema "
        f"XSD), {costs['cmu']['unchecked']:,.0f} and {costs['css']['unchecked']:,.0f} µs "
        f"without (measured in the bench process, same messages): with checks they could "
        f"answer at most {capacity(costs):,.0f} events/s together, below the {rate:,.0f}/s "
        f"offered, so this run "
        + (
            "kept their checks (`--schema-checking-fakes`) and measures them as much as Jokko."
            if checks
            else "turned the checks off (`python -m tests.fakes --no-schema-checks`; the tests "
            "keep them) to measure Jokko rather than the fakes."
        )
    )


BOUND_NOTES = (
    "History: with one message per HTTP request (2026-12-03, before batched pushes) the same "
    "run sustained 88 events/s with a p99 of 287 s; py-spy then had `jokko relay` spending "
    "46% of its samples in one signed httpx POST per message (24% waiting for the answer) "
    "and the fakes 68% handling requests, the queue being the outbox ahead of the pushes "
    "(CMU and CSS ~90 messages/s each). Pushes now carry a member's k-th message in the k-th "
    "request round, up to the batch size a request, so a claimed batch of 500 contributions "
    "is ~10 requests, not 500. What is left is what every stage costs on two cores that the "
    "broker, PostgreSQL, the API, the router, the relay, the fakes and the bench client "
    "share (the cores line above; a process below one core is waiting on another, not "
    "bound by itself): the API validates and publishes each event (~0.3-1 ms an event in "
    "batches, api record), the router parses, translates and stores it (~0.6 ms, router "
    "record), the relay claims, publishes or pushes and records it per institution. One "
    "delivery worker per institution claims, delivers and commits a batch before claiming "
    "the next, so an event's latency includes up to one claim cycle per stage even when "
    "nothing queues. What would move it: the API, router and relay on cores of their own "
    "(they share nothing but PostgreSQL and the broker; routers scale by partitions, relays "
    "by `SKIP LOCKED` claims), the institutions on their own machines (their validation "
    "alone, measured above, needs more than these two cores at 500 events/s), and the "
    "per-event CPU named in the router and api records."
)
