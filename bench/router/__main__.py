"""``python -m bench.router``: the arguments, then each scenario in turn on one broker and one
PostgreSQL (see the package's docstring), then the record.

``processor``: the router's ``Processor`` in this process, next to the code before COPY.
``scenarios``: the raw Kafka peers, throughput with 1, 2 and 3 routers, latency, the kill run.
``report``: the record's figures and notes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import bench.router
from bench.harness.infra import infrastructure
from bench.harness.measure import Window, log
from bench.harness.workload import workload
from bench.record import write_record
from bench.router.processor import processor_figures
from bench.router.report import (
    bounds_notes,
    kill_figures,
    latency_figures,
    setup_notes,
    throughput_figures,
)
from bench.router.scenarios import backlog, kafka_peers, kill_run, latency, scale_out


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.router", description=bench.router.__doc__
    )
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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    with (
        tempfile.TemporaryDirectory(prefix="jokko-bench-") as tmp,
        infrastructure(Path(tmp)) as infra,
    ):
        logs = Path(tmp) / "logs"
        window = Window()
        processor, split = processor_figures(infra, args.processor_events)
        load = workload(args.events, seed=f"b{args.seed}")
        canonical = backlog(infra, load)
        peers = kafka_peers(infra, canonical, len(load.events))
        scale = scale_out(infra, canonical, load, logs)
        rate = args.rate or min(300.0, max(10.0, round(scale.one.rate / 2, -1)))
        lat = latency(infra, logs, rate, args.latency_seconds)
        k = kill_run(infra, canonical, load, logs, args.kills, args.seed)
        window.close()
        log(f"bench ran {window.seconds:.0f} s (after infrastructure start)")
    figures = [
        *processor,
        *throughput_figures(peers, scale, load),
        *latency_figures(lat),
        *kill_figures(k, args.kills),
    ]
    notes = (
        setup_notes(load, scale, lat, k, window) + "\n\n" + bounds_notes(peers, scale, load, split)
    )
    write_record("router", figures, notes)
    return 0 if k.exactly_once and k.kills >= args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
