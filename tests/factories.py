"""Many valid canonical events, fast: variations of the committed examples."""

from __future__ import annotations

import uuid

from schemas import ContributionPaid, MemberEnrolled, parse_event
from schemas.examples import raw_examples

_NS = uuid.UUID("0b7d6d1e-51a4-4b9e-a7f2-3c1e2f0a9d55")


def contributions(members: int, per_member: int, *, seed: str = "") -> list[ContributionPaid]:
    """``per_member`` contributions for each of ``members`` members, interleaved by member,
    each with a share for CMU, CSS and IPRES; validated once through ``parse_event``."""
    template = next(e for e in raw_examples() if e["event_type"] == "contribution.paid")
    base = parse_event(template)
    assert isinstance(base, ContributionPaid)
    events = []
    for k in range(per_member):
        for m in range(members):
            member_id = f"MSNAS-TH-{m:06d}"
            events.append(
                base.model_copy(
                    update={
                        "event_id": uuid.uuid5(_NS, f"{seed}:{m}:{k}"),
                        "member_id": member_id,
                        "payload": base.payload.model_copy(
                            update={"payment_reference": f"T_{seed}{m:05d}{k:04d}"}
                        ),
                    }
                )
            )
    return events


def enrolments(members: int) -> list[MemberEnrolled]:
    template = next(e for e in raw_examples() if e["event_type"] == "member.enrolled")
    base = parse_event(template)
    assert isinstance(base, MemberEnrolled)
    return [
        base.model_copy(
            update={
                "event_id": uuid.uuid5(_NS, f"enrol:{m}"),
                "member_id": f"MSNAS-TH-{m:06d}",
                "payload": base.payload.model_copy(update={"dependents": ()}),
            }
        )
        for m in range(members)
    ]
