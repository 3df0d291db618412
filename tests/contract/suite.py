"""One contract every outbound institution adapter passes.

Each adapter's test module subclasses ``OutboundAdapterContract``, names its adapter module and
says how its institution writes acknowledgements (``build_ack``) and what broken acks look like
(``malformed_acks``). The tests here are the same for all; pytest collects them per subclass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings

from adapters.base import (
    Ack,
    AckStatus,
    Institution,
    MalformedAck,
    MemberProfile,
    OutboundMessage,
    UnsupportedEvent,
    profile_after,
)
from router.routing import ROUTING_TABLE, destinations
from schemas import (
    EVENT_TYPES,
    Branch,
    CanonicalEvent,
    MemberEnrolled,
    MemberUpdated,
    Package,
    Region,
)
from schemas.examples import load_examples
from tests.strategies import events

Rejections = Mapping[str, tuple[str, str]]
"""message_id -> (reason code, reason text) for the messages the institution refuses."""


def profiles(history: list[CanonicalEvent]) -> dict[str, MemberProfile]:
    """Members' profiles after ``history``, as the router keeps them."""
    known: dict[str, MemberProfile] = {}
    for e in history:
        profile = profile_after(known.get(e.member_id), e)
        if profile is not None:
            known[e.member_id] = profile
    return known


def opted_into_everything(event: CanonicalEvent) -> MemberProfile:
    if isinstance(event, MemberEnrolled):
        return MemberProfile.from_enrolment(event)
    base = MemberProfile(
        member_id=event.member_id,
        package=Package.COMPLEMENTARY,
        opted_branches=frozenset(Branch),
        region=Region.DAKAR,
        departement="Dakar",
    )
    return base.updated(event) if isinstance(event, MemberUpdated) else base


class OutboundAdapterContract:
    adapter: ClassVar[ModuleType]

    # --- what each institution's test module provides ---------------------------------------

    def build_ack(self, messages: list[OutboundMessage], rejected: Rejections) -> bytes:
        """The institution's acknowledgement of ``messages``, in its own format."""
        raise NotImplementedError

    def malformed_acks(self) -> dict[str, bytes]:
        """Broken acks by name (not the format, missing id, unknown status...)."""
        raise NotImplementedError

    # --- helpers ------------------------------------------------------------------------------

    @property
    def institution(self) -> Institution:
        inst: Institution = self.adapter.INSTITUTION
        return inst

    def routed_examples(self) -> list[tuple[CanonicalEvent, MemberProfile | None]]:
        history = load_examples()
        out = []
        for i, event in enumerate(history):
            member = profiles(history[: i + 1]).get(event.member_id)
            if self.institution in destinations(event, member):
                out.append((event, member))
        return out

    def translate_all(self) -> list[OutboundMessage]:
        return [m for e, p in self.routed_examples() for m in self.adapter.translate(e, p)]

    # --- the contract -------------------------------------------------------------------------

    def test_every_event_type_routed_here_has_an_example_that_translates(self) -> None:
        routed_types = {t for t, row in ROUTING_TABLE.items() if self.institution in row}
        seen: set[str] = set()
        for event, member in self.routed_examples():
            messages = self.adapter.translate(event, member)
            assert messages, f"{event.event_type} produced no message"
            for m in messages:
                assert m.institution == self.institution
                assert m.event_id == event.event_id
                assert m.member_id == event.member_id
                assert m.format_version == self.adapter.FORMAT_VERSION
                assert m.body
            seen.add(event.event_type)
        assert seen == routed_types

    def test_event_types_not_routed_here_are_refused(self) -> None:
        not_routed = {t for t, row in ROUTING_TABLE.items() if self.institution not in row}
        examples: dict[str, CanonicalEvent] = {e.event_type: e for e in load_examples()}
        assert not_routed <= set(EVENT_TYPES)
        for event_type in not_routed:
            event = examples[event_type]
            with pytest.raises(UnsupportedEvent):
                self.adapter.translate(event, opted_into_everything(event))

    def test_output_validates_against_the_institutions_schema(self) -> None:
        for m in self.translate_all():
            self.adapter.validate(m)

    def test_translation_is_deterministic(self) -> None:
        first = self.translate_all()
        second = self.translate_all()
        assert first == second
        assert len({m.message_id for m in first}) == len(first), "message ids must be unique"

    def test_acks_are_matched_to_messages_by_id(self) -> None:
        messages = self.translate_all()
        refused = {messages[0].message_id: ("R042", "Numéro d'identification inconnu")}
        acks: list[Ack] = self.adapter.parse_ack(self.build_ack(messages, refused))
        by_id = {a.message_id: a for a in acks}
        assert set(by_id) == {m.message_id for m in messages}
        for m in messages:
            ack = by_id[m.message_id]
            assert ack.institution == self.institution
            if m.message_id in refused:
                assert ack.status == AckStatus.REJECTED
                assert (ack.reason_code, ack.reason_text) == refused[m.message_id]
            else:
                assert ack.status == AckStatus.ACCEPTED

    def test_malformed_acks_raise_a_precise_error(self) -> None:
        broken = self.malformed_acks()
        assert broken, "name at least one malformed ack"
        for name, raw in broken.items():
            with pytest.raises(MalformedAck) as info:
                self.adapter.parse_ack(raw)
            assert info.value.errors, f"{name}: the error must say where"
            assert info.value.institution == self.institution

    # one method, run by each subclass: "differing executors" is the point here
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
    )
    @given(event=events())
    def test_any_valid_event_routed_here_validates(self, event: CanonicalEvent) -> None:
        member = opted_into_everything(event)
        if self.institution not in destinations(event, member):
            return
        messages = self.adapter.translate(event, member)
        assert messages
        for m in messages:
            self.adapter.validate(m)


class BatchEnvelopeContract:
    """For the adapters whose institution takes pushes in batches (CMU, CSS): the envelope
    carries every message unchanged, in order, and the institution's side reads it back."""

    adapter: ClassVar[ModuleType]
    translate_all: Callable[[], list[OutboundMessage]]

    def validate_envelope(self, raw: bytes) -> None:
        """The whole envelope against the institution's schema (FHIR R4B, the XSD)."""
        raise NotImplementedError

    def test_a_batch_carries_every_message_unchanged_and_in_order(self) -> None:
        messages = self.translate_all()
        assert len(messages) > 1
        batch_id = "0b6f7c2e-5d4a-4f3b-9c1d-2e8a7b6c5d4e"
        raw = self.adapter.encode_batch(batch_id, [(m.message_id, m.body) for m in messages])
        self.validate_envelope(raw)
        split = self.adapter.split_batch(raw)
        assert split is not None
        got_id, parts = split
        assert got_id == batch_id
        assert [mid for mid, _ in parts] == [m.message_id for m in messages]
        for (_, body), m in zip(parts, messages, strict=True):
            # what the institution reads is the message Jokko validated, byte for byte
            assert body == m.body, m.message_id
            self.adapter.validate(m)

    def test_a_single_message_is_not_a_batch(self) -> None:
        for m in self.translate_all()[:5]:
            assert self.adapter.split_batch(m.body) is None
