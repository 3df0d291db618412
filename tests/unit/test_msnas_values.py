"""MSNAS field conversions: region names, channels, amounts, dates, booleans."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.msnas import values
from adapters.msnas.values import BadValue
from schemas import Region

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("written", "code"),
    [
        ("Thiès", "SN-TH"),
        ("Thies", "SN-TH"),
        ("THIÈS", "SN-TH"),
        (" thies ", "SN-TH"),
        ("Saint-Louis", "SN-SL"),
        ("Saint Louis", "SN-SL"),
        ("saint-louis", "SN-SL"),
        ("St-Louis", "SN-SL"),
        ("Kédougou", "SN-KE"),
        ("Kedougou", "SN-KE"),
        ("Sédhiou", "SN-SE"),
        ("Diourbel", "SN-DB"),
        ("SN-DK", "SN-DK"),
        ("sn-zg", "SN-ZG"),
        ("KD", "SN-KD"),
        ("Kolda", "SN-KD"),
        ("Kaolack", "SN-KL"),
        ("Kaffrine", "SN-KA"),
    ],
)
def test_region_names_and_codes_normalise_to_iso(written: str, code: str) -> None:
    assert values.region(written) == code


def test_every_region_is_reachable_by_name_and_code() -> None:
    for region in Region:
        assert values.region(region.value) == region.value
        assert values.region(region.value.removeprefix("SN-")) == region.value
        assert values.region(region.name.replace("_", " ").title()) == region.value


@pytest.mark.parametrize("bad", ["Kaolak", "SN-DI", "Paris", "", 14, None])
def test_unknown_regions_are_refused(bad: Any) -> None:
    with pytest.raises(BadValue):
        values.region(bad)


@pytest.mark.parametrize(
    ("label", "channel"),
    [
        ("Wave", "wave"),
        ("Orange Money", "orange_money"),
        ("orange_money", "orange_money"),
        ("OM", "orange_money"),
        ("Free Money", "free_money"),
        ("Espèces", "cash"),
        ("especes", "cash"),
        ("Banque", "bank"),
    ],
)
def test_channel_labels_map_to_the_enum(label: str, channel: str) -> None:
    assert values.channel(label) == channel


@pytest.mark.parametrize(
    ("written", "amount"),
    [
        ("15 000", 15000),
        ("15000", 15000),
        ("15\u00a0000", 15000),
        ("15\u202f000", 15000),
        ("1 250 000", 1250000),
        ("15 000 FCFA", 15000),
        ("15000 F", 15000),
        (" 500 ", 500),
        (15000, 15000),
    ],
)
def test_amounts_in_whole_francs_are_read(written: Any, amount: int) -> None:
    assert values.amount(written) == amount


@pytest.mark.parametrize(
    ("written", "error_type"),
    [
        ("15000,50", "amount_decimal"),
        ("15000.50", "amount_decimal"),
        ("15.000", "amount_decimal"),
        ("15 000,00", "amount_decimal"),
        (15000.0, "amount_decimal"),
        (150.5, "amount_decimal"),
        ("15 00", "amount_invalid"),
        ("-500", "amount_invalid"),
        ("quinze mille", "amount_invalid"),
        (True, "amount_type"),
        ([15000], "amount_type"),
    ],
)
def test_decimal_and_garbled_amounts_are_refused(written: Any, error_type: str) -> None:
    with pytest.raises(BadValue) as caught:
        values.amount(written)
    assert caught.value.type == error_type


@pytest.mark.parametrize(
    ("written", "iso"),
    [
        ("2026-01-05T09:12:30Z", "2026-01-05T09:12:30Z"),
        ("2026-01-05T10:12:30+01:00", "2026-01-05T10:12:30+01:00"),
        ("2026-01-05 09:12:30", "2026-01-05T09:12:30Z"),
        ("05/01/2026 09:12", "2026-01-05T09:12:00Z"),
        ("05/01/2026", "2026-01-05T00:00:00Z"),
        ("2026-01-05", "2026-01-05T00:00:00Z"),
    ],
)
def test_moments_are_read_in_utc_by_default(written: str, iso: str) -> None:
    assert values.moment(written) == iso


@pytest.mark.parametrize("bad", ["31/02/2026", "2026-13-01", "demain", "05-01-2026 9h"])
def test_bad_dates_are_refused(bad: str) -> None:
    with pytest.raises(BadValue):
        values.moment(bad)


def test_days_are_day_first() -> None:
    assert values.day("05/01/2026") == "2026-01-05"
    assert values.day("2026-01-05") == "2026-01-05"


@pytest.mark.parametrize(
    ("written", "month"), [("2026-02", "2026-02"), ("02/2026", "2026-02"), ("2/2026", "2026-02")]
)
def test_periods(written: str, month: str) -> None:
    assert values.period(written) == month


@pytest.mark.parametrize(
    ("written", "flag"), [("oui", True), ("Non", False), ("1", True), (False, False)]
)
def test_booleans(written: Any, flag: bool) -> None:
    assert values.boolean(written) is flag


def test_vocabulary_errors_never_echo_the_value() -> None:
    with pytest.raises(BadValue) as caught:
        values.sex("Ndèye Fatou")
    assert "Ndèye" not in caught.value.message
