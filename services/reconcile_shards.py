"""Reconciliation over files, sharded across processes by member id range.

The comparison is CPU-bound pure Python, one core per process. Every export is sorted by member
(the ledger, and each extract as the institutions produce it), so a file splits into contiguous
byte ranges at member boundaries: split members are picked at even offsets of the ledger and
found in each extract by binary search on its lines, then each process merges its own ranges —
no re-partitioning pass, no shared state, memory O(1) per process. Discrepancies come back to the
parent over a queue (they are ~0.1% of records) and go to the caller's collector there.

A shard trusts nothing: each checks that its records stay in its member range and in order
(``by_member``); if a file was not sorted after all, the run starts again in one process with
the external sort (``services.reconcile.reconcile``), so the result never depends on the order.
IPRES's trailer count and control total are checked over the parts (``check_parts``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import multiprocessing
import queue
import resource
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from adapters.cmu import extract as cmu_extract
from adapters.css import extract as css_extract
from adapters.extract import Rec
from adapters.ipres import extract as ipres_extract
from adapters.msnas import ledger as msnas_ledger
from schemas.errors import JokkoError
from services.reconcile import (
    EVERY_MONTH,
    Collector,
    Discrepancy,
    OutOfOrder,
    Scope,
    Source,
    Totals,
    by_member,
    claims_by_id,
    ledger_records,
    reconcile,
    run_sorted,
)

MEMBER_OF: dict[str, Callable[[str], str | None]] = {
    "ledger": msnas_ledger.member_of_line,
    "cmu": cmu_extract.member_of_line,
    "css": css_extract.member_of_line,
    "ipres": ipres_extract.member_of_line,
}
_HEADED = frozenset({"ledger", "css"})
"""CSV files whose every part must start with the file's header line."""
_BATCH = 2_000
ENGINES = ("duckdb", "python")
DEFAULT_ENGINE = "duckdb"
"""Exact on every reconciliation test; 2.3x the records/s of 2 Python processes at 100k members."""
Range = tuple[int, int]
"""Byte offsets ``[start, end)`` of whole lines."""


class ShardFailed(JokkoError):
    """A shard process failed; the message says which file and line, as a one-process run would."""


@dataclass
class Measured:
    """What a sharded run cost: per-process peak RSS in KiB (the parent's first)."""

    peaks_kib: list[int] = field(default_factory=list)
    shards: int = 1
    fell_back: bool = False
    engine: str = "python"
    """The engine that produced the result (``duckdb`` falls back to ``python``)."""
    why: str = ""
    """Why the DuckDB engine handed the run to Python, if it did."""


# --- reading ---------------------------------------------------------------------------------


class _Slice(io.RawIOBase):
    def __init__(self, f: IO[bytes], start: int, end: int) -> None:
        f.seek(start)
        self.f, self.left = f, end - start

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.left <= 0:
            return 0
        n = self.f.readinto(memoryview(b)[: min(len(b), self.left)])  # type: ignore[attr-defined]
        self.left -= n or 0
        return n or 0


def open_lines(
    path: Path,
    span: Range | None = None,
    *,
    header: bool = False,
    progress: Callable[[int], object] | None = None,
) -> Iterator[str]:
    """Text lines of ``path`` (of ``span`` only, after the file's first line if ``header``);
    ``progress`` gets the characters read, every 64k lines."""
    with path.open("rb") as raw:
        if header and span is not None and span[0] > 0:
            yield raw.readline().decode("utf-8")
        start, end = span if span is not None else (0, path.stat().st_size)
        text = io.TextIOWrapper(
            io.BufferedReader(_Slice(raw, start, end), 1 << 20), encoding="utf-8", newline=""
        )
        if progress is None:
            yield from text
            return
        done = 0
        for n, line in enumerate(text, start=1):
            done += len(line)
            if not n & 0xFFFF:
                progress(done)
                done = 0
            yield line
        progress(done)


# --- splitting -------------------------------------------------------------------------------


def _next_record(f: IO[bytes], pos: int, member_of: Callable[[str], str | None]) -> tuple[int, str]:
    """Offset and member of the first record line starting at or after ``pos`` (``""`` at the
    end of the file)."""
    f.seek(max(pos - 1, 0))
    if pos > 0:
        f.readline()
    while True:
        start = f.tell()
        raw = f.readline()
        if not raw:
            return start, ""
        member = member_of(raw.decode("utf-8"))
        if member is not None:
            return start, member


