"""HttpChannel reading a FHIR server's answers to CMU messages, against a scripted server (no
network): 409 and 412 are transient (tried again, the reason kept), a 400 or 404
OperationOutcome is a rejection whose reason is the server's diagnostics, and a batch entry
answered 409 is not an answer to its message."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import httpx
import pytest

import adapters.cmu
from adapters.base import MalformedAck, OutboundAdapter
from adapters.cmu import systems as s
from router.channels import HttpChannel
from router.delivery import Parcel, Result
from router.signing import ID_HEADER
from tests.fakes.cmu import CREATE_CLASH, PATCH_REFUSED, hapi_outcome

pytestmark = pytest.mark.unit

FHIR = "application/fhir+json"
Json = dict[str, Any]


def parcel(message_id: str, member: str) -> Parcel:
    return Parcel(message_id, "e-" + message_id, member, 1, "fhir.transaction", FHIR, 2, b"{}")


def channel(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> HttpChannel:
    return HttpChannel(
        adapters.cmu.INSTITUTION,
        cast(OutboundAdapter, adapters.cmu),
        "https://cmu.example/fhir",
        b"secret",
        client=httpx.Client(transport=httpx.MockTransport(handler)),
        **kw,
    )


def fhir(status: int, doc: Json) -> httpx.Response:
    return httpx.Response(status, content=json.dumps(doc).encode(), headers={"content-type": FHIR})


def applied(message_id: str) -> Json:
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "identifier": {"system": s.MESSAGE_ID, "value": message_id},
        "entry": [{"response": {"status": "201 Created", "location": "Patient/1/_history/1"}}],
    }


@pytest.mark.parametrize("status", [409, 412])
def test_a_conflict_or_a_failed_precondition_is_tried_again_with_its_reason(status: int) -> None:
    ch = channel(
        lambda r: fhir(status, hapi_outcome(r.headers[ID_HEADER], "conflict", CREATE_CLASH))
    )
    [d] = ch.deliver([parcel("m-1", "MSNAS-DK-000001")])
    assert d.result == Result.FAILED
    assert d.reason_text == f"HTTP {status}: {CREATE_CLASH}"


def test_a_conflict_without_a_readable_body_is_tried_again_too() -> None:
    ch = channel(lambda r: httpx.Response(409, content=b"Conflict"))
    [d] = ch.deliver([parcel("m-1", "MSNAS-DK-000001")])
    assert (d.result, d.reason_text) == (Result.FAILED, "HTTP 409")


@pytest.mark.parametrize(
    ("status", "diagnostics"),
    [
        (400, PATCH_REFUSED),
        (404, 'HAPI-1091: Invalid match URL "Patient?identifier=x|y" - No resources match'),
    ],
)
def test_a_refusal_is_a_rejection_with_the_server_s_diagnostics(
    status: int, diagnostics: str
) -> None:
    ch = channel(
        lambda r: fhir(status, hapi_outcome(r.headers[ID_HEADER], "processing", diagnostics))
    )
    [d] = ch.deliver([parcel("m-1", "MSNAS-DK-000001")])
    assert d.result == Result.REJECTED
    assert (d.reason_code, d.reason_text) == ("processing", diagnostics)


def test_a_member_whose_message_clashed_sends_nothing_more_in_the_batch() -> None:
    sent: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        mid = request.headers[ID_HEADER]
        sent.append(mid)
        if mid == "m-1":
            return fhir(409, hapi_outcome(mid, "conflict", CREATE_CLASH))
        return fhir(200, applied(mid))

    ch = channel(server)
    member = "MSNAS-DK-000001"
    results = ch.deliver([parcel("m-1", member), parcel("m-2", member)])
    assert [d.result for d in results] == [Result.FAILED, Result.FAILED]
    assert sent == ["m-1"]  # order first: m-2 waits for m-1's retry


def test_a_batch_entry_answered_409_is_no_answer_and_its_message_is_tried_again() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        batch = adapters.cmu.split_batch(request.content)
        assert batch is not None
        (first, _), (second, _) = batch[1]
        answer = {
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": [
                {"resource": applied(first), "response": {"status": "200"}},
                {
                    "resource": hapi_outcome(second, "conflict", CREATE_CLASH),
                    "response": {"status": "409"},
                },
            ],
        }
        return fhir(200, answer)

    ch = channel(server, batch_size=2, encode_batch=adapters.cmu.encode_batch)

    def body(m: str) -> bytes:
        ident = {"system": s.MESSAGE_ID, "value": m}
        return json.dumps(
            {"resourceType": "Bundle", "type": "transaction", "identifier": ident}
        ).encode()

    parcels = [
        Parcel(m, "e-" + m, member, 1, "fhir.transaction", FHIR, 2, body(m))
        for m, member in (("m-1", "MSNAS-DK-000001"), ("m-2", "MSNAS-DK-000002"))
    ]
    first, second = ch.deliver(parcels)
    assert first.result == Result.ACCEPTED
    assert second.result == Result.FAILED
    assert second.reason_text == "the answer does not name this message"


def test_parse_ack_skips_batch_entries_that_answer_nothing_yet() -> None:
    answer = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {"resource": applied("m-1"), "response": {"status": "200 OK"}},
            {
                "resource": hapi_outcome("m-2", "conflict", CREATE_CLASH),
                "response": {"status": "409 Conflict"},
            },
            {"resource": hapi_outcome("m-3", "exception", "busy"), "response": {"status": "503"}},
            {
                "resource": hapi_outcome("m-4", "processing", PATCH_REFUSED),
                "response": {"status": "400"},
            },
        ],
    }
    acks = adapters.cmu.parse_ack(json.dumps(answer).encode())
    assert [(a.message_id, a.status.value) for a in acks] == [
        ("m-1", "accepted"),
        ("m-4", "rejected"),
    ]


# --- a plain FHIR server's answers, which name no message (HAPI FHIR) ---------------------------

HAPI_TRANSACTION_RESPONSE: Json = {
    "resourceType": "Bundle",
    "id": "4f0c1a9e-2b6d-4c8e-9a71-0d3e5f6a7b8c",
    "meta": {"lastUpdated": "2026-12-07T23:40:00.000+00:00"},
    "type": "transaction-response",
    "link": [{"relation": "self", "url": "http://127.0.0.1:8080/fhir"}],
    "entry": [
        {
            "response": {
                "status": "201 Created",
                "location": "Patient/1/_history/1",
                "etag": "1",
                "lastModified": "2026-12-07T23:40:00.000+00:00",
            }
        },
        {"response": {"status": "200 OK", "location": "Organization/2/_history/1", "etag": "1"}},
    ],
}
HAPI_REFUSAL: Json = {
    "resourceType": "OperationOutcome",
    "text": {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml"><h1>Operation Outcome</h1></div>',
    },
    "issue": [{"severity": "error", "code": "processing", "diagnostics": PATCH_REFUSED}],
}


def test_a_plain_fhir_server_s_answers_are_about_the_one_message_pushed() -> None:
    raw = json.dumps(HAPI_TRANSACTION_RESPONSE).encode()
    [ack] = adapters.cmu.parse_answer(raw, "m-1")
    assert (ack.message_id, ack.status.value) == ("m-1", "accepted")
    assert ack.institution_ref == "Patient/1/_history/1"
    [ack] = adapters.cmu.parse_answer(json.dumps(HAPI_REFUSAL).encode(), "m-1")
    assert (ack.message_id, ack.status.value) == ("m-1", "rejected")
    assert (ack.reason_code, ack.reason_text) == ("processing", PATCH_REFUSED)
    # an answer naming a message keeps its name; parse_ack still wants one
    [ack] = adapters.cmu.parse_answer(json.dumps(applied("m-2")).encode(), "m-1")
    assert ack.message_id == "m-2"
    with pytest.raises(MalformedAck):
        adapters.cmu.parse_ack(raw)


@pytest.mark.parametrize(
    ("status", "doc", "result", "reason"),
    [
        (200, HAPI_TRANSACTION_RESPONSE, Result.ACCEPTED, None),
        (400, HAPI_REFUSAL, Result.REJECTED, PATCH_REFUSED),
        (
            409,
            {**HAPI_REFUSAL, "issue": [{**HAPI_REFUSAL["issue"][0], "diagnostics": CREATE_CLASH}]},
            Result.FAILED,
            f"HTTP 409: {CREATE_CLASH}",
        ),
    ],
)
def test_the_channel_reads_a_plain_fhir_server_s_answer_to_a_single_push(
    status: int, doc: Json, result: Result, reason: str | None
) -> None:
    ch = channel(lambda r: fhir(status, doc))
    [d] = ch.deliver([parcel("m-1", "MSNAS-DK-000001")])
    assert (d.message_id, d.result, d.reason_text) == ("m-1", result, reason)
