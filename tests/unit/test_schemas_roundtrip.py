"""Model -> canonical JSON -> model is the identity, for every event type."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import EVENT_CLASSES, EVENT_TYPES, CanonicalEvent, dump_event, parse_event
from tests.strategies import event_dicts, events

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow], deadline=None)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
@SETTINGS
@given(data=st.data())
def test_every_type_round_trips_through_canonical_json(
    event_type: str, data: st.DataObject
) -> None:
    event = data.draw(events(event_type))
    assert type(event) is EVENT_CLASSES[event_type]
    dumped = dump_event(event)
    back = parse_event(dumped)
    assert back == event
    assert dump_event(back) == dumped


@SETTINGS
@given(raw=event_dicts())
def test_bytes_text_and_dict_inputs_give_the_same_event(raw: dict[str, Any]) -> None:
    from_dict = parse_event(raw)
    dumped = dump_event(from_dict)
    assert parse_event(dumped.decode()) == from_dict
    assert parse_event(dumped) == from_dict


@SETTINGS
@given(event=events())
def test_dump_is_deterministic_and_compact(event: CanonicalEvent) -> None:
    dumped = dump_event(event)
    assert dumped == dump_event(event.model_copy(deep=True))
    canonical = json.dumps(
        json.loads(dumped), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert dumped == canonical.encode()
