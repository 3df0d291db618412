"""IPRES's statement for reconciliation: a fixed-width file like the declaration file
(header, lines, trailer with count and control total; FORMAT.md, "Statement"), listing the
members IPRES has affiliated and the old-age contributions it recorded per member and month."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from adapters.base import Institution
from adapters.extract import MalformedExtract, Rec, RecordKind
from schemas.errors import FieldError

_IPRES = Institution.IPRES.value
STATUS = {"A": "active", "S": "suspended", "L": "lapsed", "D": "deceased"}
STATUS_CODE = {v: k for k, v in STATUS.items()}
LENGTHS = {"H": 35, "A": 25, "C": 40, "T": 28}


def _fail(line: int, message: str) -> MalformedExtract:
    return MalformedExtract(Institution.IPRES, [FieldError(f"line {line}", message, "extract")])


@dataclass
class Tally:
    """What one part of a statement read alone holds (a shard of a split file): its A and C
    lines, their control total, and the trailer's figures if the part ends the file. Whoever
    split the file checks the parts' sums against the trailer (``check_parts``)."""

    count: int = 0
    total: int = 0
    trailer: tuple[int, int] | None = None


def check_parts(parts: Iterable[Tally]) -> None:
    parts = list(parts)
    trailers = [p.trailer for p in parts if p.trailer is not None]
    if len(trailers) != 1:
        raise _fail(0, "trailer missing (truncated file)")
    if trailers[0] != (sum(p.count for p in parts), sum(p.total for p in parts)):
        raise _fail(0, "trailer count or control total disagrees with the lines")


def parse_extract(lines: Iterable[str], *, part: Tally | None = None) -> Iterator[Rec]:
    """Records of an IPRES statement; the trailer's count and control total are checked at the
    end, so a truncated file fails (after its records were streamed: callers discard the run).
    With ``part``, ``lines`` are a slice of the file: header and trailer are optional and the
    figures go to ``part`` instead of being checked."""
    count = total = 0
    state = "start"
    for n, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        kind = line[:1]
        if LENGTHS.get(kind) != len(line):
            raise _fail(n, "unknown record type or wrong line length")
        if state == "start" and part is not None and kind != "H":
            state = "body"
        if state == "start":
            if kind != "H" or line[1:3] != "01" or line[3:13].rstrip() != "IPRES":
                raise _fail(n, "first line must be an IPRES v01 header")
            state = "body"
        elif state == "end":
            raise _fail(n, "line after the trailer")
        elif kind == "A":
            status = STATUS.get(line[24])
            if status is None:
                raise _fail(n, "status must be A, S, L or D")
            count += 1
            yield Rec(
                line[1:24].rstrip(), _IPRES, RecordKind.AFFILIATION, "", "", "", 0, "", status
            )
        elif kind == "C":
            period, amount = line[24:30], line[30:40]
            if not (period.isdigit() and amount.isdigit()):
                raise _fail(n, "period and amount must be digits")
            count += 1
            total += int(amount)
            yield Rec(
                line[1:24].rstrip(),
                _IPRES,
                RecordKind.CONTRIBUTION,
                f"{period[:4]}-{period[4:]}",
                "old_age",
                "",
                int(amount),
            )
        elif kind == "T":
            if not line[1:].isdigit():
                raise _fail(n, "trailer count and control total must be digits")
            figures = (int(line[1:10]), int(line[10:]))
            if part is not None:
                part.trailer = figures
            elif figures != (count, total):
                raise _fail(n, "trailer count or control total disagrees with the lines")
            state = "end"
        else:
            raise _fail(n, "header inside the file")
    if part is not None:
        part.count, part.total = count, total
    elif state != "end":
        raise _fail(0, "trailer missing (truncated file)")


def member_of_line(line: str) -> str | None:
    """The member of an ``A`` or ``C`` line, ``None`` for header and trailer (splitting by
    member)."""
    return line[1:24].rstrip() if line[:1] in ("A", "C") else None


def header_line(period_from: str, period_to: str) -> str:
    """``period_*`` as ``YYYY-MM``: the months the statement covers."""
    months = period_from.replace("-", "") + period_to.replace("-", "")
    return f"H01{'IPRES':<10}{'MSNAS':<10}{months}\r\n"


def extract_line(rec: Rec) -> str:
    if rec.kind == RecordKind.AFFILIATION:
        return f"A{rec.member_id:<23}{STATUS_CODE[rec.status]}\r\n"
    return f"C{rec.member_id:<23}{rec.period.replace('-', '')}{rec.amount:010d}\r\n"


def trailer_line(count: int, total: int) -> str:
    return f"T{count:09d}{total:018d}\r\n"
