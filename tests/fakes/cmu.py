"""A fake CMU FHIR gateway: ``POST /fhir`` takes one signed transaction Bundle (FORMAT.md).

Answers, every one readable by ``adapters.cmu.parse_ack``:

* 200 ``transaction-response`` Bundle: ``identifier`` echoes the request's, one ``response``
  per entry (``201 Created`` for a conditional create, ``200 OK`` for an update or a patch) with
  a location; a transaction with no entries is answered too (``institution_ref`` = Bundle.id);
* 400 ``OperationOutcome`` (reason ``R001``) for a body that is not an R4B transaction Bundle or
  whose identifier is not the signed ``webhook-id``; 415 likewise for another content type;
* 422 ``OperationOutcome`` (``R042`` unless ``Faults.reject_code``) for ``reject_members``;
* what a real FHIR server (HAPI FHIR 8.8 JPA) refuses, refused alike, with HAPI's diagnostics in
  an ``OperationOutcome`` (issue code ``processing``, no CMU reason code), nothing applied:
  400 ``HAPI-2719`` for a FHIRPath Patch whose path filters a list on a nested path
  (``class.where(type.coding.code='plan')``; ``where(use='home')``, ``.first()`` and an index
  apply), 404 ``HAPI-1091`` for a conditional reference (``Patient?identifier=S|V``) whose
  target is neither in the fake's store (every identifier of every resource it created or
  updated) nor written by the same transaction, 400 for a ``urn:uuid`` reference to no entry;
* 409 ``HAPI-0550`` (conditional constraint failure) for a transaction with a conditional
  create while ``Faults.create_clashes`` lasts: two concurrent creates of one identifier;
* with ``adjudicate_claims`` set to an outcome, a transaction holding a Claim is decided at
  once: 200 ``batch-response`` Bundle whose entries are the transaction-response and CMU's
  ``ClaimResponse`` (``outcome complete``, the message id in its extension, ``submitted`` =
  the Claim's total, ``benefit`` = all, half or nothing of it, reason ``NOT_COVERED`` unless
  all is paid); ``Faults.duplicate_acks`` repeats the ClaimResponse in the same answer. A
  re-sent claim gets the same answer, decision included (CMU decides a claim once), and
  ``decisions_lost`` loses that many answers of each decided claim (connection closed after
  processing), so Jokko has to ask again and gets the decision a second time.

Every ``OperationOutcome`` carries the message id (the signed ``webhook-id``) in the
``message-id`` extension, except the 401 of a refused signature: that one answers the channel,
not a message (the id is unproven), so ``parse_ack`` refuses it and a channel must treat 401 as
its own failure (wrong key), never as CMU rejecting the message.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from adapters.base import AckStatus, Institution
from adapters.cmu import systems as s
from adapters.cmu.batch import split_batch
from router.signing import SignatureRejected
from schemas.payloads import ClaimOutcome
from tests.fakes.base import Answer, HttpFake, Jwks, ReceivedMessage
from tests.fakes.faults import Faults

FHIR_JSON = "application/fhir+json"
MALFORMED = "R001"
REASON_TEXTS = {
    "R001": "Message non conforme au format FHIR R4B de la CMU",
    "R010": "Bénéficiaire inconnu de la CMU",
    "R042": "Numéro d'identification inconnu",
}
Json = dict[str, Any]


def _fhir(doc: Json, status: int) -> Answer:
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    return Answer(status, FHIR_JSON, body)


def operation_outcome(message_id: str | None, code: str, text: str, *, issue: str) -> Json:
    doc: Json = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": issue,
                "details": {"coding": [{"system": s.REJECTION_REASON, "code": code}], "text": text},
            }
        ],
    }
    if message_id is not None:
        doc["extension"] = [{"url": s.EXT_MESSAGE_ID, "valueString": message_id}]
    return doc


def hapi_outcome(message_id: str, issue: str, diagnostics: str) -> Json:
    """An ``OperationOutcome`` as HAPI FHIR writes one (diagnostics, no coded details), with
    CMU's gateway's message-id extension."""
    return {
        "resourceType": "OperationOutcome",
        "extension": [{"url": s.EXT_MESSAGE_ID, "valueString": message_id}],
        "issue": [{"severity": "error", "code": issue, "diagnostics": diagnostics}],
    }


PATCH_REFUSED = "HAPI-2719: No runtime definition found for patch operation."
CREATE_CLASH = (
    "HAPI-0550: HAPI-0825: The operation has failed with a conditional constraint failure. "
    "This generally means that two clients/threads were trying to perform a conditional create "
    "or update at the same time which would have resulted in duplicate resources being created."
)
_CONDITIONAL_REF = re.compile(r"^([A-Z][A-Za-z]+)\?identifier=([^|]+)\|(.+)$")


def _criteria(path: str) -> list[str]:
    """The arguments of the function calls in a FHIRPath (``where(...)``), string literals
    blanked out, so that a dot left in one is a navigation, not part of a URL."""
    found: list[str] = []
    depth, current, quoted = 0, "", False
    for char in path:
        if quoted:
            quoted = char != "'"
            current += "_" if quoted and depth else ""
            continue
        if char == "'":
            quoted = True
            continue
        if char == "(":
            depth += 1
            if depth == 1:
                current = ""
                continue
        elif char == ")":
            depth -= 1
            if depth == 0:
                found.append(current)
                continue
        if depth:
            current += char
    return found


def unapplied_patch_path(path: str) -> bool:
    """Whether HAPI FHIR's patch engine refuses ``path`` (HAPI-2719): a list filtered on a
    nested element (``where(type.coding.code='plan')``). It applies filters on a direct child
    (``where(use='home')``, ``where(url='https://…')``), ``.first()`` and an index."""
    return any("." in criterion for criterion in _criteria(path))


def _patch_paths(parameters: Json) -> list[str]:
    paths = []
    for op in parameters.get("parameter", ()):
        for part in op.get("part", ()):
            if part.get("name") == "path" and isinstance(part.get("valueString"), str):
                paths.append(part["valueString"])
    return paths


def _references(node: Any, loc: str) -> list[tuple[str, str]]:
    """(path, reference) of every ``Reference.reference`` in ``node``."""
    out: list[tuple[str, str]] = []
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            out.append((loc, node["reference"]))
        for key, item in node.items():
            if key != "reference":
                out += _references(item, f"{loc}.{key}")
    elif isinstance(node, list):
        for item in node:
            out += _references(item, loc)
    return out


def _identifiers(resource: Json) -> set[tuple[str, str, str]]:
    rtype = resource.get("resourceType", "")
    return {
        (rtype, i["system"], i["value"])
        for i in resource.get("identifier", ())
        if isinstance(i, dict)
        and isinstance(i.get("system"), str)
        and isinstance(i.get("value"), str)
    }


def written(doc: Json) -> tuple[set[str], set[tuple[str, str, str]]]:
    """The fullUrls and the identifiers of the resources a transaction creates or updates."""
    urls, idents = set(), set()
    for entry in doc.get("entry", ()):
        if entry.get("request", {}).get("method") in ("POST", "PUT"):
            urls.add(entry.get("fullUrl"))
            idents |= _identifiers(entry.get("resource") or {})
    return urls, idents


def server_refusal(doc: Json, held: set[tuple[str, str, str]]) -> tuple[int, str] | None:
    """What a FHIR server refuses in a transaction, as (HTTP status, diagnostics), or None.
    ``held``: the identifiers of the resources the server holds."""
    urls, idents = written(doc)
    for entry in doc.get("entry", ()):
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Parameters":
            for path in _patch_paths(resource):
                if unapplied_patch_path(path):
                    return 400, PATCH_REFUSED
            continue
        for where, ref in _references(resource, resource.get("resourceType", "")):
            if ref.startswith("urn:uuid:") and ref not in urls:
                return 400, f"Resource {ref} not found, specified in path: {where}"
            match = _CONDITIONAL_REF.match(ref)
            if match is not None:
                key = (match[1], match[2], match[3])
                if key not in idents and key not in held:
                    return 404, (
                        f'HAPI-1091: Invalid match URL "{ref}" - No resources match this search'
                    )
    return None


def _creates(doc: Json) -> bool:
    return any(e.get("request", {}).get("method") == "POST" for e in doc.get("entry", ()))


def member_of(doc: Any) -> str | None:
    """The member a Bundle is about: a member-id identifier, else the family Coverage's id (the
    member id), else a dependent's id without its ``-Dnn``; None for a provider Organization."""
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            system, value = node.get("system"), node.get("value")
            if isinstance(system, str) and isinstance(value, str):
                found.setdefault(system, value)
            for item in node.values():
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    if s.MEMBER_ID in found:
        return found[s.MEMBER_ID]
    if s.COVERAGE_ID in found:
        return found[s.COVERAGE_ID]
    if s.DEPENDENT_ID in found:
        return found[s.DEPENDENT_ID].rsplit("-D", 1)[0]
    return None


