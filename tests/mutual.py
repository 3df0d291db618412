"""The mutual's side of a reconciliation test: canonical events built in order, what the router
hands each institution for them, the MSNAS ledger export of the same events, and the real
reconciliation of that ledger against extracts (e.g. a fake institution's ``extract()``)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import adapters.cmu
import adapters.css
import adapters.ipres
from adapters.base import MemberProfile, OutboundMessage, profile_after
from adapters.msnas.ledger import LedgerRow, header_line, ledger_line
from router.routing import MemberUnknown, destinations
from schemas import (
    CanonicalEvent,
    ClaimAdjudicated,
    ClaimSubmitted,
    ContributionPaid,
    ContributionReversed,
    DependentAdded,
    DependentRemoved,
    MemberEnrolled,
    MemberStatusChanged,
    MemberUpdated,
    parse_event,
)
from services.reconcile import (
    INSTITUTIONS,
    Discrepancy,
    ListCollector,
    Totals,
    extract_source,
    ledger_source,
    reconcile,
)
from tests.fakes import holdings

Json = dict[str, Any]
ADAPTERS: dict[str, ModuleType] = {
    "cmu": adapters.cmu,
    "css": adapters.css,
    "ipres": adapters.ipres,
}
EXTRACT: dict[str, Callable[[Iterable[bytes]], str]] = {
    "cmu": holdings.cmu_extract,
    "css": holdings.css_extract,
    "ipres": holdings.ipres_extract,
}
_NS = uuid.UUID("6a0c3f4e-1d2b-4e8f-9a7c-5b3d2e1f0a98")
_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
_IDENTITY = {
    "given_names": "Ndèye Fatou",
    "family_name": "Diop",
    "sex": "female",
    "birth_date": "1988-06-12",
    "nin": "2751198801234",
    "phone": "+221771234567",
}


class History:
    """Canonical events of a few members, built in the order the mutual records them."""

    def __init__(self) -> None:
        self.events: list[CanonicalEvent] = []

    def add(self, kind: str, member_id: str, payload: Json) -> CanonicalEvent:
        n = len(self.events)
        event_id = str(uuid.uuid5(_NS, f"{member_id}:{n}"))
        at = (_START + timedelta(minutes=n)).isoformat().replace("+00:00", "Z")
        region = member_id.split("-")[1]
        event = parse_event(
            {
                "event_id": event_id,
                "event_type": kind,
                "schema_version": 1,
                "occurred_at": at,
                "recorded_at": at,
                "source": {"mutual": "MSNAS", "region": f"SN-{region}", "agent_id": "AG-DK-017"},
                "member_id": member_id,
                "correlation_id": event_id,
                "payload": payload,
            }
        )
        self.events.append(event)
        return event


def dependent(member_id: str, k: int) -> Json:
    return {
        "dependent_id": f"{member_id}-D{k:02d}",
        "relationship": "child",
        "identity": {
            "given_names": "Awa",
            "family_name": "Ndiaye",
            "sex": "female",
            "birth_date": "2015-02-01",
        },
    }


def enrolment(h: History, member_id: str, branches: Sequence[str], package: str, deps: int) -> None:
    h.add(
        "member.enrolled",
        member_id,
        {
            "identity": _IDENTITY,
            "region": f"SN-{member_id.split('-')[1]}",
            "departement": "Pikine",
            "trade": "couturière",
            "package": package,
            "opted_branches": list(branches),
            "dependents": [dependent(member_id, k) for k in range(1, deps + 1)],
        },
    )


def payment(h: History, member_id: str, period: str, allocation: dict[str, int]) -> Json:
    payload = {
        "amount": sum(allocation.values()),
        "period": period,
        "allocation": allocation,
        "channel": "wave",
        "payment_reference": f"T_{len(h.events):08d}",
        "payer_phone": "+221771234567",
    }
    h.add("contribution.paid", member_id, payload)
    return payload


def claim(h: History, member_id: str, beneficiary: str, month: str, total: int) -> str:
    claim_id = f"CLM-2025-{len(h.events):06d}"
    h.add(
        "claim.submitted",
        member_id,
        {
            "claim_id": claim_id,
            "kind": "health",
            "beneficiary_id": beneficiary,
            "provider_agreement": "CONV-DK-00042",
            "service_date": f"{month}-10",
            "diagnoses": ["A09"],
            "items": [
                {
                    "code": "CONS-GEN",
                    "description": "Consultation de médecine générale",
                    "quantity": 1,
                    "unit_price": total,
                    "amount": total,
                }
            ],
            "total": total,
        },
    )
    return claim_id


def routed(events: Iterable[CanonicalEvent]) -> dict[str, list[OutboundMessage]]:
    """What the router hands each institution (``router/processing.py``): the profile after
    the event, its destinations, the adapters' messages; a member event before the member's
    enrolment goes to the dead letters and reaches no one."""
    known: dict[str, MemberProfile] = {}
    out: dict[str, list[OutboundMessage]] = {i: [] for i in INSTITUTIONS}
    for event in events:
        profile = profile_after(known.get(event.member_id), event)
        try:
            targets = destinations(event, profile)
        except MemberUnknown:
            continue
        for inst in targets:
            out[inst.value] += ADAPTERS[inst.value].translate(event, profile)
        if profile is not None:
            known[event.member_id] = profile
    return out


def ledger_text(events: Iterable[CanonicalEvent]) -> str:
    """The mutual's ledger export of these events (adapters/msnas/FORMAT.md): a member row with
    its current package, branches, status and dependents; one contribution row per member and
    month with the net share per branch; a claim row with its current status."""
    members: dict[str, list[Any]] = {}  # [event_id, package, branches, status, dependents]
    paid: dict[str, tuple[str, str, dict[str, int]]] = {}
    reversed_: set[str] = set()
    net: dict[tuple[str, str], list[Any]] = {}  # [event_id, {branch: amount}]
    claims: dict[str, list[Any]] = {}  # [member, event_id, month, total, status]

    def add(member: str, period: str, event_id: str, allocation: dict[str, int], sign: int) -> None:
        row = net.setdefault((member, period), [event_id, {}])
        for branch, amount in allocation.items():
            row[1][branch] = row[1].get(branch, 0) + sign * amount

    for e in events:
        m, ev = e.member_id, str(e.event_id)
        if isinstance(e, MemberEnrolled):
            enrolled = e.payload
            deps = {d.dependent_id for d in enrolled.dependents}
            branches = [b.value for b in enrolled.opted_branches]
            members[m] = [ev, enrolled.package.value, branches, "active", deps]
        elif isinstance(e, ContributionPaid):
            allocation = {b.value: v for b, v in e.payload.allocation.items()}
            paid[ev] = (m, e.payload.period, allocation)
            add(m, e.payload.period, ev, allocation, 1)
        elif isinstance(e, ContributionReversed):
            original = str(e.payload.original_event_id)
            if original in paid and original not in reversed_:
                reversed_.add(original)
                allocation = {b.value: v for b, v in e.payload.allocation.items()}
                add(m, e.payload.period, ev, allocation, -1)
        elif isinstance(e, ClaimSubmitted):
            sub = e.payload
            claims[sub.claim_id] = [m, ev, sub.service_date.isoformat()[:7], sub.total, "active"]
        elif isinstance(e, ClaimAdjudicated) and e.payload.claim_id in claims:
            claims[e.payload.claim_id][4] = e.payload.outcome.value
        elif m in members:
            row = members[m]
            if isinstance(e, MemberUpdated):
                c = e.payload.changes
                row[1] = c.package.value if c.package else row[1]
                row[2] = [b.value for b in c.opted_branches] if c.opted_branches else row[2]
            elif isinstance(e, MemberStatusChanged):
                row[3] = e.payload.status.value
            elif isinstance(e, DependentAdded):
                row[4].add(e.payload.dependent.dependent_id)
            elif isinstance(e, DependentRemoved):
                row[4].discard(e.payload.dependent_id)
    rows: list[LedgerRow] = []
    for m, (ev, package, branches, status, deps) in members.items():
        rows.append(
            LedgerRow("member", m, ev, "", "", package, "+".join(branches), status, len(deps))
        )
    for (m, period), (ev, shares) in net.items():
        if any(shares.values()):
            rows.append(
                LedgerRow(
                    "contribution", m, ev, period, health=shares.get("health", 0),
                    family=shares.get("family", 0), work_accident=shares.get("work_accident", 0),
                    old_age=shares.get("old_age", 0), total=sum(shares.values()),
                )
            )  # fmt: skip
    for claim_id, (m, ev, month, total, status) in claims.items():
        rows.append(LedgerRow("claim", m, ev, month, claim_id, status=status, total=total))
    rows.sort(key=lambda r: r.member_id)
    return header_line() + "".join(ledger_line(r) for r in rows)


def _lines(text: str) -> Callable[[], Iterable[str]]:
    return lambda: io.StringIO(text, newline="")


def against(
    events: Sequence[CanonicalEvent], extracts: Mapping[str, str]
) -> tuple[list[Discrepancy], Totals]:
    """The real reconciliation of the events' ledger against these extract texts (each parsed
    by the adapter's ``parse_extract``), for the institutions given."""
    col, totals = ListCollector(), Totals()
    reconcile(
        ledger_source(_lines(ledger_text(events)), list(extracts)),
        {i: extract_source(i, _lines(text)) for i, text in extracts.items()},
        col,
        totals,
    )
    return col.items, totals


def reconciled(
    events: Sequence[CanonicalEvent], bodies: Mapping[str, list[bytes]]
) -> tuple[list[Discrepancy], Totals]:
    """``against`` the extracts the institutions write from ``bodies``."""
    return against(events, {i: EXTRACT[i](bodies[i]) for i in INSTITUTIONS})


def bodies_of(messages: dict[str, list[OutboundMessage]]) -> dict[str, list[bytes]]:
    return {i: [m.body for m in ms] for i, ms in messages.items()}
