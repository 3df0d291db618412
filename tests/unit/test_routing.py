"""One test per row of the routing table (DESIGN.md §3)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from adapters.base import Institution, MemberProfile
from router.routing import ROUTING_TABLE, MemberUnknown, destinations
from schemas import EVENT_TYPES, Branch, CanonicalEvent, Package, Region, parse_event
from schemas.examples import raw_examples

pytestmark = pytest.mark.unit

CMU, CSS, IPRES = Institution.CMU, Institution.CSS, Institution.IPRES
MEMBER_EVENTS = [
    "member.enrolled",
    "member.updated",
    "member.dependent_added",
    "member.dependent_removed",
    "member.status_changed",
]


def example(event_type: str) -> dict[str, Any]:
    return copy.deepcopy(next(e for e in raw_examples() if e["event_type"] == event_type))


def profile(member_id: str, *branches: Branch) -> MemberProfile:
    return MemberProfile(member_id, Package.BASE, frozenset(branches), Region.THIES, "Mbour")


def test_the_table_has_a_row_for_every_event_type() -> None:
    assert set(ROUTING_TABLE) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", MEMBER_EVENTS)
@pytest.mark.parametrize(
    ("branches", "expected"),
    [
        ((Branch.HEALTH,), [CMU]),
        ((Branch.HEALTH, Branch.FAMILY), [CMU, CSS]),
        ((Branch.WORK_ACCIDENT,), [CMU, CSS]),
        ((Branch.OLD_AGE,), [CMU, IPRES]),
        (tuple(Branch), [CMU, CSS, IPRES]),
    ],
)
def test_member_events_follow_the_opted_branches(
    event_type: str, branches: tuple[Branch, ...], expected: list[Institution]
) -> None:
    event = parse_event(example(event_type))
    assert destinations(event, profile(event.member_id, *branches)) == expected


@pytest.mark.parametrize("event_type", MEMBER_EVENTS[1:])
def test_member_event_before_enrolment_cannot_be_routed(event_type: str) -> None:
    with pytest.raises(MemberUnknown):
        destinations(parse_event(example(event_type)), None)


def contribution(event_type: str, allocation: dict[str, int]) -> CanonicalEvent:
    raw = example(event_type)
    raw["payload"]["allocation"] = allocation
    raw["payload"]["amount"] = sum(allocation.values())
    return parse_event(raw)


@pytest.mark.parametrize("event_type", ["contribution.paid", "contribution.reversed"])
@pytest.mark.parametrize(
    ("allocation", "expected"),
    [
        ({"health": 7000}, [CMU]),
        ({"family": 1500}, [CSS]),
        ({"work_accident": 500}, [CSS]),
        ({"old_age": 2000}, [IPRES]),
        ({"health": 7000, "old_age": 2000}, [CMU, IPRES]),
        (
            {"health": 7000, "family": 1500, "work_accident": 500, "old_age": 2000},
            [CMU, CSS, IPRES],
        ),
    ],
)
def test_contributions_go_where_their_allocation_has_a_share(
    event_type: str, allocation: dict[str, int], expected: list[Institution]
) -> None:
    event = contribution(event_type, allocation)
    # the opted branches do not matter for money: the allocation does
    assert destinations(event, profile(event.member_id, Branch.HEALTH)) == expected


def test_claims_go_to_cmu_only() -> None:
    event = parse_event(example("claim.submitted"))
    assert destinations(event, profile(event.member_id, *Branch)) == [CMU]


def test_adjudication_by_the_mutual_goes_to_cmu_but_cmus_own_does_not_echo_back() -> None:
    raw = example("claim.adjudicated")
    raw["payload"]["adjudicator"] = "MSNAS"
    assert destinations(parse_event(raw), None) == [CMU]
    raw["payload"]["adjudicator"] = "CMU"
    assert destinations(parse_event(raw), None) == []


def test_maternity_care_goes_to_cmu_and_cash_benefit_to_css() -> None:
    with_cash = [
        e
        for e in raw_examples()
        if e["event_type"] == "maternity.declared" and e["payload"]["cash_benefit_requested"]
    ]
    without = [
        e
        for e in raw_examples()
        if e["event_type"] == "maternity.declared" and not e["payload"]["cash_benefit_requested"]
    ]
    assert with_cash, "examples must cover a cash benefit"
    assert without, "examples must cover care only"
    assert destinations(parse_event(with_cash[0]), None) == [CMU, CSS]
    assert destinations(parse_event(without[0]), None) == [CMU]


def test_work_accidents_go_to_css_only() -> None:
    event = parse_event(example("work_accident.declared"))
    assert destinations(event, profile(event.member_id, *Branch)) == [CSS]


def test_provider_agreements_go_to_cmu_only() -> None:
    assert destinations(parse_event(example("provider.agreement_signed")), None) == [CMU]
