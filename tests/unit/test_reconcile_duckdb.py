"""The DuckDB engine against the Python engine on the same files: the same discrepancies in the
same order, the same totals; files SQL cannot read exactly go to the Python engine, whose
result (or error) stands."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.cmu import systems
from adapters.extract import MalformedExtract
from adapters.msnas.ledger import LedgerRow, ledger_line
from services.reconcile import INSTITUTIONS, Discrepancy, ListCollector, Scope, Totals
from services.reconcile_data import Generated, generate_files
from services.reconcile_shards import Measured, reconcile_files

pytestmark = pytest.mark.unit


def _run(
    paths: dict[str, Path], engine: str, scope: Scope | None = None, insts: tuple[str, ...] = ()
) -> tuple[list[Discrepancy], Totals, Measured]:
    col, totals = ListCollector(), Totals()
    extracts = {i: paths[i] for i in insts or INSTITUTIONS}
    m = reconcile_files(paths["ledger"], extracts, col, totals, engine=engine,
                        scope=scope or Scope())  # fmt: skip
    return col.items, totals, m


def _same(paths: dict[str, Path], **kw: object) -> tuple[list[Discrepancy], Measured]:
    duck, t_duck, m = _run(paths, "duckdb", **kw)  # type: ignore[arg-type]
    py, t_py, _ = _run(paths, "python", **kw)  # type: ignore[arg-type]
    assert duck == py
    assert t_duck.cells == t_py.cells
    assert t_duck.compared == t_py.compared
    return duck, m


def _key(d: Discrepancy) -> tuple[str, ...]:
    return (d.institution, d.record, d.kind, d.member_id, d.period, d.branch, d.ref)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Generated, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("duck")
    return generate_files(folder, 400, 6, rate=0.08, claim_share=0.6)


def test_both_engines_find_exactly_the_injected_discrepancies(
    data: tuple[Generated, dict[str, Path]],
) -> None:
    gen, paths = data
    found, m = _same(paths)
    assert (m.engine, m.fell_back) == ("duckdb", False)
    assert {_key(d) for d in found} == gen.truth
    assert {d.kind for d in found} == {"missing", "extra", "mismatch", "duplicate"}
    mismatched = {_key(d): d.fields for d in found if d.kind == "mismatch"}
    assert mismatched == gen.mismatched


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(members=st.integers(0, 80), seed=st.integers(0, 10_000),
       rate=st.sampled_from([0.0, 0.02, 0.3]), months=st.integers(1, 4),
       insts=st.sets(st.sampled_from(INSTITUTIONS), min_size=1))  # fmt: skip
def test_engines_agree_on_generated_files(
    tmp_path_factory: pytest.TempPathFactory,
    members: int,
    seed: int,
    rate: float,
    months: int,
    insts: set[str],
) -> None:
    folder = tmp_path_factory.mktemp("prop")
    gen, paths = generate_files(folder, members, months, rate=rate, seed=seed, claim_share=0.5)
    found, m = _same(paths, insts=tuple(sorted(insts)))
    assert not m.fell_back
    assert {_key(d) for d in found} == {t for t in gen.truth if t[0] in insts}


@pytest.mark.parametrize(
    "scope", [Scope("2025-02", "2025-02"), Scope("2025-03", "2025-05"), Scope("2031-01")]
)
def test_engines_agree_on_a_period_scoped_run(
    data: tuple[Generated, dict[str, Path]], scope: Scope
) -> None:
    _same(data[1], scope=scope)


def _copy(paths: dict[str, Path], tmp: Path, name: str, text: str) -> dict[str, Path]:
    out = dict(paths)
    out[name] = tmp / paths[name].name
    out[name].write_text(text, encoding="utf-8", newline="")
    return out


def test_order_does_not_matter_to_duckdb(
    data: tuple[Generated, dict[str, Path]], tmp_path: Path
) -> None:
    gen, paths = data
    lines = paths["cmu"].read_bytes().decode().splitlines(keepends=True)
    random.Random(2).shuffle(lines)
    found, m = _same(_copy(paths, tmp_path, "cmu", "".join(lines)))
    assert not m.fell_back  # DuckDB needs no sorted input; Python fell back to its external sort
    assert {_key(d) for d in found} == gen.truth


def test_a_ledger_expecting_a_key_twice_is_merged_as_python_merges_it(
    data: tuple[Generated, dict[str, Path]], tmp_path: Path
) -> None:
    """Two payments of one month are one expectation of their sum; the institution holding
    the two payments separately is a mismatch and a duplicate, in both engines."""
    _, paths = data
    text = paths["ledger"].read_bytes().decode()
    lines = text.splitlines(keepends=True)
    contribution = next(line for line in lines if line.startswith("contribution,"))
    member = contribution.split(",")[1]
    again = contribution.replace(contribution.split(",")[2], "0000-again")
    claim = LedgerRow("claim", member, "ev-c", "2025-01", claim_id="CLM-TWICE", status="active",
                      total=1000)  # fmt: skip
    pos = lines.index(contribution) + 1
    lines[pos:pos] = [again, ledger_line(claim), ledger_line(claim._replace(total=500))]
    found, m = _same(_copy(paths, tmp_path, "ledger", "".join(lines)))
    assert not m.fell_back
    mine = [d for d in found if d.member_id == member]
    assert any(d.ref == "CLM-TWICE" and d.kind == "missing" and d.expected_amount == 1500
               for d in mine)  # fmt: skip
    assert any(d.kind == "mismatch" and d.fields == "amount" for d in mine)


@pytest.mark.parametrize(
    ("name", "edit"),
    [
        ("css", lambda t: t.replace("contribution,", '"contribution",', 1)),  # quoted field
        ("ledger", lambda t: t.replace(",active,", ',"active",', 1)),
        ("css", lambda t: t.replace("\r\n", "\r\n\r\n", 3)),  # blank lines
        ("ipres", lambda t: t.replace("\r\n", "\n")),  # other line ends
        ("cmu", lambda t: t.replace('"value":"MSNAS', '"value":"\\u004dSNAS', 1)),  # escape
        (
            "cmu",
            lambda t: t.replace(
                '[{"system":"' + systems.COVERAGE_ID + '","value"',
                '[{"system":"' + systems.COVERAGE_ID + '", "value"',
                1,
            ),
        ),
    ],
)
def test_files_sql_does_not_read_go_to_python_with_the_same_result(
    data: tuple[Generated, dict[str, Path]], tmp_path: Path, name: str, edit: object
) -> None:
    _, paths = data
    text = paths[name].read_bytes().decode()
    changed = edit(text)  # type: ignore[operator]
    assert changed != text
    _same(_copy(paths, tmp_path, name, changed))


def test_a_cmu_value_of_another_type_goes_to_python(
    data: tuple[Generated, dict[str, Path]], tmp_path: Path
) -> None:
    _, paths = data
    lines = paths["cmu"].read_bytes().decode().splitlines(keepends=True)
    k = next(i for i, line in enumerate(lines) if '"Coverage"' in line)
    res = json.loads(lines[k])
    res["class"][0]["value"] = 5  # Python reads str(5); SQL does not guess
    lines[k] = json.dumps(res) + "\n"
    found, m = _same(_copy(paths, tmp_path, "cmu", "".join(lines)))
    assert m.fell_back
    assert m.engine == "python"
    assert any("package=5" in d.actual for d in found)


def test_a_wrong_ipres_trailer_fails_with_pythons_error(
    data: tuple[Generated, dict[str, Path]], tmp_path: Path
) -> None:
    _, paths = data
    text = paths["ipres"].read_bytes().decode()
    body, trailer = text[: text.rstrip().rfind("\n") + 1], text[text.rstrip().rfind("\n") + 1 :]
    total = int(trailer[10:28]) + 1
    bad = _copy(paths, tmp_path, "ipres", body + f"{trailer[:10]}{total:018d}\r\n")
    with pytest.raises(MalformedExtract, match="control total"):
        _run(bad, "duckdb")


def test_an_unknown_engine_is_refused(data: tuple[Generated, dict[str, Path]]) -> None:
    with pytest.raises(ValueError, match="engine"):
        _run(data[1], "spark")
