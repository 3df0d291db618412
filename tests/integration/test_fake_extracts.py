"""The fake institutions return their extracts: messages really delivered (signed HTTP to CMU
and CSS, declaration files dropped for IPRES), then each fake's ``extract()`` reconciled with
the mutual's ledger of the same events. What a fake refused is missing, and nothing else; what
it was sent twice is no duplicate; CMU's own decisions, flowing back in its answers, are in its
export as in the ledger."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

import httpx
import pytest

import adapters.cmu
import adapters.ipres
from adapters.base import AckStatus, OutboundMessage
from router.signing import sign
from schemas import CanonicalEvent, ClaimAdjudicated, ClaimOutcome, parse_event
from schemas.examples import load_examples
from tests.fakes.cmu import FakeCMU
from tests.fakes.css import FakeCSS
from tests.fakes.faults import Faults
from tests.fakes.ipres import FakeIPRES
from tests.fakes.server import serve
from tests.mutual import against, routed

pytestmark = pytest.mark.integration

SECRET = b"jokko-extract-secret"
_DECISIONS = uuid.UUID("3b1e7c52-9d40-4f6a-8e21-7c5d9a0b4f13")
CSS_REFUSED = "MSNAS-DB-000058"
"""A CSS affiliate (work accident) whose messages CSS refuses."""


class Client(httpx.Client):
    def deliver(self, path: str, m: OutboundMessage, ts: int) -> httpx.Response:
        headers = sign(SECRET, m.message_id, m.body, timestamp=ts)
        headers["content-type"] = m.content_type
        return self.post(path, content=m.body, headers=headers)


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[tuple[FakeCMU, Client, FakeCSS, Client, FakeIPRES]]:
    cmu = FakeCMU(SECRET, Faults(seed=3), adjudicate_claims=ClaimOutcome.PARTIALLY_APPROVED)
    css = FakeCSS(SECRET, Faults(seed=3, reject_members={CSS_REFUSED}))
    ipres = FakeIPRES(tmp_path / "inbox", tmp_path / "acks", Faults())
    with (
        serve(cmu.app) as cmu_url,
        serve(css.app) as css_url,
        Client(base_url=cmu_url, timeout=10) as to_cmu,
        Client(base_url=css_url, timeout=10) as to_css,
    ):
        yield cmu, to_cmu, css, to_css, ipres


def _drop(ipres: FakeIPRES, name: str, messages: Sequence[OutboundMessage]) -> None:
    raw = adapters.ipres.build_declaration_file(
        messages, file_id=name.upper(), created=date(2026, 7, 1)
    )
    tmp = ipres.inbox / f".{name}.part"
    tmp.write_bytes(raw)
    tmp.rename(ipres.inbox / f"{name}.dat")
    assert ipres.poll_once() == 1


def test_each_fake_s_extract_is_what_it_accepted(
    fakes: tuple[FakeCMU, Client, FakeCSS, Client, FakeIPRES],
) -> None:
    cmu, to_cmu, css, to_css, ipres = fakes
    # CMU decides every claim itself here: its decisions replace the examples' CMU ones
    events = [
        e
        for e in load_examples()
        if not (isinstance(e, ClaimAdjudicated) and e.payload.adjudicator == "CMU")
    ]
    ledger: list[CanonicalEvent] = []
    ts = int(time.time())
    for event in events:
        ledger.append(event)
        messages = routed([*ledger])  # the whole history, so member profiles are right
        for m in (m for m in messages["cmu"] if m.event_id == event.event_id):
            response = to_cmu.deliver("/fhir", m, ts)
            assert response.status_code == 200, response.text
            for ack in adapters.cmu.parse_ack(response.content):
                if ack.adjudication is not None:  # flows back as claim.adjudicated
                    ledger.append(_decision(event, m, ack.adjudication.model_dump(mode="json")))
        for m in (m for m in messages["css"] if m.event_id == event.event_id):
            assert to_css.deliver("/css/v1/documents", m, ts).status_code in (200, 422)
    everything = routed(events)
    _drop(ipres, "decl-0001", everything["ipres"])
    # everything again, a second later: the partners apply a re-sent message once
    for m in everything["cmu"]:
        assert to_cmu.deliver("/fhir", m, ts + 1).status_code == 200
    for m in everything["css"]:
        to_css.deliver("/css/v1/documents", m, ts + 1)
    _drop(ipres, "decl-0002", everything["ipres"])
    assert sum(r.resent for r in cmu.received) == len(everything["cmu"])

    decided = [
        e for e in ledger if isinstance(e, ClaimAdjudicated) and e.source.agent_id == "jokko-acks"
    ]
    assert len(decided) == 3
    extracts = {"cmu": cmu.extract(), "css": css.extract(), "ipres": ipres.extract()}
    found, totals = against(ledger, extracts)
    refused = {r.message_id for r in css.received if r.status is AckStatus.REJECTED}
    assert refused
    assert {r.member_id for r in css.received if r.message_id in refused} == {CSS_REFUSED}
    got = {(d.institution, d.record, d.kind, d.member_id, d.branch, d.ref) for d in found}
    # the IPRES gap of the examples (an MO opting in carries no identity), and CSS's refusals
    assert got == {
        ("ipres", "affiliation", "missing", "MSNAS-SL-000077", "", ""),
        ("css", "affiliation", "missing", CSS_REFUSED, "", ""),
    }
    assert totals.compared["cmu"][0] == totals.compared["cmu"][1] > 10


def _decision(
    claimed: CanonicalEvent, answered: OutboundMessage, payload: dict[str, object]
) -> CanonicalEvent:
    """CMU's decision as ``router/acks.py`` publishes it: a claim.adjudicated of the claim's
    member, its id derived from the message answered."""
    at = claimed.occurred_at.isoformat().replace("+00:00", "Z")
    event_id = str(uuid.uuid5(_DECISIONS, answered.message_id))
    return parse_event(
        {
            "event_id": event_id,
            "event_type": "claim.adjudicated",
            "schema_version": 1,
            "occurred_at": at,
            "recorded_at": at,
            "source": {
                "mutual": "MSNAS",
                "region": claimed.source.region.value,
                "agent_id": "jokko-acks",
            },
            "member_id": claimed.member_id,
            "correlation_id": str(claimed.event_id),
            "payload": payload,
        }
    )
