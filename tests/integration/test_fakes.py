"""The fake institutions over real HTTP and real files, fed with really translated messages:
their answers parse with the adapters, and every fault knob does what it says."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path
from types import ModuleType

import httpx
import pytest

import adapters.cmu
import adapters.css
import adapters.ipres
from adapters.base import AckStatus, MalformedAck, MemberProfile, OutboundMessage, profile_after
from router.routing import destinations
from router.signing import sign
from schemas import CanonicalEvent
from schemas.examples import load_examples
from schemas.payloads import ClaimOutcome
from tests.factories import contributions, enrolments
from tests.fakes.cmu import FakeCMU
from tests.fakes.css import FakeCSS
from tests.fakes.faults import Faults
from tests.fakes.ipres import FakeIPRES
from tests.fakes.server import serve

pytestmark = pytest.mark.integration

SECRET = b"jokko-test-secret-\x01\x02"


def translated(adapter: ModuleType, events: Sequence[CanonicalEvent]) -> list[OutboundMessage]:
    """What the router would hand this institution for ``events``, in order."""
    known: dict[str, MemberProfile] = {}
    out: list[OutboundMessage] = []
    for event in events:
        profile = profile_after(known.get(event.member_id), event)
        if profile is not None:
            known[event.member_id] = profile
        member = known.get(event.member_id)
        if adapter.INSTITUTION in destinations(event, member):
            out += adapter.translate(event, member)
    return out


def members_and_contributions(n: int) -> list[CanonicalEvent]:
    return [*enrolments(n), *contributions(n, 1, seed="fakes")]


class Jokko(httpx.Client):
    """Posts messages signed as Jokko signs them. A re-send of a message id always gets a later
    timestamp than the last one: the verifier refuses a (message id, timestamp) pair it has
    already accepted, so two attempts within one second must not share a timestamp."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url=base_url, timeout=10)
        self._last: dict[str, int] = {}

    def deliver(
        self,
        path: str,
        message: OutboundMessage,
        *,
        body: bytes | None = None,
        secret: bytes = SECRET,
        timestamp: int | None = None,
        timeout: float = 10,
    ) -> httpx.Response:
        """POST ``message`` signed; ``body`` replaces the bytes sent (not those signed)."""
        last = self._last.get(message.message_id)
        ts = timestamp
        if ts is None:
            ts = int(time.time()) if last is None else max(int(time.time()), last + 1)
        self._last[message.message_id] = max(ts, last or ts)
        headers = sign(secret, message.message_id, message.body, timestamp=ts)
        headers["content-type"] = message.content_type
        content = message.body if body is None else body
        return self.post(path, content=content, headers=headers, timeout=timeout)


@pytest.fixture
def cmu() -> Iterator[tuple[FakeCMU, Jokko]]:
    fake = FakeCMU(SECRET, Faults(seed=7))
    with serve(fake.app) as url, Jokko(url) as client:
        yield fake, client


@pytest.fixture
def css() -> Iterator[tuple[FakeCSS, Jokko]]:
    fake = FakeCSS(SECRET, Faults(seed=7))
    with serve(fake.app) as url, Jokko(url) as client:
        yield fake, client


# --- CMU -----------------------------------------------------------------------------------------


def test_cmu_accepts_every_example_with_a_transaction_response(
    cmu: tuple[FakeCMU, Jokko],
) -> None:
    fake, client = cmu
    messages = translated(adapters.cmu, load_examples())
    assert len(messages) >= 10
    for m in messages:
        response = client.deliver("/fhir", m)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/fhir+json"
        [ack] = adapters.cmu.parse_ack(response.content)
        assert (ack.message_id, ack.status) == (m.message_id, AckStatus.ACCEPTED)
        assert ack.institution_ref
    assert [r.message_id for r in fake.received] == [m.message_id for m in messages]
    assert all(r.status is AckStatus.ACCEPTED for r in fake.received)
    by_id = {r.message_id: r for r in fake.received}
    for m in messages:
        if m.member_id.startswith("MSNAS-"):
            assert by_id[m.message_id].member_id in (m.member_id, None)
    assert fake.requests.total == fake.requests.by_status[200] == len(messages)


