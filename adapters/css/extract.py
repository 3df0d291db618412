"""CSS's statement for reconciliation: CSV of affiliates and contributions received per period
and branch (FORMAT.md, "Statement"). CSV rather than XML because a statement is a table of
millions of rows that CSS exports from a database; the XSD-validated XML stays for messages."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator

from adapters.base import Institution
from adapters.extract import MalformedExtract, Rec, RecordKind
from schemas.errors import FieldError

HEADER = ("record", "member_id", "period", "branch", "amount", "status", "dependents")
_CSS = Institution.CSS.value
_BRANCHES = frozenset({"family", "work_accident"})


def _fail(line: int, message: str) -> MalformedExtract:
    return MalformedExtract(Institution.CSS, [FieldError(f"line {line}", message, "extract")])


def parse_extract(lines: Iterable[str]) -> Iterator[Rec]:
    """Records of a CSS statement; the header row is required, fields are checked per row."""
    rows = csv.reader(lines)
    if tuple(next(rows, ())) != HEADER:
        raise _fail(1, "header must be " + ",".join(HEADER))
    for n, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(HEADER):
            raise _fail(n, f"expected {len(HEADER)} fields")
        record, member_id, period, branch, amount, status, dependents = row
        if record == "affiliate":
            yield Rec(
                member_id,
                _CSS,
                RecordKind.AFFILIATION,
                "",
                "",
                "",
                0,
                "",
                status,
                int(dependents) if dependents.isdigit() else -1,
            )
        elif record == "contribution":
            if branch not in _BRANCHES:
                raise _fail(n, "branch must be family or work_accident")
            if not amount.isdigit():
                raise _fail(n, "amount must be whole XOF")
            if len(period) != 7 or period[4] != "-":
                raise _fail(n, "period must be YYYY-MM")
            yield Rec(member_id, _CSS, RecordKind.CONTRIBUTION, period, branch, "", int(amount))
        else:
            raise _fail(n, "record must be affiliate or contribution")


def member_of_line(line: str) -> str | None:
    """The member a statement line is about, ``None`` for the header (splitting by member)."""
    if line.startswith("record,"):
        return None
    parts = line.split(",", 2)
    return parts[1] if len(parts) > 2 else None


def extract_line(rec: Rec) -> str:
    """One CSV line (with its line end) for ``rec``."""
    if rec.kind == RecordKind.AFFILIATION:
        deps = "" if rec.dependents < 0 else str(rec.dependents)
        return f"affiliate,{rec.member_id},,,,{rec.status},{deps}\r\n"
    return f"contribution,{rec.member_id},{rec.period},{rec.branch},{rec.amount},,\r\n"


def header_line() -> str:
    return ",".join(HEADER) + "\r\n"
