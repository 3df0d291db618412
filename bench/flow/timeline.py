"""Each timed event's stages, from its request's scheduled send to its last accepted ack, read
from the store after the run; and the plot of latency and throughput over the run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from bench.harness.api_client import Offered
from bench.harness.deployment import Deployment
from bench.harness.measure import percentile
from schemas import CanonicalEvent

TARGET_P99_MS = 250.0


@dataclass
class Timeline:
    """Milliseconds after each event's scheduled send, per stage (for every timed event)."""

    submitted: list[float]
    api_ms: list[float]
    routed_ms: list[float]
    sent_ms: list[float]
    acked_ms: list[float]
    per_institution: dict[str, list[float]]
    institution_acked_at: dict[str, list[float]]
    acked_at: list[float]
    """Epoch seconds of each event's last ack (the throughput series)."""
    routed_at: list[float]


def timeline(
    d: Deployment, events: Sequence[CanonicalEvent], offered: Offered, size: int
) -> Timeline:
    sched = {str(e.event_id): offered.scheduled[i // size] for i, e in enumerate(events)}
    answer = {str(e.event_id): offered.answered[i // size] for i, e in enumerate(events)}
    with d.engine.connect() as conn:
        routed = {
            eid: at.timestamp()
            for eid, at in conn.execute(text("SELECT event_id, received_at FROM inbox"))
        }
        rows = conn.execute(
            text("SELECT event_id, institution, sent_at, acked_at FROM outbox")
        ).all()
    sent: dict[str, float] = {}
    last: dict[str, float] = {}
    inst: dict[str, list[float]] = {}
    inst_at: dict[str, list[float]] = {}
    for eid, institution, sent_at, acked_at in rows:
        if eid not in sched:
            continue
        sent[eid] = max(sent.get(eid, 0.0), sent_at.timestamp())
        last[eid] = max(last.get(eid, 0.0), acked_at.timestamp())
        inst.setdefault(institution, []).append((acked_at.timestamp() - sched[eid]) * 1000)
        inst_at.setdefault(institution, []).append(acked_at.timestamp())
    ids = list(sched)

    def ms(at: dict[str, float]) -> list[float]:
        return [(at[i] - sched[i]) * 1000 for i in ids]

    return Timeline(
        submitted=[sched[i] for i in ids],
        api_ms=[((answer[i] or 0) - sched[i]) * 1000 for i in ids if answer[i]],
        routed_ms=ms(routed),
        sent_ms=ms(sent),
        acked_ms=ms(last),
        per_institution=inst,
        institution_acked_at=inst_at,
        acked_at=[last[i] for i in ids],
        routed_at=[routed[i] for i in ids],
    )


def plot(t: Timeline, rate: float, out: Path) -> None:
    """Latency over the run (per event, by scheduled second: p50, p99, max) and events a
    second offered, routed and fully acknowledged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(t.submitted)
    by_second: dict[int, list[float]] = {}
    for s, lat in zip(t.submitted, t.acked_ms, strict=True):
        by_second.setdefault(int(s - t0), []).append(lat)
    secs = sorted(by_second)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.scatter(
        [s - t0 for s in t.submitted], t.acked_ms, s=1, alpha=0.15, color="grey", label="event"
    )
    for q, style in ((0.5, "-"), (0.99, "--")):
        top.plot(secs, [percentile(by_second[s], q) for s in secs], style, label=f"p{int(q * 100)}")
    top.axhline(TARGET_P99_MS, color="red", linewidth=0.8, label="p99 target")
    top.set_yscale("log")
    top.set_ylabel("submit -> last accepted ack (ms)")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"Jokko end to end, {rate:,.0f} events/s offered open loop")
    end = int(max(t.acked_at) - t0) + 1
    for series, label in (
        (t.submitted, "offered"),
        (t.routed_at, "routed (inbox)"),
        (t.acked_at, "fully acknowledged"),
    ):
        per = Counter(int(x - t0) for x in series)
        counts = [per.get(s, 0) for s in range(end)]
        (line,) = bottom.plot(range(end), counts, linewidth=0.6, alpha=0.4)
        # acks land a claimed batch at a time: the 10 s mean shows the rate under the spikes
        mean = [sum(counts[max(0, s - 9) : s + 1]) / min(10, s + 1) for s in range(end)]
        bottom.plot(range(end), mean, color=line.get_color(), label=f"{label} (10 s mean)")
    bottom.set_xlabel("seconds since the first scheduled send")
    bottom.set_ylabel("events / s")
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def stats(values: Sequence[float]) -> str:
    return (
        f"p50 {percentile(values, 0.5):,.0f} ms, p99 {percentile(values, 0.99):,.0f} ms, "
        f"max {max(values):,.0f} ms"
    )
