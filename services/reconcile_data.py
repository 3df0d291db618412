"""Realistic reconciliation data with known discrepancies: the ledger a mutual would export and
the three extracts the institutions would return, with missing, extra, mismatched and
duplicated records injected at chosen positions. The truth comes back with the data, so a test
can assert that every injected discrepancy is found and nothing else."""

from __future__ import annotations

import itertools
import multiprocessing
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from adapters.cmu import extract as cmu_extract
from adapters.css import extract as css_extract
from adapters.extract import Rec, RecordKind
from adapters.ipres import extract as ipres_extract
from adapters.msnas.ledger import LedgerRow, header_line, ledger_line
from schemas.types import Region
from services.reconcile import INSTITUTIONS, Kind, expected_records

TruthKey = tuple[str, str, str, str, str, str, str]
"""(institution, record, kind, member_id, period, branch, ref)."""

_REGIONS = sorted(r.value.removeprefix("SN-") for r in Region)
_LINE = {
    "cmu": cmu_extract.extract_line,
    "css": css_extract.extract_line,
    "ipres": ipres_extract.extract_line,
}


@dataclass
class Generated:
    truth: set[TruthKey] = field(default_factory=set)
    mismatched: dict[TruthKey, str] = field(default_factory=dict)
    """The field each injected mismatch changed (``amount``, ``period``, ``package``...)."""
    members: int = 0
    ledger_rows: int = 0
    extract_lines: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INSTITUTIONS, 0))
    ipres_count: int = 0
    ipres_total: int = 0
    """IPRES A and C lines and the C amounts: the trailer of the statement."""

    def merge(self, other: Generated) -> None:
        self.truth |= other.truth
        self.mismatched.update(other.mismatched)
        self.members += other.members
        self.ledger_rows += other.ledger_rows
        for inst, n in other.extract_lines.items():
            self.extract_lines[inst] += n
        self.ipres_count += other.ipres_count
        self.ipres_total += other.ipres_total


