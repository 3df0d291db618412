"""CMU's extract for reconciliation: FHIR R4B NDJSON, one resource per line (FORMAT.md §5).

Read with the standard ``json`` module and checked field by field rather than through
``fhir.resources``: an extract holds millions of lines and only a handful of elements matter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from adapters.base import Institution
from adapters.cmu import systems as s
from adapters.extract import MalformedExtract, Rec, RecordKind
from schemas.errors import FieldError

EXT_DEPENDENT_COUNT = s._EXT + "dependent-count"
_str = json.encoder.encode_basestring_ascii
_COVERAGE = _str(s.COVERAGE_ID)
_PERIOD_EXT = _str(s.EXT_CONTRIBUTION_PERIOD)
_CMU = Institution.CMU.value


def _fail(line: int, message: str) -> MalformedExtract:
    return MalformedExtract(Institution.CMU, [FieldError(f"line {line}", message, "extract")])


def _ext(resource: dict[str, Any], url: str) -> dict[str, Any] | None:
    for ext in resource.get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == url:
            return ext
    return None


def _money(value: Any, line: int) -> int:
    if not isinstance(value, dict) or value.get("currency") != "XOF":
        raise _fail(line, "amount must be Money in XOF")
    amount = value.get("value")
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise _fail(line, "amount must be a whole number of XOF")
    return amount


def _ident(ref: Any, system: str, line: int) -> str:
    ident = ref.get("identifier") if isinstance(ref, dict) else None
    if isinstance(ident, list):
        ident = next((i for i in ident if isinstance(i, dict) and i.get("system") == system), None)
    if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
        raise _fail(line, f"identifier {system} missing")
    return str(ident["value"])


def _resource(res: dict[str, Any], line: int) -> Rec | None:
    rtype = res.get("resourceType")
    if rtype == "Coverage":
        member = _ident(res, s.COVERAGE_ID, line)
        plan = next((c.get("value") for c in res.get("class") or () if isinstance(c, dict)), None)
        status_ext = _ext(res, s.EXT_MEMBER_STATUS)
        deps = _ext(res, EXT_DEPENDENT_COUNT)
        return Rec(
            member,
            _CMU,
            RecordKind.AFFILIATION,
            "",
            "",
            "",
            0,
            str(plan or ""),
            str(status_ext["valueCode"] if status_ext else res.get("status", "")),
            int(deps["valueInteger"]) if deps else -1,
        )
    if rtype == "PaymentNotice":
        member = _ident(res.get("request"), s.COVERAGE_ID, line)
        period_ext = _ext(res, s.EXT_CONTRIBUTION_PERIOD)
        start = (period_ext or {}).get("valuePeriod", {}).get("start")
        if not isinstance(start, str) or len(start) < 7:
            raise _fail(line, "contribution-period extension missing")
        return Rec(
            member,
            _CMU,
            RecordKind.CONTRIBUTION,
            start[:7],
            "health",
            "",
            _money(res.get("amount"), line),
        )
    if rtype == "Claim":
        claim_id = _ident(res, s.CLAIM_ID, line)
        patient = res.get("patient") or {}
        ident = patient.get("identifier") if isinstance(patient, dict) else None
        beneficiary = ident.get("value") if isinstance(ident, dict) else None
        if not isinstance(beneficiary, str):
            raise _fail(line, "Claim.patient identifier missing")
        start = (res.get("billablePeriod") or {}).get("start")
        if not isinstance(start, str) or len(start) < 7:
            raise _fail(line, "Claim.billablePeriod.start missing")
        member = beneficiary.rsplit("-D", 1)[0] if beneficiary.count("-") == 3 else beneficiary
        return Rec(
            member,
            _CMU,
            RecordKind.CLAIM,
            start[:7],
            "",
            claim_id,
            _money(res.get("total"), line),
            "",
            str(res.get("status", "")),
        )
    return None  # Patient, RelatedPerson...: identity, not reconciled in v1


def parse_extract(lines: Iterable[bytes | str]) -> Iterator[Rec]:
    """Records of CMU's NDJSON export; other resource types are skipped, blank lines too."""
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            res = json.loads(raw)
        except ValueError:
            raise _fail(n, "not JSON") from None
        if not isinstance(res, dict):
            raise _fail(n, "not a FHIR resource")
        try:
            rec = _resource(res, n)
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            if isinstance(exc, MalformedExtract):
                raise
            raise _fail(n, f"unexpected structure ({type(exc).__name__})") from None
        if rec is not None:
            yield rec


def member_of_line(line: str) -> str | None:
    """The member a line's record is about, ``None`` for a resource not reconciled (splitting
    a member-sorted export by member)."""
    try:
        res = json.loads(line)
        rec = _resource(res, 0) if isinstance(res, dict) else None
    except (ValueError, AttributeError, TypeError, KeyError):
        return None
    return rec.member_id if rec is not None else None


def extract_line(rec: Rec) -> str:
    """One NDJSON line for ``rec`` (the inverse of ``parse_extract``: fixtures, generators)."""
    if rec.kind == RecordKind.AFFILIATION:
        ext: list[dict[str, Any]] = [{"url": s.EXT_MEMBER_STATUS, "valueCode": rec.status}]
        if rec.dependents >= 0:
            ext.append({"url": EXT_DEPENDENT_COUNT, "valueInteger": rec.dependents})
        res: dict[str, Any] = {
            "resourceType": "Coverage",
            "identifier": [{"system": s.COVERAGE_ID, "value": rec.member_id}],
            "status": "active" if rec.status == "active" else "cancelled",
            "class": [{"type": {"text": "plan"}, "value": rec.package}],
            "extension": ext,
        }
    elif rec.kind == RecordKind.CONTRIBUTION:  # most lines: a template, 4x json.dumps' speed
        return (
            '{"resourceType":"PaymentNotice","request":{"identifier":{"system":'
            f'{_COVERAGE},"value":{_str(rec.member_id)}}}}},"amount":{{"value":{int(rec.amount)},'
            f'"currency":"XOF"}},"extension":[{{"url":{_PERIOD_EXT},"valuePeriod":{{"start":'
            f"{_str(rec.period + '-01')}}}}}]}}"
        )
    else:
        res = {
            "resourceType": "Claim",
            "identifier": [{"system": s.CLAIM_ID, "value": rec.ref}],
            "status": rec.status,
            "patient": {"identifier": {"system": s.MEMBER_ID, "value": rec.member_id}},
            "billablePeriod": {"start": f"{rec.compared_period or rec.period}-15"},
            "total": {"value": rec.amount, "currency": "XOF"},
        }
    return json.dumps(res, separators=(",", ":"))
