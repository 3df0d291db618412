"""Reconciliation core: every injected discrepancy found and nothing else; a dataset against
itself is clean; extracts round-trip through their readers and refuse what they cannot read."""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterable
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.cmu import extract as cmu
from adapters.css import extract as css
from adapters.extract import MalformedExtract, Rec
from adapters.ipres import extract as ipres
from adapters.msnas.ledger import MalformedLedger, parse_ledger
from services.reconcile import (
    EVERY_MONTH,
    INSTITUTIONS,
    Kind,
    ListCollector,
    Scope,
    Totals,
    by_member,
    compare,
    external_sort,
    extract_source,
    ledger_source,
    parse_period,
    reconcile,
)
from services.reconcile_data import Generated, generate
from services.reconcile_report import to_csv, to_html, to_json
from services.reconcile_runs import summary_of

pytestmark = pytest.mark.unit


def _generated(
    members: int, rate: float, seed: int = 7, claim_share: float = 0.05
) -> tuple[dict[str, str], Generated]:
    bufs = {k: io.StringIO(newline="") for k in ("ledger", *INSTITUTIONS)}
    gen = generate(
        members, 6, {k: b.write for k, b in bufs.items()}, rate=rate, seed=seed,
        claim_share=claim_share,
    )  # fmt: skip
    return {k: b.getvalue() for k, b in bufs.items()}, gen


def _dataset(
    members: int, rate: float, seed: int = 7
) -> tuple[dict[str, str], set[tuple[str, ...]]]:
    texts, gen = _generated(members, rate, seed)
    return texts, set(gen.truth)


def _opener(text: str) -> Callable[[], Iterable[str]]:
    return lambda: io.StringIO(text, newline="")


def _run(
    texts: dict[str, str], chunk: int = 500_000, scope: Scope = EVERY_MONTH
) -> tuple[ListCollector, Totals]:
    col, totals = ListCollector(), Totals()
    reconcile(
        ledger_source(_opener(texts["ledger"]), INSTITUTIONS),
        {i: extract_source(i, _opener(texts[i])) for i in INSTITUTIONS},
        col,
        totals,
        chunk=chunk,
        scope=scope,
    )
    return col, totals


def _found(col: ListCollector) -> set[tuple[str, ...]]:
    return {
        (d.institution, d.record, d.kind, d.member_id, d.period, d.branch, d.ref) for d in col.items
    }


def test_every_injected_discrepancy_is_found_and_nothing_else() -> None:
    texts, gen = _generated(600, 0.1, claim_share=0.8)
    truth = set(gen.truth)
    # every kind the files can show injected (duplicate_member comes from Jokko's store)
    assert {t[2] for t in truth} == set(Kind) - {Kind.DUPLICATE_MEMBER}
    assert {t[0] for t in truth} == set(INSTITUTIONS)
    injected_fields = {(k[1], f) for k, f in gen.mismatched.items()}
    assert injected_fields == {
        ("affiliation", "package"),
        ("affiliation", "status"),
        ("affiliation", "dependents"),
        ("contribution", "amount"),
        ("claim", "amount"),
        ("claim", "status"),
        ("claim", "period"),
    }
    assert {k[0] for k, f in gen.mismatched.items() if f == "dependents"} == {"cmu", "css"}
    col, totals = _run(texts)
    assert _found(col) == truth
    assert len(col.items) == len(truth)
    assert sum(c for c, _ in totals.cells.values()) == len(truth)
    found_fields = {
        (d.institution, d.record, d.kind, d.member_id, d.period, d.branch, d.ref): d.fields
        for d in col.items
        if d.kind == Kind.MISMATCH
    }
    assert found_fields == gen.mismatched  # each mismatch names exactly the changed field


