"""Reconciliation: the mutual's ledger against what CMU, CSS and IPRES hold.

The core (``compare``) is a pure streaming merge of two key-sorted record streams (adapters'
``Rec``): memory is O(1) beyond one member's records, so 10 million members cost time, not
RAM. Keys sort member first; a ledger or extract exported member by member (as every export
here is) streams straight in with only a per-member sort. A source that is not grouped by
member is detected (``OutOfOrder``) and the whole run restarts with an external sort of every
source (sorted chunks spilled to temporary files, then ``heapq.merge``), so results never depend
on the input order.
"""

from __future__ import annotations

import heapq
import pickle
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import IO, NamedTuple, Protocol

from adapters.extract import Rec, RecordKind, region_of
from adapters.msnas.ledger import LedgerRow

INSTITUTIONS = ("cmu", "css", "ipres")
_CSS_BRANCHES = ("family", "work_accident")


class Kind(StrEnum):
    MISSING = "missing"
    """In the ledger, not at the institution."""
    EXTRA = "extra"
    """At the institution, not in the ledger."""
    MISMATCH = "mismatch"
    """On both sides with different amount, period (claims), package, status or dependents."""
    DUPLICATE = "duplicate"
    """The institution holds the same record more than once (each copy beyond the first)."""
    DUPLICATE_MEMBER = "duplicate_member"
    """One person (the same NIN, by token) affiliated under two member ids: ``ref`` and
    ``expected`` name the first id, ``member_id`` the second (from Jokko's store, not the files:
    neither the ledger nor an extract carries NINs)."""


class Discrepancy(NamedTuple):
    institution: str
    record: str
    kind: str
    member_id: str
    period: str
    branch: str
    ref: str
    region: str
    expected_amount: int
    actual_amount: int
    fields: str = ""
    """Comma-separated fields that differ (mismatches only)."""
    expected: str = ""
    actual: str = ""
    event_id: str = ""

    @property
    def xof_difference(self) -> int:
        """What the institution holds minus what the ledger says (negative: money missing)."""
        return self.actual_amount - self.expected_amount

    def key(self) -> str:
        """Stable text identity of the discrepancy, e.g. for choosing what to re-drive."""
        return "|".join(
            (self.institution, self.record, self.member_id, self.period, self.branch, self.ref)
        )


CSV_HEADER = (*Discrepancy._fields, "xof_difference")


PERIOD_HELP = "YYYY-MM, a range YYYY-MM..YYYY-MM, or 'previous' (the last closed month)"


@dataclass(frozen=True)
class Scope:
    """The months a run reports on (inclusive; ``None``: all). Affiliations have no period and
    are in every run: they are the institution's current state, not a month's."""

    period_from: str | None = None
    period_to: str | None = None

    def covers(self, period: str) -> bool:
        if not period or self.period_from is None:
            return True
        return self.period_from <= period <= (self.period_to or self.period_from)


EVERY_MONTH = Scope()


def _month(text: str) -> str:
    if not (len(text) == 7 and text[4] == "-" and text[:4].isdigit() and text[5:].isdigit()):
        raise ValueError(f"period {text!r} is not {PERIOD_HELP}")
    if not 1 <= int(text[5:]) <= 12:
        raise ValueError(f"period {text!r}: no month {text[5:]}")
    return text


def parse_period(text: str, today: date) -> tuple[str, str]:
    """``(first, last)`` month of ``text``; ``previous`` is resolved against ``today``, so a
    crontab line that says ``--period previous`` is right every month without editing."""
    if text == "previous":
        year, month = (today.year - 1, 12) if today.month == 1 else (today.year, today.month - 1)
        p = f"{year:04d}-{month:02d}"
        return p, p
    first, sep, last = text.partition("..")
    lo, hi = _month(first), _month(last) if sep else first
    if lo > hi:
        raise ValueError(f"period range {text!r} ends before it starts")
    return lo, hi


class OutOfOrder(Exception):
    """A source is not grouped by member; the run restarts with an external sort."""


# --- the ledger's expectations ---------------------------------------------------------------


