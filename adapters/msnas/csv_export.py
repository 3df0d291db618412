"""The bulk CSV exports of the agents' app: one layout per kind (see FORMAT.md).

UTF-8 with or without BOM; the delimiter is ``;`` when the header line holds one, else ``,``.
Every data row becomes a record for ``records.map_record``, except in ``factures`` where
consecutive rows with the same ``id_fiche`` are the lines of one invoice.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from adapters.msnas.records import Problem, map_record
from adapters.msnas.report import Collector, ImportReport
from schemas import JokkoError

_ENVELOPE = ("id_fiche", "agent", "antenne", "saisi_le")


@dataclass(frozen=True, slots=True)
class _Layout:
    record_type: str
    columns: tuple[str, ...]
    optional: frozenset[str]


_SHARES = ("part_sante", "part_famille", "part_accident_travail", "part_vieillesse")
_LINE = ("ligne_code", "ligne_libelle", "ligne_quantite", "ligne_prix_unitaire", "ligne_montant")

LAYOUTS: dict[str, _Layout] = {
    "adhesions": _Layout(
        "adhesion",
        (
            *_ENVELOPE,
            "date_adhesion",
            "numero_adherent",
            "prenom",
            "nom",
            "sexe",
            "date_naissance",
            "nin",
            "telephone",
            "region",
            "departement",
            "metier",
            "formule",
            "branches",
        ),
        frozenset(),
    ),
    "cotisations": _Layout(
        "cotisation",
        (
            *_ENVELOPE,
            "date_paiement",
            "numero_adherent",
            "montant",
            "periode",
            *_SHARES,
            "canal",
            "reference_paiement",
            "telephone_payeur",
        ),
        frozenset({*_SHARES, "telephone_payeur"}),
    ),
    "factures": _Layout(
        "facture",
        (
            *_ENVELOPE,
            "date_facture",
            "numero_adherent",
            "beneficiaire",
            "numero_facture",
            "nature",
            "convention",
            "date_soins",
            "diagnostics",
            "montant_total",
            *_LINE,
        ),
        frozenset({"beneficiaire"}),
    ),
}
CSV_KINDS = tuple(LAYOUTS)


class UnknownCsvKind(JokkoError, ValueError):
    """``parse_csv`` was called with a kind that has no layout: a bug in the caller."""


def _delimiter(text: str) -> str:
    header = text.split("\n", 1)[0]
    return ";" if ";" in header else ","


_SURROGATE = re.compile("[\udc80-\udcff]")


@dataclass
class _Row:
    number: int
    cells: dict[str, str]


def _rows(header: list[str], out: Collector, reader: Iterator[list[str]]) -> Iterator[_Row]:
    number = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error:
            out.error(number + 1, "", "cannot be read as CSV; the rest is skipped", "csv_invalid")
            return
        number += 1
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(header):
            out.error(number, "", "has more cells than the header has columns", "row_length")
            continue
        row: dict[str, str] = {}
        bad = False
        for name, cell in zip(header, cells, strict=False):
            if _SURROGATE.search(cell):
                out.error(number, name, "is not valid UTF-8 text", "encoding_invalid")
                bad = True
            elif cell.strip() and name:
                row[name] = cell.strip()
        if not bad:
            yield _Row(number, row)


def _record(layout: _Layout, cells: dict[str, str]) -> dict[str, Any]:
    record: dict[str, Any] = {"type": layout.record_type}
    for name, value in cells.items():
        if name in _SHARES:
            record.setdefault("repartition", {})[name.removeprefix("part_")] = value
        elif name in _LINE:
            continue
        else:
            record[name] = value
    return record


def _line(cells: dict[str, str]) -> dict[str, str]:
    return {name.removeprefix("ligne_"): cells[name] for name in _LINE if name in cells}


def _column(field: str) -> str:
    if field.startswith("repartition."):
        return "part_" + field.removeprefix("repartition.")
    return field


def _place(problem: Problem, rows: list[_Row]) -> tuple[int, str]:
    """The CSV row and column of a record's problem (an invoice line's own row for its fields)."""
    if problem.field.startswith("lignes["):
        index, _, rest = problem.field.removeprefix("lignes[").partition("]")
        if index.isdigit() and int(index) < len(rows):
            return rows[int(index)].number, "ligne_" + rest.removeprefix(".") if rest else "lignes"
    return rows[0].number, _column(problem.field)


def _emit(layout: _Layout, group: list[_Row], out: Collector) -> None:
    record = _record(layout, group[0].cells)
    mismatch = False
    if layout.record_type == "facture":
        record["lignes"] = [_line(r.cells) for r in group]
        header_columns = [c for c in layout.columns if c not in _LINE]
        for row in group[1:]:
            for name in header_columns:
                cell = row.cells.get(name)
                if cell is not None and cell != group[0].cells.get(name):
                    mismatch = True
                    out.error(
                        row.number,
                        name,
                        "differs from the first line of the same invoice (id_fiche)",
                        "invoice_header_mismatch",
                    )
    event, problems = map_record(record)
    placed = [(*_place(p, group), p) for p in problems]
    for number, column, p in placed:
        out.error(number, column, p.message, p.type)
    out.add(group[0].number, None if mismatch else event, [])


def parse_csv(raw: bytes, kind: str) -> ImportReport:
    """Map a CSV export of ``kind`` (one of ``CSV_KINDS``) to canonical events.

    Never raises on bad content: a header without the layout's required columns is one error
    per missing column at row 1 and no events; a bad row yields its errors and nothing else.
    Raises ``UnknownCsvKind`` for a kind that has no layout.
    """
    layout = LAYOUTS.get(kind)
    if layout is None:
        raise UnknownCsvKind(f"no CSV layout for kind {kind!r}; expected one of {CSV_KINDS}")
    out = Collector()
    text = bytes(raw).decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        out.error(0, "", "is empty: a header row is required", "empty_file")
        return out.report()
    except csv.Error:
        out.error(1, "", "cannot be read as a CSV header", "csv_invalid")
        return out.report()
    known = set(layout.columns)
    missing = [c for c in layout.columns if c not in header and c not in layout.optional]
    for name in missing:
        out.error(1, name, "is a required column of this export", "missing_column")
    for i, name in enumerate(header):
        if name not in known:
            shown = name if name.isprintable() and len(name) <= 64 else f"column {i + 1}"
            out.error(1, shown, "is not a column of this export; ignored", "unknown_column")
    duplicated = sorted({n for n in header if n in known and header.count(n) > 1})
    for name in duplicated:
        out.error(1, name, "appears more than once in the header", "duplicate_column")
    if missing or duplicated:
        return out.report()
    header = [name if name in known else "" for name in header]

    group: list[_Row] = []
    for row in _rows(header, out, reader):
        if layout.record_type == "facture" and group:
            same = row.cells.get("id_fiche") is not None and row.cells.get("id_fiche") == group[
                0
            ].cells.get("id_fiche")
            if same:
                group.append(row)
                continue
            _emit(layout, group, out)
            group = []
        if layout.record_type == "facture":
            group = [row]
        else:
            _emit(layout, [row], out)
    if group:
        _emit(layout, group, out)
    return out.report()