def _first_from(path: Path, member: str, member_of: Callable[[str], str | None]) -> int:
    """Offset of the first record line whose member sorts at or after ``member``."""
    with path.open("rb") as f:
        lo, hi = 0, path.stat().st_size
        while lo < hi:
            mid = (lo + hi) // 2
            m = _next_record(f, mid, member_of)[1]
            if not m or m >= member:
                hi = mid
            else:
                lo = mid + 1
        return _next_record(f, lo, member_of)[0]


def split(
    ledger: Path, extracts: dict[str, Path], shards: int
) -> tuple[list[str], dict[str, list[Range]]]:
    """Split members (the first member of every shard after the first) and each file's ranges."""
    size = ledger.stat().st_size
    members: list[str] = []
    with ledger.open("rb") as f:
        for k in range(1, shards):
            m = _next_record(f, size * k // shards, MEMBER_OF["ledger"])[1]
            if m and (not members or m > members[-1]):
                members.append(m)
    ranges: dict[str, list[Range]] = {}
    for name, path in {"ledger": ledger, **extracts}.items():
        cuts = [0, *(_first_from(path, m, MEMBER_OF[name]) for m in members), path.stat().st_size]
        ranges[name] = list(itertools.pairwise(cuts))
    return members, ranges


# --- one shard -------------------------------------------------------------------------------


class _Forward:
    """Collector of a shard: discrepancies go to the parent in batches."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.buf: list[Discrepancy] = []

    def add(self, d: Discrepancy) -> None:
        self.buf.append(d)
        if len(self.buf) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.out.put(("items", self.buf))
            self.buf = []

    def reset(self) -> None:  # pragma: no cover - a shard never restarts; the parent does
        self.buf = []


def _sources(
    paths: dict[str, str],
    ranges: dict[str, Range],
    institutions: frozenset[str],
    tally: ipres_extract.Tally,
    progress: Callable[[int], object] | None,
) -> tuple[Source, dict[str, Source]]:
    def lines(name: str, report: Callable[[int], object] | None = None) -> Iterator[str]:
        return open_lines(Path(paths[name]), ranges[name], header=name in _HEADED, progress=report)

    parsers: dict[str, Callable[[], Iterable[Rec]]] = {
        "cmu": lambda: claims_by_id(cmu_extract.parse_extract(lines("cmu"))),
        "css": lambda: css_extract.parse_extract(lines("css")),
        "ipres": lambda: ipres_extract.parse_extract(lines("ipres"), part=tally),
    }

    def ledger() -> Iterable[Rec]:
        return ledger_records(msnas_ledger.parse_ledger(lines("ledger", progress)), institutions)

    return ledger, {i: parsers[i] for i in paths if i != "ledger"}


def _shard(
    k: int,
    paths: dict[str, str],
    ranges: dict[str, Range],
    bounds: tuple[str, str],
    scope: Scope,
    out: Any,
) -> None:
    """One process: merge this member range of every file, send what it finds to ``out``."""
    try:
        forward, totals, tally = _Forward(out), Totals(), ipres_extract.Tally()
        institutions = frozenset(i for i in paths if i != "ledger")
        ledger, extracts = _sources(
            paths, ranges, institutions, tally, lambda n: out.put(("progress", n))
        )
        sort = functools.partial(by_member, low=bounds[0], high=bounds[1])
        run_sorted(ledger, extracts, forward, totals, sort, scope)
        forward.flush()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out.put(("done", k, totals.compared, tally, peak))
    except OutOfOrder as exc:
        out.put(("unsorted", k, str(exc)))
    except Exception as exc:  # reported to the parent, which raises it
        out.put(("error", k, f"{type(exc).__name__}: {exc}"))


# --- the run ---------------------------------------------------------------------------------


def reconcile_files(
    ledger: Path,
    extracts: dict[str, Path],
    collector: Collector,
    totals: Totals,
    *,
    workers: int = 1,
    scope: Scope = EVERY_MONTH,
    chunk: int = 500_000,
    progress: Callable[[int], object] | None = None,
    context: str = "spawn",
    engine: str = DEFAULT_ENGINE,
) -> Measured:
    """``reconcile`` of files, in ``workers`` processes when there is more than one (``spawn``
    by default: safe from a threaded server). Same discrepancies whatever ``workers`` and
    ``engine``: ``duckdb`` (``services.reconcile_duckdb``; its own 2 threads, ``workers``
    unused) hands a file it cannot read exactly as the Python parsers do to ``python``."""
    measured = Measured()
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: one of {', '.join(ENGINES)}")
    if engine == "duckdb":
        from services.reconcile_duckdb import NotCanonical, reconcile_duckdb

        try:
            reconcile_duckdb(ledger, extracts, collector, totals, scope=scope)
            measured.engine = "duckdb"
            measured.peaks_kib.insert(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            return measured
        except NotCanonical as exc:
            measured.fell_back, measured.why = True, str(exc)[:500]
            collector.reset()
            totals.reset()
    members, ranges = split(ledger, extracts, workers) if workers > 1 else ([], {})
    if members:
        measured.shards = len(members) + 1
        if _sharded(ledger, extracts, collector, totals, members, ranges, scope, progress,
                    context, measured):  # fmt: skip
            measured.peaks_kib.insert(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            return measured
        measured.fell_back, measured.shards = True, 1
        collector.reset()
        totals.reset()
    reconcile(
        lambda: ledger_records(
            msnas_ledger.parse_ledger(open_lines(ledger, progress=progress)), frozenset(extracts)
        ),
        {i: _whole(i, p) for i, p in extracts.items()},
        collector,
        totals,
        chunk=chunk,
        scope=scope,
    )
    measured.peaks_kib.insert(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return measured


def _whole(institution: str, path: Path) -> Source:
    if institution == "cmu":
        return lambda: claims_by_id(cmu_extract.parse_extract(open_lines(path)))
    if institution == "css":
        return lambda: css_extract.parse_extract(open_lines(path))
    if institution == "ipres":
        return lambda: ipres_extract.parse_extract(open_lines(path))
    raise ValueError(f"unknown institution: {institution}")


def _sharded(
    ledger: Path,
    extracts: dict[str, Path],
    collector: Collector,
    totals: Totals,
    members: list[str],
    ranges: dict[str, list[Range]],
    scope: Scope,
    progress: Callable[[int], object] | None,
    context: str,
    measured: Measured,
) -> bool:
    """Runs the shards; ``False`` if a file turned out not sorted by member (caller restarts)."""
    ctx: Any = multiprocessing.get_context(context)
    out: Any = ctx.Queue()
    paths = {"ledger": str(ledger), **{i: str(p) for i, p in extracts.items()}}
    bounds = list(zip(["", *members], [*members, ""], strict=True))
    procs = [
        ctx.Process(
            target=_shard,
            args=(k, paths, {n: r[k] for n, r in ranges.items()}, bounds[k], scope, out),
            daemon=True,
        )
        for k in range(len(bounds))
    ]
    for p in procs:
        p.start()
    pending, tallies = set(range(len(procs))), []
    add, total = collector.add, totals.add
    try:
        while pending:
            try:
                msg = out.get(timeout=1.0)
            except queue.Empty:
                dead = [k for k in pending if procs[k].exitcode is not None]
                if dead:
                    raise ShardFailed(
                        f"shard {dead[0]} exited ({procs[dead[0]].exitcode})"
                    ) from None
                continue
            if msg[0] == "items":
                for d in msg[1]:
                    add(d)
                    total(d)
            elif msg[0] == "progress":
                if progress is not None:
                    progress(msg[1])
            elif msg[0] == "done":
                _, k, compared, tally, peak = msg
                pending.discard(k)
                tallies.append(tally)
                measured.peaks_kib.append(peak)
                for inst, (a, b) in compared.items():
                    c = totals.compared.setdefault(inst, [0, 0])
                    c[0] += a
                    c[1] += b
            elif msg[0] == "unsorted":
                return False
            else:
                raise ShardFailed(msg[2])
        if "ipres" in extracts:
            ipres_extract.check_parts(tallies)
        return True
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
        with contextlib.suppress(Exception):
            out.close()
