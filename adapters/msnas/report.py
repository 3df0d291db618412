"""What an import returns: the events it could build, and a row-level report of the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

from adapters.msnas.records import Problem
from schemas import CanonicalEvent


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem with one field of one row.

    ``row`` is the 1-based record number in a webhook body, or the spreadsheet row number in a
    CSV export (the header is row 1); ``0`` is the input as a whole. ``field`` is the MSNAS field
    (or CSV column) the operator sees, ``""`` for the record as a whole. ``message`` never holds
    the value: it may be a name, a NIN or a phone number.
    """

    row: int
    field: str
    message: str
    type: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.field or '<record>'}: {self.message} [{self.type}]"


@dataclass(frozen=True, slots=True)
class ImportReport:
    """The canonical events of the good records, in input order, and the errors of the bad ones.

    A bad record only costs its own event: every good record of the input is in ``events``.
    """

    events: tuple[CanonicalEvent, ...] = ()
    errors: tuple[RowError, ...] = ()
    rows: tuple[int, ...] = ()
    """The row each event was built from (``RowError.row`` numbering)."""

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class Collector:
    """Builds an ``ImportReport`` record by record; refuses a second record with the same id."""

    events: list[CanonicalEvent] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    seen: dict[UUID, int] = field(default_factory=dict)

    def error(self, row: int, name: str, message: str, error_type: str) -> None:
        self.errors.append(RowError(row, name, message, error_type))

    def add(self, row: int, event: CanonicalEvent | None, problems: list[Problem]) -> None:
        for p in problems:
            self.error(row, p.field, p.message, p.type)
        if event is None:
            return
        first = self.seen.get(event.event_id)
        if first is not None:
            self.error(
                row,
                "id_fiche",
                f"repeats the id_fiche of row {first}: one record, one id_fiche",
                "duplicate_record",
            )
            return
        self.seen[event.event_id] = row
        self.events.append(event)

    def report(self) -> ImportReport:
        rows = tuple(self.seen[e.event_id] for e in self.events)
        return ImportReport(tuple(self.events), tuple(self.errors), rows)
