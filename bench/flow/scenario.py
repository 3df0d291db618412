"""The offered flow: ``jokko relay``, ``router`` and ``api`` reaching the fake institutions,
the members' enrolments submitted and acknowledged untimed, then the contributions offered
open loop until every message is acknowledged."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.flow.timeline import Timeline, timeline
from bench.harness.api_client import Offered, add_submitter, offer, post, token, wait_ready
from bench.harness.broker import canonical_topic
from bench.harness.cpu import CoreMeter, process_cpu
from bench.harness.deployment import Deployment, partner_env
from bench.harness.infra import Infra
from bench.harness.measure import log
from bench.harness.workload import Workload
from schemas import CanonicalEvent, dump_event
from tests.infra import free_port

ANSWER_WITHIN_S = 30.0
MAX_CONNECTIONS = 64


def requests_of(events: Sequence[CanonicalEvent], size: int, bearer: str) -> list[bytes]:
    """POSTs of ``size`` events each (``size`` 1: single events to ``/v1/events``)."""
    path = "/v1/events" if size == 1 else "/v1/events/batch"
    out = []
    for i in range(0, len(events), size):
        dumped = [dump_event(e) for e in events[i : i + size]]
        body = dumped[0] if size == 1 else b"[" + b",".join(dumped) + b"]"
        out.append(post(path, body, bearer))
    return out


def acked(d: Deployment) -> int:
    return d.scalar("SELECT count(*) FROM outbox WHERE acked_at IS NOT NULL")


@dataclass
class FlowRun:
    enrolled: int
    paid: int
    requests: int
    offered: Offered
    """The contributions' requests (epoch seconds)."""
    offer_s: float
    drained_s: float
    """From the first send to the last ack."""
    cores: dict[str, float]
    """Cores each process used from the first send to the last ack."""
    states: dict[str, int]
    timeline: Timeline
    load_before: tuple[float, float, float]
    load_end_offer: tuple[float, float, float]
    load_after: tuple[float, float, float]

    @property
    def all_ok(self) -> bool:
        return set(self.offered.statuses) == {202}


def offered_flow(
    infra: Infra,
    logs: Path,
    partners: dict[str, Any],
    fakes_pid: int,
    load: Workload,
    rate: float,
    batch: int,
    push_batch: int,
) -> FlowRun:
    enrolled = [e for e in load.events if e.event_type == "member.enrolled"]
    paid = [e for e in load.events if e.event_type != "member.enrolled"]
    d = Deployment.create(infra, "flow", canonical_topic(infra.bootstrap, "flow"), logs)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    d.env.update({"JOKKO_API_HOST": "127.0.0.1", "JOKKO_API_PORT": str(port)})
    d.env.update(
        partner_env(
            {"cmu": partners["cmu"], "css": partners["css"]},
            partners["secrets"],
            (partners["ipres"]["inbox"], partners["ipres"]["acks"]),
            push_batch,
        )
    )
    secret = add_submitter(d.engine)
    warm_messages = sum(load.expected[str(e.event_id)] for e in enrolled)
    total_messages = warm_messages + sum(load.expected[str(e.event_id)] for e in paid)
    try:
        for command in ("relay", "router", "api"):
            d.start(command)
        if not wait_ready(url):
            d.fail("jokko api not ready")
        bearer = token(url, secret)
        warm = offer(
            port, requests_of(enrolled, 250, bearer), 20.0, MAX_CONNECTIONS, ANSWER_WITHIN_S
        )
        if set(warm.statuses) != {202}:
            d.fail(f"enrolments refused: {dict(warm.statuses)}")
        d.wait(lambda: acked(d) >= warm_messages, 300, "the enrolments acknowledged")
        load_before = os.getloadavg()
        log(
            f"{len(enrolled):,} enrolments acknowledged; offering {len(paid):,} contributions at "
            f"{rate:,.0f}/s in requests of {batch} (load {load_before[0]:.1f})"
        )
        reqs = requests_of(paid, batch, bearer)
        meter = CoreMeter(lambda: process_cpu(infra, d.procs, {"fakes": fakes_pid}))
        started = time.time()
        offered = offer(port, reqs, rate / batch, MAX_CONNECTIONS, ANSWER_WITHIN_S)
        offer_s = time.time() - started
        load_end_offer = os.getloadavg()
        log(f"offered in {offer_s:.1f} s, statuses {dict(offered.statuses)}")
        d.wait(lambda: acked(d) >= total_messages, 900, "every message acknowledged")
        drained_s = time.time() - started
        cores = meter.cores(drained_s)
        with d.engine.connect() as conn:
            states: dict[str, int] = dict(
                conn.execute(text("SELECT state, count(*) FROM outbox GROUP BY state")).all()
            )
        t = timeline(d, paid, offered, batch)
    finally:
        d.stop()
    return FlowRun(
        len(enrolled),
        len(paid),
        len(reqs),
        offered,
        offer_s,
        drained_s,
        cores,
        states,
        t,
        load_before,
        load_end_offer,
        os.getloadavg(),
    )