def test_cmu_rejects_the_members_it_is_told_to(cmu: tuple[FakeCMU, Jokko]) -> None:
    fake, client = cmu
    messages = translated(adapters.cmu, members_and_contributions(3))
    fake.faults.reject_members = {"MSNAS-TH-000001"}
    for m in messages:
        response = client.deliver("/fhir", m)
        [ack] = adapters.cmu.parse_ack(response.content)
        assert ack.message_id == m.message_id
        if m.member_id == "MSNAS-TH-000001":
            assert response.status_code == 422
            assert ack.status is AckStatus.REJECTED
            assert (ack.reason_code, ack.reason_text) == ("R042", "Numéro d'identification inconnu")
        else:
            assert (response.status_code, ack.status) == (200, AckStatus.ACCEPTED)
    rejected = {r.member_id for r in fake.received if r.status is AckStatus.REJECTED}
    assert rejected == {"MSNAS-TH-000001"}
    # the member is fixed: the re-send (new timestamp) is judged afresh and accepted
    fake.faults.reject_members = set()
    again = client.deliver(
        "/fhir",
        messages[1],
    )
    assert adapters.cmu.parse_ack(again.content)[0].status is AckStatus.ACCEPTED


def test_cmu_decides_claims_in_its_answer_and_can_lose_the_first_one(
    cmu: tuple[FakeCMU, Jokko],
) -> None:
    fake, client = cmu
    history = translated(adapters.cmu, load_examples())
    claims = [m for m in history if b'"resourceType":"Claim"' in m.body]
    assert len(claims) == 3
    for m in history:  # the members, their coverage: what the claims reference
        if m not in claims and b"Claim?identifier=" not in m.body:  # nor decisions on them
            assert client.deliver("/fhir", m).status_code == 200
    fake.adjudicate_claims = ClaimOutcome.PARTIALLY_APPROVED
    fake.decisions_lost = 1
    fake.faults.duplicate_acks = True
    for m in claims:
        with pytest.raises(httpx.RemoteProtocolError):
            client.deliver("/fhir", m)  # decided, the answer lost
        answer = client.deliver("/fhir", m)
        assert answer.status_code == 200
        tx, decision, again = adapters.cmu.parse_ack(answer.content)
        assert tx.message_id == decision.message_id == again.message_id == m.message_id
        assert tx.adjudication is None
        assert decision == again, "the same decision twice in one answer"
        assert decision.adjudication is not None
        claimed = decision.adjudication.claimed_amount
        assert decision.adjudication.approved_amount == claimed // 2
        assert decision.adjudication.outcome is ClaimOutcome.PARTIALLY_APPROVED
        assert decision.adjudication.reason_codes == ("NOT_COVERED",)
        assert client.deliver("/fhir", m).content == answer.content, "decided once"
    decided = [r for r in fake.received if r.message_id in {c.message_id for c in claims}]
    assert [r.resent for r in decided] == [False, True, True] * 3
    # anything but a claim is answered as before, and never lost
    [enrolment] = translated(adapters.cmu, enrolments(1))
    [ack] = adapters.cmu.parse_ack(client.deliver("/fhir", enrolment).content)
    assert (ack.status, ack.adjudication) == (AckStatus.ACCEPTED, None)


def test_cmu_refuses_what_is_not_an_r4b_transaction(cmu: tuple[FakeCMU, Jokko]) -> None:
    fake, client = cmu
    [m] = translated(adapters.cmu, enrolments(1))
    doc = json.loads(m.body)
    broken = [
        {**doc, "type": "batch"},
        {**doc, "entry": [{"request": {"method": "POST", "url": 42}, "resource": "x"}]},
        {**doc, "identifier": {"system": "urn:other", "value": m.message_id}},
    ]
    for bad in broken:
        body = json.dumps(bad).encode()
        signed = replace(m, body=body)
        response = client.deliver("/fhir", signed)
        assert response.status_code == 400, response.text
        [ack] = adapters.cmu.parse_ack(response.content)
        assert (ack.message_id, ack.status, ack.reason_code) == (
            m.message_id,
            AckStatus.REJECTED,
            "R001",
        )
    not_json = replace(m, body=b"<Bundle/>")
    assert client.deliver("/fhir", not_json).status_code == 400
    wrong_type = replace(m, content_type="application/json")
    response = client.deliver("/fhir", wrong_type)
    assert response.status_code == 415
    assert adapters.cmu.parse_ack(response.content)[0].reason_code == "R001"
    assert all(r.status is AckStatus.REJECTED for r in fake.received)


