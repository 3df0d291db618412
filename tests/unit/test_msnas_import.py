"""MSNAS imports: BOM and delimiters, unknown record types, no personal data in errors, and
no input at all makes the parsers raise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.msnas import CSV_KINDS, RECORD_TYPES, UnknownCsvKind, parse_csv, parse_webhook

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parents[1] / "contract" / "golden" / "msnas"


def record(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GOLDEN / "webhook" / f"{name}.json").read_bytes())
    return loaded


def body(*records: Any) -> bytes:
    return json.dumps(list(records), ensure_ascii=False).encode()


def test_bom_is_accepted_in_csv_and_webhook() -> None:
    csv_raw = (GOLDEN / "csv" / "cotisations.csv").read_bytes()
    assert csv_raw.startswith(b"\xef\xbb\xbf")
    with_bom = parse_csv(csv_raw, "cotisations")
    without = parse_csv(csv_raw.removeprefix(b"\xef\xbb\xbf"), "cotisations")
    assert with_bom == without
    assert len(with_bom.events) == 3
    assert with_bom.errors == ()
    webhook = json.dumps(record("cotisation")).encode()
    assert parse_webhook(b"\xef\xbb\xbf" + webhook) == parse_webhook(webhook)


def test_comma_and_semicolon_delimiters_give_the_same_events() -> None:
    semicolon = (GOLDEN / "csv" / "adhesions.csv").read_text(encoding="utf-8")
    # No field of this sample holds a comma or a semicolon.
    comma = parse_csv(semicolon.encode(), "adhesions")
    as_semicolon = parse_csv(semicolon.replace(",", ";").encode(), "adhesions")
    assert comma.errors == as_semicolon.errors == ()
    assert comma.events == as_semicolon.events


def test_crlf_line_endings() -> None:
    raw = (GOLDEN / "csv" / "adhesions.csv").read_text(encoding="utf-8")
    report = parse_csv(raw.replace("\n", "\r\n").encode(), "adhesions")
    assert report.errors == ()
    assert len(report.events) == 3


def test_unknown_record_type_is_a_row_error() -> None:
    report = parse_webhook(body(record("cotisation") | {"type": "pointage"}, record("adhesion")))
    assert [e.event_type for e in report.events] == ["member.enrolled"]
    assert [(e.row, e.field, e.type) for e in report.errors] == [(1, "type", "unknown_record_type")]
    missing = parse_webhook(body({k: v for k, v in record("cotisation").items() if k != "type"}))
    assert [(e.row, e.field, e.type) for e in missing.errors] == [(1, "type", "missing")]


def test_record_types_are_case_and_accent_insensitive() -> None:
    report = parse_webhook(body(record("cotisation") | {"type": "Cotisation"}))
    assert report.errors == ()


def test_unknown_fields_are_reported_not_dropped() -> None:
    report = parse_webhook(body(record("cotisation") | {"montnat": "10 500"}))
    assert report.events == ()
    assert [(e.field, e.type) for e in report.errors] == [("montnat", "unknown_field")]


def test_canonical_errors_are_reported_under_msnas_field_names() -> None:
    bad = record("adhesion")
    bad["nin"] = "12345"
    bad["date_naissance"] = "1700-01-01"
    bad["ayants_droit"][1]["lien"] = "voisin"
    report = parse_webhook(body(bad))
    assert report.events == ()
    assert sorted((e.field, e.type) for e in report.errors) == [
        ("ayants_droit[1].lien", "unknown_relationship"),
        ("date_naissance", "date_too_old"),
        ("nin", "nin_invalid"),
    ]
    # Cross-field rules of the envelope run once the fields themselves are valid.
    bad = record("adhesion")
    bad["ayants_droit"][0]["numero_ayant_droit"] = "MSNAS-DK-000999-D01"
    report = parse_webhook(body(bad))
    assert [(e.field, e.type) for e in report.errors] == [
        ("ayants_droit[0].numero_ayant_droit", "dependent_id_mismatch")
    ]


def test_recorded_before_business_date_is_reported_at_saisi_le() -> None:
    report = parse_webhook(body(record("cotisation") | {"saisi_le": "2026-02-01T00:00:00Z"}))
    assert [(e.field, e.type) for e in report.errors] == [("saisi_le", "recorded_before_occurred")]


def test_invoice_line_errors_name_the_line() -> None:
    bad = record("facture")
    bad["lignes"][2]["quantite"] = "deux"
    bad["montant_total"] = "9 351"
    report = parse_webhook(body(bad))
    assert [(e.field, e.type) for e in report.errors] == [("lignes[2].quantite", "int_type")]


PERSONAL = ("Ndèye Fatou", "Diop", "2751198801234", "2 751 1988 01234", "77 123 45 67", "771234567")


def test_no_personal_data_in_errors() -> None:
    bad = record("adhesion")
    bad |= {
        "sexe": "Ndèye Fatou",
        "region": "Diop",
        "nin": "Diop 2751198801234",
        "telephone": "77 123 45 67 Diop",
        "date_naissance": "2751198801234",
        "prenom": 2751198801234,
        "formule": "77 123 45 67",
        "branches": "Diop|Ndèye Fatou",
    }
    bad["ayants_droit"][0] |= {"nom": "", "lien": "Ndèye Fatou", "sexe": "Diop"}
    report = parse_webhook(body(bad))
    assert len(report.errors) >= 9
    text = " ".join(f"{e.field} {e.message} {e.type}" for e in report.errors)
    for value in PERSONAL:
        assert value not in text
    csv_raw = (GOLDEN / "csv" / "adhesions.csv").read_text(encoding="utf-8")
    garbled = csv_raw.replace(",F,21/04/1992,", ",Astou Kâ,Kâ Astou,").replace(",base,", ",Kâ,")
    report = parse_csv(garbled.encode(), "adhesions")
    assert report.errors
    assert all("Astou" not in e.message and "Kâ" not in e.message for e in report.errors)


def test_non_json_webhook_body_is_one_error_at_row_zero() -> None:
    for raw in (b"", b"not json", b"\xff\xfe", b"[1, 2", b"42", b"NaN"):
        report = parse_webhook(raw)
        assert report.events == ()
        assert len(report.errors) == 1
        assert report.errors[0].row == 0


def test_csv_header_problems() -> None:
    raw = (GOLDEN / "csv" / "cotisations.csv").read_text(encoding="utf-8-sig")
    lines = raw.splitlines()
    missing = parse_csv(
        "\n".join([lines[0].replace("montant;", "somme;"), *lines[1:]]).encode(), "cotisations"
    )
    assert missing.events == ()
    assert [(e.row, e.field, e.type) for e in missing.errors] == [
        (1, "montant", "missing_column"),
        (1, "somme", "unknown_column"),
    ]
    extra = parse_csv("\n".join([lines[0] + ";commentaire", *lines[1:]]).encode(), "cotisations")
    assert len(extra.events) == 3
    assert [(e.row, e.field, e.type) for e in extra.errors] == [
        (1, "commentaire", "unknown_column")
    ]
    assert parse_csv(b"", "cotisations").errors[0].type == "empty_file"


def test_invalid_utf8_cell_costs_only_its_row() -> None:
    raw = (GOLDEN / "csv" / "cotisations.csv").read_bytes()
    broken = raw.replace(b"Free Money", b"Free M\xe9ney")
    report = parse_csv(broken, "cotisations")
    assert len(report.events) == 2
    assert [(e.row, e.field, e.type) for e in report.errors] == [(3, "canal", "encoding_invalid")]


def test_unknown_csv_kind_is_a_caller_error() -> None:
    with pytest.raises(UnknownCsvKind):
        parse_csv(b"a;b\n1;2\n", "paiements")
    assert set(CSV_KINDS) == {"adhesions", "cotisations", "factures"}


garbage = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=200).map(str.encode),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(["type", "montant", "region", "lignes", "ayants_droit", "x"]),
                inner,
                max_size=5,
            )
        ),
        max_leaves=20,
    ).map(lambda doc: json.dumps(doc).encode()),
    st.builds(
        lambda t, extra: json.dumps({**record_for(t), **extra}).encode(),
        st.sampled_from(RECORD_TYPES),
        st.dictionaries(
            st.text(max_size=12), st.none() | st.integers() | st.text(max_size=12), max_size=3
        ),
    ),
)


def record_for(record_type: str) -> dict[str, Any]:
    path = GOLDEN / "webhook" / f"{record_type}.json"
    return record(record_type) if path.exists() else {"type": record_type}


@settings(max_examples=300, deadline=None)
@given(raw=garbage)
def test_garbage_webhook_bodies_never_raise(raw: bytes) -> None:
    report = parse_webhook(raw)
    assert len(report.events) + len(report.errors) >= 0
    for error in report.errors:
        assert isinstance(error.row, int)
        assert isinstance(error.field, str)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(CSV_KINDS),
    raw=st.one_of(
        st.binary(max_size=400),
        st.lists(st.lists(st.text(max_size=12), max_size=20).map(";".join), max_size=6).map(
            lambda rows: "\n".join(rows).encode()
        ),
    ),
    with_header=st.booleans(),
)
def test_garbage_csv_never_raises(kind: str, raw: bytes, with_header: bool) -> None:
    if with_header:
        header = (GOLDEN / "csv" / f"{kind}.csv").read_bytes().splitlines()[0]
        raw = header + b"\n" + raw
    report = parse_csv(raw, kind)
    assert all(isinstance(e.row, int) for e in report.errors)