def expected_records(row: LedgerRow, institutions: frozenset[str]) -> Iterator[Rec]:
    """What each institution should hold for one ledger row (the routing table, DESIGN §3)."""
    m, ev = row.member_id, row.event_id
    if row.record == "member":
        branches = set(row.branches.split("+")) if row.branches else set()
        if "cmu" in institutions:
            yield Rec(
                m,
                "cmu",
                RecordKind.AFFILIATION,
                "",
                "",
                "",
                0,
                row.package,
                row.status,
                row.dependents,
                ev,
            )
        if "css" in institutions and branches & set(_CSS_BRANCHES):
            deps = row.dependents if "family" in branches else -1
            yield Rec(m, "css", RecordKind.AFFILIATION, "", "", "", 0, "", row.status, deps, ev)
        if "ipres" in institutions and "old_age" in branches:
            yield Rec(m, "ipres", RecordKind.AFFILIATION, "", "", "", 0, "", row.status, -1, ev)
    elif row.record == "contribution":
        c = RecordKind.CONTRIBUTION
        if row.health and "cmu" in institutions:
            yield Rec(m, "cmu", c, row.period, "health", "", row.health, "", "", -1, ev)
        if "css" in institutions:
            if row.family:
                yield Rec(m, "css", c, row.period, "family", "", row.family, "", "", -1, ev)
            if row.work_accident:
                yield Rec(
                    m, "css", c, row.period, "work_accident", "", row.work_accident, "", "", -1, ev
                )
        if row.old_age and "ipres" in institutions:
            yield Rec(m, "ipres", c, row.period, "old_age", "", row.old_age, "", "", -1, ev)
    elif row.record == "claim" and "cmu" in institutions:
        c = RecordKind.CLAIM
        yield Rec(m, "cmu", c, "", "", row.claim_id, row.total, "", row.status, -1, ev, row.period)


def claims_by_id(recs: Iterable[Rec]) -> Iterator[Rec]:
    """Extract side: a claim is keyed by its id alone; its service month becomes a compared
    fact, so a claim booked in another month is a period mismatch, not missing + extra."""
    claim = RecordKind.CLAIM
    for rec in recs:
        if rec.kind == claim and rec.period:
            rec = rec._replace(period="", compared_period=rec.period)
        yield rec


def ledger_records(rows: Iterable[LedgerRow], institutions: frozenset[str]) -> Iterator[Rec]:
    for row in rows:
        yield from expected_records(row, institutions)


def merge_same_key(recs: Iterator[Rec]) -> Iterator[Rec]:
    """Ledger side: two payments for the same member, month and branch are one expectation
    of their sum (an institution's statement is per member-period-branch)."""
    prev: Rec | None = None
    for rec in recs:
        if prev is not None and rec[:6] == prev[:6]:
            prev = prev._replace(amount=prev.amount + rec.amount)
            continue
        if prev is not None:
            yield prev
        prev = rec
    if prev is not None:
        yield prev


# --- ordering --------------------------------------------------------------------------------


def by_member(recs: Iterable[Rec], low: str = "", high: str = "") -> Iterator[Rec]:
    """Key order from a stream grouped by member in ascending member id (sorting only within a
    member); ``OutOfOrder`` as soon as the stream is not, or leaves ``[low, high)`` (a shard's
    members; ``high`` empty: no bound). Checked once per member, not per record."""
    group: list[Rec] = []
    current = ""
    for rec in recs:
        if rec.member_id != current:
            if rec.member_id < current:
                raise OutOfOrder(f"{rec.member_id} after {current}")
            if rec.member_id < low or (high and rec.member_id >= high):
                raise OutOfOrder(f"{rec.member_id} outside the shard {low}..{high}")
            if group:
                group.sort()
                yield from group
                group = []
            current = rec.member_id
        group.append(rec)
    group.sort()
    yield from group