def test_without_schema_checks_the_fakes_still_check_structure_and_ids(
    cmu: tuple[FakeCMU, Jokko], css: tuple[FakeCSS, Jokko]
) -> None:
    """The benchmarks' setting: the R4B / XSD validators are skipped, not the cheap checks."""
    cmu_fake, cmu_client = cmu
    cmu_fake.schema_checks = False
    [m] = translated(adapters.cmu, enrolments(1))
    doc = json.loads(m.body)
    not_r4b = {**doc, "notAnR4bElement": 1}
    answer = cmu_client.deliver("/fhir", replace(m, body=json.dumps(not_r4b).encode()))
    assert answer.status_code == 200, "R4B validation skipped"
    cmu_fake.schema_checks = True
    m2 = translated(adapters.cmu, enrolments(2))[1]
    not_r4b_2 = {**json.loads(m2.body), "notAnR4bElement": 1}
    answer = cmu_client.deliver("/fhir", replace(m2, body=json.dumps(not_r4b_2).encode()))
    assert answer.status_code == 400, "what the full check refuses"
    cmu_fake.schema_checks = False
    m3 = translated(adapters.cmu, enrolments(3))[2]
    other_id = {**json.loads(m3.body), "identifier": {"system": "urn:other", "value": m.message_id}}
    answer = cmu_client.deliver("/fhir", replace(m3, body=json.dumps(other_id).encode()))
    assert answer.status_code == 400, "the message id is still checked"
    css_fake, css_client = css
    css_fake.schema_checks = False
    [c] = translated(adapters.css, enrolments(1))
    no_xsd = c.body.replace(b"<Region>SN-", b"<Region>XX-", 1)
    assert no_xsd != c.body
    assert css_client.deliver("/css/v1/documents", replace(c, body=no_xsd)).status_code == 200
    css_fake.schema_checks = True
    c2 = translated(adapters.css, enrolments(2))[1]
    bad = c2.body.replace(b"<Region>SN-", b"<Region>XX-", 1)
    assert css_client.deliver("/css/v1/documents", replace(c2, body=bad)).status_code == 400


def test_cmu_refuses_a_tampered_or_replayed_request_and_records_nothing(
    cmu: tuple[FakeCMU, Jokko],
) -> None:
    fake, client = cmu
    [m] = translated(adapters.cmu, enrolments(1))
    tampered = client.deliver("/fhir", m, body=m.body.replace(b"Diop", b"Diof"))
    assert tampered.status_code == 401
    wrong_key = client.deliver("/fhir", m, secret=b"not the shared secret")
    assert wrong_key.status_code == 401
    stale = client.deliver("/fhir", m, timestamp=int(time.time()) - 3600)
    assert stale.status_code == 401
    assert fake.received == []
    # a 401 is about the channel, not a message: it is no ack of anything
    with pytest.raises(MalformedAck):
        adapters.cmu.parse_ack(tampered.content)
    assert json.loads(tampered.content)["issue"][0]["code"] == "security"

    ts = int(time.time())
    assert client.deliver("/fhir", m, timestamp=ts).status_code == 200
    assert client.deliver("/fhir", m, timestamp=ts).status_code == 401  # captured and replayed
    assert len(fake.received) == 1
    # Jokko's own retry: same message id, new timestamp, answered as the first time
    first = fake.received[0]
    retry = client.deliver("/fhir", m, timestamp=ts - 1)
    assert retry.status_code == 200
    assert adapters.cmu.parse_ack(retry.content)[0].institution_ref == first.institution_ref
    assert [r.resent for r in fake.received] == [False, True]
    assert fake.requests.by_status == {401: 4, 200: 2}


# --- CSS -----------------------------------------------------------------------------------------


def test_css_accepts_every_example_with_an_acknowledgement(
    css: tuple[FakeCSS, Jokko],
) -> None:
    fake, client = css
    messages = translated(adapters.css, load_examples())
    assert {m.kind for m in messages} >= {"css.affiliation", "css.contribution_declaration"}
    for m in messages:
        response = client.deliver("/css/v1/documents", m)
        assert response.status_code == 200, response.text
        [ack] = adapters.css.parse_ack(response.content)
        assert (ack.message_id, ack.status) == (m.message_id, AckStatus.ACCEPTED)
        assert ack.institution_ref is not None
        assert ack.institution_ref.startswith("CSS-")
    assert [(r.message_id, r.member_id) for r in fake.received] == [
        (m.message_id, m.member_id) for m in messages
    ]


