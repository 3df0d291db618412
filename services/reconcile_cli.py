"""What ``jokko reconcile`` does once its options are read: find the files, run, re-drive,
write the reports, print the summary. Kept out of ``services/cli/`` so the command stays a
few lines."""

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
from services.reconcile import EVERY_MONTH, INSTITUTIONS, Scope
from services.reconcile_report import to_csv, to_html, to_json
from services.reconcile_runs import EXTRACT_NAMES, LEDGER_NAME, items, redrive, run_files
from services.reconcile_shards import DEFAULT_ENGINE


class SourceError(ValueError):
    """The files a run needs are not where the options say."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def resolve_sources(
    folder: Path,
    ledger: Path | None,
    named: dict[str, Path | None],
    institutions: list[str],
) -> tuple[Path, dict[str, Path]]:
    """The ledger and extracts to compare. Chosen institutions read the extract given for them,
    else their usual file in ``folder`` (``cmu.ndjson``, ``css.csv``, ``ipres.txt``); with none
    chosen, the extracts given, else every usual file present."""
    unknown = sorted(set(institutions) - set(INSTITUTIONS))
    if unknown:
        raise SourceError(f"unknown institution(s): {', '.join(unknown)}")
    if institutions:
        extracts = {i: named.get(i) or folder / EXTRACT_NAMES[i] for i in INSTITUTIONS
                    if i in institutions}  # fmt: skip
    elif any(named.values()):
        extracts = {i: p for i, p in named.items() if p is not None}
    else:
        extracts = {i: folder / n for i, n in EXTRACT_NAMES.items() if (folder / n).is_file()}
        if not extracts:
            raise SourceError(f"no extract in {folder} and none given")
    ledger = ledger or folder / LEDGER_NAME
    for path in (ledger, *extracts.values()):
        if not path.is_file():
            raise SourceError(f"no file {path}", path)
    return ledger, extracts


def period_label(scope: Scope) -> str:
    if scope.period_from is None:
        return "all"
    if scope.period_from == scope.period_to:
        return scope.period_from
    return f"{scope.period_from}..{scope.period_to}"


def run_dict(run: ReconciliationRunRow) -> dict[str, Any]:
    return {
        "id": run.id,
        "state": run.state,
        "actor": run.actor,
        "institutions": run.institutions.split(","),
        "sources": json.loads(run.sources),
        "period_from": run.period_from,
        "period_to": run.period_to,
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
    scope: Scope = EVERY_MONTH,
    workers: int = 1,
    reconcile_engine: str = DEFAULT_ENGINE,
) -> int:
    """``out`` may hold ``{run}`` and ``{period}``, so scheduled runs keep a folder each."""
    run_id = run_files(
        engine, actor, ledger, extracts, progress=progress, scope=scope, workers=workers,
        reconcile_engine=reconcile_engine,
    )  # fmt: skip
    if out is not None:
        out = Path(str(out).replace("{run}", str(run_id)).replace("{period}", period_label(scope)))
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
    table = Table(
        title=f"reconciliation run {run_id} · {', '.join(extracts)} · {period_label(scope)}"
    )
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
