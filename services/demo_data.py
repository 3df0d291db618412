"""A month of a regional mutual, as MSNAS agents would record it: the demo's input.

Members across the 14 regions (with dependents and the branches they opted into), one month of
contributions paid by Wave, Orange Money or Free Money, health and maternity-care claims,
maternity declarations and a work accident, as raw JSON events the way the mutual submits them.
Beside the events comes the mutual's own ledger export (``adapters.msnas.ledger``): what the
mutual believes each institution should hold, which is what reconciliation checks.

Everything is drawn from one ``random.Random(seed)`` and event ids are uuid5 of their content's
identity, so the same seed gives the same month, byte for byte.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from adapters.msnas.ledger import LedgerRow
from schemas.types import Region

Json = dict[str, Any]

_NS = uuid.UUID("5f0b7a52-0d55-4a43-9d0e-7f5d0c1e2b61")
_REGIONS = sorted(r.value for r in Region)
_DEPARTEMENTS = {
    "SN-DB": "Mbacké", "SN-DK": "Pikine", "SN-FK": "Fatick", "SN-KA": "Kaffrine",
    "SN-KD": "Kolda", "SN-KE": "Kédougou", "SN-KL": "Kaolack", "SN-LG": "Louga",
    "SN-MT": "Matam", "SN-SE": "Sédhiou", "SN-SL": "Saint-Louis", "SN-TC": "Tambacounda",
    "SN-TH": "Mbour", "SN-ZG": "Ziguinchor",
}  # fmt: skip
_TRADES = (
    "menuisier", "couturière", "mécanicien", "bijoutier", "cordonnier", "forgeron",
    "coiffeuse", "teinturière", "maçon", "potière", "tisserand", "électricien",
)  # fmt: skip
_GIVEN = {
    "female": ("Ndèye Fatou", "Awa", "Aminata", "Mariama", "Khady", "Coumba", "Fatou", "Astou"),
    "male": ("Abdoulaye", "Mamadou", "Ousmane", "Cheikh", "Modou", "Ibrahima", "Pape", "Moussa"),
}
_FAMILY = ("Diop", "Ndiaye", "Fall", "Sow", "Diallo", "Faye", "Sarr", "Ba", "Gueye", "Cissé")
_PREFIX = {"wave": "77", "orange_money": "78", "free_money": "76"}
"""Mobile prefixes per wallet operator, for realistic payer phones."""
_DIAGNOSES = {"maternity": ("Z34.9",), "health": ("J06.9", "A09", "B54", "R50.9")}
HEALTH_SHARE = (3_500, 4_000, 4_500)
FAMILY_SHARE = 1_000
WORK_ACCIDENT_SHARE = 500
OLD_AGE_SHARE = (2_000, 3_000)


@dataclass
class Month:
    """The events in submission order (each member's in the order they happened), and the
    ledger the mutual would export for the same month."""

    period: str
    events: list[Json] = field(default_factory=list)
    ledger: list[LedgerRow] = field(default_factory=list)
    members: list[str] = field(default_factory=list)

    def count(self, event_type: str) -> int:
        return sum(1 for e in self.events if e["event_type"] == event_type)


def previous_period(now: datetime) -> str:
    """The last closed month: contributions are for a period that is over, never a future one."""
    first = now.replace(day=1)
    last = first - timedelta(days=1)
    return f"{last.year:04d}-{last.month:02d}"


class _Draw:
    def __init__(self, seed: int, period: str) -> None:
        self.rng = random.Random(seed)
        self.period = period
        year, month = int(period[:4]), int(period[5:])
        self.start = datetime(year, month, 1, 8, 0, tzinfo=UTC)

    def moment(self, day_max: int = 27) -> tuple[str, str]:
        occurred = self.start + timedelta(
            days=self.rng.randrange(day_max), minutes=self.rng.randrange(600)
        )
        recorded = occurred + timedelta(minutes=self.rng.randrange(2, 90))
        return _iso(occurred), _iso(recorded)

    def phone(self, prefix: str | None = None) -> str:
        prefix = prefix or self.rng.choice(("77", "78", "76", "70"))
        return f"+221{prefix}{self.rng.randrange(10**7):07d}"

    def nin(self, sex: str, birth_year: int) -> str:
        first = 1 if sex == "male" else 2
        return (
            f"{first}{self.rng.randrange(10**4):04d}{birth_year:04d}{self.rng.randrange(10**4):04d}"
        )

    def identity(self, sex: str, birth_year: int, *, nin: bool = True) -> Json:
        out: Json = {
            "given_names": self.rng.choice(_GIVEN[sex]),
            "family_name": self.rng.choice(_FAMILY),
            "sex": sex,
            "birth_date": date(
                birth_year, self.rng.randrange(1, 13), self.rng.randrange(1, 29)
            ).isoformat(),
        }
        if nin:
            out["nin"] = self.nin(sex, birth_year)
        return out


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _event(
    kind: str, member_id: str, region: str, payload: Json, when: tuple[str, str], key: str
) -> Json:
    event_id = str(uuid.uuid5(_NS, f"{kind}:{key}"))
    return {
        "event_id": event_id,
        "event_type": kind,
        "schema_version": 1,
        "occurred_at": when[0],
        "recorded_at": when[1],
        "source": {
            "mutual": "MSNAS",
            "region": region,
            "agent_id": f"AG-{region[3:]}-{uuid.uuid5(_NS, key).int % 40 + 1:03d}",
        },
        "member_id": member_id,
        "correlation_id": event_id,
        "payload": payload,
    }


def generate_month(members: int, period: str, *, seed: int = 2026) -> Month:
    """``members`` members spread over the regions, each enrolled and paying once in
    ``period``; about 5% with a health claim, some maternity, one work accident."""
    d = _Draw(seed, period)
    month = Month(period)
    providers: dict[str, str] = {}
    for n, region in enumerate(_REGIONS, start=1):
        number = f"CONV-{region[3:]}-{n:05d}"
        providers[region] = number
        month.events.append(
            _event(
                "provider.agreement_signed", number, region,
                {
                    "agreement_number": number,
                    "name": f"Centre de santé de {_DEPARTEMENTS[region]}",
                    "provider_type": "health_centre",
                    "sector": "public",
                    "region": region,
                    "departement": _DEPARTEMENTS[region],
                    "phone": f"+221339{d.rng.randrange(10**6):06d}",
                    "packages": ["base", "complementary"],
                    "signed_on": f"{int(period[:4]) - 1}-12-15",
                    "valid_from": f"{period[:4]}-01-01",
                    "valid_until": f"{int(period[:4]) + 2}-12-31",
                },
                d.moment(), f"provider-{number}",
            )
        )  # fmt: skip
    accident_done = False
    for i in range(members):
        region = _REGIONS[i % len(_REGIONS)]
        member_id = f"MSNAS-{region[3:]}-{i // len(_REGIONS) + 1:06d}"
        month.members.append(member_id)
        same_person = None
        if i % DUPLICATE_EVERY == DUPLICATE_EVERY // 2:
            same_person = next(
                e["payload"]["identity"]
                for e in reversed(month.events)
                if e["event_type"] == "member.enrolled"
            )
        _member_month(d, month, member_id, region, providers[region], same_person)
        if not accident_done and "work_accident" in _branches_of(month, member_id):
            _work_accident(d, month, member_id, region)
            accident_done = True
    return month


def _branches_of(month: Month, member_id: str) -> list[str]:
    for row in reversed(month.ledger):
        if row.record == "member" and row.member_id == member_id:
            return row.branches.split("+")
    return []


DUPLICATE_EVERY = 70
"""One member in 70 is a person already enrolled, enrolled again by another agent under another
member id (the previous member, in the next region): the duplicates Jokko must flag."""


def _member_month(
    d: _Draw,
    month: Month,
    member_id: str,
    region: str,
    provider: str,
    same_person: Json | None = None,
) -> None:
    rng = d.rng
    sex = rng.choice(("female", "male"))
    birth_year = rng.randrange(1965, 2004)
    branches = ["health"] + [
        b
        for b, p in (("family", 0.5), ("work_accident", 0.3), ("old_age", 0.4))
        if rng.random() < p
    ]
    package = "complementary" if rng.random() < 0.3 else "base"
    dependents = []
    if rng.random() < 0.6:
        spouse_sex = "male" if sex == "female" else "female"
        dependents.append(
            {
                "dependent_id": f"{member_id}-D01",
                "relationship": "spouse",
                "identity": d.identity(spouse_sex, birth_year - rng.randrange(-5, 8)),
            }
        )
    for _ in range(rng.randrange(4)):
        dependents.append(
            {
                "dependent_id": f"{member_id}-D{len(dependents) + 1:02d}",
                "relationship": "child",
                "identity": d.identity(
                    rng.choice(("female", "male")), rng.randrange(2008, 2025), nin=False
                ),
            }
        )
    identity = d.identity(sex, birth_year)
    identity["phone"] = d.phone()
    if same_person is not None:  # the draws above are kept: the other members stay the same
        identity = {**same_person, "phone": identity["phone"]}
    enrolled = d.moment(day_max=5)
    month.events.append(
        _event(
            "member.enrolled", member_id, region,
            {
                "identity": identity,
                "region": region,
                "departement": _DEPARTEMENTS[region],
                "trade": rng.choice(_TRADES),
                "package": package,
                "opted_branches": branches,
                "dependents": dependents,
            },
            enrolled, f"enrol-{member_id}",
        )
    )  # fmt: skip
    month.ledger.append(
        LedgerRow(
            "member", member_id, month.events[-1]["event_id"], package=package,
            branches="+".join(branches), status="active", dependents=len(dependents),
        )
    )  # fmt: skip
    allocation = {"health": rng.choice(HEALTH_SHARE)}
    if "family" in branches:
        allocation["family"] = FAMILY_SHARE
    if "work_accident" in branches:
        allocation["work_accident"] = WORK_ACCIDENT_SHARE
    if "old_age" in branches:
        allocation["old_age"] = rng.choice(OLD_AGE_SHARE)
    channel = rng.choices(("wave", "orange_money", "free_money"), weights=(5, 3, 2))[0]
    paid = d.moment()
    if paid < enrolled:
        paid = enrolled
    amount = sum(allocation.values())
    month.events.append(
        _event(
            "contribution.paid", member_id, region,
            {
                "amount": amount,
                "period": month.period,
                "allocation": allocation,
                "channel": channel,
                "payment_reference": f"{channel[:2].upper()}{rng.getrandbits(40):010X}",
                "payer_phone": d.phone(_PREFIX[channel]),
            },
            (paid[0], max(paid[1], enrolled[1])), f"pay-{member_id}-{month.period}",
        )
    )  # fmt: skip
    month.ledger.append(
        LedgerRow(
            "contribution", member_id, month.events[-1]["event_id"], month.period,
            health=allocation["health"], family=allocation.get("family", 0),
            work_accident=allocation.get("work_accident", 0),
            old_age=allocation.get("old_age", 0), total=amount,
        )
    )  # fmt: skip
    if rng.random() < 0.05:
        _claim(d, month, member_id, region, provider, dependents, kind="health")
    if sex == "female" and rng.random() < 0.03:
        _maternity(d, month, member_id, region, provider, "family" in branches)


def _claim(
    d: _Draw,
    month: Month,
    member_id: str,
    region: str,
    provider: str,
    dependents: list[Json],
    *,
    kind: str,
) -> None:
    rng = d.rng
    beneficiary = member_id
    if dependents and rng.random() < 0.4:
        beneficiary = rng.choice(dependents)["dependent_id"]
    items: list[Json] = [
        {
            "code": "CONS-GEN",
            "description": "Consultation de médecine générale",
            "quantity": 1,
            "unit_price": 3_000,
            "amount": 3_000,
        }
    ]
    if kind == "maternity":
        items = [
            {
                "code": "CPN",
                "description": "Consultation prénatale",
                "quantity": 1,
                "unit_price": 2_500,
                "amount": 2_500,
            }
        ]
    elif rng.random() < 0.7:
        qty = rng.randrange(1, 4)
        items.append(
            {
                "code": "PARA-500",
                "description": "Paracétamol 500 mg, boîte de 16",
                "quantity": qty,
                "unit_price": 650,
                "amount": 650 * qty,
            }
        )
    total = sum(int(i["amount"]) for i in items)
    claim_id = f"CLM-{month.period[:4]}-{int(uuid.uuid5(_NS, member_id + kind).int % 10**6):06d}"
    when = d.moment()
    month.events.append(
        _event(
            "claim.submitted", member_id, region,
            {
                "claim_id": claim_id,
                "kind": kind,
                "beneficiary_id": beneficiary,
                "provider_agreement": provider,
                "service_date": when[0][:10],
                "diagnoses": [rng.choice(_DIAGNOSES[kind])],
                "items": items,
                "total": total,
            },
            when, f"claim-{claim_id}",
        )
    )  # fmt: skip
    month.ledger.append(
        LedgerRow(
            "claim", member_id, month.events[-1]["event_id"], when[0][:7], claim_id,
            status="active", total=total,
        )
    )  # fmt: skip


def _maternity(
    d: _Draw, month: Month, member_id: str, region: str, provider: str, cash: bool
) -> None:
    when = d.moment()
    confirmed = datetime.fromisoformat(when[0].replace("Z", "+00:00"))
    pregnancy_id = f"MAT-{month.period[:4]}-{uuid.uuid5(_NS, member_id).int % 10**6:06d}"
    payload: Json = {
        "pregnancy_id": pregnancy_id,
        "beneficiary_id": member_id,
        "pregnancy_confirmed_on": when[0][:10],
        "expected_delivery_date": (confirmed + timedelta(days=200)).date().isoformat(),
        "multiple_pregnancy": False,
        "prenatal_provider": provider,
        "cash_benefit_requested": cash,
    }
    if cash:
        payload["leave_start"] = (confirmed + timedelta(days=158)).date().isoformat()
    month.events.append(
        _event("maternity.declared", member_id, region, payload, when, f"mat-{pregnancy_id}")
    )
    _claim(d, month, member_id, region, provider, [], kind="maternity")


def _work_accident(d: _Draw, month: Month, member_id: str, region: str) -> None:
    when = d.moment()
    accident_id = f"AT-{month.period[:4]}-{uuid.uuid5(_NS, member_id).int % 10**6:06d}"
    month.events.append(
        _event(
            "work_accident.declared", member_id, region,
            {
                "accident_id": accident_id,
                "accident_at": when[0],
                "region": region,
                "departement": _DEPARTEMENTS[region],
                "place": "Atelier, quartier du marché",
                "activity": "Découpe de planches à la scie circulaire",
                "description": "La planche a ripé ; la main gauche a été blessée.",
                "injuries": "Plaie profonde de la main gauche",
                "on_commute": False,
                "fatal": False,
                "work_stoppage_days": 14,
                "first_care_provider": None,
                "witnesses": [],
            },
            when, f"at-{accident_id}",
        )
    )  # fmt: skip
