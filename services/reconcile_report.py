"""A run's report as JSON, CSV (one row per discrepancy) and a self-contained HTML page (summary
tables and an inline SVG chart of discrepancies by region and period; no JavaScript)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from services.reconcile import CSV_HEADER, Discrepancy

COLUMNS = Discrepancy._fields
_KIND_COLS = ("institution", "record", "kind")
_RPB_COLS = ("region", "period", "branch", "institution", "count", "xof_difference")


def _row(item: Any) -> dict[str, Any]:
    """A discrepancy (NamedTuple or ORM row) as a dict of the report's columns."""
    if isinstance(item, Discrepancy):
        d: dict[str, Any] = item._asdict()
    else:
        d = {c: getattr(item, c) for c in COLUMNS}
        d["id"] = item.id
        d["redrive"] = item.redrive
    d["record"], d["kind"] = str(d["record"]), str(d["kind"])
    d["xof_difference"] = d["actual_amount"] - d["expected_amount"]
    return d


def to_json(run: Mapping[str, Any], items: Iterable[Any]) -> str:
    return json.dumps({**run, "discrepancies": [_row(i) for i in items]}, indent=1)


def to_csv(items: Iterable[Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(CSV_HEADER)
    for i in items:
        r = _row(i)
        w.writerow([r[c] for c in CSV_HEADER])
    return out.getvalue()


def _chart(by_region_period: list[dict[str, Any]]) -> str:
    """Grouped bars: one group per region, one bar per period, height = discrepancy count."""
    if not by_region_period:
        return "<p>No discrepancies.</p>"
    regions = sorted({r["region"] for r in by_region_period})
    periods = sorted({r["period"] for r in by_region_period})
    counts = {(r["region"], r["period"]): r["count"] for r in by_region_period}
    top = max(counts.values()) or 1
    bar, gap, h = 6, 14, 200
    group = bar * len(periods) + gap
    width = 40 + group * len(regions)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h + 60}" '
        f'role="img" aria-label="Discrepancies by region and period">',
        f'<text x="0" y="12" font-size="11">max {top}</text>',
    ]
    for gi, region in enumerate(regions):
        x0 = 40 + gi * group
        for pi, period in enumerate(periods):
            c = counts.get((region, period), 0)
            bh = round(h * c / top)
            hue = round(300 * pi / max(len(periods) - 1, 1))
            parts.append(
                f'<rect x="{x0 + pi * bar}" y="{20 + h - bh}" width="{bar - 1}" height="{bh}" '
                f'fill="hsl({hue},60%,50%)"><title>{escape(region)} {escape(period or "-")}: '
                f"{c}</title></rect>"
            )
        parts.append(
            f'<text x="{x0}" y="{h + 36}" font-size="10" transform="rotate(45 {x0} {h + 36})">'
            f"{escape(region)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: list[dict[str, Any]], cols: tuple[str, ...]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(r.get(c, '')))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _scope(run: Mapping[str, Any]) -> str:
    institutions = ", ".join(run.get("institutions") or ()) or "all institutions"
    lo, hi = run.get("period_from"), run.get("period_to")
    months = "every month" if not lo else lo if lo == hi else f"{lo}..{hi}"
    return f"{institutions} · {months}"


def to_html(run: Mapping[str, Any], items: Iterable[Any], *, limit: int = 500) -> str:
    """The page an officer reads: summary by institution and kind, chart and table of totals by
    region, period and branch (with the XOF difference), first ``limit`` rows."""
    summary = run.get("summary") or {}
    rows = [_row(i) for _, i in zip(range(limit), items, strict=False)]
    title = f"Reconciliation run {run.get('id', '')}"
    compared = [{"institution": k, **v} for k, v in (summary.get("compared") or {}).items()]
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>body{{font-family:sans-serif}}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 6px}</style>"
        f"</head><body><h1>{escape(title)}</h1>"
        f"<p>state {escape(str(run.get('state', '')))} · {escape(_scope(run))} · started "
        f"{escape(str(run.get('started_at', '')))}"
        f" · {summary.get('total', 0)} discrepancies</p>"
        "<h2>Records compared</h2>"
        + _table(compared, ("institution", "ledger", "held"))
        + "<h2>By institution, record and kind</h2>"
        + _table(summary.get("by_kind", []), (*_KIND_COLS, "count", "xof_difference"))
        + "<h2>By region and period</h2>"
        + _chart(summary.get("by_region_period", []))
        + "<h2>By region, period and branch</h2>"
        + _table(sorted(summary.get("by_institution_region_period_branch", []),
                        key=lambda r: tuple(str(r[c]) for c in _RPB_COLS[:4])), _RPB_COLS)
        + f"<h2>Discrepancies (first {limit})</h2>"
        + _table(rows, (*COLUMNS[:10], "xof_difference", "fields", "expected", "actual"))
        + "</body></html>"
    )  # fmt: skip
