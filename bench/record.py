"""Benchmark records (DESIGN.md §9): one JSON file per benchmark, RESULTS.md generated from them."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
KEY_PACKAGES = ("pydantic", "fhir.resources", "lxml", "kafka-python", "sqlalchemy")


def figure(
    name: str,
    value: float | None,
    unit: str,
    *,
    peer: str | None = None,
    peer_value: float | None = None,
    target: str | None = None,
    met: bool | None = None,
    why_missing: str | None = None,
) -> dict[str, Any]:
    ratio = round(value / peer_value, 3) if value is not None and peer_value else None
    return {
        "figure": name,
        "value": None if value is None else round(value, 1),
        "unit": unit,
        "peer": peer,
        "peer_value": None if peer_value is None else round(peer_value, 1),
        "ratio": ratio,
        "target": target,
        "met": met,
        **({"why_missing": why_missing} if why_missing else {}),
    }


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=BENCH_DIR, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu": platform.processor() or platform.machine(),
    }


def write_record(
    bench: str, figures: list[dict[str, Any]], notes: str, plots: list[str] | None = None
) -> Path:
    """Write ``bench/results/<bench>.json``; ``notes`` is the paragraph RESULTS.md shows,
    ``plots`` names PNGs the benchmark wrote in bench/results/ for RESULTS.md to show."""
    versions = {"python": platform.python_version()}
    for pkg in KEY_PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except Exception:  # a package a benchmark does not use may be absent
            versions[pkg] = "not installed"
    record = {
        "bench": bench,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": _git_commit(),
        "machine": machine(),
        "versions": versions,
        "figures": figures,
        "notes": notes,
        **({"plots": plots} if plots else {}),
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{bench}.json"
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    render_results()
    return path


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render_results() -> Path:
    """Regenerate bench/RESULTS.md from every record; never edit that file by hand."""
    lines = [
        "# Jokko benchmark results",
        "",
        "Generated from `bench/results/*.json` by `bench/record.py`; do not edit by hand.",
        "Each figure is measured in the same run as its peer; ratios are value / peer.",
        "",
    ]
    for path in sorted(RESULTS_DIR.glob("*.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        m, v = rec["machine"], rec["versions"]
        lines += [
            f"## {rec['bench']}",
            "",
            f"{rec['date']} · commit `{rec['commit'][:10]}` · {m['cores']} cores, "
            f"{m['memory_gib']} GiB · " + ", ".join(f"{k} {val}" for k, val in v.items()),
            "",
            "| figure | value | unit | peer | peer value | ratio | target | met |",
            "|---|---:|---|---|---:|---:|---|---|",
        ]
        for f in rec["figures"]:
            value = _cell(f["value"]) if f["value"] is not None else f"n/a: {f.get('why_missing')}"
            lines.append(
                f"| {f['figure']} | {value} | {f['unit']} | {_cell(f['peer'])} | "
                f"{_cell(f['peer_value'])} | {_cell(f['ratio'])} | {_cell(f['target'])} | "
                f"{_cell(f['met'])} |"
            )
        lines += ["", rec["notes"], ""]
        for png in rec.get("plots", ()):
            lines += [f"![{rec['bench']}: {png}](results/{png})", ""]
    out = BENCH_DIR / "RESULTS.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out
