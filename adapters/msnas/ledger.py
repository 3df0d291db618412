"""The mutual's ledger export (CSV) for reconciliation: members, contributions and claims as
MSNAS holds them, one row each (FORMAT.md, "Ledger export"). Each row names the canonical
event that carried it, which is what a re-drive sends again."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from schemas.errors import FieldError, JokkoError

HEADER = (
    "record",
    "member_id",
    "event_id",
    "period",
    "claim_id",
    "package",
    "branches",
    "status",
    "dependents",
    "health",
    "family",
    "work_accident",
    "old_age",
    "total",
)


class LedgerRow(NamedTuple):
    """``record`` is ``member``, ``contribution`` or ``claim``; unused columns are empty/0."""

    record: str
    member_id: str
    event_id: str = ""
    period: str = ""
    claim_id: str = ""
    package: str = ""
    branches: str = ""
    """``+``-separated opted branches, e.g. ``health+family+old_age``."""
    status: str = ""
    dependents: int = 0
    health: int = 0
    family: int = 0
    work_accident: int = 0
    old_age: int = 0
    total: int = 0


class MalformedLedger(JokkoError):
    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("ledger: " + "; ".join(str(e) for e in errors))


def _int(value: str, n: int, name: str) -> int:
    if not value:
        return 0
    if not value.isdigit():
        raise MalformedLedger([FieldError(f"line {n}", f"{name} must be whole XOF", "ledger")])
    return int(value)


def parse_ledger(lines: Iterable[str]) -> Iterator[LedgerRow]:
    rows = csv.reader(lines)
    if tuple(next(rows, ())) != HEADER:
        raise MalformedLedger(
            [FieldError("line 1", "header must be " + ",".join(HEADER), "ledger")]
        )
    for n, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(HEADER) or row[0] not in ("member", "contribution", "claim"):
            raise MalformedLedger([FieldError(f"line {n}", "malformed row", "ledger")])
        amounts = [_int(v, n, name) for v, name in zip(row[9:], HEADER[9:], strict=True)]
        yield LedgerRow(
            row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7],
            _int(row[8], n, "dependents"), *amounts,
        )  # fmt: skip


def member_of_line(line: str) -> str | None:
    """The member a ledger line is about, ``None`` for the header: lets a reader split a sorted
    export by member (a sharded reconciliation) without parsing it."""
    if line.startswith("record,"):
        return None
    parts = line.split(",", 2)
    return parts[1] if len(parts) > 2 else None


def ledger_line(row: LedgerRow) -> str:
    return ",".join(map(str, row)) + "\r\n"


def header_line() -> str:
    return ",".join(HEADER) + "\r\n"
