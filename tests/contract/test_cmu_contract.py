"""CMU adapter against the shared contract, with acks the way CMU's FHIR gateway writes them."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any, ClassVar

import pytest

import adapters.cmu
from adapters.base import OutboundMessage
from adapters.cmu import systems as s
from tests.contract.suite import BatchEnvelopeContract, OutboundAdapterContract, Rejections

pytestmark = pytest.mark.contract

Json = dict[str, Any]


def transaction_response(message: OutboundMessage) -> Json:
    """CMU's answer to a transaction it applied: one response per entry, id echoed."""
    sent = json.loads(message.body)
    entries = []
    for n, entry in enumerate(sent.get("entry", []), start=1):
        method = entry["request"]["method"]
        rtype = entry["request"]["url"].split("?")[0]
        status = "201 Created" if method == "POST" else "200 OK"
        entries.append({"response": {"status": status, "location": f"{rtype}/cmu-{n}/_history/1"}})
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "identifier": {"system": s.MESSAGE_ID, "value": message.message_id},
        "entry": entries,
    }


def operation_outcome(message_id: str, code: str, text: str) -> Json:
    return {
        "resourceType": "OperationOutcome",
        "extension": [{"url": s.EXT_MESSAGE_ID, "valueString": message_id}],
        "issue": [
            {
                "severity": "error",
                "code": "business-rule",
                "details": {"coding": [{"system": s.REJECTION_REASON, "code": code}], "text": text},
            }
        ],
    }


def batch(resources: list[Json]) -> bytes:
    doc = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [{"resource": r, "response": {"status": "200 OK"}} for r in resources],
    }
    return json.dumps(doc, ensure_ascii=False).encode()


class TestCmuContract(OutboundAdapterContract, BatchEnvelopeContract):
    adapter: ClassVar[ModuleType] = adapters.cmu

    def validate_envelope(self, raw: bytes) -> None:
        from fhir.resources.R4B.bundle import Bundle

        Bundle.model_validate_json(raw)

    def build_ack(self, messages: list[OutboundMessage], rejected: Rejections) -> bytes:
        answers = []
        for m in messages:
            if m.message_id in rejected:
                answers.append(operation_outcome(m.message_id, *rejected[m.message_id]))
            else:
                answers.append(transaction_response(m))
        return batch(answers)

    def malformed_acks(self) -> dict[str, bytes]:
        mid = "0b9b7b1e-5c1d-5a8e-9d57-6b1f0a6f0e11"
        ok = {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "identifier": {"system": s.MESSAGE_ID, "value": mid},
            "entry": [{"response": {"status": "201 Created"}}],
        }
        no_id = {k: v for k, v in ok.items() if k != "identifier"}
        bad_status = {**ok, "entry": [{"response": {"status": "302 Found"}}]}
        oo_no_id = operation_outcome(mid, "R042", "Numéro inconnu")
        del oo_no_id["extension"]
        return {
            "not json": b"<ack/>",
            "not an object": b"[]",
            "unknown resource": json.dumps({"resourceType": "Patient"}).encode(),
            "no message id": json.dumps(no_id).encode(),
            "unknown status": json.dumps(bad_status).encode(),
            "operation outcome without message id": json.dumps(oo_no_id).encode(),
            "batch with an unknown resource": batch([ok, {"resourceType": "Basic"}]),
            "not FHIR": json.dumps({**ok, "entry": [{"response": {"status": 201}}]}).encode(),
        }
