"""``parse_ack``: CMU's answers (FHIR R4B JSON) -> ``Ack`` per message (FORMAT.md, "Acks")."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, NoReturn

from pydantic import ValidationError

from adapters.base import Ack, AckStatus, Institution, MalformedAck
from adapters.cmu import systems as s
from adapters.cmu._fhir import check, join
from schemas.errors import FieldError, InvalidEvent
from schemas.payloads import ClaimAdjudicatedPayload, ClaimOutcome

_SUCCESS = frozenset({"200", "201"})
_NOT_YET = frozenset({"408", "409", "412", "429"})
"""Statuses of a batch-response entry that answer nothing yet: a conflict between concurrent
conditional creates (409), a failed precondition (412), a time-out or a throttle. 5xx too."""
_FAILURE_SEVERITIES = frozenset({"error", "fatal"})
CMU_ADJUDICATOR = "CMU"


def _fail(loc: str, message: str, error_type: str) -> NoReturn:
    raise MalformedAck(Institution.CMU, "ack", [FieldError(loc, message, error_type)])


def parse_ack(raw: bytes) -> list[Ack]:
    """One ``Ack`` per answered message; a batch-response Bundle answers several."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        _fail("", "is not UTF-8 JSON", "json_invalid")
    if not isinstance(doc, dict):
        _fail("", "must be a JSON object", "object_type")
    if doc.get("resourceType") == "Bundle" and doc.get("type") == "batch-response":
        entries = doc.get("entry")
        if not isinstance(entries, list) or not entries:
            _fail("entry", "must list at least one answer", "missing")
        acks = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                _fail(join("entry", i, "resource"), "must be an ack resource", "missing")
            if _not_yet(entry):
                continue  # the message is not answered: it is sent again (FORMAT.md §6)
            acks.append(_one(entry["resource"], join("entry", i, "resource")))
        return acks
    return [_one(doc, "")]


