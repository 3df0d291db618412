"""``python -m bench.flow``: the arguments, the fakes' own cost, the offered flow on one broker
and one PostgreSQL (see the package's docstring), then the plot and the record.

``fakes``: the institutions' process and their own cost. ``scenario``: the offered flow.
``timeline``: each event's stages, and the plot. ``report``: the record's figures and notes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import bench.flow
from bench.flow.fakes import fake_costs, fake_institutions
from bench.flow.report import fakes_figures, fakes_notes, flow_figures, flow_notes, log_stages
from bench.flow.scenario import offered_flow
from bench.flow.timeline import plot
from bench.harness.infra import infrastructure
from bench.harness.measure import log
from bench.harness.workload import workload
from bench.record import RESULTS_DIR, write_record


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.flow", description=bench.flow.__doc__)
    parser.add_argument("--rate", type=float, default=500.0, help="events offered a second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=10, help="events per request (1: single)")
    parser.add_argument(
        "--push-batch", type=int, default=50, help="messages per HTTP push to CMU and CSS"
    )
    parser.add_argument(
        "--schema-checking-fakes",
        action="store_true",
        help="the fake CMU and CSS validate every message (R4B, XSD) as in the tests",
    )
    parser.add_argument(
        "--name", default="flow", help="record name: bench/results/NAME.json and NAME.png"
    )
    parser.add_argument("--seed", type=int, default=20261203)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    load = workload(int(args.rate * args.seconds), seed=f"f{args.seed}")
    costs = fake_costs(load.events)
    log(f"fakes' own cost, µs a message: {costs}")
    checks = args.schema_checking_fakes
    with (
        tempfile.TemporaryDirectory(prefix="jokko-bench-flow-") as tmp,
        infrastructure(Path(tmp)) as infra,
    ):
        logs = Path(tmp) / "logs"
        with fake_institutions(Path(tmp) / "partners", logs, checks) as (partners, fakes):
            run = offered_flow(
                infra, logs, partners, fakes.pid, load, args.rate, args.batch, args.push_batch
            )
    RESULTS_DIR.mkdir(exist_ok=True)
    plot(run.timeline, args.rate, RESULTS_DIR / f"{args.name}.png")
    log_stages(run)
    figures = flow_figures(run, args.rate) + fakes_figures(costs, args.rate)
    notes = flow_notes(run, args.rate, args.seconds, args.batch, args.push_batch)
    notes += fakes_notes(costs, args.rate, checks)
    write_record(args.name, figures, notes, plots=[f"{args.name}.png"])
    return 0 if run.all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
