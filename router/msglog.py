"""The message log: proof of what Jokko sent each institution, in an append-only hash chain.

One row per request that left Jokko (a push, or a batch with the messages it carried): when,
to whom, ``webhook-id`` and ``webhook-timestamp``, the SHA-256 of the exact bytes of the body,
Jokko's ``v1a`` Ed25519 signature over ``{webhook-id}.{webhook-timestamp}.{body}`` with its key
id, the HTTP status and what the answer said per message. The body itself stays in the outbox,
sealed under its member's key (``router.sealing``): erasure destroys that key, the digest stays.

Rows are appended by ``append`` in the transaction that records the delivery
(``DeliveryWorker._record``), serialised and chained exactly as the audit log
(``router.audit.serialise`` and ``link``): ``row_hash = sha256(prev_hash || canonical(row))``
with ``canonical`` the JSON array ``FIELDS`` (frozen: bundles made today are checked years
later, by verifiers that are not Jokko; docs/operations.md spells it out). Triggers refuse
UPDATE and DELETE (migration 0011).

``bundle`` gathers the evidence about one message; ``check`` verifies a bundle offline with
the standard library and ``cryptography`` alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, Engine, Table, insert, select

from router.audit import GENESIS, link, serialise
from router.sealing import member_keys, open_body
from router.signing import MessageKeys
from router.store import MessageLogIndexRow, MessageLogRow, OutboxRow, ReceiptRow
from router.vault import SealError, Vault

LOG: Table = MessageLogRow.__table__  # type: ignore[assignment]
INDEX: Table = MessageLogIndexRow.__table__  # type: ignore[assignment]

FORMAT = "jokko-evidence/1"
FIELDS = (
    "id",
    "sent_at",
    "institution",
    "signed_id",
    "message_ids",
    "timestamp",
    "body_sha256",
    "key_id",
    "signature",
    "status",
    "outcome",
)
"""The order of the canonical array; ``sent_at`` as ISO 8601 UTC with microseconds,
``message_ids`` and ``outcome`` the stored JSON text as is."""


@dataclass(frozen=True)
class Sent:
    """What a channel knows of one request it sent: what the log needs besides the answer."""

    signed_id: str
    message_ids: tuple[str, ...]
    timestamp: int
    body_sha256: str
    key_id: str | None
    signature: str | None
    status: int | None


def v1a_signature(header: str) -> str | None:
    """The base64 Ed25519 signature in a ``webhook-signature`` header, if there is one."""
    for entry in header.split():
        version, _, value = entry.partition(",")
        if version == "v1a":
            return value
    return None


def canonical(row: Mapping[str, Any]) -> bytes:
    """The frozen encoding of a row (``row`` as in a bundle: ``sent_at`` already a string)."""
    fields = [row[f] for f in FIELDS]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def append(
    conn: Connection,
    sent: Sequence[tuple[Sent, Mapping[str, str]]],
    *,
    institution: str,
    at: datetime,
) -> None:
    """Add one row per request (with the answer per message) at the head of the chain, in
    ``conn``'s transaction: one lock, one read of the head, one insert."""
    if not sent:
        return
    serialise(conn, LOG.name)
    head = conn.execute(select(LOG.c.id, LOG.c.row_hash).order_by(LOG.c.id.desc()).limit(1)).first()
    prev_id, prev_hash = (head[0], head[1]) if head is not None else (0, GENESIS)
    values = []
    for s, outcome in sent:
        prev_id += 1
        row: dict[str, Any] = {
            "id": prev_id,
            "sent_at": _iso(at),
            "institution": institution,
            "signed_id": s.signed_id,
            "message_ids": json.dumps(list(s.message_ids), separators=(",", ":")),
            "timestamp": s.timestamp,
            "body_sha256": s.body_sha256,
            "key_id": s.key_id,
            "signature": s.signature,
            "status": s.status,
            "outcome": json.dumps(dict(outcome), ensure_ascii=False, separators=(",", ":")),
        }
        row_hash = link(prev_hash, canonical(row))
        values.append({**row, "sent_at": at, "prev_hash": prev_hash, "row_hash": row_hash})
        prev_hash = row_hash
    conn.execute(insert(LOG), values)
    conn.execute(
        insert(INDEX),
        [
            {"message_id": m, "log_id": v["id"]}
            for v, (s, _) in zip(values, sent, strict=True)
            for m in s.message_ids
        ],
    )


class NoEvidence(LookupError):
    """No request carrying this message is in the log."""


def _as_dict(r: Any) -> dict[str, Any]:
    row = {f: getattr(r, f) for f in FIELDS}
    row["sent_at"] = _iso(r.sent_at)
    return {**row, "prev_hash": r.prev_hash, "row_hash": r.row_hash}


