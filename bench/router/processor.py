"""The router's ``Processor`` in this process on PostgreSQL: events/s now and at the commit
before batches were planned ahead and written with COPY, and where one event's time goes."""

from __future__ import annotations

import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Engine

from adapters.base import Institution, MemberProfile, OutboundAdapter
from bench.harness.infra import Infra
from bench.harness.measure import log
from bench.harness.workload import workload
from bench.record import figure
from router.processing import Processor, RawRecord
from router.registry import outbound_adapters
from schemas import CanonicalEvent, dump_event, parse_event
from tests.infra import REPO

# The processor as it was before the batch was planned ahead and written with COPY
# (the last commit where router/processing.py had that shape), measured in the same run.
BASELINE_REV = "97488c91a841ac5f2923c465f1ddfab2c31e5fe4"


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