def parse_answer(raw: bytes, message_id: str) -> list[Ack]:
    """The HTTP answer to one pushed message: read as ``parse_ack``, except that an answer
    naming no message is about ``message_id``. A plain FHIR server (HAPI FHIR) echoes no
    message id: its transaction-response has no ``identifier``, its OperationOutcome no
    message-id extension; the request it answers is the only message it can be about."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return parse_ack(raw)  # refused with its reason
    if isinstance(doc, dict):
        rtype = doc.get("resourceType")
        if rtype == "Bundle" and doc.get("type") == "transaction-response":
            doc.setdefault("identifier", {"system": s.MESSAGE_ID, "value": message_id})
            return [_one(doc, "")]
        extensions = doc.get("extension", [])
        named = isinstance(extensions, list) and any(
            isinstance(e, dict) and e.get("url") == s.EXT_MESSAGE_ID for e in extensions
        )
        if rtype in ("OperationOutcome", "ClaimResponse") and isinstance(extensions, list):
            if not named:
                doc["extension"] = [
                    *extensions,
                    {"url": s.EXT_MESSAGE_ID, "valueString": message_id},
                ]
            return [_one(doc, "")]
    return parse_ack(raw)


def _not_yet(entry: dict[str, Any]) -> bool:
    response = entry.get("response")
    if not isinstance(response, dict):
        return False
    status = str(response.get("status", "")).split(" ", 1)[0]
    return status in _NOT_YET or (len(status) == 3 and status.startswith("5"))


def _one(resource: dict[str, Any], loc: str) -> Ack:
    rtype = resource.get("resourceType")
    if rtype not in ("Bundle", "OperationOutcome", "ClaimResponse"):
        _fail(
            join(loc, "resourceType"),
            "must be Bundle, OperationOutcome or ClaimResponse",
            "ack_type",
        )
    errors = check(resource, loc)
    if errors:
        raise MalformedAck(Institution.CMU, "ack", errors)
    if rtype == "Bundle":
        return _transaction_response(resource, loc)
    if rtype == "OperationOutcome":
        return _operation_outcome(resource, loc)
    return _claim_response(resource, loc)


def _message_id_extension(resource: dict[str, Any], loc: str) -> str:
    for ext in resource.get("extension", []):
        if ext.get("url") == s.EXT_MESSAGE_ID:
            value = ext.get("valueString")
            if isinstance(value, str) and value:
                return value
    _fail(join(loc, "extension"), f"must carry the message id ({s.EXT_MESSAGE_ID})", "message_id")


def _transaction_response(bundle: dict[str, Any], loc: str) -> Ack:
    if bundle.get("type") != "transaction-response":
        _fail(join(loc, "type"), "must be transaction-response or batch-response", "bundle_type")
    ident = bundle.get("identifier") or {}
    if ident.get("system") != s.MESSAGE_ID or not ident.get("value"):
        _fail(join(loc, "identifier"), f"must carry the message id ({s.MESSAGE_ID})", "message_id")
    location: str | None = None
    for i, entry in enumerate(bundle.get("entry", [])):
        response = entry.get("response")
        if not isinstance(response, dict):
            _fail(join(loc, "entry", i, "response"), "is required", "missing")
        status = str(response.get("status", "")).split(" ", 1)[0]
        if status not in _SUCCESS:
            _fail(
                join(loc, "entry", i, "response", "status"),
                "must be 200 or 201 (a failed transaction is answered by an OperationOutcome)",
                "status_unknown",
            )
        location = location or response.get("location")
    return Ack(
        message_id=ident["value"],
        institution=Institution.CMU,
        status=AckStatus.ACCEPTED,
        institution_ref=location or bundle.get("id"),
    )


def _operation_outcome(outcome: dict[str, Any], loc: str) -> Ack:
    mid = _message_id_extension(outcome, loc)
    issues = outcome.get("issue") or []
    if not issues:
        _fail(join(loc, "issue"), "must list at least one issue", "missing")
    for i, issue in enumerate(issues):
        if issue.get("severity") not in _FAILURE_SEVERITIES:
            continue
        details = issue.get("details") or {}
        codings = [c for c in details.get("coding", []) if c.get("code")]
        preferred = [c for c in codings if c.get("system") == s.REJECTION_REASON]
        code = (preferred or codings or [{"code": issue.get("code")}])[0]["code"]
        text = details.get("text") or issue.get("diagnostics")
        if not text:
            _fail(join(loc, "issue", i, "details", "text"), "must explain the rejection", "missing")
        return Ack(mid, Institution.CMU, AckStatus.REJECTED, reason_code=code, reason_text=text)
    # Only warnings and information: the message went through.
    return Ack(mid, Institution.CMU, AckStatus.ACCEPTED)


def _claim_response(response: dict[str, Any], loc: str) -> Ack:
    mid = _message_id_extension(response, loc)
    ref = _first_identifier_value(response) or response.get("id")
    outcome = response.get("outcome")
    if outcome == "error":
        errors = response.get("error") or []
        if not errors:
            _fail(join(loc, "error"), "must say why the claim was refused", "missing")
        concept = errors[0].get("code", {})
        codings = concept.get("coding") or [{}]
        code, text = codings[0].get("code"), concept.get("text") or codings[0].get("display")
        if not code or not text:
            _fail(join(loc, "error", 0, "code"), "must have a code and a text", "missing")
        return Ack(mid, Institution.CMU, AckStatus.REJECTED, code, text, institution_ref=ref)
    if outcome == "queued":
        return Ack(mid, Institution.CMU, AckStatus.ACCEPTED, institution_ref=ref)
    if outcome not in ("complete", "partial"):
        _fail(join(loc, "outcome"), "must be queued, complete, partial or error", "outcome")
    return Ack(
        mid,
        Institution.CMU,
        AckStatus.ACCEPTED,
        institution_ref=ref,
        adjudication=_adjudication(response, loc),
        decided_at=_created(response),
    )


def _created(response: dict[str, Any]) -> datetime | None:
    """``ClaimResponse.created`` (a FHIR dateTime, UTC when it gives no offset), if readable."""
    created = response.get("created")
    if not isinstance(created, str):
        return None
    try:
        moment = datetime.fromisoformat(created)
    except ValueError:
        return None
    return moment.replace(tzinfo=moment.tzinfo or UTC).astimezone(UTC)


def _first_identifier_value(resource: dict[str, Any]) -> str | None:
    for ident in resource.get("identifier", []):
        if isinstance(ident.get("value"), str):
            value: str = ident["value"]
            return value
    return None


def _total(response: dict[str, Any], loc: str, category: str) -> int:
    for i, total in enumerate(response.get("total", [])):
        codes = {c.get("code") for c in total.get("category", {}).get("coding", [])}
        if category in codes:
            amount = total.get("amount", {})
            at = join(loc, "total", i, "amount")
            if amount.get("currency") != "XOF":
                _fail(join(at, "currency"), "must be XOF", "currency")
            value = amount.get("value")
            if type(value) is not int:
                _fail(join(at, "value"), "must be whole CFA francs", "int_type")
            return value
    _fail(join(loc, "total"), f"must have a {category!r} total", "missing")


def _reason_codes(response: dict[str, Any]) -> tuple[str, ...]:
    adjudications = list(response.get("adjudication", []))
    for item in response.get("item", []):
        adjudications += item.get("adjudication", [])
    codes: list[str] = []
    for adj in adjudications:
        for coding in (adj.get("reason") or {}).get("coding", []):
            code = coding.get("code")
            if isinstance(code, str) and code not in codes:
                codes.append(code)
    return tuple(codes)


_PAYLOAD_LOCS = {
    "claim_id": "request.identifier.value",
    "claimed_amount": "total",
    "approved_amount": "total",
    "reason_codes": "adjudication",
    "outcome": "total",
}


def _adjudication(response: dict[str, Any], loc: str) -> ClaimAdjudicatedPayload:
    request = response.get("request") or {}
    ident = request.get("identifier") or {}
    if ident.get("system") != s.CLAIM_ID or not isinstance(ident.get("value"), str):
        _fail(
            join(loc, "request", "identifier"), f"must identify the claim ({s.CLAIM_ID})", "missing"
        )
    claimed = _total(response, loc, "submitted")
    approved = _total(response, loc, "benefit")
    if approved == claimed:
        outcome = ClaimOutcome.APPROVED
    elif approved == 0:
        outcome = ClaimOutcome.REJECTED
    else:
        outcome = ClaimOutcome.PARTIALLY_APPROVED
    try:
        return ClaimAdjudicatedPayload(
            claim_id=ident["value"],
            adjudicator=CMU_ADJUDICATOR,
            outcome=outcome,
            claimed_amount=claimed,
            approved_amount=approved,
            reason_codes=_reason_codes(response),
        )
    except ValidationError as exc:
        errors = [
            FieldError(
                join(loc, _PAYLOAD_LOCS.get(e.loc.split(".")[0], "")),
                f"{e.loc or 'decision'} {e.message}",
                e.type,
            )
            for e in InvalidEvent.from_validation_error(exc).errors
        ]
        raise MalformedAck(Institution.CMU, "ack", errors) from None