def test_css_rejects_members_with_the_reason_code_of_its_table(
    css: tuple[FakeCSS, Jokko],
) -> None:
    fake, client = css
    messages = translated(adapters.css, members_and_contributions(2))
    fake.faults.reject_members = {"MSNAS-TH-000000"}
    fake.faults.reject_code = "R010"
    for m in messages:
        response = client.deliver("/css/v1/documents", m)
        [ack] = adapters.css.parse_ack(response.content)
        if m.member_id == "MSNAS-TH-000000":
            assert response.status_code == 422
            assert (ack.status, ack.reason_code) == (AckStatus.REJECTED, "R010")
            assert ack.reason_text
        else:
            assert ack.status is AckStatus.ACCEPTED


def test_css_rejects_a_document_that_fails_the_xsd_with_r001(
    css: tuple[FakeCSS, Jokko],
) -> None:
    fake, client = css
    [m] = [m for m in translated(adapters.css, enrolments(1)) if m.kind == "css.affiliation"]
    cases = {
        "xsd": m.body.replace(b"<Sex>", b"<Gender>").replace(b"</Sex>", b"</Gender>"),
        "not xml": b"<Affiliation",
        "doctype": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>',
        "namespace": m.body.replace(b"urn:sn:css:jokko:v1", b"urn:sn:css:jokko:v2"),
        "message id": m.body.replace(m.message_id.encode(), b"0" * 8 + m.message_id[8:].encode()),
    }
    for body in cases.values():
        signed = replace(m, body=body)
        response = client.deliver("/css/v1/documents", signed)
        assert response.status_code == 400, response.text
        [ack] = adapters.css.parse_ack(response.content)
        assert (ack.message_id, ack.status, ack.reason_code) == (
            m.message_id,
            AckStatus.REJECTED,
            "R001",
        )
    assert [r.status for r in fake.received] == [AckStatus.REJECTED] * len(cases)


def test_css_refuses_tampering_and_replay(css: tuple[FakeCSS, Jokko]) -> None:
    fake, client = css
    [m, *_] = translated(adapters.css, enrolments(1))
    assert client.deliver("/css/v1/documents", m, body=m.body + b"\n").status_code == 401
    ts = int(time.time())
    assert client.deliver("/css/v1/documents", m, timestamp=ts).status_code == 200
    assert client.deliver("/css/v1/documents", m, timestamp=ts).status_code == 401
    assert [r.message_id for r in fake.received] == [m.message_id]


# --- fault knobs (on the CMU fake; the machinery is shared) -------------------------------------


def _statuses(fake: FakeCMU, client: Jokko, m: OutboundMessage, n: int) -> list[int]:
    return [client.deliver("/fhir", m).status_code for _ in range(n)]


def test_error_rate_answers_about_that_share_503_reproducibly() -> None:
    [m] = translated(adapters.cmu, enrolments(1))
    runs = []
    for _ in range(2):
        fake = FakeCMU(SECRET, Faults(error_rate=0.3, seed=2026))
        with serve(fake.app) as url, Jokko(url) as client:
            runs.append(_statuses(fake, client, m, 200))
        assert fake.requests.by_status[503] == runs[-1].count(503)
    assert runs[0] == runs[1], "same seed, same faults"
    share = runs[0].count(503) / 200
    assert 0.22 <= share <= 0.38
    assert set(runs[0]) == {200, 503}


def test_latency_delays_every_answer_and_can_be_changed_while_running(
    cmu: tuple[FakeCMU, Jokko],
) -> None:
    fake, client = cmu
    [m] = translated(adapters.cmu, enrolments(1))
    fake.faults.latency_s = 0.4
    start = time.monotonic()
    assert client.deliver("/fhir", m).status_code == 200
    assert time.monotonic() - start >= 0.4
    fake.faults.latency_s = 0
    start = time.monotonic()
    assert client.deliver("/fhir", m).status_code == 200
    assert time.monotonic() - start < 0.3
    # a sender that gives up first: timed out, and the fake did not process the message
    fake.faults.latency_s = 30
    with pytest.raises(httpx.ReadTimeout):
        client.deliver("/fhir", replace(m, message_id=str(uuid.uuid4())), timeout=0.2)
    deadline = time.monotonic() + 5
    while fake.requests.by_status[499] == 0:
        assert time.monotonic() < deadline, "the hang-up was not noticed"
        time.sleep(0.02)
    assert len(fake.received) == 2


