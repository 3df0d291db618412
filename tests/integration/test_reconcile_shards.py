"""Sharded reconciliation: real processes over real files find exactly what one process finds;
a file that is not sorted by member makes the run restart in one process, with the same result;
a broken IPRES trailer still fails the run."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from adapters.extract import MalformedExtract
from services.reconcile import EVERY_MONTH, INSTITUTIONS, Discrepancy, ListCollector, Scope, Totals
from services.reconcile_data import Generated, generate_files
from services.reconcile_shards import MEMBER_OF, reconcile_files, split

pytestmark = pytest.mark.integration


def _key(d: Discrepancy) -> tuple[str, ...]:
    return (d.institution, d.record, d.kind, d.member_id, d.period, d.branch, d.ref)


def _run(paths: dict[str, Path], workers: int, scope: Scope = EVERY_MONTH) -> tuple[
    list[Discrepancy], Totals, int, bool
]:  # fmt: skip
    col, totals = ListCollector(), Totals()
    extracts = {i: paths[i] for i in INSTITUTIONS}
    m = reconcile_files(
        paths["ledger"], extracts, col, totals, workers=workers, scope=scope, engine="python"
    )
    assert len(m.peaks_kib) == m.shards + (1 if m.shards > 1 else 0)
    return col.items, totals, m.shards, m.fell_back


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Generated, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("shards")
    return generate_files(folder, 500, 4, rate=0.05, claim_share=0.5, workers=2)


def test_shards_find_exactly_what_one_process_finds(
    data: tuple[Generated, dict[str, Path]],
) -> None:
    gen, paths = data
    one, totals1, shards1, _ = _run(paths, 1)
    three, totals3, shards3, fell_back = _run(paths, 3)
    assert (shards1, shards3, fell_back) == (1, 3, False)
    assert {_key(d) for d in one} == gen.truth
    assert sorted(three) == sorted(one)
    assert totals3.cells == totals1.cells
    assert totals3.compared == totals1.compared
    scope = Scope("2025-02", "2025-02")
    assert sorted(_run(paths, 2, scope)[0]) == sorted(_run(paths, 1, scope)[0])


def test_split_ranges_cover_every_file_at_member_boundaries(
    data: tuple[Generated, dict[str, Path]],
) -> None:
    _, paths = data
    members, ranges = split(paths["ledger"], {i: paths[i] for i in INSTITUTIONS}, 4)
    assert len(members) == 3
    assert members == sorted(members)
    for name, spans in ranges.items():
        blob = paths[name].read_bytes()
        assert spans[0][0] == 0
        assert spans[-1][1] == len(blob)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        member_of = MEMBER_OF[name]
        for (start, _), member in zip(spans[1:], members, strict=True):
            assert blob[start - 1 : start] == b"\n"  # a whole line
            before = blob[:start].splitlines()[-1].decode()
            at = blob[start:].split(b"\n", 1)[0].decode()
            assert (member_of(before) or "") < member <= (member_of(at) or "~")


def test_an_unsorted_extract_restarts_in_one_process_with_the_same_result(
    data: tuple[Generated, dict[str, Path]], tmp_path: Path
) -> None:
    gen, paths = data
    lines = paths["css"].read_text(encoding="utf-8").splitlines(keepends=True)
    body = lines[1:]
    random.Random(3).shuffle(body)
    shuffled = dict(paths)
    shuffled["css"] = tmp_path / "css.csv"
    shuffled["css"].write_text(lines[0] + "".join(body), encoding="utf-8", newline="")
    found, _, shards, fell_back = _run(shuffled, 2)
    assert (shards, fell_back) == (1, True)
    assert {_key(d) for d in found} == gen.truth


def test_a_wrong_ipres_trailer_fails_a_sharded_run(
    data: tuple[Generated, dict[str, Path]], tmp_path: Path
) -> None:
    _, paths = data
    text = paths["ipres"].read_text(encoding="utf-8")
    body, trailer = text[: text.rstrip().rfind("\n") + 1], text[text.rstrip().rfind("\n") + 1 :]
    bad = dict(paths)
    bad["ipres"] = tmp_path / "ipres.txt"
    total = int(trailer[10:28]) + 1
    bad["ipres"].write_text(body + f"{trailer[:10]}{total:018d}\r\n", encoding="utf-8", newline="")
    with pytest.raises(MalformedExtract, match="control total"):
        _run(bad, 2)
    bad["ipres"].write_text(body, encoding="utf-8", newline="")  # truncated: no trailer
    with pytest.raises(MalformedExtract, match="trailer missing"):
        _run(bad, 2)