def test_a_claim_booked_in_another_month_is_a_period_mismatch_in_the_ledgers_month() -> None:
    texts, gen = _generated(600, 0.1, claim_share=0.8)
    moved = [k for k, f in gen.mismatched.items() if f == "period"]
    assert moved
    col, _ = _run(texts)
    by_key = {(d.member_id, d.ref): d for d in col.items if d.record == "claim"}
    for key in moved:
        d = by_key[(key[3], key[6])]
        assert (d.kind, d.period, d.fields) == ("mismatch", key[4], "period")
        assert f"period={key[4]}" in d.expected
        assert f"period={key[4]}" not in d.actual


def test_xof_difference_is_what_the_institution_holds_minus_the_ledger() -> None:
    texts, _ = _dataset(400, 0.03, seed=3)
    col, totals = _run(texts)
    for d in col.items:
        if d.kind == Kind.MISSING:
            assert d.xof_difference == -d.expected_amount
        elif d.kind in (Kind.EXTRA, Kind.DUPLICATE):
            assert d.xof_difference == d.actual_amount
        elif d.record == "contribution":
            assert d.xof_difference == 500
            assert d.fields == "amount"
    by_inst = totals.by("institution")
    assert sum(x for _, x in by_inst.values()) == sum(d.xof_difference for d in col.items)


def test_unsorted_extracts_fall_back_to_an_external_sort_with_the_same_result() -> None:
    texts, truth = _dataset(300, 0.03, seed=5)
    lines = texts["css"].splitlines(keepends=True)
    body = lines[1:]
    random.Random(1).shuffle(body)
    shuffled = {**texts, "css": lines[0] + "".join(body)}
    col, _ = _run(shuffled, chunk=997)  # several spilled chunks
    assert _found(col) == truth


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=st.integers(0, 60), seed=st.integers(0, 10_000))
def test_a_dataset_against_itself_reports_nothing(members: int, seed: int) -> None:
    texts, truth = _dataset(members, 0.0, seed=seed)
    assert truth == set()
    col, _ = _run(texts)
    assert col.items == []


@given(st.lists(st.tuples(st.sampled_from("ABC"), st.sampled_from(["", "2025-01", "2025-02"]),
                          st.integers(0, 3)), max_size=30))  # fmt: skip
def test_compare_of_sorted_streams_matches_a_set_model(raw: list[tuple[str, str, int]]) -> None:
    recs = [Rec(f"MSNAS-DK-00000{m}", "cmu", "contribution", p, "health", "", a) for m, p, a in raw]
    expected = sorted({r[:6]: r for r in recs}.values())
    assert list(compare(expected, expected)) == []
    assert list(external_sort(recs, chunk=4)) == sorted(recs)
    assert [d.kind for d in compare(expected, [])] == [Kind.MISSING] * len(expected)
    assert [d.kind for d in compare([], expected)] == [Kind.EXTRA] * len(expected)


def test_by_member_refuses_a_stream_not_grouped_by_member() -> None:
    from services.reconcile import OutOfOrder

    a, b = (Rec(f"MSNAS-DK-00000{i}", "cmu", "affiliation", "", "", "") for i in (2, 1))
    with pytest.raises(OutOfOrder):
        list(by_member([a, b]))


@pytest.mark.parametrize("module", [cmu, css, ipres])
def test_extract_lines_round_trip(module: object) -> None:
    texts, _ = _dataset(50, 0.0)
    inst = module.__name__.split(".")[1]  # type: ignore[attr-defined]
    recs = list(module.parse_extract(io.StringIO(texts[inst], newline="")))  # type: ignore[attr-defined]
    assert recs
    assert {r.institution for r in recs} == {inst}
    again = "".join(module.extract_line(r) + ("\n" if inst == "cmu" else "") for r in recs)  # type: ignore[attr-defined]
    if inst == "css":
        again = css.header_line() + again
    if inst == "ipres":
        again = (
            texts[inst].splitlines(keepends=True)[0]
            + again
            + texts[inst].splitlines(keepends=True)[-1]
        )
    assert list(module.parse_extract(io.StringIO(again, newline=""))) == recs  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("module", "text"),
    [
        (cmu, "not json\n"),
        (cmu, '{"resourceType":"PaymentNotice","amount":{"value":1.5,"currency":"XOF"}}\n'),
        (css, "wrong,header\n"),
        (css, css.header_line() + "contribution,MSNAS-DK-000001,2025-01,old_age,100,,\r\n"),
        (ipres, "H01IPRES     MSNAS     202501202512\r\nT000000001000000000000000100\r\n"),
        (ipres, "H01IPRES     MSNAS     202501202512\r\n"),
    ],
)
def test_unreadable_extracts_are_refused_with_their_line(module: object, text: str) -> None:
    with pytest.raises(MalformedExtract, match="line"):
        list(module.parse_extract(io.StringIO(text, newline="")))  # type: ignore[attr-defined]