def test_a_dropped_connection_gets_no_answer_at_all(cmu: tuple[FakeCMU, Jokko]) -> None:
    fake, client = cmu
    first, second = translated(adapters.cmu, enrolments(2))
    fake.faults.drop_rate = 1.0
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        client.deliver("/fhir", first)
    # by default the message was processed, only its answer was lost: the ambiguous case
    assert [(r.message_id, r.status) for r in fake.received] == [
        (first.message_id, AckStatus.ACCEPTED)
    ]
    fake.faults.drop_before_processing = True
    with pytest.raises(httpx.RemoteProtocolError):
        client.deliver("/fhir", second)
    assert len(fake.received) == 1
    assert fake.requests.dropped == 2
    assert fake.requests.by_status == {}
    # the sender re-sends: the server is fine and answers as for the first delivery
    fake.faults.drop_rate = 0
    retry = client.deliver("/fhir", first)
    assert retry.status_code == 200
    assert fake.received[-1].resent


def test_down_answers_503_at_once_until_it_is_back(cmu: tuple[FakeCMU, Jokko]) -> None:
    fake, client = cmu
    [m] = translated(adapters.cmu, enrolments(1))
    fake.faults.down = True
    fake.faults.latency_s = 5  # down is immediate: a stopped service, not a slow one
    start = time.monotonic()
    response = client.deliver("/fhir", m)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert time.monotonic() - start < 2
    assert fake.received == []
    fake.faults.down = False
    fake.faults.latency_s = 0
    assert client.deliver("/fhir", m).status_code == 200


def test_a_stopped_server_refuses_connections() -> None:
    fake = FakeCMU(SECRET)
    with serve(fake.app) as url:
        pass
    with pytest.raises(httpx.ConnectError):
        httpx.post(url + "/fhir", content=b"{}")


# --- IPRES ---------------------------------------------------------------------------------------

CREATED = date(2026, 7, 1)


def ipres_messages(n: int = 3) -> list[OutboundMessage]:
    return translated(adapters.ipres, members_and_contributions(n))


def drop(inbox: Path, name: str, content: bytes) -> None:
    """Deliver a file the way Jokko does: a temporary name, then a rename."""
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(content)
    tmp.rename(inbox / name)


def declaration(messages: Sequence[OutboundMessage], file_id: str = "MSNAS-20260701-0001") -> bytes:
    return adapters.ipres.build_declaration_file(messages, file_id=file_id, created=CREATED)


@pytest.fixture
def ipres(tmp_path: Path) -> FakeIPRES:
    return FakeIPRES(tmp_path / "inbox", tmp_path / "acks", Faults(), secret=SECRET)


def test_ipres_file_in_ack_file_out(ipres: FakeIPRES) -> None:
    messages = ipres_messages()
    kinds = {m.kind for m in messages}
    assert kinds == {"ipres.affiliation", "ipres.contribution"}
    ipres.faults.reject_members = {"MSNAS-TH-000002"}
    (ipres.inbox / ".half-written.dat.part").write_bytes(b"H01")  # not a .dat yet: ignored
    drop(ipres.inbox, "decl-0001.dat", declaration(messages))
    assert ipres.poll_once() == 1
    assert sorted(p.name for p in ipres.acks.iterdir()) == ["decl-0001.ack"]
    assert not (ipres.inbox / "decl-0001.dat").exists()
    assert (ipres.processed / "decl-0001.dat").exists()
    acks = adapters.ipres.parse_ack((ipres.acks / "decl-0001.ack").read_bytes())
    assert [a.message_id for a in acks] == [m.message_id for m in messages]
    for m, ack in zip(messages, acks, strict=True):
        if m.member_id == "MSNAS-TH-000002":
            assert (ack.status, ack.reason_code) == (AckStatus.REJECTED, "R042")
        else:
            assert ack.status is AckStatus.ACCEPTED
            assert ack.institution_ref is not None
    assert [r.message_id for r in ipres.received] == [m.message_id for m in messages]
    assert ipres.received[0].body == messages[0].body
    assert [(f.name, f.file_id, f.records, f.refused) for f in ipres.files] == [
        ("decl-0001.dat", "MSNAS-20260701-0001", len(messages), None)
    ]
    assert ipres.poll_once() == 0


