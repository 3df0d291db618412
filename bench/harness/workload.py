"""The canonical events benchmarks send, and what the router must make of them, worked out
here from the routing table and the adapters rather than trusted from the run."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from adapters.base import Institution, MemberProfile, profile_after
from router.registry import outbound_adapters
from router.routing import destinations
from schemas import CanonicalEvent
from schemas.examples import load_examples
from tests.factories import contributions, enrolments

PER_MEMBER = 20
"""Contributions per member in a workload."""


@dataclass
class Workload:
    """Enrolments first (so every member is known), then the contributions, interleaved."""

    events: list[CanonicalEvent]
    contributions: int
    expected: dict[str, int]
    """event_id -> how many outbound messages it must give (routing table x adapters)."""

    @property
    def messages(self) -> int:
        return sum(self.expected.values())


def workload(n_contributions: int, seed: str) -> Workload:
    per_member = min(PER_MEMBER, max(1, n_contributions))
    members = max(1, n_contributions // per_member)
    paid = contributions(members, per_member, seed=seed)
    # Unique enrolment ids per workload: each topic gets its own members' enrolments.
    enrolled = [
        e.model_copy(update={"event_id": uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}:{e.event_id}")})
        for e in enrolments(members)
    ]
    events: list[CanonicalEvent] = [*enrolled, *paid]
    return Workload(events, len(paid), expected_messages(events))


def with_profiles(
    events: Iterable[CanonicalEvent],
) -> Iterator[tuple[CanonicalEvent, MemberProfile | None]]:
    """Each event with its member's profile once it is applied, as the router keeps them."""
    known: dict[str, MemberProfile] = {}
    for e in events:
        profile = profile_after(known.get(e.member_id), e)
        if profile is not None:
            known[e.member_id] = profile
        yield e, profile


def expected_messages(events: Sequence[CanonicalEvent]) -> dict[str, int]:
    """What the router must produce, worked out here from the routing table and adapters."""
    adapters = outbound_adapters()
    return {
        str(e.event_id): sum(len(adapters[i].translate(e, p)) for i in destinations(e, p))
        for e, p in with_profiles(events)
    }


def routed_examples(inst: Institution) -> dict[str, tuple[CanonicalEvent, MemberProfile | None]]:
    """The first example of each event type routed to ``inst``, with its member's profile."""
    out: dict[str, tuple[CanonicalEvent, MemberProfile | None]] = {}
    for e, member in with_profiles(load_examples()):
        if inst in destinations(e, member) and e.event_type not in out:
            out[e.event_type] = (e, member)
    return out
