"""MSNAS inbound format v1: every record type maps to its canonical event (golden files), CSV
exports keep every good row, report every bad field at its row, and re-imports are idempotent.

Regenerate the golden files with ``JOKKO_UPDATE_GOLDEN=1`` after an intended change, and review
the diff.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from adapters.msnas import (
    EVENT_NAMESPACE,
    FORMAT_VERSION,
    SOURCE,
    ImportReport,
    parse_csv,
    parse_webhook,
)
from schemas import (
    EVENT_TYPES,
    CanonicalEvent,
    ClaimSubmitted,
    ContributionPaid,
    ContributionReversed,
    dump_event,
    parse_event,
)

pytestmark = pytest.mark.contract

GOLDEN = Path(__file__).parent / "golden" / "msnas"
WEBHOOKS = sorted((GOLDEN / "webhook").glob("*.json"))
CSVS = {
    "adhesions.csv": "adhesions",
    "cotisations.csv": "cotisations",
    "factures.csv": "factures",
}
UPDATE = os.environ.get("JOKKO_UPDATE_GOLDEN") == "1"


def dumped(report: ImportReport) -> str:
    return "".join(dump_event(e).decode() + "\n" for e in report.events)


def claim_ids(events: tuple[CanonicalEvent, ...]) -> list[str]:
    return [e.payload.claim_id for e in events if isinstance(e, ClaimSubmitted)]


def check_golden(name: str, report: ImportReport) -> None:
    assert report.errors == ()
    expected = GOLDEN / "expected" / f"{name}.jsonl"
    actual = dumped(report)
    if UPDATE:
        expected.parent.mkdir(exist_ok=True)
        expected.write_text(actual, encoding="utf-8")
    assert expected.exists(), f"no golden file for {name}: run with JOKKO_UPDATE_GOLDEN=1"
    assert actual == expected.read_text(encoding="utf-8")


def test_public_names() -> None:
    assert SOURCE == "MSNAS"
    assert FORMAT_VERSION == 1


@pytest.mark.parametrize("path", WEBHOOKS, ids=lambda p: p.stem)
def test_webhook_record_maps_to_its_golden_event(path: Path) -> None:
    report = parse_webhook(path.read_bytes())
    assert len(report.events) == 1
    check_golden(f"webhook-{path.stem}", report)


@pytest.mark.parametrize(("name", "kind"), CSVS.items())
def test_csv_export_maps_to_its_golden_events(name: str, kind: str) -> None:
    report = parse_csv((GOLDEN / "csv" / name).read_bytes(), kind)
    assert len(report.events) >= 2
    check_golden(f"csv-{name.removesuffix('.csv')}", report)


def test_every_canonical_event_type_has_a_fixture() -> None:
    types = {parse_webhook(p.read_bytes()).events[0].event_type for p in WEBHOOKS}
    assert types == set(EVENT_TYPES)


def test_events_round_trip_through_canonical_parsing() -> None:
    for path in WEBHOOKS:
        (event,) = parse_webhook(path.read_bytes()).events
        assert parse_event(dump_event(event)) == event
        assert event.source.mutual == SOURCE


def test_csv_and_webhook_give_the_same_event_for_the_same_record() -> None:
    (from_webhook,) = parse_webhook((GOLDEN / "webhook" / "cotisation.json").read_bytes()).events
    from_csv = parse_csv((GOLDEN / "csv" / "cotisations.csv").read_bytes(), "cotisations").events
    assert dump_event(from_csv[0]) == dump_event(from_webhook)
    (invoice,) = parse_webhook((GOLDEN / "webhook" / "facture.json").read_bytes()).events
    invoices = parse_csv((GOLDEN / "csv" / "factures.csv").read_bytes(), "factures").events
    assert dump_event(invoices[0]) == dump_event(invoice)


def test_event_ids_derive_from_the_record_id_and_dates_from_the_record() -> None:
    raw = json.loads((GOLDEN / "webhook" / "cotisation.json").read_bytes())
    (event,) = parse_webhook(json.dumps(raw).encode()).events
    assert event.event_id == uuid.uuid5(EVENT_NAMESPACE, f"MSNAS:{raw['id_fiche']}")
    assert event.correlation_id == event.event_id
    assert event.recorded_at.isoformat() == "2026-02-03T18:42:15+00:00"  # saisi_le
    assert event.occurred_at.isoformat() == "2026-02-03T18:42:11+00:00"  # date_paiement


def test_reversal_points_at_the_original_contribution() -> None:
    (paid,) = parse_webhook((GOLDEN / "webhook" / "cotisation.json").read_bytes()).events
    (reversed_,) = parse_webhook(
        (GOLDEN / "webhook" / "annulation_cotisation.json").read_bytes()
    ).events
    assert isinstance(reversed_, ContributionReversed)
    assert reversed_.payload.original_event_id == paid.event_id
    assert reversed_.correlation_id == paid.event_id


@pytest.mark.parametrize("path", [*WEBHOOKS, GOLDEN / "batch.json"], ids=lambda p: p.stem)
def test_reimporting_a_webhook_gives_identical_event_ids(path: Path) -> None:
    first, second = parse_webhook(path.read_bytes()), parse_webhook(path.read_bytes())
    assert [e.event_id for e in first.events] == [e.event_id for e in second.events]
    assert dumped(first) == dumped(second)


@pytest.mark.parametrize(("name", "kind"), CSVS.items())
def test_reimporting_a_csv_gives_identical_event_ids(name: str, kind: str) -> None:
    raw = (GOLDEN / "csv" / name).read_bytes()
    first, second = parse_csv(raw, kind), parse_csv(raw, kind)
    assert [e.event_id for e in first.events] == [e.event_id for e in second.events]
    assert dumped(first) == dumped(second)


def test_mixed_csv_keeps_every_good_row_in_order_and_reports_each_bad_field() -> None:
    report = parse_csv((GOLDEN / "csv" / "cotisations_mixed.csv").read_bytes(), "cotisations")
    assert all(isinstance(e, ContributionPaid) for e in report.events)
    assert [
        e.payload.payment_reference for e in report.events if isinstance(e, ContributionPaid)
    ] == [
        "OM260210.1000.A1",  # row 2
        "T_GOOD0204",  # row 5
        "T_GOOD0206",  # row 8
    ]
    assert [(e.row, e.field, e.type) for e in report.errors] == [
        (3, "montant", "amount_decimal"),
        (4, "antenne", "unknown_region"),
        (4, "canal", "unknown_channel"),
        (6, "repartition", "allocation_mismatch"),
        (6, "telephone_payeur", "phone_invalid"),
        (7, "id_fiche", "duplicate_record"),
    ]


def test_mixed_webhook_batch_keeps_every_good_record() -> None:
    report = parse_webhook((GOLDEN / "batch.json").read_bytes())
    assert [e.member_id for e in report.events] == ["MSNAS-KL-000342", "MSNAS-KE-000007"]
    assert [(e.row, e.field, e.type) for e in report.errors] == [
        (2, "montant", "amount_decimal"),
        (3, "type", "unknown_record_type"),
    ]


def test_invoice_line_errors_are_reported_at_the_line_row() -> None:
    lines = (GOLDEN / "csv" / "factures.csv").read_text(encoding="utf-8").splitlines()
    # Line 2 of the first invoice: 2 x 2 250 is not 4 600 (and the total no longer adds up).
    lines[2] = lines[2].replace(";2 250;4 500", ";2 250;4 600")
    report = parse_csv("\n".join(lines).encode(), "factures")
    assert claim_ids(report.events) == ["CLM-2026-000502"]
    assert [(e.row, e.field, e.type) for e in report.errors] == [
        (3, "ligne_montant", "amount_mismatch")
    ]


def test_invoice_header_must_not_change_between_its_lines() -> None:
    lines = (GOLDEN / "csv" / "factures.csv").read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace("CONV-TH-00042", "CONV-TH-00043")
    report = parse_csv("\n".join(lines).encode(), "factures")
    assert claim_ids(report.events) == ["CLM-2026-000502"]
    assert [(e.row, e.field, e.type) for e in report.errors] == [
        (3, "convention", "invoice_header_mismatch")
    ]