def _problem(doc: Any, message_id: str, *, schema_checks: bool = True) -> str | None:
    """Why ``doc`` is not a transaction Bundle of this message, or None."""
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        return "the body must be a FHIR Bundle"
    if doc.get("type") != "transaction":
        return "Bundle.type must be transaction"
    try:
        if schema_checks:
            Bundle.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"Bundle is not valid R4B at {where}: {first['msg'].splitlines()[0]}"
    except (KeyError, TypeError, ValueError) as exc:  # fhir.resources' own failures
        return f"Bundle is not valid R4B ({type(exc).__name__})"
    ident = doc.get("identifier") or {}
    if ident.get("system") != s.MESSAGE_ID or ident.get("value") != message_id:
        return "Bundle.identifier must be the signed webhook-id"
    return None


def _claim_of(doc: Json) -> Json | None:
    for entry in doc.get("entry", []):
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Claim":
            claim: Json = resource
            return claim
    return None


def claim_response(message_id: str, claim: Json, outcome: ClaimOutcome, ref: str) -> Json:
    """CMU's decision on ``claim``, as ``adapters.cmu.parse_ack`` reads it (FORMAT.md §4)."""
    claimed = int(claim["total"]["value"])
    approved = {
        ClaimOutcome.APPROVED: claimed,
        ClaimOutcome.PARTIALLY_APPROVED: claimed // 2,
        ClaimOutcome.REJECTED: 0,
    }[outcome]
    claim_id = next(i["value"] for i in claim["identifier"] if i["system"] == s.CLAIM_ID)

    def total(category: str, value: int) -> Json:
        return {
            "category": {"coding": [{"system": s.ADJUDICATION, "code": category}]},
            "amount": {"value": value, "currency": "XOF"},
        }

    doc: Json = {
        "resourceType": "ClaimResponse",
        "id": ref,
        "extension": [{"url": s.EXT_MESSAGE_ID, "valueString": message_id}],
        "identifier": [{"system": "https://cmu.sn/fhir/claim-response-id", "value": ref}],
        "status": "active",
        "type": {"coding": [{"system": s.CLAIM_TYPE, "code": "professional"}]},
        "use": "claim",
        "patient": claim["patient"],
        "created": "2026-03-20T09:00:00Z",
        "insurer": {"identifier": {"system": s.MUTUAL, "value": "CMU"}},
        "request": {"identifier": {"system": s.CLAIM_ID, "value": claim_id}},
        "outcome": "complete",
        "total": [total("submitted", claimed), total("benefit", approved)],
    }
    if outcome is not ClaimOutcome.APPROVED:
        doc["adjudication"] = [
            {
                "category": {"coding": [{"system": s.ADJUDICATION, "code": "benefit"}]},
                "reason": {"coding": [{"system": s.ADJUDICATION_REASON, "code": "NOT_COVERED"}]},
            }
        ]
    return doc


