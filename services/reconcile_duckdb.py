"""Reconciliation with DuckDB: the files are read natively (CSV, NDJSON, fixed width) into one
columnar table of records, and only the keys where the two sides could differ come back to
Python, where the Python engine's own merge and comparison (``services.reconcile``) turn them
into discrepancies. The results are the Python engine's by construction, not by imitation.

A key is *clean* when the ledger expects it exactly once, the institution holds it exactly once
and no compared field differs (the comparison's rules: package, status and dependents only when
both sides hold them). Python's ``compare`` yields nothing for such a key, so SQL drops it; every
other key (missing, extra, mismatched, duplicated, or expected twice: ~0.1% of them) goes to
Python with all its records on both sides.

SQL reads only the shapes the exports are written in (``extract_line``, ``ledger_line``): each
field is checked in SQL the way the Python parsers check it, and a row that is not provably read
the same way (a quoted CSV field, a JSON value of another type, an escaped JSON string, a
wrong length or count, a trailer that disagrees...) makes the whole run ``NotCanonical``: the
caller runs the Python engine instead, which reads anything valid and reports a malformed file
with its line. Known divergence: DuckDB's JSON reader accepts trailing commas in an object,
which Python's ``json`` refuses; such a CMU line is read here instead of failing the run.
Each export's reader is in ``services.reconcile_duckdb_readers``; this module runs them and
hands the dirty keys to Python.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from adapters.extract import Rec
from services.reconcile import (
    EVERY_MONTH,
    Collector,
    Scope,
    Totals,
    compare,
    merge_same_key,
)
from services.reconcile_duckdb_readers import (
    NotCanonical,
    insert_cmu,
    insert_css,
    insert_ipres,
    insert_ledger,
    sql_literal,
)

__all__ = ["MEMORY_LIMIT", "THREADS", "NotCanonical", "reconcile_duckdb"]

MEMORY_LIMIT = "1GB"
"""DuckDB's own cap (it spills to its temporary folder beyond it); the process stays < 1.5 GiB."""
THREADS = 2


_UNREADABLE = (
    duckdb.InvalidInputException,
    duckdb.ConversionException,
    duckdb.OutOfRangeException,
    duckdb.IOException,
)
"""What DuckDB raises for a file it cannot read as told (a binder error is a bug: it is raised)."""


_COLUMNS = (
    "member_id VARCHAR, institution VARCHAR, kind VARCHAR, period VARCHAR, branch VARCHAR, "
    "ref VARCHAR, amount BIGINT, package VARCHAR, status VARCHAR, dependents INTEGER, "
    "event_id VARCHAR, compared_period VARCHAR, side TINYINT"
)
"""``Rec``'s fields in order, then the side: 0 ledger, 1 institution, 9 a row SQL cannot read."""
_REC = (
    "member_id, institution, kind, period, branch, ref, amount, package, status, dependents, "
    "event_id, compared_period"
)

# --- the run ---------------------------------------------------------------------------------


def _dirty(con: Any) -> Iterator[list[tuple[Any, ...]]]:
    """Rows (``Rec`` fields, then side) of every key that is not clean, in member order,
    batched at member boundaries so each key's records arrive together."""
    key = "member_id, institution, kind, period, branch, ref"
    con.execute(
        f"""CREATE TEMP TABLE dirty AS
        SELECT {key} FROM recs GROUP BY {key}
        HAVING NOT (count(*) FILTER (WHERE side = 0) = 1 AND count(*) FILTER (WHERE side = 1) = 1
                    AND min(amount) = max(amount) AND min(compared_period) = max(compared_period)
                    AND coalesce(min(nullif(package, '')) = max(nullif(package, '')), true)
                    AND coalesce(min(nullif(status, '')) = max(nullif(status, '')), true)
                    AND coalesce(min(CASE WHEN dependents >= 0 THEN dependents END)
                                 = max(CASE WHEN dependents >= 0 THEN dependents END), true))"""
    )
    cur = con.execute(
        f"SELECT {_REC}, side FROM recs SEMI JOIN dirty USING ({key}) ORDER BY member_id"
    )
    carry: list[tuple[Any, ...]] = []
    while True:
        rows = cur.fetchmany(50_000)
        if not rows:
            if carry:
                yield carry
            return
        rows = carry + rows
        last = rows[-1][0]
        cut = len(rows)
        while cut and rows[cut - 1][0] == last:
            cut -= 1
        carry = rows[cut:]
        if cut:
            yield rows[:cut]


def reconcile_duckdb(
    ledger: Path,
    extracts: dict[str, Path],
    collector: Collector,
    totals: Totals,
    *,
    scope: Scope = EVERY_MONTH,
    memory_limit: str = MEMORY_LIMIT,
    threads: int = THREADS,
) -> None:
    """``reconcile_files``'s result for these files; ``NotCanonical`` (before any discrepancy
    reaches ``collector``) when a file must be read by the Python engine."""
    with tempfile.TemporaryDirectory(prefix="jokko-duckdb-") as tmp:
        con = duckdb.connect(str(Path(tmp) / "reconcile.duckdb"))
        try:
            con.execute(f"SET threads = {int(threads)}")
            con.execute(f"SET memory_limit = {sql_literal(memory_limit)}")
            con.execute(f"SET temp_directory = {sql_literal(tmp)}")
            con.execute("SET preserve_insertion_order = false")
            con.execute(f"CREATE TABLE recs ({_COLUMNS})")
            try:
                insert_ledger(con, ledger, frozenset(extracts))
                loaders = {"cmu": insert_cmu, "css": insert_css, "ipres": insert_ipres}
                for inst, path in extracts.items():
                    loaders[inst](con, path)
            except (*_UNREADABLE, UnicodeDecodeError) as exc:
                raise NotCanonical(str(exc)) from exc
            bad = con.execute("SELECT count(*) FROM recs WHERE side = 9").fetchone()
            if bad and bad[0]:
                raise NotCanonical(f"{bad[0]} rows not read by SQL")
            counts = con.execute(
                "SELECT institution, side, count(*) FROM recs GROUP BY ALL"
            ).fetchall()
            _tally(totals, counts, extracts)
            add, total, covers = collector.add, totals.add, scope.covers
            for rows in _dirty(con):
                exp = sorted(Rec(*r[:12]) for r in rows if r[12] == 0)
                act = sorted(Rec(*r[:12]) for r in rows if r[12] == 1)
                for d in compare(merge_same_key(iter(exp)), act):
                    if covers(d.period):
                        add(d)
                        total(d)
        finally:
            con.close()


def _tally(totals: Totals, counts: list[tuple[str, int, int]], extracts: dict[str, Path]) -> None:
    by = {(i, side): n for i, side, n in counts}
    for inst in extracts:
        held = (by.get((inst, 0), 0), by.get((inst, 1), 0))
        if any(held):
            totals.compared[inst] = list(held)
