"""CMU's batch envelope (FORMAT.md §6): several messages in one signed request.

One round trip per message bounded deliveries to ~90 messages/s (bench/RESULTS.md, flow); a
batch Bundle carries many transaction Bundles, each still applied on its own by CMU. Built by
splicing the messages' canonical bytes: nothing is parsed or re-serialised on the hot path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from adapters.base import Institution, InvalidMessage
from adapters.cmu import systems as s
from adapters.cmu.mapping import canonical_json
from schemas.errors import FieldError

BATCH_ENTRY_URL = "Bundle"
"""``entry.request.url`` of every batch entry: ``POST Bundle`` of one message's transaction."""


def encode_batch(batch_id: str, messages: Sequence[tuple[str, bytes]]) -> bytes:
    """A ``Bundle type=batch`` of ``(message_id, body)`` in order, identified by ``batch_id``
    (the id the request is signed with). Keys stay sorted, as in every Jokko body."""
    entries = b",".join(
        b'{"fullUrl":"urn:uuid:%s","request":{"method":"POST","url":"%s"},"resource":%s}'
        % (message_id.encode(), BATCH_ENTRY_URL.encode(), body)
        for message_id, body in messages
    )
    identifier = json.dumps({"system": s.BATCH_ID, "value": batch_id}, separators=(",", ":"))
    return b'{"entry":[%s],"identifier":%s,"resourceType":"Bundle","type":"batch"}' % (
        entries,
        identifier.encode(),
    )


def split_batch(raw: bytes) -> tuple[str, list[tuple[str, bytes]]] | None:
    """The institution's side: ``(batch_id, [(message_id, body), ...])`` of a batch Bundle (type
    ``batch`` with a batch id), or None when ``raw`` is a single message. Each body is the
    entry's transaction Bundle."""
    try:
        doc: Any = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        return None
    identifier = doc.get("identifier")
    if doc.get("type") != "batch" or not isinstance(identifier, dict):
        return None
    if identifier.get("system") != s.BATCH_ID:
        return None  # a message claiming to be a batch: the message's own checks refuse it

    def fail(loc: str, message: str) -> InvalidMessage:
        return InvalidMessage(Institution.CMU, "batch", [FieldError(loc, message, "batch")])

    entries = doc.get("entry")
    if not isinstance(entries, list) or not entries:
        raise fail("entry", "must hold at least one message")
    out: list[tuple[str, bytes]] = []
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        message = _message_id(resource)
        if message is None or not isinstance(resource, dict):
            raise fail(f"entry.{i}.resource", "must be a transaction Bundle with a message id")
        out.append((message, canonical_json(resource)))  # the bytes Jokko sent
    return str(identifier.get("value")), out


def _message_id(resource: Any) -> str | None:
    if not isinstance(resource, dict) or resource.get("type") != "transaction":
        return None
    ident = resource.get("identifier")
    if not isinstance(ident, dict) or ident.get("system") != s.MESSAGE_ID:
        return None
    value = ident.get("value")
    return value if isinstance(value, str) else None
