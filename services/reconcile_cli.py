"""What ``jokko reconcile`` does once its options are read: run, re-drive, write the reports,
print the summary. Kept out of ``services/cli.py`` so the command stays a few lines."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from router.store import ReconciliationRunRow
from services.reconcile_report import to_csv, to_html, to_json
from services.reconcile_runs import items, redrive, run_files


def run_dict(run: ReconciliationRunRow) -> dict[str, Any]:
    return {
        "id": run.id,
        "state": run.state,
        "actor": run.actor,
        "institutions": run.institutions.split(","),
        "sources": json.loads(run.sources),
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "error": run.error,
        "summary": json.loads(run.summary) if run.summary else None,
    }


def reconcile_command(
    engine: Engine,
    actor: str,
    ledger: Path,
    extracts: dict[str, Path],
    out: Path | None,
    do_redrive: bool,
    progress: Callable[[int], object],
) -> int:
    run_id = run_files(engine, actor, ledger, extracts, progress=progress)
    console = Console()
    if do_redrive:
        outcomes = redrive(engine, run_id, None, actor)
        counts: dict[str, int] = {}
        for o in outcomes.values():
            counts[o] = counts.get(o, 0) + 1
        console.print(
            "re-drive: "
            + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing missing")
        )
    with Session(engine) as s:
        run = run_dict(s.get_one(ReconciliationRunRow, run_id))
        rows = items(s, run_id)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(to_json(run, rows), encoding="utf-8")
        (out / "report.csv").write_text(to_csv(rows), encoding="utf-8", newline="")
        (out / "report.html").write_text(to_html(run, rows), encoding="utf-8")
    table = Table(title=f"reconciliation run {run_id}")
    for col in ("institution", "record", "kind", "count", "xof_difference"):
        table.add_column(col)
    for r in (run["summary"] or {}).get("by_kind", []):
        table.add_row(
            *(str(r[c]) for c in ("institution", "record", "kind", "count", "xof_difference"))
        )
    console.print(table)
    console.print(
        f"{(run['summary'] or {}).get('total', 0)} discrepancies"
        + (f"; reports in {out}" if out else "")
    )
    return run_id
