"""Adapter throughput on one core: messages per second per institution and event type.

Run: ``.venv/bin/python -m bench.adapters``. CMU claims are compared with the floor of just
constructing and serialising the same Bundle with fhir.resources, measured in the same run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from importlib import import_module
from typing import Any

from adapters.base import Institution, MemberProfile
from bench.record import figure, write_record
from router.routing import destinations
from schemas import CanonicalEvent, MemberEnrolled, MemberUpdated
from schemas.examples import load_examples

TARGETS = {Institution.CMU: 2_000, Institution.CSS: 10_000, Institution.IPRES: 10_000}
SECONDS_PER_FIGURE = 0.6


def rate(work: Callable[[], Any], seconds: float = SECONDS_PER_FIGURE) -> float:
    """Calls per second of ``work``, after a short warm-up."""
    for _ in range(20):
        work()
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            work()
        n += 50
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def routed_examples(inst: Institution) -> dict[str, tuple[CanonicalEvent, MemberProfile | None]]:
    """The first example of each event type routed to ``inst``, with its member's profile."""
    known: dict[str, MemberProfile] = {}
    out: dict[str, tuple[CanonicalEvent, MemberProfile | None]] = {}
    for e in load_examples():
        if isinstance(e, MemberEnrolled):
            known[e.member_id] = MemberProfile.from_enrolment(e)
        elif isinstance(e, MemberUpdated) and e.member_id in known:
            known[e.member_id] = known[e.member_id].updated(e)
        member = known.get(e.member_id)
        if inst in destinations(e, member) and e.event_type not in out:
            out[e.event_type] = (e, member)
    return out


def cmu_floor(event: CanonicalEvent, member: MemberProfile | None) -> float:
    from fhir.resources.R4B.bundle import Bundle

    cmu = import_module("adapters.cmu")
    data = json.loads(cmu.translate(event, member)[0].body)
    return rate(lambda: Bundle.model_validate(data).model_dump_json())


def main() -> None:
    figures = []
    for inst in Institution:
        adapter = import_module(f"adapters.{inst.value}")
        for event_type, (event, member) in sorted(routed_examples(inst).items()):
            value = rate(partial(adapter.translate, event, member))
            peer = peer_value = None
            if inst is Institution.CMU and event_type == "claim.submitted":
                peer, peer_value = "fhir.resources Bundle build+serialise", cmu_floor(event, member)
            target = TARGETS[inst]
            figures.append(
                figure(
                    f"{inst.value}.translate.{event_type}",
                    value,
                    "messages/s",
                    peer=peer,
                    peer_value=peer_value,
                    target=f">= {target:,}",
                    met=value >= target,
                )
            )
            print(f"{inst.value:6} {event_type:28} {value:>10,.0f}/s")
    notes = (
        "One process, one core, `time.perf_counter` over >= 0.6 s per figure after warm-up. "
        "CMU is bound by fhir.resources: every Bundle is built as pydantic models and "
        "validated, so its ratio to the bare build+serialise floor says how much Jokko adds "
        "on top. CSS is bound by lxml tree building and serialisation, IPRES by string "
        "formatting. Moving them: build CMU JSON with plain dicts and validate only in "
        "tests (the contract suite already validates every message)."
    )
    path = write_record("adapters", figures, notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
