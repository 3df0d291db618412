"""CMU acks: transaction-response, OperationOutcome reasons, ClaimResponse -> adjudication."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.base import AckStatus, Institution, MalformedAck
from adapters.cmu import parse_ack
from adapters.cmu import systems as s
from schemas import ClaimOutcome

pytestmark = pytest.mark.unit

MID = "6a3d1c8e-4f0b-5e2a-9b7d-1c2e3f4a5b6c"
Json = dict[str, Any]


def raw(doc: Json) -> bytes:
    return json.dumps(doc).encode()


def claim_response(
    submitted: Any, benefit: Any, reasons: tuple[str, ...] = (), **extra: Any
) -> Json:
    doc: Json = {
        "resourceType": "ClaimResponse",
        "extension": [{"url": s.EXT_MESSAGE_ID, "valueString": MID}],
        "identifier": [{"system": "https://cmu.sn/fhir/claim-response-id", "value": "CR-77"}],
        "status": "active",
        "type": {"coding": [{"system": s.CLAIM_TYPE, "code": "professional"}]},
        "use": "claim",
        "patient": {"identifier": {"system": s.MEMBER_ID, "value": "MSNAS-TH-000289"}},
        "created": "2026-03-20T09:00:00Z",
        "insurer": {"identifier": {"system": s.MUTUAL, "value": "CMU"}},
        "request": {"identifier": {"system": s.CLAIM_ID, "value": "CLM-2026-000451"}},
        "outcome": "complete",
        "total": [
            {
                "category": {"coding": [{"system": s.ADJUDICATION, "code": "submitted"}]},
                "amount": {"value": submitted, "currency": "XOF"},
            },
            {
                "category": {"coding": [{"system": s.ADJUDICATION, "code": "benefit"}]},
                "amount": {"value": benefit, "currency": "XOF"},
            },
        ],
    }
    if reasons:
        doc["item"] = [
            {
                "itemSequence": 1,
                "adjudication": [
                    {
                        "category": {"coding": [{"system": s.ADJUDICATION, "code": "benefit"}]},
                        "reason": {"coding": [{"system": s.ADJUDICATION_REASON, "code": r}]},
                    }
                    for r in reasons
                ],
            }
        ]
    doc.update(extra)
    return doc


def test_transaction_response_accepts_with_location() -> None:
    [ack] = parse_ack(
        raw(
            {
                "resourceType": "Bundle",
                "type": "transaction-response",
                "identifier": {"system": s.MESSAGE_ID, "value": MID},
                "entry": [
                    {"response": {"status": "201 Created", "location": "Patient/9/_history/1"}},
                    {"response": {"status": "200 OK"}},
                ],
            }
        )
    )
    assert (ack.message_id, ack.status, ack.institution) == (
        MID,
        AckStatus.ACCEPTED,
        Institution.CMU,
    )
    assert ack.institution_ref == "Patient/9/_history/1"


def test_operation_outcome_gives_cmu_reason() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "extension": [{"url": s.EXT_MESSAGE_ID, "valueString": MID}],
        "issue": [
            {"severity": "warning", "code": "informational", "diagnostics": "slow"},
            {
                "severity": "error",
                "code": "not-found",
                "details": {
                    "coding": [{"system": s.REJECTION_REASON, "code": "R042"}],
                    "text": "Numéro d'identification inconnu",
                },
            },
        ],
    }
    [ack] = parse_ack(raw(outcome))
    assert ack.status == AckStatus.REJECTED
    assert (ack.reason_code, ack.reason_text) == ("R042", "Numéro d'identification inconnu")


def test_operation_outcome_without_cmu_code_falls_back_to_issue_code() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "extension": [{"url": s.EXT_MESSAGE_ID, "valueString": MID}],
        "issue": [{"severity": "fatal", "code": "duplicate", "diagnostics": "déjà reçu"}],
    }
    [ack] = parse_ack(raw(outcome))
    assert (ack.reason_code, ack.reason_text) == ("duplicate", "déjà reçu")


def test_approved_claim_response() -> None:
    [ack] = parse_ack(raw(claim_response(9350, 9350)))
    assert ack.status == AckStatus.ACCEPTED
    assert ack.institution_ref == "CR-77"
    assert ack.adjudication is not None
    assert ack.adjudication.outcome == ClaimOutcome.APPROVED
    assert ack.adjudication.adjudicator == "CMU"
    assert ack.adjudication.claim_id == "CLM-2026-000451"


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        ("2026-03-20T09:00:00Z", datetime(2026, 3, 20, 9, tzinfo=UTC)),
        ("2026-03-20T10:30:00+01:00", datetime(2026, 3, 20, 9, 30, tzinfo=UTC)),
        ("2026-03-20", datetime(2026, 3, 20, tzinfo=UTC)),
    ],
)
def test_claim_response_says_when_cmu_decided(created: str, expected: datetime) -> None:
    # The decision's canonical event occurs then, so reading the answer twice gives one
    # content (issue 17: a second content under the same event id would be a conflict).
    [ack] = parse_ack(raw(claim_response(9350, 9350, created=created)))
    assert ack.decided_at == expected


def test_partial_claim_response_carries_reasons() -> None:
    [ack] = parse_ack(raw(claim_response(9350, 7500, ("TARIF_DEPASSE", "HORS_PANIER"))))
    assert ack.adjudication is not None
    assert ack.adjudication.outcome == ClaimOutcome.PARTIALLY_APPROVED
    assert (ack.adjudication.claimed_amount, ack.adjudication.approved_amount) == (9350, 7500)
    assert ack.adjudication.reason_codes == ("TARIF_DEPASSE", "HORS_PANIER")


def test_rejected_claim_response() -> None:
    [ack] = parse_ack(raw(claim_response(9350, 0, ("NON_COUVERT",))))
    assert ack.adjudication is not None
    assert ack.adjudication.outcome == ClaimOutcome.REJECTED


def test_queued_claim_response_is_accepted_without_decision() -> None:
    doc = claim_response(9350, 9350, outcome="queued")
    del doc["total"]
    [ack] = parse_ack(raw(doc))
    assert (ack.status, ack.adjudication) == (AckStatus.ACCEPTED, None)


def test_error_claim_response_is_a_rejection() -> None:
    doc = claim_response(
        9350,
        0,
        outcome="error",
        error=[{"code": {"coding": [{"code": "R101"}], "text": "Prestataire non conventionné"}}],
    )
    [ack] = parse_ack(raw(doc))
    assert (ack.status, ack.reason_code) == (AckStatus.REJECTED, "R101")


@pytest.mark.parametrize(
    ("doc", "loc"),
    [
        (claim_response(9350, 7500.5), "total.1.amount.value"),
        (claim_response(9350.0, 9350), "total.0.amount.value"),
        (claim_response(9350, 7500), "adjudication"),  # partial without a reason
        (claim_response(9350, 9999), "total"),  # more approved than claimed
        (claim_response(9350, 9350, outcome="later"), "outcome"),
        (claim_response(9350, 9350, extension=[]), "extension"),
    ],
)
def test_inconsistent_claim_response_is_malformed(doc: Json, loc: str) -> None:
    with pytest.raises(MalformedAck) as info:
        parse_ack(raw(doc))
    assert loc in {e.loc for e in info.value.errors}


def test_batch_of_answers() -> None:
    batch = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {"resource": claim_response(9350, 9350)},
            {"resource": {"resourceType": "Claim"}},
        ],
    }
    with pytest.raises(MalformedAck) as info:
        parse_ack(raw(batch))
    assert [e.loc for e in info.value.errors] == ["entry.1.resource.resourceType"]
    batch["entry"] = batch["entry"][:1]
    assert [a.message_id for a in parse_ack(raw(batch))] == [MID]
