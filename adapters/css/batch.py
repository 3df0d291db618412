"""CSS's batch envelope (FORMAT.md, "Batch"): several documents in one signed request.

One round trip per document bounded deliveries to ~90 documents/s (bench/RESULTS.md, flow). A
``Batch`` holds the documents unchanged, so it is built by splicing their bytes (no parse, no
re-serialisation); CSS answers with one ``Acknowledgement`` naming each document it read.
"""

from __future__ import annotations

from collections.abc import Sequence

from lxml import etree

from adapters.base import Institution, InvalidMessage
from adapters.css._wire import FORMAT_VERSION, NAMESPACE, check_root, local, parse
from schemas.errors import FieldError

BATCH_ROOT = "Batch"


def _without_declaration(body: bytes) -> bytes:
    if body.startswith(b"<?xml"):
        end = body.find(b"?>")
        return body[end + 2 :].lstrip(b"\r\n")
    return body


def batch_part(body: bytes) -> bytes:
    """The bytes of a document a ``Batch`` holds: its own, declaration and trailing white
    space aside (Jokko's message log locates each document's part by them)."""
    return _without_declaration(body).rstrip()


def encode_batch(batch_id: str, messages: Sequence[tuple[str, bytes]]) -> bytes:
    """A ``Batch`` of ``(message_id, body)`` in order, identified by ``batch_id`` (the id the
    request is signed with); each document keeps its own bytes, declaration aside."""
    head = (
        f"<?xml version='1.0' encoding='UTF-8'?>\n<{BATCH_ROOT} xmlns=\"{NAMESPACE}\" "
        f'batchId="{batch_id}" formatVersion="{FORMAT_VERSION}">\n'
    ).encode()
    docs = b"\n".join(batch_part(body) for _, body in messages)
    return head + docs + f"\n</{BATCH_ROOT}>\n".encode()


def split_batch(raw: bytes) -> tuple[str, list[tuple[str, bytes]]] | None:
    """The institution's side: ``(batch_id, [(message_id, document), ...])`` of a ``Batch``, or
    None when ``raw`` is a single document. Each document is re-serialised on its own."""
    root, errors = parse(raw, what="batch")
    if root is None or local(root) != BATCH_ROOT:
        return None
    errors = check_root(root, {BATCH_ROOT})
    if errors:
        raise InvalidMessage(Institution.CSS, "batch", errors)
    out: list[tuple[str, bytes]] = []
    for i, child in enumerate(c for c in root if isinstance(c.tag, str)):
        message_id = child.get("messageId")
        if not message_id:
            loc = f"{child.sourceline}:/{BATCH_ROOT}/{local(child)}[{i + 1}]/@messageId"
            raise InvalidMessage(
                Institution.CSS, "batch", [FieldError(loc, "is required", "missing")]
            )
        doc = etree.tostring(child, xml_declaration=True, encoding="UTF-8", with_tail=False)
        out.append((message_id, doc + b"\n"))  # as a document of its own ends
    if not out:
        raise InvalidMessage(
            Institution.CSS, "batch", [FieldError("/Batch", "holds no document", "missing")]
        )
    return root.get("batchId") or "", out
