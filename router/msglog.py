"""The message log: proof of what Jokko sent each institution, in an append-only hash chain.

One row per thing that left Jokko: an HTTP push, an HTTP batch, an IPRES declaration file, a
Kafka record. Each says when, to whom, the id and timestamp signed, the SHA-256 of the exact
bytes, Jokko's Ed25519 signature with its key id, the HTTP status and what the answer said per
message. The body itself stays in the outbox, sealed under its member's key
(``router.sealing``): erasure destroys that key, the digest stays.

What was signed depends on ``detail.kind`` (``detail`` is NULL for a single push):

- push, ``batch``, ``kafka``: ``v1a`` over ``{signed_id}.{timestamp}.{bytes}`` (Standard
  Webhooks; a Kafka record carries the same headers as Kafka headers);
- ``file``: the file's exact bytes (its detached ``.sig``, ``router.signing.sign_file``).

A batch or a file carries several members' messages. Its ``detail`` cuts its bytes into the
envelope's own bytes (``glue``, no personal data) and each message's part, located in the
message's own body (``parts``: ``[message_id, start, end, sha256]``, the part being
``body[start:end]``): ``glue[0] + part[0] + glue[1] + ... + part[n-1] + glue[n]`` is the
batch byte for byte. So one message's evidence holds its own bytes, checked against its
part's digest in the chain, and, while every message of the batch is still readable, the
other parts, which give back the whole batch, its digest and Jokko's signature over it.

A Kafka record sealed under the institution's topic key (``router.envelope``) was signed as
sealed; ``detail`` keeps the key id and nonce, so Jokko, holding that key, makes the same
bytes again from the clear body for a bundle (and ``clear_sha256``, the clear body's digest).

Rows are appended by ``append`` in the transaction that records the delivery
(``DeliveryWorker._record``), serialised and chained exactly as the audit log
(``router.audit.serialise`` and ``link``): ``row_hash = sha256(prev_hash || canonical(row))``
with ``canonical`` the JSON array ``FIELDS`` (frozen: bundles made today are checked years
later, by verifiers that are not Jokko; docs/operations.md spells it out). Triggers refuse
UPDATE and DELETE (migration 0011).

``bundle`` gathers the evidence about one message; ``check`` verifies a bundle offline with
the standard library and ``cryptography`` alone; ``verify`` walks the whole chain and
``checkpoint`` signs its head, to be published.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, Engine, Table, insert, select

from router.audit import GENESIS, _broken_link, link, serialise
from router.envelope import reseal_for_institution
from router.sealing import member_keys, open_body
from router.signing import MessageKeys, SigningKey
from router.store import MessageLogIndexRow, MessageLogRow, OutboxRow, ReceiptRow
from router.vault import KeySet, SealError, Vault

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
``message_ids`` and ``outcome`` the stored JSON text as is. A row whose ``detail`` is not
NULL has it (the stored JSON text) as a twelfth element: rows without one hash as before."""
CHECKPOINT = "jokko-checkpoint/1"


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
    detail: Mapping[str, Any] | None = None
    """How a batch, file or Kafka record carried its messages (``carried_in``, the module's
    doc); None for a single push."""


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
    if row.get("detail") is not None:
        fields.append(row["detail"])
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def carried_in(
    kind: str, whole: bytes, parts: Sequence[tuple[str, bytes, bytes]], **extra: Any
) -> dict[str, Any]:
    """The ``detail`` of a batch or file ``whole``: ``parts`` are (message id, body, the bytes
    of the body the envelope holds), in the envelope's order. Raises ``ValueError`` when a
    part is not where it should be (an envelope that changed its bytes: a bug)."""
    glue: list[str] = []
    located: list[list[Any]] = []
    pos = 0
    for message_id, body, part in parts:
        start, at = body.find(part), whole.find(part, pos)
        if start < 0 or at < 0:
            raise ValueError(f"message {message_id} is not in the envelope as it was given")
        glue.append(_b64(whole[pos:at]))
        located.append([message_id, start, start + len(part), _sha(part)])
        pos = at + len(part)
    glue.append(_b64(whole[pos:]))
    return {"kind": kind, **extra, "glue": glue, "parts": located}