def external_sort(recs: Iterable[Rec], chunk: int = 500_000) -> Iterator[Rec]:
    """Any order in, key order out, holding at most ``chunk`` records in memory."""
    files: list[IO[bytes]] = []
    buf: list[Rec] = []

    def spill() -> None:
        buf.sort()
        f = tempfile.TemporaryFile()  # noqa: SIM115 - closed by read() once merged
        for i in range(0, len(buf), 10_000):
            pickle.dump(buf[i : i + 10_000], f, protocol=pickle.HIGHEST_PROTOCOL)
        f.seek(0)
        files.append(f)
        buf.clear()

    def read(f: IO[bytes]) -> Iterator[Rec]:
        with f:
            while True:
                try:
                    yield from pickle.load(f)
                except EOFError:
                    return

    for rec in recs:
        buf.append(rec)
        if len(buf) >= chunk:
            spill()
    if not files:
        buf.sort()
        yield from buf
        return
    if buf:
        spill()
    yield from heapq.merge(*(read(f) for f in files))


# --- the comparison --------------------------------------------------------------------------


def _fmt(rec: Rec) -> str:
    parts = [f"amount={rec.amount}"]
    if rec.compared_period:
        parts.append(f"period={rec.compared_period}")
    if rec.package:
        parts.append(f"package={rec.package}")
    if rec.status:
        parts.append(f"status={rec.status}")
    if rec.dependents >= 0:
        parts.append(f"dependents={rec.dependents}")
    return ";".join(parts)


def _differing(e: Rec, a: Rec) -> list[str]:
    out = []
    if e.amount != a.amount:
        out.append("amount")
    if e.compared_period != a.compared_period:
        out.append("period")
    if e.package and a.package and e.package != a.package:
        out.append("package")
    if e.status and a.status and e.status != a.status:
        out.append("status")
    if e.dependents >= 0 and a.dependents >= 0 and e.dependents != a.dependents:
        out.append("dependents")
    return out


def _one_side(rec: Rec, kind: Kind, event_id: str = "") -> Discrepancy:
    expected = rec.amount if kind is Kind.MISSING else 0
    actual = 0 if kind is Kind.MISSING else rec.amount
    text = _fmt(rec)
    return Discrepancy(
        rec.institution, rec.kind, kind, rec.member_id, rec.period or rec.compared_period,
        rec.branch, rec.ref,
        region_of(rec.member_id), expected, actual, "",
        text if kind is Kind.MISSING else "", "" if kind is Kind.MISSING else text,
        event_id,
    )  # fmt: skip


def compare(expected: Iterable[Rec], actual: Iterable[Rec]) -> Iterator[Discrepancy]:
    """Discrepancies between two key-sorted streams. ``expected`` has unique keys; ``actual``
    may repeat one (a duplicate). Pure: a stream against itself yields nothing."""
    exp, act = iter(expected), iter(actual)
    e = next(exp, None)
    a = next(act, None)
    prev_key: tuple[object, ...] | None = None
    while e is not None or a is not None:
        if a is not None:
            a_key = a[:6]
            if a_key == prev_key:
                yield _one_side(a, Kind.DUPLICATE)
                a = next(act, None)
                continue
            if e is None or a_key < e[:6]:
                yield _one_side(a, Kind.EXTRA)
                prev_key = a_key
                a = next(act, None)
                continue
            if a_key == e[:6]:
                diff = _differing(e, a)
                if diff:
                    yield Discrepancy(
                        e.institution, e.kind, Kind.MISMATCH, e.member_id,
                        e.period or e.compared_period, e.branch, e.ref, region_of(e.member_id),
                        e.amount, a.amount, ",".join(diff),
                        _fmt(e), _fmt(a), e.event_id,
                    )  # fmt: skip
                prev_key = a_key
                e, a = next(exp, None), next(act, None)
                continue
        assert e is not None
        yield _one_side(e, Kind.MISSING, e.event_id)
        e = next(exp, None)


# --- runs over sources -----------------------------------------------------------------------

Source = Callable[[], Iterable[Rec]]
"""Opens a source afresh each call (a run may read it twice: see ``OutOfOrder``)."""


class Collector(Protocol):
    def add(self, d: Discrepancy) -> None: ...
    def reset(self) -> None: ...


