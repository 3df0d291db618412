"""``jokko reconcile`` as a real process on generated files, the way cron runs it: institutions
and a period chosen (``previous`` resolved when it runs), reports written to a folder per run,
every run kept in PostgreSQL with its scope."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from router.store import ReconciliationRunRow
from services.reconcile import parse_period
from services.reconcile_data import generate_files, periods
from tests.infra import PostgresCluster

pytestmark = pytest.mark.integration

JOKKO = str(Path(sys.executable).parent / "jokko")
Key = tuple[str, ...]


def _env(pg_engine: Engine, postgres: PostgresCluster, folder: Path) -> dict[str, str]:
    with pg_engine.connect() as conn:
        schema = conn.execute(text("select current_schema()")).scalar_one()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOKKO_")}
    env["JOKKO_DATABASE_URL"] = f"{postgres.url}?options=-csearch_path%3D{schema}"
    env["JOKKO_RECONCILE_DIR"] = str(folder)
    env["COLUMNS"] = "200"
    return env


def _jokko(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JOKKO, "reconcile", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _keys(report_csv: str) -> set[Key]:
    rows = csv.DictReader(io.StringIO(report_csv))
    cols = ("institution", "record", "kind", "member_id", "period", "branch", "ref")
    return {tuple(r[c] for c in cols) for r in rows}


def test_a_cron_style_run_of_chosen_institutions_for_the_previous_month(
    pg_engine: Engine, postgres: PostgresCluster, tmp_path: Path
) -> None:
    previous, _ = parse_period("previous", datetime.now(UTC).date())
    months = periods(3, _month_before(previous))  # the month before, previous, the current one
    assert previous == months[1]
    gen, _ = generate_files(tmp_path, 120, 3, rate=0.05, seed=3, first_period=months[0])
    env = _env(pg_engine, postgres, tmp_path)
    out = tmp_path / "reports" / "{period}-{run}"
    done = _jokko(env, "--institution", "css", "-i", "ipres", "--period", "previous",
                  "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert "reconciliation run" in done.stdout

    with Session(pg_engine) as s:
        run = s.scalars(select(ReconciliationRunRow)).one()
    assert (run.state, run.institutions) == ("done", "css,ipres")
    assert (run.period_from, run.period_to) == (previous, previous)
    folder = tmp_path / "reports" / f"{previous}-{run.id}"
    expected = {t for t in gen.truth if t[0] in ("css", "ipres") and t[4] in (previous, "")}
    assert {t[4] for t in gen.truth if t[0] in ("css", "ipres")} - {previous, ""}
    assert expected
    assert _keys((folder / "report.csv").read_text(encoding="utf-8")) == expected
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert (report["period_from"], report["institutions"]) == (previous, ["css", "ipres"])
    assert len(report["discrepancies"]) == report["summary"]["total"] == len(expected)
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert "<h2>By region, period and branch</h2>" in html
    assert f"css, ipres · {previous}" in html

    # the same crontab line next time: a second run, kept beside the first, in its own folder
    again = _jokko(env, "-i", "css", "-i", "ipres", "--period", "previous", "--out", str(out))
    assert again.returncode == 0, again.stderr
    with Session(pg_engine) as s:
        ids = s.scalars(select(ReconciliationRunRow.id).order_by(ReconciliationRunRow.id)).all()
    assert len(ids) == 2
    second = tmp_path / "reports" / f"{previous}-{ids[1]}" / "report.csv"
    assert _keys(second.read_text(encoding="utf-8")) == expected


def _month_before(period: str) -> str:
    year, month = int(period[:4]), int(period[5:])
    return f"{year - 1:04d}-12" if month == 1 else f"{year:04d}-{month - 1:02d}"


def test_named_files_and_a_period_range_and_what_is_refused(
    pg_engine: Engine, postgres: PostgresCluster, tmp_path: Path
) -> None:
    gen, paths = generate_files(tmp_path, 100, 4, rate=0.05, seed=9)
    env = _env(pg_engine, postgres, tmp_path / "elsewhere")
    out = tmp_path / "out"
    done = _jokko(env, str(paths["ledger"]), "--cmu", str(paths["cmu"]),
                  "--period", "2025-02..2025-03", "--out", str(out), "--workers", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = {t for t in gen.truth if t[0] == "cmu" and t[4] in ("2025-02", "2025-03", "")}
    assert _keys((out / "report.csv").read_text(encoding="utf-8")) == expected

    refused = [
        ("--period", "2025-13"),
        ("--period", "2025-05..2025-01"),
        ("--institution", "cnss"),
        ("--institution", "css"),  # no css.csv in the reconciliation folder
    ]
    for args in refused:
        r = _jokko(env, str(paths["ledger"]), *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "error" in r.stderr
    with Session(pg_engine) as s:
        assert len(s.scalars(select(ReconciliationRunRow)).all()) == 1  # refused: no run kept