def _json_safe(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime):
        return _iso(value)
    return value


def receipt(conn: Connection, message_id: str) -> list[dict[str, Any]] | None:
    """The message's stored receipts: the institution's signed answers (``receipt``)."""
    table: Table = ReceiptRow.__table__  # type: ignore[assignment]
    found = conn.execute(select(table).where(table.c.message_id == message_id)).mappings().all()
    return [{k: _json_safe(v) for k, v in r.items()} for r in found] or None


def bundle(
    conn: Connection, message_id: str, body: bytes | None, keys: MessageKeys
) -> dict[str, Any]:
    """The evidence about ``message_id``: its last logged request, the rows from it to the
    head, the body (None once erased, or for a batch whose envelope is only digested), the
    public key that signed and the receipt."""
    # the last request that carried it, a single push (signed with its id) or a batch
    last = (
        select(INDEX.c.log_id)
        .where(INDEX.c.message_id == message_id)
        .order_by(INDEX.c.log_id.desc())
        .limit(1)
        .scalar_subquery()
    )
    found = conn.execute(select(LOG).where(LOG.c.id == last)).first()
    if found is None:
        raise NoEvidence(f"no request carrying message {message_id} is in the message log")
    chain = conn.execute(select(LOG).where(LOG.c.id > found.id).order_by(LOG.c.id)).all()
    jwk = next(
        (k.public_jwk() for k in (keys.current, *keys.previous) if k.kid == found.key_id), None
    )
    single = found.signed_id == message_id
    sent_body = body if single else None
    return {
        "format": FORMAT,
        "message_id": message_id,
        "message": {
            "body": base64.b64encode(sent_body).decode() if sent_body is not None else None,
            "why_no_body": None
            if sent_body is not None
            else ("erased" if single else "batch: the envelope's digest only"),
        },
        "key": jwk,
        "log_row": _as_dict(found),
        "chain": [_as_dict(r) for r in chain],
        "receipt": receipt(conn, message_id),
    }


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check(doc: Mapping[str, Any]) -> list[str]:
    """What fails in a bundle (empty: it verifies): the message's place in the row, the body's
    digest, the Ed25519 signature with the bundle's key, every row's hash and link to the head.
    """
    problems: list[str] = []
    try:
        row = doc["log_row"]
        if doc.get("format") != FORMAT:
            problems.append(f"format: not {FORMAT}")
        if doc["message_id"] not in json.loads(row["message_ids"]):
            problems.append("log row: does not carry the message")
        encoded = doc["message"]["body"]
        if encoded is not None:
            body = base64.b64decode(encoded, validate=True)
            if hashlib.sha256(body).hexdigest() != row["body_sha256"]:
                problems.append("message: its SHA-256 is not the logged digest")
            problems.extend(_check_signature(doc.get("key"), row, body))
        rows = [row, *doc["chain"]]
        for i, r in enumerate(rows):
            if link(r["prev_hash"], canonical(r)) != r["row_hash"]:
                problems.append(f"chain: row {r['id']} does not match its hash")
            if i and r["prev_hash"] != rows[i - 1]["row_hash"]:
                problems.append(f"chain: row {r['id']} does not link to row {rows[i - 1]['id']}")
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        problems.append(f"bundle unreadable: {type(exc).__name__}: {exc}")
    return problems


def _check_signature(jwk: Any, row: Mapping[str, Any], body: bytes) -> list[str]:
    if not row["signature"]:
        return ["signature: the request was not signed with Ed25519"]
    if not jwk or jwk.get("kid") != row["key_id"] or jwk.get("crv") != "Ed25519":
        return [f"signature: the bundle's key is not {row['key_id']}"]
    signed = f"{row['signed_id']}.{row['timestamp']}.".encode() + body
    try:
        key = Ed25519PublicKey.from_public_bytes(_b64url(jwk["x"]))
        key.verify(base64.b64decode(row["signature"], validate=True), signed)
    except (InvalidSignature, ValueError, binascii.Error):
        return ["signature: Ed25519 verification failed"]
    return []


def evidence(engine: Engine, vault: Vault, keys: MessageKeys, message_id: str) -> dict[str, Any]:
    """``bundle`` for ``message_id``, its body opened from the outbox with the vault (None
    once its member was erased, or when the outbox row is gone)."""
    with engine.connect() as conn:
        outbox = conn.execute(
            select(OutboxRow.member_id, OutboxRow.body).where(OutboxRow.message_id == message_id)
        ).first()
        body = None
        if outbox is not None:
            try:
                deks = member_keys(conn, vault, {outbox.member_id})
                body = open_body(vault, deks, outbox.member_id, message_id, outbox.body)
            except SealError:
                body = None
        return bundle(conn, message_id, body, keys)
