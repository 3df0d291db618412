"""Reconciliation at scale: N members x 12 monthly contributions (plus affiliations and claims)
against the three institutions' extracts with 0.1% injected discrepancies. Generates the files
(sharded too), then times the comparison with ``--engine`` (``duckdb``: columnar, in-process;
``python``: sort-merge in ``--workers`` processes by member id range) and, with
``--peer-engine``, the other engine on the same files in the same run (``--peer``: the Python
engine in one process too); checks that exactly the injected discrepancies are found; records
time, peak memory summed over every process of the comparison, records/s.

    python -m bench.reconcile --members 100000 --peer-engine python [--engine python --peer]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.record import figure, write_record
from services.reconcile import INSTITUTIONS, Discrepancy, Totals
from services.reconcile_data import generate_files
from services.reconcile_shards import DEFAULT_ENGINE, ENGINES, reconcile_files

MONTHS = 12
RATE = 0.001


class _Keys:
    def __init__(self) -> None:
        self.keys: set[tuple[str, ...]] = set()

    def add(self, d: Discrepancy) -> None:
        self.keys.add((d.institution, d.record, d.kind, d.member_id, d.period, d.branch, d.ref))

    def reset(self) -> None:
        self.keys.clear()


def _compare(paths: dict[str, Path], workers: int, engine: str = "python") -> dict[str, Any]:
    keys, totals = _Keys(), Totals()
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    measured = reconcile_files(
        paths["ledger"], {i: paths[i] for i in INSTITUTIONS}, keys, totals, workers=workers,
        engine=engine,
    )  # fmt: skip
    if measured.engine != engine:
        raise RuntimeError(f"{engine} engine handed the run to python: {measured.why}")
    elapsed = time.perf_counter() - t0
    records = sum(a + b for a, b in totals.compared.values())
    return {
        "engine": engine,
        "workers": measured.shards,
        "seconds": elapsed,
        "records": records,
        "records_per_s": records / elapsed,
        "peak_mib": sum(measured.peaks_kib) / 1024,
        "largest_process_mib": max(measured.peaks_kib) / 1024,
        "found": keys.keys,
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def measure(
    members: int, workers: int, peer: bool, engine: str = "python", peer_engine: str | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="jokko-reconcile-") as tmp:
        t0 = time.perf_counter()
        gen, paths = generate_files(Path(tmp), members, MONTHS, rate=RATE, workers=workers)
        gen_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in paths.values())
        print(f"{members:,} members: generated {size / 2**20:.0f} MiB in {gen_s:.0f} s", flush=True)
        # the peer first: a process's peak RSS is for its lifetime, and DuckDB runs in this one
        other = _compare(paths, workers, peer_engine) if peer_engine else None
        if other:
            print({k: v for k, v in other.items() if k != "found"}, flush=True)
        sharded = _compare(paths, workers, engine)
        print({k: v for k, v in sharded.items() if k != "found"}, flush=True)
        single = _compare(paths, 1) if peer else None
        if single:
            print({k: v for k, v in single.items() if k != "found"}, flush=True)
    return {
        "members": members,
        "generate_s": gen_s,
        "files_mib": size / 2**20,
        "injected": len(gen.truth),
        "sharded": sharded,
        "single": single,
        "other": other,
        "exact": all(r is None or r["found"] == gen.truth for r in (sharded, other, single)),
    }


def _figures(r: dict[str, Any]) -> list[dict[str, Any]]:
    tag = f"{r['members'] // 1000}k" if r["members"] < 1_000_000 else f"{r['members'] // 10**6}M"
    s, one, other = r["sharded"], r["single"], r["other"]
    at_1m = r["members"] >= 1_000_000
    projected = 1_000_000 / r["members"] * s["seconds"]
    peer = {"peer": "1 process, same files", "peer_value": one["records_per_s"]} if one else {}
    if other:
        peer = {"peer": f"{other['engine']} engine ({other['workers']} processes), same files",
                "peer_value": other["records_per_s"]}  # fmt: skip
    peer_s = {"peer": peer["peer"], "peer_value": other["seconds"]} if other else {}
    out = [
        figure(f"reconcile_{tag}_seconds", s["seconds"], "s", target="< 60 s at 1M",
               met=s["seconds"] < 60 if at_1m else None, **peer_s),
        figure(f"reconcile_{tag}_peak_memory_all_processes", s["peak_mib"], "MiB",
               target="< 1536 MiB", met=s["peak_mib"] < 1536),
        figure(f"reconcile_{tag}_records_per_s", s["records_per_s"], "records/s", **peer),
        figure(f"reconcile_{tag}_exact", float(r["exact"]), "1 = every injected found, "
               "no false positive", target="1", met=bool(r["exact"])),
        figure(f"reconcile_{tag}_generate_seconds", r["generate_s"], "s"),
    ]  # fmt: skip
    if not at_1m:
        out.append(figure(f"reconcile_{tag}_projected_1M_seconds", projected, "s",
                          target="< 60 s", met=projected < 60))  # fmt: skip
    return out


def _line(r: dict[str, Any]) -> str:
    s, one, other = r["sharded"], r["single"], r["other"]
    how = (
        "the duckdb engine (one process, 2 threads)"
        if s["engine"] == "duckdb"
        else f"{s['workers']} processes"
    )
    text = (
        f"{r['members']:,} members: {s['records']:,} records (ledger expectations + extract "
        f"lines, {r['files_mib']:.0f} MiB of files generated in {r['generate_s']:.0f} s) "
        f"compared in {s['seconds']:.1f} s by {how} "
        f"({s['records_per_s']:,.0f} records/s, peak {s['peak_mib']:.0f} MiB summed over "
        f"the processes, largest {s['largest_process_mib']:.0f} MiB; load average "
        f"{s['load_before']:.1f} before, {s['load_after']:.1f} after)"
    )
    if other:
        text += (
            f", by the {other['engine']} engine in {other['workers']} processes in "
            f"{other['seconds']:.1f} s ({other['records_per_s']:,.0f} records/s, peak "
            f"{other['peak_mib']:.0f} MiB)"
        )
    if one:
        text += (
            f", in {one['seconds']:.1f} s by 1 process ({one['records_per_s']:,.0f} "
            f"records/s, {one['peak_mib']:.0f} MiB)"
        )
    return (
        text + f"; {r['injected']:,} injected discrepancies all found and nothing else: "
        f"{r['exact']}"
    )


def _notes(results: list[dict[str, Any]]) -> str:
    duck = (
        " The duckdb engine (services/reconcile_duckdb.py) reads the four files natively "
        "(read_csv, read_json, fixed width by substring) into one on-disk DuckDB table of "
        "records, groups it by key and returns only the keys that are not clean (not one record "
        "on each side with equal compared fields) to Python, whose own merge and comparison make "
        "the discrepancies; 2 threads, memory_limit 1GB. Its time goes to loading the table "
        "(parsing and writing ~57 records a member) and the group-by over ~28 keys a member; "
        "what would cut it further: a per-member pre-filter (1 group a member instead of 28) "
        "before the per-key work, at the price of a hash fingerprint."
        if any(r["sharded"]["engine"] == "duckdb" for r in results)
        else ""
    )
    return (
        "; ".join(_line(r) for r in results) + "." + duck + " The machine (2 cores) was shared "
        "with other "
        "engineers' test runs (Kafka brokers, PostgreSQL, pytest), hence the load averages: "
        "times are upper bounds of what the code does on an idle machine. How the python "
        "engine works: each "
        "export is sorted by member, so every file is cut into byte ranges at the same member "
        "boundaries (binary search on its lines) and each process streams a sort-merge of its "
        "ranges; memory is O(1) per process (one member's records, read buffers), discrepancies "
        "(0.1%) come back to the parent over a queue. The work is pure-Python parsing (csv, "
        "json, fixed width) and tuple comparison, linear in records: it scales with cores, not "
        "with memory. To 10M members (about 570M records): 10x the time at the same core count "
        "and the same memory per process (nothing grows with the data but the discrepancies "
        "kept); more cores divide the time, since shards share nothing. Meeting 60 s at 1M "
        "on 2 cores needs ~10x less CPU per record than Python's parsers give: push the join "
        "into a columnar engine (DuckDB or Arrow reading the CSV/NDJSON natively, a full "
        "outer join on the key, Python only seeing the discrepancies), or have the "
        "institutions send columnar extracts."
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, action="append")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--peer", action="store_true", help="also time 1 process (first size)")
    parser.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE)
    parser.add_argument("--peer-engine", choices=ENGINES, help="also time it (first size)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    sizes = args.members or [100_000]
    results = [
        measure(n, args.workers, args.peer and i == 0, args.engine,
                args.peer_engine if i == 0 else None)
        for i, n in enumerate(sizes)
    ]  # fmt: skip
    if args.no_record:
        return
    figures = [f for r in results for f in _figures(r)]
    # `make bench` runs 100k; the full 1M figure (--members 1000000) keeps a record of its own.
    largest = max(sizes)
    name = "reconcile" if largest >= 1_000_000 else f"reconcile_{largest // 1000}k"
    write_record(name, figures, _notes(results))


if __name__ == "__main__":
    main()