def _detail_text(detail: Mapping[str, Any] | None) -> str | None:
    if detail is None:
        return None
    return json.dumps(detail, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


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
            "detail": _detail_text(s.detail),
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
    if r.detail is not None:
        row["detail"] = r.detail
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


def _last_request(conn: Connection, message_id: str) -> Any:
    """The last logged request that carried ``message_id`` (a push, batch, file or record)."""
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
    return found


def _detail(row: Mapping[str, Any]) -> dict[str, Any] | None:
    text = row.get("detail")
    if text is None:
        return None
    detail = json.loads(text)
    if not isinstance(detail, dict):
        raise ValueError("detail is not a JSON object")
    return detail


def bundle(
    conn: Connection,
    message_id: str,
    body: bytes | None,
    keys: MessageKeys,
    *,
    bodies: Mapping[str, bytes | None] | None = None,
    value: bytes | None = None,
) -> dict[str, Any]:
    """The evidence about ``message_id``: its last logged request, the rows from it to the
    head, its body (None once erased), the public key that signed and the receipt.

    For a batch or file, ``bodies`` are the other messages' bodies (None: erased, or left
    out): their parts go in ``batch.parts``, so the whole batch and its signature check. For a
    sealed Kafka record, ``value`` is the record's sealed value (``record.value``)."""
    found = _last_request(conn, message_id)
    chain = conn.execute(select(LOG).where(LOG.c.id > found.id).order_by(LOG.c.id)).all()
    jwk = next(
        (k.public_jwk() for k in (keys.current, *keys.previous) if k.kid == found.key_id), None
    )
    detail = json.loads(found.detail) if found.detail is not None else None
    kind = detail["kind"] if detail else "push"
    if kind == "push" and found.signed_id != message_id:
        # a batch logged before message_log.detail: the envelope's digest only
        sent_body, why = None, "batch: the envelope's digest only"
    else:
        sent_body, why = body, "erased"
    doc: dict[str, Any] = {
        "format": FORMAT,
        "message_id": message_id,
        "message": {
            "body": _b64(sent_body) if sent_body is not None else None,
            "why_no_body": None if sent_body is not None else why,
        },
        "key": jwk,
        "log_row": _as_dict(found),
        "chain": [_as_dict(r) for r in chain],
        "receipt": receipt(conn, message_id),
    }
    if detail is not None and kind in ("batch", "file"):
        given = {**(bodies or {}), message_id: body}
        doc["batch"] = {
            "parts": [
                _b64(b[start:end]) if (b := given.get(mid)) is not None else None
                for mid, start, end, _ in detail["parts"]
            ]
        }
    elif detail is not None and kind == "kafka" and detail.get("sealed"):
        doc["record"] = {"value": _b64(value) if value is not None else None}
    return doc


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _decoded(encoded: str | None) -> bytes | None:
    return base64.b64decode(encoded, validate=True) if encoded is not None else None


def check(doc: Mapping[str, Any]) -> list[str]:
    """What fails in a bundle (empty: it verifies): the message's place in the row, the
    digests of what the bundle holds (the body, a batch's parts and the whole batch, a sealed
    record), the Ed25519 signature with the bundle's key, every row's hash and link to the head.
    """
    problems: list[str] = []
    try:
        row = doc["log_row"]
        if doc.get("format") != FORMAT:
            problems.append(f"format: not {FORMAT}")
        if doc["message_id"] not in json.loads(row["message_ids"]):
            problems.append("log row: does not carry the message")
        detail = _detail(row)
        kind = detail["kind"] if detail else "push"
        body = _decoded(doc["message"]["body"])
        if kind in ("batch", "file"):
            assert detail is not None
            problems.extend(_check_parts(doc, row, detail, body))
        elif kind == "kafka" and detail and detail.get("sealed"):
            if body is not None and _sha(body) != detail["clear_sha256"]:
                problems.append("message: its SHA-256 is not the logged digest of the clear body")
            value = _decoded((doc.get("record") or {}).get("value"))
            if value is not None:
                problems.extend(_check_signed(doc, row, value, "record"))
        elif body is not None:
            problems.extend(_check_signed(doc, row, body, "message"))
        rows = [row, *doc["chain"]]
        for i, r in enumerate(rows):
            if link(r["prev_hash"], canonical(r)) != r["row_hash"]:
                problems.append(f"chain: row {r['id']} does not match its hash")
            if i and r["prev_hash"] != rows[i - 1]["row_hash"]:
                problems.append(f"chain: row {r['id']} does not link to row {rows[i - 1]['id']}")
    except (KeyError, TypeError, ValueError, IndexError, binascii.Error) as exc:
        problems.append(f"bundle unreadable: {type(exc).__name__}: {exc}")
    return problems


def _check_signed(
    doc: Mapping[str, Any], row: Mapping[str, Any], sent: bytes, what: str
) -> list[str]:
    """The digest of the exact bytes sent, and Jokko's signature over them."""
    if _sha(sent) != row["body_sha256"]:
        return [f"{what}: its SHA-256 is not the logged digest"]
    detail = _detail(row)
    if detail is not None and detail["kind"] == "file":
        signed = sent
    else:
        signed = f"{row['signed_id']}.{row['timestamp']}.".encode() + sent
    return _check_signature(doc.get("key"), row, signed)


def _check_parts(
    doc: Mapping[str, Any], row: Mapping[str, Any], detail: Mapping[str, Any], body: bytes | None
) -> list[str]:
    """A message in a batch or file: its part is its own bytes; with every part, the whole."""
    parts = detail["parts"]
    ids = [p[0] for p in parts]
    if doc["message_id"] not in ids:
        return ["log row: its parts do not name the message"]
    index = ids.index(doc["message_id"])
    _, start, end, digest = parts[index]
    problems = []
    if body is not None and _sha(body[start:end]) != digest:
        problems.append("message: its SHA-256 is not the logged digest of its part")
    given = [_decoded(p) for p in (doc.get("batch") or {}).get("parts") or [None] * len(parts)]
    if len(given) != len(parts):
        return [*problems, "batch: not one part per message of the log row"]
    for part, (mid, _, _, logged) in zip(given, parts, strict=True):
        if part is not None and _sha(part) != logged:
            problems.append(f"batch: the part of {mid}: its SHA-256 is not the logged digest")
    every = [p for p in given if p is not None]
    if problems or len(every) != len(given):
        return problems  # what is there is checked; the whole needs every part
    glue = [base64.b64decode(g, validate=True) for g in detail["glue"]]
    whole = glue[0] + b"".join(p + g for p, g in zip(every, glue[1:], strict=True))
    return _check_signed(doc, row, whole, "batch")


def _check_signature(jwk: Any, row: Mapping[str, Any], signed: bytes) -> list[str]:
    if not row["signature"]:
        return ["signature: the request was not signed with Ed25519"]
    if not jwk or jwk.get("kid") != row["key_id"] or jwk.get("crv") != "Ed25519":
        return [f"signature: the bundle's key is not {row['key_id']}"]
    try:
        key = Ed25519PublicKey.from_public_bytes(_b64url(jwk["x"]))
        key.verify(base64.b64decode(row["signature"], validate=True), signed)
    except (InvalidSignature, ValueError, binascii.Error):
        return ["signature: Ed25519 verification failed"]
    return []


def what_verified(doc: Mapping[str, Any]) -> str:
    """In words, what a bundle that ``check`` passed proved (the signature needs the bytes)."""
    detail = _detail(doc["log_row"])
    kind = detail["kind"] if detail else "push"
    if kind in ("batch", "file"):
        parts = (doc.get("batch") or {}).get("parts") or []
        whole = bool(parts) and all(p is not None for p in parts)
        own = "its part" if doc["message"]["body"] else "no body"
        return f"{kind}: {own}, " + ("the whole, digest, signature" if whole else "digests only")
    if kind == "kafka" and detail and detail.get("sealed"):
        value = (doc.get("record") or {}).get("value")
        return "sealed record: " + ("value, digest, signature" if value else "digest only")
    return "body, digest, signature" if doc["message"]["body"] else "digest only"


def evidence(
    engine: Engine,
    vault: Vault,
    keys: MessageKeys,
    message_id: str,
    *,
    topic_keys: Mapping[str, KeySet] | None = None,
    whole: bool = True,
) -> dict[str, Any]:
    """``bundle`` for ``message_id``, the bodies opened from the outbox with the vault (None
    once their member was erased, or when the outbox row is gone). ``whole``: a batch's or
    file's other messages go in too (they are other members' data: an auditor who must not
    see them gets the message's part and the digests). ``topic_keys``: by institution, to
    make a sealed Kafka record's value again."""
    with engine.connect() as conn:
        found = _last_request(conn, message_id)
        detail = json.loads(found.detail) if found.detail is not None else None
        carried = json.loads(found.message_ids) if detail is not None and whole else []
        bodies = _bodies(conn, vault, {message_id, *carried})
        body = bodies.get(message_id)
        value = None
        if detail is not None and detail["kind"] == "kafka" and detail.get("sealed") and body:
            value = _resealed(topic_keys or {}, found, detail, body)
        return bundle(conn, message_id, body, keys, bodies=bodies, value=value)


def _bodies(conn: Connection, vault: Vault, message_ids: set[str]) -> dict[str, bytes | None]:
    found = conn.execute(
        select(OutboxRow.message_id, OutboxRow.member_id, OutboxRow.body).where(
            OutboxRow.message_id.in_(sorted(message_ids))
        )
    ).all()
    deks = member_keys(conn, vault, {r.member_id for r in found})
    out: dict[str, bytes | None] = {}
    for r in found:
        try:
            out[r.message_id] = open_body(vault, deks, r.member_id, r.message_id, r.body)
        except SealError:
            out[r.message_id] = None
    return out


def _resealed(
    topic_keys: Mapping[str, KeySet], row: Any, detail: Mapping[str, Any], body: bytes
) -> bytes | None:
    """The sealed value Jokko produced, made again (None without the topic key, or when the
    clear body is not the one logged: a nonce is never used on other bytes)."""
    keys = topic_keys.get(row.institution)
    if keys is None or _sha(body) != detail["clear_sha256"]:
        return None
    try:
        value = reseal_for_institution(
            keys,
            row.institution,
            row.signed_id,
            body,
            detail["sealed"],
            base64.b64decode(detail["nonce"]),
        )
    except SealError:
        return None
    return value if _sha(value) == row.body_sha256 else None


class ChainVerdict(NamedTuple):
    """What ``verify`` found: the rows checked and the head, or the first row at fault."""

    checked: int
    head_id: int | None
    head_hash: str | None
    row_id: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(
    engine: Engine, *, since: datetime | None = None, head: str | None = None, batch: int = 5000
) -> ChainVerdict:
    """Walk the message log from its first row (or the first sent at ``since`` or later,
    whose link to the row before is then taken as given); stop at the first row that is not
    what was written. ``head``: a ``row_hash`` published earlier that must still be in it."""
    checked, prev, before_prev_hash = 0, None, GENESIS
    head_seen = head is None
    with engine.connect() as conn:
        after = -1
        if since is not None:
            first = conn.execute(
                select(LOG.c.id).where(LOG.c.sent_at >= since).order_by(LOG.c.id).limit(1)
            ).scalar()
            after = first - 1 if first is not None else 2**62
        while True:
            rows = conn.execute(
                select(LOG).where(LOG.c.id > after).order_by(LOG.c.id).limit(batch)
            ).all()
            for r in rows:
                if link(r.prev_hash, canonical(_as_dict(r))) != r.row_hash:
                    return ChainVerdict(
                        checked,
                        None,
                        None,
                        r.id,
                        f"row {r.id} was altered: its content does not match its hash",
                    )
                if prev is None:
                    if since is None and r.prev_hash != GENESIS:
                        return ChainVerdict(
                            checked,
                            None,
                            None,
                            r.id,
                            f"the chain does not start at row {r.id}: rows before it were removed",
                        )
                elif r.prev_hash != prev.row_hash:
                    culprit, problem = _broken_link(prev, r, before_prev_hash)
                    return ChainVerdict(checked, None, None, culprit, problem)
                checked += 1
                head_seen = head_seen or r.row_hash == head
                before_prev_hash = prev.row_hash if prev is not None else r.prev_hash
                prev = r
            if len(rows) < batch:
                break
            after = rows[-1].id
    if not head_seen:
        end = prev.id if prev is not None else "none"
        return ChainVerdict(
            checked,
            None,
            None,
            prev.id if prev is not None else None,
            f"the published head {head} is not in the chain: rows were cut off its end (it now "
            f"ends at row {end}), or it was rewritten",
        )
    if prev is None:
        return ChainVerdict(checked, None, None)
    return ChainVerdict(checked, prev.id, prev.row_hash)


def _checkpoint_content(doc: Mapping[str, Any]) -> bytes:
    fields = [doc["format"], doc["id"], doc["row_hash"], doc["at"]]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


def checkpoint(engine: Engine, key: SigningKey, at: datetime) -> dict[str, Any]:
    """The message log's head signed by Jokko's message key, to publish (the monthly letter,
    a web page): a bundle made later must contain it, or rows were removed or rewritten."""
    with engine.connect() as conn:
        head = conn.execute(
            select(LOG.c.id, LOG.c.row_hash).order_by(LOG.c.id.desc()).limit(1)
        ).first()
    if head is None:
        raise NoEvidence("the message log is empty: no head to sign")
    doc: dict[str, Any] = {"format": CHECKPOINT, "id": head.id, "row_hash": head.row_hash}
    doc["at"] = _iso(at)
    doc["key"] = key.public_jwk()
    doc["signature"] = _b64(key.sign(_checkpoint_content(doc)))
    return doc


def check_checkpoint(checkpoint_doc: Mapping[str, Any], doc: Mapping[str, Any]) -> list[str]:
    """What fails in a published checkpoint, and whether the bundle ``doc`` holds its head."""
    try:
        if checkpoint_doc.get("format") != CHECKPOINT:
            return [f"checkpoint: format not {CHECKPOINT}"]
        jwk = checkpoint_doc["key"]
        problems = _check_signature(
            jwk,
            {"signature": checkpoint_doc["signature"], "key_id": jwk.get("kid")},
            _checkpoint_content(checkpoint_doc),
        )
        problems = [p.replace("signature:", "checkpoint signature:") for p in problems]
        rows = [doc["log_row"], *doc["chain"]]
        if not any(
            r["id"] == checkpoint_doc["id"] and r["row_hash"] == checkpoint_doc["row_hash"]
            for r in rows
        ):
            problems.append(
                f"checkpoint: row {checkpoint_doc['id']} {checkpoint_doc['row_hash']} is not in "
                "the bundle's chain (made before the checkpoint, or the log was rewritten)"
            )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return [f"checkpoint unreadable: {type(exc).__name__}: {exc}"]
    return problems
