"""Hypothesis strategies for valid canonical events of every v1 type.

They draw JSON-shaped dicts (what producers send, with phones and NINs in the loose forms agents
type) and parse them, so every generated event has gone through ``parse_event``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st
from stdnum.sn import ninea

from schemas import (
    EVENT_TYPES,
    Branch,
    CanonicalEvent,
    Channel,
    ClaimKind,
    ClaimOutcome,
    MemberStatus,
    Package,
    ProviderSector,
    ProviderType,
    Region,
    Relationship,
    RemovalReason,
    ReversalReason,
    Sex,
    parse_event,
)

Json = dict[str, Any]
Draw = Callable[[st.SearchStrategy[Any]], Any]

EARLIEST = datetime(2021, 1, 1, tzinfo=UTC)

GIVEN_NAMES = (
    "Ndèye Fatou", "Mamadou", "Aïssatou", "Cheikh", "Fatoumata", "Ousmane", "Khadija",
    "Serigne Saliou", "Mame Diarra", "Boubacar", "Seynabou", "Jean-Baptiste", "Sokhna",
)  # fmt: skip
FAMILY_NAMES = (
    "Diop", "Faye", "Sène", "Mbacké", "Ndiaye", "Bâ", "Kâ", "Diédhiou", "Cissé", "Sall",
    "Baldé", "Sonko", "Lô", "Gaye", "Thiaw",
)  # fmt: skip
LABELS = ("Pikine", "Mbour", "Kédougou", "couturière", "menuisier", "forgeron", "Atelier")


def _now() -> datetime:
    return datetime.now(UTC)


def enum_values(enum: type[Any]) -> st.SearchStrategy[str]:
    return st.sampled_from([member.value for member in enum])


def names() -> st.SearchStrategy[str]:
    free = st.text(st.characters(categories=("Lu", "Ll")), min_size=1, max_size=40)
    return st.one_of(st.sampled_from(GIVEN_NAMES + FAMILY_NAMES), free)


def labels() -> st.SearchStrategy[str]:
    free = st.text(st.characters(categories=("L", "N", "Zs")), min_size=1, max_size=60)
    return st.one_of(st.sampled_from(LABELS), free.filter(lambda s: s.strip() != ""))


@st.composite
def phones(draw: Draw) -> str:
    """Valid Senegalese mobiles, written the ways agents and operators write them."""
    national = draw(st.sampled_from(["70", "75", "76", "77", "78"])) + draw(
        st.text("0123456789", min_size=7, max_size=7)
    )
    spaced = f"{national[:2]} {national[2:5]} {national[5:7]} {national[7:]}"
    return str(draw(st.sampled_from([national, spaced, f"+221{national}", f"00221 {spaced}"])))


@st.composite
def nins(draw: Draw) -> str:
    digits = draw(st.sampled_from("12")) + draw(st.text("0123456789", min_size=12, max_size=12))
    return str(
        draw(st.sampled_from([digits, f"{digits[0]} {digits[1:4]} {digits[4:8]} {digits[8:]}"]))
    )


def nineas() -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=7, max_size=7).filter(ninea.is_valid)


def dates(start: date, end: date) -> st.SearchStrategy[date]:
    return st.dates(min_value=start, max_value=max(start, end))


def iso(moment: datetime, offset_hours: int) -> str:
    """The same instant, written with some UTC offset (the model stores it in UTC)."""
    return moment.astimezone(timezone(timedelta(hours=offset_hours))).isoformat()


def months_up_to(latest: date) -> st.SearchStrategy[str]:
    first = EARLIEST.year * 12
    last = latest.year * 12 + latest.month - 1
    return st.integers(first, last).map(lambda m: f"{m // 12:04d}-{m % 12 + 1:02d}")


def region_suffix(region: str) -> str:
    return region.removeprefix("SN-")


@st.composite
def member_identities(draw: Draw) -> Json:
    return {
        "given_names": draw(names()),
        "family_name": draw(names()),
        "sex": draw(enum_values(Sex)),
        "birth_date": draw(
            dates(date(1930, 1, 1), _now().date() - timedelta(days=15 * 365))
        ).isoformat(),
        "nin": draw(nins()),
        "phone": draw(phones()),
    }


@st.composite
def dependents(draw: Draw, member_id: str, number: int) -> Json:
    identity: Json = {
        "given_names": draw(names()),
        "family_name": draw(names()),
        "sex": draw(enum_values(Sex)),
        "birth_date": draw(dates(date(1930, 1, 1), _now().date())).isoformat(),
    }
    if draw(st.booleans()):
        identity["nin"] = draw(nins())
    return {
        "dependent_id": f"{member_id}-D{number:02d}",
        "relationship": draw(enum_values(Relationship)),
        "identity": identity,
    }


def branch_sets() -> st.SearchStrategy[list[str]]:
    return st.lists(enum_values(Branch), min_size=1, max_size=4, unique=True)


@st.composite
def allocations(draw: Draw) -> Json:
    branches = draw(branch_sets())
    return {b: draw(st.integers(1, 200_000)) for b in branches}


# --- payloads, given the envelope they will travel in ------------------------------------------


@st.composite
def member_enrolled(draw: Draw, env: Json) -> Json:
    count = draw(st.integers(0, 4))
    return {
        "identity": draw(member_identities()),
        "region": draw(enum_values(Region)),
        "departement": draw(labels()),
        "trade": draw(labels()),
        "package": draw(enum_values(Package)),
        "opted_branches": draw(branch_sets()),
        "dependents": [draw(dependents(env["member_id"], n)) for n in range(1, count + 1)],
    }


@st.composite
def member_updated(draw: Draw, env: Json) -> Json:
    identity = draw(member_identities())
    candidates: Json = {
        **identity,
        "region": draw(enum_values(Region)),
        "departement": draw(labels()),
        "trade": draw(labels()),
        "package": draw(enum_values(Package)),
        "opted_branches": draw(branch_sets()),
    }
    keys = draw(st.lists(st.sampled_from(sorted(candidates)), min_size=1, unique=True))
    return {"changes": {k: candidates[k] for k in keys}}


@st.composite
def dependent_added(draw: Draw, env: Json) -> Json:
    return {"dependent": draw(dependents(env["member_id"], draw(st.integers(1, 99))))}


@st.composite
def dependent_removed(draw: Draw, env: Json) -> Json:
    return {
        "dependent_id": f"{env['member_id']}-D{draw(st.integers(1, 99)):02d}",
        "reason": draw(enum_values(RemovalReason)),
        "effective_date": draw(dates(date(2021, 1, 1), date(2030, 12, 31))).isoformat(),
    }


@st.composite
def member_status_changed(draw: Draw, env: Json) -> Json:
    status = draw(enum_values(MemberStatus))
    latest = env["_occurred"].date() if status == MemberStatus.DECEASED else date(2030, 12, 31)
    payload: Json = {
        "status": status,
        "effective_date": draw(dates(date(2021, 1, 1), latest)).isoformat(),
    }
    if draw(st.booleans()):
        payload["reason_code"] = draw(
            st.sampled_from(["UNPAID_3_MONTHS", "MEMBER_REQUEST", "DEATH"])
        )
    return payload


@st.composite
def contribution_paid(draw: Draw, env: Json) -> Json:
    allocation = draw(allocations())
    channel = draw(enum_values(Channel))
    payload: Json = {
        "amount": sum(allocation.values()),
        "period": draw(months_up_to(env["_occurred"].date())),
        "allocation": allocation,
        "channel": channel,
        "payment_reference": draw(st.from_regex(r"\A[A-Z0-9][A-Z0-9._/-]{3,20}\Z")),
    }
    if channel in ("wave", "orange_money", "free_money") or draw(st.booleans()):
        payload["payer_phone"] = draw(phones())
    return payload


@st.composite
def contribution_reversed(draw: Draw, env: Json) -> Json:
    allocation = draw(allocations())
    return {
        "original_event_id": str(draw(st.uuids())),
        "payment_reference": draw(st.from_regex(r"\A[A-Z0-9][A-Z0-9._/-]{3,20}\Z")),
        "period": draw(months_up_to(_now().date())),
        "amount": sum(allocation.values()),
        "allocation": allocation,
        "reason": draw(enum_values(ReversalReason)),
    }


def agreement_numbers() -> st.SearchStrategy[str]:
    return st.builds(
        lambda r, n: f"CONV-{region_suffix(r)}-{n:05d}", enum_values(Region), st.integers(0, 99_999)
    )


def beneficiary(member_id: str) -> st.SearchStrategy[str]:
    return st.one_of(st.just(member_id), st.integers(1, 99).map(lambda n: f"{member_id}-D{n:02d}"))


@st.composite
def claim_items(draw: Draw) -> Json:
    quantity, unit_price = draw(st.integers(1, 10)), draw(st.integers(1, 500_000))
    return {
        "code": draw(st.from_regex(r"\A[A-Z0-9][A-Z0-9.-]{1,12}\Z")),
        "description": draw(labels()),
        "quantity": quantity,
        "unit_price": unit_price,
        "amount": quantity * unit_price,
    }


@st.composite
def claim_submitted(draw: Draw, env: Json) -> Json:
    items = draw(st.lists(claim_items(), min_size=1, max_size=5))
    return {
        "claim_id": f"CLM-{draw(st.integers(2021, 2099))}-{draw(st.integers(0, 999_999)):06d}",
        "kind": draw(enum_values(ClaimKind)),
        "beneficiary_id": draw(beneficiary(env["member_id"])),
        "provider_agreement": draw(agreement_numbers()),
        "service_date": draw(dates(date(2021, 1, 1), env["_occurred"].date())).isoformat(),
        "diagnoses": draw(
            st.lists(st.from_regex(r"\A[A-Z][0-9]{2}(\.[0-9]{1,2})?\Z"), min_size=1, max_size=4)
        ),
        "items": items,
        "total": sum(item["amount"] for item in items),
    }


@st.composite
def claim_adjudicated(draw: Draw, env: Json) -> Json:
    outcome = draw(enum_values(ClaimOutcome))
    claimed = draw(st.integers(2, 5_000_000))
    approved = {
        ClaimOutcome.APPROVED: claimed,
        ClaimOutcome.PARTIALLY_APPROVED: draw(st.integers(1, claimed - 1)),
        ClaimOutcome.REJECTED: 0,
    }[ClaimOutcome(outcome)]
    reasons = [] if outcome == ClaimOutcome.APPROVED else ["NOT_COVERED"]
    return {
        "claim_id": f"CLM-{draw(st.integers(2021, 2099))}-{draw(st.integers(0, 999_999)):06d}",
        "adjudicator": draw(st.sampled_from(["CMU", "MSNAS"])),
        "outcome": outcome,
        "claimed_amount": claimed,
        "approved_amount": approved,
        "reason_codes": reasons,
    }


@st.composite
def witnesses(draw: Draw) -> Json:
    witness: Json = {"given_names": draw(names()), "family_name": draw(names())}
    if draw(st.booleans()):
        witness["phone"] = draw(phones())
    return witness


@st.composite
def work_accident_declared(draw: Draw, env: Json) -> Json:
    occurred: datetime = env["_occurred"]
    accident_at = occurred - draw(st.timedeltas(timedelta(0), timedelta(days=30)))
    return {
        "accident_id": f"AT-{draw(st.integers(2021, 2099))}-{draw(st.integers(0, 999_999)):06d}",
        "accident_at": iso(accident_at, draw(st.integers(-2, 2))),
        "region": draw(enum_values(Region)),
        "departement": draw(labels()),
        "place": draw(labels()),
        "activity": draw(labels()),
        "description": draw(labels()),
        "injuries": draw(labels()),
        "on_commute": draw(st.booleans()),
        "fatal": draw(st.booleans()),
        "work_stoppage_days": draw(st.none() | st.integers(0, 365)),
        "witnesses": draw(st.lists(witnesses(), max_size=3)),
    }


@st.composite
def maternity_declared(draw: Draw, env: Json) -> Json:
    confirmed = draw(dates(date(2021, 1, 1), _now().date()))
    edd = confirmed + timedelta(days=draw(st.integers(1, 300)))
    who = draw(beneficiary(env["member_id"]))
    cash = who == env["member_id"] and draw(st.booleans())
    payload: Json = {
        "pregnancy_id": f"MAT-{draw(st.integers(2021, 2099))}-{draw(st.integers(0, 999_999)):06d}",
        "beneficiary_id": who,
        "pregnancy_confirmed_on": confirmed.isoformat(),
        "expected_delivery_date": edd.isoformat(),
        "multiple_pregnancy": draw(st.booleans()),
        "cash_benefit_requested": cash,
    }
    if cash or draw(st.booleans()):
        payload["leave_start"] = draw(dates(confirmed, edd)).isoformat()
    return payload


@st.composite
def provider_agreement_signed(draw: Draw, env: Json) -> Json:
    valid_from = draw(dates(date(2021, 1, 1), date(2030, 12, 31)))
    payload: Json = {
        "agreement_number": env["member_id"],
        "name": draw(labels()),
        "provider_type": draw(enum_values(ProviderType)),
        "sector": draw(enum_values(ProviderSector)),
        "region": draw(enum_values(Region)),
        "departement": draw(labels()),
        "packages": draw(st.lists(enum_values(Package), min_size=1, max_size=2, unique=True)),
        "signed_on": draw(dates(date(2021, 1, 1), _now().date())).isoformat(),
        "valid_from": valid_from.isoformat(),
    }
    if draw(st.booleans()):
        payload["valid_until"] = (
            valid_from + timedelta(days=draw(st.integers(1, 2000)))
        ).isoformat()
    if draw(st.booleans()):
        payload["ninea"] = draw(nineas())
    if draw(st.booleans()):
        payload["phone"] = draw(phones())
    return payload


PAYLOADS: dict[str, Callable[[Json], st.SearchStrategy[Json]]] = {
    "member.enrolled": member_enrolled,
    "member.updated": member_updated,
    "member.dependent_added": dependent_added,
    "member.dependent_removed": dependent_removed,
    "member.status_changed": member_status_changed,
    "contribution.paid": contribution_paid,
    "contribution.reversed": contribution_reversed,
    "claim.submitted": claim_submitted,
    "claim.adjudicated": claim_adjudicated,
    "work_accident.declared": work_accident_declared,
    "maternity.declared": maternity_declared,
    "provider.agreement_signed": provider_agreement_signed,
}
assert set(PAYLOADS) == set(EVENT_TYPES)


@st.composite
def event_dicts(draw: Draw, event_type: str | None = None) -> Json:
    """A valid event as a producer would send it, JSON-shaped."""
    kind = event_type or draw(st.sampled_from(EVENT_TYPES))
    region = draw(enum_values(Region))
    if kind == "provider.agreement_signed":
        key = draw(agreement_numbers())
    else:
        mutual = draw(st.sampled_from(["MSNAS", "MSCOM"]))
        key = f"{mutual}-{region_suffix(region)}-{draw(st.integers(0, 999_999_999)):06d}"
    occurred = draw(
        st.datetimes(
            min_value=EARLIEST.replace(tzinfo=None),
            max_value=(_now() - timedelta(days=2)).replace(tzinfo=None),
            timezones=st.just(UTC),
        )
    )
    recorded = occurred + draw(st.timedeltas(timedelta(0), timedelta(days=2)))
    event_id = str(draw(st.uuids()))
    env: Json = {
        "event_id": event_id,
        "event_type": kind,
        "schema_version": 1,
        "occurred_at": iso(occurred, draw(st.integers(-1, 1))),
        "recorded_at": iso(recorded, 0),
        "source": {
            "mutual": "MSNAS",
            "region": region,
            "agent_id": f"AG-{region_suffix(region)}-{draw(st.integers(1, 999)):03d}",
        },
        "member_id": key,
        "correlation_id": draw(st.sampled_from([event_id, str(draw(st.uuids()))])),
    }
    env["payload"] = draw(PAYLOADS[kind]({**env, "_occurred": occurred}))
    return env


def events(event_type: str | None = None) -> st.SearchStrategy[CanonicalEvent]:
    """Valid events of one type (or of any type), already parsed."""
    return event_dicts(event_type).map(parse_event)