class FakeCMU(HttpFake):
    institution = Institution.CMU
    path = "/fhir"

    def __init__(
        self,
        secret: bytes | None = None,
        faults: Faults | None = None,
        *,
        jwks: Jwks | None = None,
        adjudicate_claims: ClaimOutcome | None = None,
    ) -> None:
        super().__init__(secret, faults, jwks=jwks)
        self.adjudicate_claims = adjudicate_claims
        """The outcome CMU gives every claim at once, in its answer; None: no decision yet."""
        self.decisions_lost = 0
        """How many answers carrying a decision are lost, per claim message."""
        self._decided: Counter[str] = Counter()  # message id -> answers with its decision
        self._decided_lock = threading.Lock()
        self.held: set[tuple[str, str, str]] = set()
        """(type, system, value) of every identifier of every resource created or updated:
        what a conditional reference resolves against."""
        self._held_lock = threading.Lock()

    def lose_answer(self, message_id: str) -> bool:
        with self._decided_lock:
            if message_id not in self._decided:
                return False
            self._decided[message_id] += 1
            return self._decided[message_id] <= self.decisions_lost

    def split(self, body: bytes) -> tuple[str, list[tuple[str, bytes]]] | None:
        return split_batch(body)

    def combine(self, answers: list[Answer]) -> Answer:
        """A batch-response listing every message's answer resources, in order."""
        entries: list[Json] = []
        for a in answers:
            doc = json.loads(a.body)
            if doc.get("type") == "batch-response":
                entries.extend(doc["entry"])
            else:
                # each message's own status: a 409 is to be tried again, not a rejection
                entries.append({"resource": doc, "response": {"status": str(a.status)}})
        batch: Json = {
            "resourceType": "Bundle",
            "id": f"cmu-batch-{self.recorder.next_seq()}",
            "type": "batch-response",
            "entry": entries,
        }
        return _fhir(batch, 200)

    def unauthorized(self, error: SignatureRejected) -> Answer:
        text = f"signature refused: {error.reason}"
        return _fhir(operation_outcome(None, "SIGNATURE", text, issue="security"), 401)

    def answer(
        self, message_id: str, body: bytes, content_type: str
    ) -> tuple[Answer, ReceivedMessage]:
        def refused(
            status: int, code: str, text: str, issue: str, member: str | None
        ) -> tuple[Answer, ReceivedMessage]:
            answer = _fhir(operation_outcome(message_id, code, text, issue=issue), status)
            kept = ReceivedMessage(message_id, member, body, AckStatus.REJECTED, code)
            return answer, kept

        if content_type.split(";")[0].strip().lower() != FHIR_JSON:
            return refused(
                415, MALFORMED, f"content type must be {FHIR_JSON}", "not-supported", None
            )
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            return refused(400, MALFORMED, "the body is not UTF-8 JSON", "structure", None)
        member = member_of(doc)
        problem = _problem(doc, message_id, schema_checks=self.schema_checks)
        if problem is not None:
            return refused(400, MALFORMED, problem, "structure", member)
        if self.faults.rejects(member):
            code = self.reject_code()
            return refused(
                422, code, REASON_TEXTS.get(code, "Refusé par la CMU"), "business-rule", member
            )

        def server_refused(status: int, issue: str, text: str) -> tuple[Answer, ReceivedMessage]:
            answer = _fhir(hapi_outcome(message_id, issue, text), status)
            return answer, ReceivedMessage(message_id, member, body, AckStatus.REJECTED, issue)

        with self._held_lock:  # checked and applied as one transaction
            refusal = server_refusal(doc, self.held)
            if refusal is not None:
                return server_refused(refusal[0], "processing", refusal[1])
            if _creates(doc) and self.faults.clash():
                return server_refused(409, "conflict", CREATE_CLASH)
            self.held |= written(doc)[1]
        n = self.recorder.next_seq()
        entries = []
        for k, entry in enumerate(doc.get("entry", []), start=1):
            request = entry["request"]
            rtype = request["url"].split("?")[0]
            created = request["method"] == "POST"
            entries.append(
                {
                    "response": {
                        "status": "201 Created" if created else "200 OK",
                        "location": f"{rtype}/cmu-{n}-{k}/_history/1",
                    }
                }
            )
        response: Json = {
            "resourceType": "Bundle",
            "id": f"cmu-tx-{n}",
            "type": "transaction-response",
            "identifier": {"system": s.MESSAGE_ID, "value": message_id},
        }
        if entries:
            response["entry"] = entries
        ref = entries[0]["response"]["location"] if entries else response["id"]
        kept = ReceivedMessage(message_id, member, body, AckStatus.ACCEPTED, institution_ref=ref)
        claim = _claim_of(doc)
        if claim is None or self.adjudicate_claims is None:
            return _fhir(response, 200), kept
        decision = claim_response(message_id, claim, self.adjudicate_claims, f"cmu-cr-{n}")
        with self._decided_lock:
            self._decided.setdefault(message_id, 0)  # its answers are counted on the way out
        answers = [response, decision, *([decision] if self.faults.duplicate_acks else [])]
        batch: Json = {
            "resourceType": "Bundle",
            "id": f"cmu-batch-{n}",
            "type": "batch-response",
            "entry": [{"resource": a} for a in answers],
        }
        return _fhir(batch, 200), kept

    def extract(self) -> str:
        """CMU's reconciliation export (NDJSON) of what it accepted and decided."""
        from tests.fakes import holdings

        return holdings.recorded_cmu_extract(self.recorder)