def periods(months: int, first: str = "2025-01") -> list[str]:
    year, month = int(first[:4]), int(first[5:])
    out = []
    for _ in range(months):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def member_ids(members: int) -> Iterator[str]:
    """Ids spread over the 14 regions, produced in ascending order (as a ledger export is)."""
    per = -(-members // len(_REGIONS))
    n = 0
    for region in _REGIONS:
        for serial in range(1, per + 1):
            if n == members:
                return
            n += 1
            yield f"MSNAS-{region}-{serial:06d}"


def ledger_rows(
    member_id: str, rng: random.Random, months: list[str], claim_share: float = 0.05
) -> list[LedgerRow]:
    """One member's rows: enrolment, monthly mobile-money contributions, sometimes a claim."""
    branches = ["health"]
    odds = (("family", 0.5), ("work_accident", 0.3), ("old_age", 0.4))
    branches += [b for b, p in odds if rng.random() < p]
    rows = [
        LedgerRow(
            "member",
            member_id,
            _event_id(rng),
            package="complementary" if rng.random() < 0.3 else "base",
            branches="+".join(branches),
            status="active" if rng.random() < 0.95 else "suspended",
            dependents=rng.randrange(5),
        )
    ]
    for period in months:
        health = 3_500 + 500 * rng.randrange(3)
        family = 1_000 if "family" in branches else 0
        work_accident = 500 if "work_accident" in branches else 0
        old_age = 2_000 + 1_000 * rng.randrange(2) if "old_age" in branches else 0
        total = health + family + work_accident + old_age
        rows.append(
            LedgerRow(
                "contribution", member_id, _event_id(rng), period, health=health, family=family,
                work_accident=work_accident, old_age=old_age, total=total,
            )
        )  # fmt: skip
    if rng.random() < claim_share:
        serial = int(member_id[-6:]) * 100 + _REGIONS.index(member_id.split("-")[1])
        rows.append(
            LedgerRow(
                "claim", member_id, _event_id(rng), rng.choice(months),
                claim_id=f"CLM-{months[0][:4]}-{serial:08d}", status="active",
                total=1_000 * rng.randrange(5, 80),
            )
        )  # fmt: skip
    return rows


def _event_id(rng: random.Random) -> str:
    return "%08x-%04x-4%03x-8%03x-%012x" % (  # noqa: UP031 - fast enough for millions
        rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(12), rng.getrandbits(12),
        rng.getrandbits(48),
    )  # fmt: skip


def _mismatch(rec: Rec, rng: random.Random, months: list[str]) -> tuple[Rec, str]:
    """``rec`` as the institution holds it with one compared field changed, and that field."""
    if rec.kind == RecordKind.AFFILIATION:
        fields = ["status"]
        if rec.package:
            fields.append("package")
        if rec.dependents >= 0:
            fields.append("dependents")
    elif rec.kind == RecordKind.CLAIM:
        fields = ["amount", "status", "period"]
    else:
        fields = ["amount"]
    name = fields[rng.randrange(len(fields))]
    if name == "package":
        return rec._replace(
            package="base" if rec.package == "complementary" else "complementary"
        ), name
    if name == "dependents":
        return rec._replace(dependents=rec.dependents + 1), name
    if name == "status":
        if rec.kind == RecordKind.CLAIM:
            return rec._replace(status="cancelled"), name
        return rec._replace(status="lapsed" if rec.status == "active" else "active"), name
    if name == "period":
        other = [m for m in months if m != rec.compared_period] or ["2000-01"]
        return rec._replace(compared_period=other[rng.randrange(len(other))]), name
    return rec._replace(amount=rec.amount + 500), name


def _extra(rec: Rec) -> Rec:
    """A record the ledger does not have, unique per source record (no accidental duplicate)."""
    if rec.kind == RecordKind.CLAIM:
        return rec._replace(ref=rec.ref[:-1] + ("9" if rec.ref[-1] != "9" else "8"))
    if rec.kind == RecordKind.AFFILIATION:
        return rec._replace(member_id=rec.member_id + "X", event_id="")  # unknown to the mutual
    return rec._replace(period=f"{int(rec.period[:4]) - 10}{rec.period[4:]}", event_id="")


def generate(
    members: int,
    months: int,
    write: dict[str, Callable[[str], object]],
    *,
    rate: float = 0.001,
    seed: int = 7,
    claim_share: float = 0.05,
    first_period: str = "2025-01",
    part: tuple[int, int] | None = None,
) -> Generated:
    """Write the ledger (``write["ledger"]``) and each institution's extract; inject one
    discrepancy into about ``rate`` of the institutions' records; ``claim_share`` of the
    members have a claim. A mismatch changes one field the institution holds: the amount,
    a claim's month or status, an affiliation's package, status or dependents.
    ``extra`` records: a month ten years before, an affiliation of
    an id unknown to the mutual, a claim id the mutual never issued.
    With ``part`` = ``(first, end)``, only those members (by position) and no header or trailer:
    one process's share of the files (``generate_files``)."""
    lo, hi = part or (0, members)
    rng = random.Random(seed if lo == 0 else f"{seed}:{lo}")
    inj = random.Random(seed + 1 if lo == 0 else f"{seed}:{lo}:inj")
    month_list = periods(months, first_period)
    out = Generated()
    every = frozenset(INSTITUTIONS)
    buffers: dict[str, list[str]] = {i: [] for i in INSTITUTIONS}
    tails: dict[str, list[Rec]] = {i: [] for i in INSTITUTIONS}
    ipres_count = ipres_total = 0
    if part is None:
        write["ledger"](header_line())
        write["css"](css_extract.header_line())
        write["ipres"](ipres_extract.header_line(month_list[0], month_list[-1]))
    kinds = (Kind.MISSING, Kind.MISMATCH, Kind.DUPLICATE, Kind.EXTRA)
    for member_id in itertools.islice(member_ids(members), lo, hi):
        out.members += 1
        rows = ledger_rows(member_id, rng, month_list, claim_share)
        write["ledger"]("".join(ledger_line(r) for r in rows))
        out.ledger_rows += len(rows)
        for row in rows:
            for rec in expected_records(row, every):
                held = [rec]
                if inj.random() < rate:
                    kind = kinds[inj.randrange(4)]
                    if kind is Kind.MISSING:
                        held = []
                        target = rec
                    elif kind is Kind.MISMATCH:
                        changed, name = _mismatch(rec, inj, month_list)
                        held = [changed]
                        target = rec
                    elif kind is Kind.DUPLICATE:
                        held = [rec, rec]
                        target = rec
                    else:
                        target = _extra(rec)
                        held = [rec]
                        if target.member_id != rec.member_id:
                            tails[rec.institution].append(target)  # sorts after the member
                        else:
                            held.append(target)
                    key = (
                        rec.institution,
                        rec.kind,
                        kind,
                        target.member_id,
                        target.period or target.compared_period,
                        target.branch,
                        target.ref,
                    )
                    out.truth.add(key)  # fmt: skip
                    if kind is Kind.MISMATCH:
                        out.mismatched[key] = name
                line = _LINE[rec.institution]
                for h in held:
                    buffers[rec.institution].append(line(h))
                    if h.institution == "ipres":
                        ipres_count += 1
                        ipres_total += h.amount
        for inst, tail in tails.items():
            for h in tail:
                buffers[inst].append(_LINE[inst](h))
                if inst == "ipres":
                    ipres_count += 1
            tail.clear()
        for inst, buf in buffers.items():
            if buf:
                write[inst]("".join(buf) if inst != "cmu" else "\n".join(buf) + "\n")
                out.extract_lines[inst] += len(buf)
                buf.clear()
    out.ipres_count, out.ipres_total = ipres_count, ipres_total
    if part is None:
        write["ipres"](ipres_extract.trailer_line(ipres_count, ipres_total))
    return out


_NAMES = {"ledger": "ledger.csv", "cmu": "cmu.ndjson", "css": "css.csv", "ipres": "ipres.txt"}


def _open(paths: dict[str, Path]) -> dict[str, TextIO]:
    return {k: p.open("w", encoding="utf-8", newline="", buffering=1 << 20)
            for k, p in paths.items()}  # fmt: skip


def _generate_part(
    directory: Path, k: int, part: tuple[int, int], members: int, months: int,
    options: dict[str, Any],
) -> tuple[Generated, dict[str, Path]]:  # fmt: skip
    paths = {name: directory / f".part{k}.{file}" for name, file in _NAMES.items()}
    files = _open(paths)
    try:
        gen = generate(members, months, {n: f.write for n, f in files.items()}, part=part,
                       **options)  # fmt: skip
    finally:
        for f in files.values():
            f.close()
    return gen, paths


def generate_files(
    directory: Path,
    members: int,
    months: int,
    *,
    rate: float = 0.001,
    seed: int = 7,
    first_period: str = "2025-01",
    claim_share: float = 0.05,
    workers: int = 1,
) -> tuple[Generated, dict[str, Path]]:
    """``generate`` into ``ledger.csv``, ``cmu.ndjson``, ``css.csv`` and ``ipres.txt``; with
    ``workers`` > 1, each process writes a contiguous share of the members (other random draws
    than one process, the same kind of data) and the parts are joined in member order."""
    paths = {k: directory / v for k, v in _NAMES.items()}
    options: dict[str, Any] = {"rate": rate, "seed": seed, "first_period": first_period,
                               "claim_share": claim_share}  # fmt: skip
    if workers <= 1:
        files = _open(paths)
        try:
            gen = generate(members, months, {k: f.write for k, f in files.items()}, **options)
        finally:
            for f in files.values():
                f.close()
        return gen, paths
    cuts = [members * k // workers for k in range(workers + 1)]
    jobs = [(directory, k, (cuts[k], cuts[k + 1]), members, months, options)
            for k in range(workers)]  # fmt: skip
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        parts = pool.starmap(_generate_part, jobs)
    gen = Generated()
    month_list = periods(months, first_period)
    heads = {"ledger": header_line(), "css": css_extract.header_line(),
             "ipres": ipres_extract.header_line(month_list[0], month_list[-1])}  # fmt: skip
    for name, path in paths.items():
        with path.open("wb") as out:
            out.write(heads.get(name, "").encode())
            for _, part_paths in parts:
                with part_paths[name].open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
                part_paths[name].unlink()
    for part_gen, _ in parts:
        gen.merge(part_gen)
    with paths["ipres"].open("a", encoding="utf-8", newline="") as f:
        f.write(ipres_extract.trailer_line(gen.ipres_count, gen.ipres_total))
    return gen, paths