@dataclass
class Totals:
    """Counts and XOF difference per institution, region, period, branch, record and kind.
    Bounded by the vocabularies (3 x 14 x months x 5 x 3 x 4), not by the data."""

    cells: dict[tuple[str, str, str, str, str, str], list[int]] = field(default_factory=dict)
    compared: dict[str, list[int]] = field(default_factory=dict)
    """Per institution: [ledger records, extract records]."""

    def add(self, d: Discrepancy) -> None:
        cell = self.cells.setdefault(
            (d.institution, d.region, d.period, d.branch, d.record, d.kind), [0, 0]
        )
        cell[0] += 1
        cell[1] += d.xof_difference

    def reset(self) -> None:
        self.cells.clear()
        self.compared.clear()

    def by(self, *dims: str) -> dict[tuple[str, ...], list[int]]:
        """Totals grouped by some of ``institution, region, period, branch, record, kind``."""
        names = ("institution", "region", "period", "branch", "record", "kind")
        idx = [names.index(d) for d in dims]
        out: dict[tuple[str, ...], list[int]] = {}
        for key, (count, xof) in self.cells.items():
            cell = out.setdefault(tuple(key[i] for i in idx), [0, 0])
            cell[0] += count
            cell[1] += xof
        return dict(sorted(out.items()))


class _Counted:
    def __init__(self, recs: Iterable[Rec], counts: dict[str, list[int]], side: int) -> None:
        self.recs, self.counts, self.side = recs, counts, side

    def __iter__(self) -> Iterator[Rec]:
        counts, side = self.counts, self.side
        for rec in self.recs:
            c = counts.get(rec.institution)
            if c is None:
                c = counts[rec.institution] = [0, 0]
            c[side] += 1
            yield rec


def reconcile(
    ledger: Source,
    extracts: dict[str, Source],
    collector: Collector,
    totals: Totals,
    *,
    chunk: int = 500_000,
    scope: Scope = EVERY_MONTH,
) -> None:
    """Compare ``ledger`` with every institution in ``extracts`` (institution -> source),
    feeding each discrepancy of ``scope`` to ``collector`` and ``totals``. Streams when the
    sources are grouped by member, else restarts once with external sorts.

    The scope filters discrepancies, not records: everything is compared, so a claim whose
    month differs at the institution is still a period mismatch, reported in the ledger's month.
    """
    for sort in (by_member, lambda recs: external_sort(recs, chunk)):
        try:
            run_sorted(ledger, extracts, collector, totals, sort, scope)
            return
        except OutOfOrder:
            collector.reset()
            totals.reset()


def run_sorted(
    ledger: Source,
    extracts: dict[str, Source],
    collector: Collector,
    totals: Totals,
    sort: Callable[[Iterable[Rec]], Iterator[Rec]],
    scope: Scope,
) -> None:
    """One pass with ``sort`` putting each source in key order (``OutOfOrder`` if it cannot)."""
    expected = merge_same_key(sort(_Counted(ledger(), totals.compared, 0)))
    actual = heapq.merge(*(sort(_Counted(src(), totals.compared, 1)) for src in extracts.values()))
    add, total, covers = collector.add, totals.add, scope.covers
    for d in compare(expected, actual):
        if covers(d.period):
            add(d)
            total(d)


def ledger_source(open_lines: Callable[[], Iterable[str]], institutions: Iterable[str]) -> Source:
    """A ``Source`` of the expectations in an MSNAS ledger CSV, for these institutions only."""
    from adapters.msnas.ledger import parse_ledger

    wanted = frozenset(institutions)
    return lambda: ledger_records(parse_ledger(open_lines()), wanted)


def extract_source(institution: str, open_lines: Callable[[], Iterable[str]]) -> Source:
    """A ``Source`` of the records in one institution's extract file."""
    from adapters.cmu.extract import parse_extract as cmu
    from adapters.css.extract import parse_extract as css
    from adapters.ipres.extract import parse_extract as ipres

    if institution == "cmu":
        return lambda: claims_by_id(cmu(open_lines()))
    parse = {"css": css, "ipres": ipres}[institution]
    return lambda: parse(open_lines())


class ListCollector:
    """Keeps every discrepancy (tests, small runs)."""

    def __init__(self) -> None:
        self.items: list[Discrepancy] = []

    def add(self, d: Discrepancy) -> None:
        self.items.append(d)

    def reset(self) -> None:
        self.items.clear()
