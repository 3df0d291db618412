"""The shipped examples are valid, cover every type, and look like the scheme's people."""

from __future__ import annotations

from collections import Counter

import pytest

from schemas import (
    EVENT_TYPES,
    MOBILE_MONEY_CHANNELS,
    ContributionPaid,
    MemberEnrolled,
    Region,
    dump_event,
)
from schemas.examples import load_examples, raw_examples

pytestmark = pytest.mark.unit


def test_every_example_parses() -> None:
    assert len(load_examples()) == len(raw_examples())


def test_every_event_type_has_an_example() -> None:
    assert set(Counter(e.event_type for e in load_examples())) == set(EVENT_TYPES)


def test_examples_cover_all_fourteen_regions() -> None:
    enrolled = [e for e in load_examples() if isinstance(e, MemberEnrolled)]
    assert {e.payload.region for e in enrolled} == set(Region)
    assert {e.source.region for e in load_examples()} == set(Region)


def test_examples_cover_the_three_mobile_money_channels() -> None:
    paid = [e for e in load_examples() if isinstance(e, ContributionPaid)]
    assert {e.payload.channel for e in paid} >= MOBILE_MONEY_CHANNELS


def test_examples_carry_accented_senegalese_names() -> None:
    text = b"".join(dump_event(e) for e in load_examples()).decode()
    for name in ("Ndèye Fatou", "Diop", "Mamadou", "Faye", "Aïssatou", "Sène", "Cheikh", "Mbacké"):
        assert name in text


def test_event_ids_are_unique_and_order_is_recording_order() -> None:
    events = load_examples()
    assert len({e.event_id for e in events}) == len(events)
    assert [e.recorded_at for e in events] == sorted(e.recorded_at for e in events)
