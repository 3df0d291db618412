"""Reconciliation at scale: N members x 12 monthly contributions (plus affiliations and claims)
against the three institutions' extracts with 0.1% injected discrepancies. Measures the
reconciliation alone (in a child process, so ru_maxrss is its own peak), checks that exactly the
injected discrepancies are found, and records time, peak memory and records/s.

    python -m bench.reconcile --members 100000 [--members 1000000] [--no-record]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import cast

from bench.record import figure, write_record
from services.reconcile import INSTITUTIONS, Discrepancy, Totals, extract_source, ledger_source
from services.reconcile import reconcile as run_reconcile
from services.reconcile_data import generate_files

MONTHS = 12
RATE = 0.001


class _Keys:
    def __init__(self) -> None:
        self.keys: set[tuple[str, ...]] = set()

    def add(self, d: Discrepancy) -> None:
        self.keys.add((d.institution, d.record, d.kind, d.member_id, d.period, d.branch, d.ref))

    def reset(self) -> None:
        self.keys.clear()


def _lines(path: Path) -> Iterable[str]:
    with path.open(encoding="utf-8", newline="", buffering=1 << 20) as f:
        yield from f


def _child(paths: dict[str, Path], out: multiprocessing.queues.Queue[object]) -> None:
    t0 = time.perf_counter()
    keys, totals = _Keys(), Totals()
    run_reconcile(
        ledger_source(lambda: _lines(paths["ledger"]), INSTITUTIONS),
        {i: extract_source(i, lambda i=i: _lines(paths[i])) for i in INSTITUTIONS},  # type: ignore[misc]
        keys,
        totals,
    )
    elapsed = time.perf_counter() - t0
    records = sum(a + b for a, b in totals.compared.values())
    out.put((elapsed, records, keys.keys))


def measure(members: int) -> dict[str, float | int | bool]:
    with tempfile.TemporaryDirectory(prefix="jokko-reconcile-") as tmp:
        t0 = time.perf_counter()
        gen, paths = generate_files(Path(tmp), members, MONTHS, rate=RATE)
        gen_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in paths.values())
        ctx = multiprocessing.get_context("fork")
        queue: multiprocessing.queues.Queue[object] = ctx.Queue()
        proc = ctx.Process(target=_child, args=(paths, queue))
        proc.start()
        got = cast(tuple[float, int, set[tuple[str, ...]]], queue.get())
        elapsed, records, found = got
        proc.join()
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    exact = found == gen.truth
    return {
        "members": members,
        "generate_s": gen_s,
        "files_mib": size / 2**20,
        "seconds": elapsed,
        "records": records,
        "records_per_s": records / elapsed,
        "peak_mib": peak_kib / 1024,
        "injected": len(gen.truth),
        "exact": exact,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, action="append")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    sizes = args.members or [100_000]
    results = []
    for n in sizes:
        r = measure(n)
        print(r, flush=True)
        results.append(r)
    if args.no_record:
        return
    figures = []
    for r in results:
        tag = f"{r['members'] // 1000}k"
        projected = 1_000_000 / r["members"] * r["seconds"]
        figures += [
            figure(f"reconcile_{tag}_seconds", r["seconds"], "s", target="< 60 s at 1M",
                   met=r["seconds"] < 60 if r["members"] >= 1_000_000 else None),
            figure(f"reconcile_{tag}_peak_memory", r["peak_mib"], "MiB", target="< 1536 MiB",
                   met=r["peak_mib"] < 1536),
            figure(f"reconcile_{tag}_records_per_s", r["records_per_s"], "records/s"),
            figure(f"reconcile_{tag}_projected_1M_seconds", projected, "s",
                   target="< 60 s", met=projected < 60),
            figure(f"reconcile_{tag}_exact", float(r["exact"]), "1 = every injected found, "
                   "no false positive", target="1", met=bool(r["exact"])),
        ]  # fmt: skip
    detail = "; ".join(
        f"{r['members']:,} members: {r['records']:,} records (ledger expectations + extract "
        f"lines) in {r['seconds']:.1f} s, {r['injected']} injected discrepancies all found and "
        f"nothing else: {r['exact']}; generating the {r['files_mib']:.0f} MiB of files took "
        f"{r['generate_s']:.1f} s"
        for r in results
    )
    notes = (
        f"{detail}. One process, one pass: a streaming sort-merge of the ledger and the three "
        "extracts (files exported member by member, so only one member's records are sorted "
        "at a time); memory stays flat whatever the size. Time is linear in records and "
        "CPU-bound in pure-Python parsing (csv, json, fixed-width) and tuple comparison: the 60 s "
        "target for 1M members is not met this way. To 10M members (and to meet it): shard by "
        "region (member ids carry it; 14 independent merges over per-region extract files, one "
        "process per core), and read extracts with a columnar engine (DuckDB/Arrow CSV and JSON "
        "readers) so the Python loop only sees discrepancies; memory would stay O(1) per shard."
    )
    write_record("reconcile", figures, notes)


if __name__ == "__main__":
    main()