def test_a_malformed_ledger_is_refused() -> None:
    with pytest.raises(MalformedLedger):
        list(parse_ledger(io.StringIO("record,member_id\n")))


def test_reports_in_json_csv_and_html() -> None:
    texts, truth = _dataset(200, 0.05)
    col, totals = _run(texts)
    run = {"id": 1, "state": "done", "summary": summary_of(totals)}
    assert len(to_csv(col.items).splitlines()) == len(truth) + 1
    assert len(__import__("json").loads(to_json(run, col.items))["discrepancies"]) == len(truth)
    html = to_html(run, col.items)
    assert "<svg" in html
    assert "<script" not in html
    assert "SN-DK" in html
    # the totals table by region, period and branch, with the XOF difference of each cell
    section = html.split("<h2>By region, period and branch</h2>")[1].split("<h2>")[0]
    cells = run["summary"]["by_institution_region_period_branch"]  # type: ignore[index]
    assert cells
    assert section.count("<tr>") == len(cells) + 1
    assert "<th>xof_difference</th>" in section
    for c in cells:
        assert (
            f"<tr><td>{c['region']}</td><td>{c['period']}</td><td>{c['branch']}</td>"
            f"<td>{c['institution']}</td><td>{c['count']}</td><td>{c['xof_difference']}</td></tr>"
        ) in section


@pytest.mark.parametrize(
    ("scope", "months"),
    [
        (Scope("2025-03", "2025-03"), {"2025-03"}),
        (Scope("2025-02", "2025-04"), {"2025-02", "2025-03", "2025-04"}),
    ],
)
def test_a_period_scoped_run_reports_only_that_periods_discrepancies(
    scope: Scope, months: set[str]
) -> None:
    texts, gen = _generated(600, 0.1, claim_share=0.8)
    col, totals = _run(texts, scope=scope)
    in_scope = {t for t in gen.truth if t[4] in months or (t[4] == "" and t[1] == "affiliation")}
    assert {t[4] for t in gen.truth} - months - {""}  # other months had discrepancies too
    assert _found(col) == in_scope
    assert {d.period for d in col.items} <= months | {""}
    assert sum(c for c, _ in totals.cells.values()) == len(in_scope)
    # a claim booked at the institution in another month is still a period mismatch, in scope
    # by its ledger month
    fields = {(d.member_id, d.ref, d.period): d.fields for d in col.items if d.kind == "mismatch"}
    assert fields == {(k[3], k[6], k[4]): f for k, f in gen.mismatched.items() if k in in_scope}


@pytest.mark.parametrize(
    ("text", "today", "expected"),
    [
        ("previous", date(2026, 12, 3), ("2026-11", "2026-11")),
        ("previous", date(2027, 1, 1), ("2026-12", "2026-12")),
        ("previous", date(2026, 3, 31), ("2026-02", "2026-02")),
        ("2025-07", date(2026, 1, 1), ("2025-07", "2025-07")),
        ("2025-01..2025-06", date(2026, 1, 1), ("2025-01", "2025-06")),
    ],
)
def test_periods_and_previous_resolved_at_run_time(
    text: str, today: date, expected: tuple[str, str]
) -> None:
    assert parse_period(text, today) == expected


@pytest.mark.parametrize("text", ["2025-13", "2025-1", "25-01", "2025-06..2025-01", "last", ""])
def test_a_malformed_period_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="period"):
        parse_period(text, date(2026, 1, 1))
