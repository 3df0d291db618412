"""``validate``: a translated message against the CMU format (R4B plus Jokko's rules)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from adapters.base import Institution, InvalidMessage, OutboundMessage
from adapters.cmu import systems as s
from adapters.cmu._fhir import check, join
from adapters.cmu.mapping import CONTENT_TYPE, FORMAT_VERSION, canonical_json
from schemas.errors import FieldError

_METHODS = {"POST", "PUT", "PATCH"}
_CONDITIONAL = re.compile(r"^([A-Z][A-Za-z]+)\?identifier=([^|]+)\|(.+)$")
LOGICAL_ONLY = frozenset({"PaymentReconciliation"})
"""Reference types that stay logical (identifier only): records CMU does not hold."""


def validate(message: OutboundMessage) -> None:
    """Raise ``InvalidMessage`` listing every problem; return None for a conforming message."""
    errors = _envelope_errors(message)
    try:
        doc = json.loads(message.body)
    except (UnicodeDecodeError, ValueError):
        errors.append(FieldError("", "is not UTF-8 JSON", "json_invalid"))
        raise InvalidMessage(Institution.CMU, "message", errors) from None
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        errors.append(FieldError("resourceType", "must be Bundle", "bundle_expected"))
        raise InvalidMessage(Institution.CMU, "message", errors)
    errors += check(doc, "")
    errors += _bundle_rules(doc, message.message_id)
    if not errors and canonical_json(doc) != message.body:
        errors.append(FieldError("", "is not in canonical JSON form", "not_canonical"))
    if errors:
        raise InvalidMessage(Institution.CMU, "message", errors)


def _envelope_errors(message: OutboundMessage) -> list[FieldError]:
    errors = []
    if message.institution != Institution.CMU:
        errors.append(FieldError("institution", "must be cmu", "institution"))
    if message.content_type != CONTENT_TYPE:
        errors.append(FieldError("content_type", f"must be {CONTENT_TYPE}", "content_type"))
    if message.format_version != FORMAT_VERSION:
        errors.append(FieldError("format_version", "is not supported", "format_version"))
    return errors


def _bundle_rules(doc: dict[str, Any], message_id: str) -> list[FieldError]:
    errors = []
    if doc.get("type") != "transaction":
        errors.append(FieldError("type", "must be transaction", "bundle_type"))
    if doc.get("identifier") != {"system": s.MESSAGE_ID, "value": message_id}:
        errors.append(FieldError("identifier", "must carry the message id", "message_id"))
    entries = doc.get("entry", [])
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict):
            continue
        request, resource = entry.get("request"), entry.get("resource")
        if not isinstance(request, dict) or request.get("method") not in _METHODS:
            errors.append(
                FieldError(
                    join("entry", i, "request", "method"), "must be POST, PUT or PATCH", "method"
                )
            )
            continue
        url = str(request.get("url", ""))
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        if request["method"] == "POST":
            ok = url == rtype and str(request.get("ifNoneExist", "")).startswith("identifier=")
        else:
            # PUT sends the resource itself, PATCH a FHIRPath Patch (Parameters).
            target, _, query = url.partition("?identifier=")
            expected = "Parameters" if request["method"] == "PATCH" else target
            ok = bool(query) and rtype == expected
        if not ok:
            errors.append(
                FieldError(
                    join("entry", i, "request"),
                    "must be a conditional create, update or patch on an identifier",
                    "request",
                )
            )
    return errors + _reference_errors(entries if isinstance(entries, list) else [])


def _references(node: Any, loc: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Reference in ``node``: an object with a ``reference``, or a typed ``identifier``."""
    if isinstance(node, dict):
        typed = isinstance(node.get("type"), str) and isinstance(node.get("identifier"), dict)
        if "reference" in node or typed:
            yield loc, node
            return
        for key, item in node.items():
            yield from _references(item, join(loc, key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _references(item, join(loc, i))


def _reference_errors(entries: list[Any]) -> list[FieldError]:
    """References resolve on a FHIR server (FORMAT.md §1): to an entry of this transaction that
    writes a resource, or conditionally by identifier to one an earlier message created."""
    written = {
        e.get("fullUrl")
        for e in entries
        if isinstance(e, dict) and isinstance(e.get("request"), dict)
        if e["request"].get("method") in ("POST", "PUT")
    }
    errors = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        for loc, ref in _references(entry["resource"], join("entry", i, "resource")):
            problem = _reference_problem(ref, written)
            if problem is not None:
                errors.append(FieldError(loc, problem, "reference"))
    return errors


def _reference_problem(ref: dict[str, Any], written: set[Any]) -> str | None:
    target, rtype, ident = ref.get("reference"), ref.get("type"), ref.get("identifier")
    if target is None:
        if rtype in LOGICAL_ONLY:
            return None
        return "must be resolvable: a fullUrl of this transaction or a conditional reference"
    if not isinstance(target, str):
        return "must be a string"
    if target.startswith("urn:uuid:"):
        if target not in written:
            return "must be the fullUrl of a resource this transaction creates or updates"
        return None
    match = _CONDITIONAL.match(target)
    if match is None:
        return "must be a fullUrl of this transaction or <Type>?identifier=<system>|<value>"
    if rtype is not None and rtype != match[1]:
        return f"is a reference to {match[1]}, not to its type {rtype}"
    if ident is not None and ident != {"system": match[2], "value": match[3]}:
        return "must name the identifier it searches"
    return None