def test_ipres_refuses_a_file_whose_totals_are_wrong_line_by_line(ipres: FakeIPRES) -> None:
    messages = ipres_messages(2)
    raw = declaration(messages).decode()
    lines = raw.split("\r\n")
    trailer = lines[-2]
    lines[-2] = trailer[:-1] + str((int(trailer[-1]) + 1) % 10)  # control total off by a unit
    drop(ipres.inbox, "bad-total.dat", "\r\n".join(lines).encode())
    drop(ipres.inbox, "garbage.dat", b"\xff\xfe not a declaration")
    assert ipres.poll_once() == 2
    acks = adapters.ipres.parse_ack((ipres.acks / "bad-total.ack").read_bytes())
    assert [a.message_id for a in acks] == [m.message_id for m in messages]
    assert {(a.status, a.reason_code) for a in acks} == {(AckStatus.REJECTED, "R001")}
    assert acks[0].reason_text == "Fichier refusé : total de contrôle erroné"
    assert "not UTF-8" in (ipres.acks / "garbage.err").read_text()
    refused = {f.name: f.refused for f in ipres.files}
    assert refused["bad-total.dat"] == "Fichier refusé : total de contrôle erroné"
    assert refused["garbage.dat"] is not None
    assert all(r.status is AckStatus.REJECTED for r in ipres.received)


def test_ipres_duplicate_and_late_acks(ipres: FakeIPRES) -> None:
    messages = ipres_messages(1)
    ipres.faults.duplicate_acks = True
    ipres.faults.late_ack_s = 0.3
    drop(ipres.inbox, "d1.dat", declaration(messages))
    assert ipres.poll_once() == 1
    assert list(ipres.acks.iterdir()) == []
    assert ipres.pending_acks() == 2
    time.sleep(0.35)
    assert ipres.poll_once() == 0
    names = sorted(p.name for p in ipres.acks.iterdir())
    assert names == ["d1.ack", "d1.dup.ack"]
    assert (ipres.acks / "d1.ack").read_bytes() == (ipres.acks / "d1.dup.ack").read_bytes()
    # the same records again in a new file: applied once, same IPRES references
    drop(ipres.inbox, "d2.dat", declaration(messages, file_id="MSNAS-20260701-0002"))
    ipres.faults.late_ack_s = 0
    ipres.poll_once()
    first = adapters.ipres.parse_ack((ipres.acks / "d1.ack").read_bytes())
    second = adapters.ipres.parse_ack((ipres.acks / "d2.ack").read_bytes())
    assert [a.institution_ref for a in first] == [a.institution_ref for a in second]
    assert [r.resent for r in ipres.received] == [False] * len(messages) + [True] * len(messages)


def test_ipres_down_leaves_the_inbox_and_the_thread_picks_files_up(ipres: FakeIPRES) -> None:
    ipres.faults.down = True
    drop(ipres.inbox, "d1.dat", declaration(ipres_messages(1)))
    assert ipres.poll_once() == 0
    assert (ipres.inbox / "d1.dat").exists()
    ipres.faults.down = False
    with ipres:
        deadline = time.monotonic() + 10
        while not (ipres.acks / "d1.ack").exists():
            assert time.monotonic() < deadline, "no ack written by the poller"
            time.sleep(0.02)
    assert all(
        a.status is AckStatus.ACCEPTED
        for a in adapters.ipres.parse_ack((ipres.acks / "d1.ack").read_bytes())
    )


def test_ipres_over_http_answers_with_the_ack_file(ipres: FakeIPRES) -> None:
    messages = ipres_messages(2)
    raw = declaration(messages)
    as_message = replace(messages[0], message_id="MSNAS-20260701-0001", body=raw)
    with serve(ipres.app) as url, Jokko(url) as client:
        response = client.deliver("/ipres/v1/declarations", as_message)
        assert response.status_code == 200, response.text
        acks = adapters.ipres.parse_ack(response.content)
        assert [a.message_id for a in acks] == [m.message_id for m in messages]
        bad = raw.replace(b"T000000004", b"T000000005")
        refused = client.deliver("/ipres/v1/declarations", as_message, body=bad)
        assert refused.status_code == 401  # the body is not what was signed
        signed_bad = replace(as_message, body=bad)
        refused = client.deliver("/ipres/v1/declarations", signed_bad)
        assert refused.status_code == 422
        assert {a.reason_code for a in adapters.ipres.parse_ack(refused.content)} == {"R001"}
