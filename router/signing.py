"""Signing of everything Jokko sends, and its verification by partners (Standard Webhooks v1).

Two schemes share the headers of https://www.standardwebhooks.com (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``) and the signed content ``{id}.{timestamp}.{body}``,
the body byte for byte as sent (no re-encoding into a JWS payload to canonicalise):

- ``v1a,<base64 Ed25519 signature>`` (the default): Jokko signs with a private key of its
  keyring and names it in ``webhook-key-id``; an institution verifies with nothing but Jokko's
  published JWKS (OKP/Ed25519 keys by ``kid``), and can show an auditor what Jokko sent, which a
  shared secret cannot prove (either side could have made an HMAC).
- ``v1,<base64 HMAC-SHA256>`` under a secret shared with one institution, kept only for a
  partner whose setting asks for it (``hmac`` or ``both``: both signatures in one header).

The signed timestamp plus the message id give a replay window. Several signatures may be sent
(space-separated) and a verifier may hold several keys, so keys rotate without a flag day.

A declaration file is signed detached (``sign_file``): the Ed25519 signature of the file's
exact bytes in a small JSON document beside it (adapters/ipres/FORMAT.md, "Signature").

Pure: the standard library and ``cryptography`` only; the clock is injected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from schemas.errors import JokkoError

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
KEY_ID_HEADER = "webhook-key-id"
"""Which of Jokko's keys made the ``v1a`` signature (its ``kid`` in the JWKS)."""
VERSION = "v1"
ASYMMETRIC_VERSION = "v1a"
ALG = "EdDSA"
MAX_SIGNATURES = 10
"""More entries than this in one header are not looked at (no free CPU for a sender)."""


class Reason(StrEnum):
    MISSING_HEADER = "missing_header"
    """A header is absent, empty or unreadable (a timestamp that is not an integer)."""
    BAD_SIGNATURE = "bad_signature"
    STALE_TIMESTAMP = "stale_timestamp"
    """Outside the tolerance window, in the past or in the future."""
    REPLAYED = "replayed"
    """This exact (message id, timestamp) pair was already accepted."""
    UNKNOWN_KEY = "unknown_key"
    """The key id is not in the JWKS the verifier holds (never Jokko's, or retired)."""


class SignatureRejected(JokkoError):
    """A request whose signature headers do not prove it comes, unchanged and fresh, from Jokko."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        super().__init__(f"signature rejected ({reason}): {detail}")


def _digest(secret: bytes, message_id: str, timestamp: int, body: bytes) -> bytes:
    return hmac.new(secret, _signed_content(message_id, timestamp, body), hashlib.sha256).digest()


def _header_safe(message_id: str) -> bool:
    return (
        bool(message_id)
        and message_id.isascii()
        and message_id.isprintable()
        and (" " not in message_id)
    )


def _signed_content(message_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{message_id}.{timestamp}.".encode() + body


class Scheme(StrEnum):
    """How pushes to one institution are signed (``JOKKO_<INST>__SIGNATURE``)."""

    ED25519 = "ed25519"
    HMAC = "hmac"
    BOTH = "both"


@dataclass(frozen=True)
class SigningKey:
    """One of Jokko's Ed25519 message-signing keys, by id (the private half: keyring only)."""

    kid: str
    private: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def from_seed(cls, kid: str, seed: bytes) -> SigningKey:
        """From the raw 32-byte private key (RFC 8032 seed) as the keyring stores it."""
        if not kid or not _header_safe(kid) or len(kid) > 64:
            raise ValueError(f"key id {kid!r}: 1-64 printable ASCII characters, no space")
        return cls(kid, Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    def public_jwk(self) -> dict[str, str]:
        return public_jwk(self.kid, self.private.public_key())


def public_jwk(kid: str, key: Ed25519PublicKey) -> dict[str, str]:
    """RFC 8037: an OKP key, curve Ed25519, ``x`` the raw public key in base64url."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": ALG,
        "use": "sig",
        "kid": kid,
        "x": _b64url(key.public_bytes_raw()),
    }


@dataclass(frozen=True)
class MessageKeys:
    """Jokko's message-signing keys: ``current`` signs, every one is published."""

    current: SigningKey
    previous: tuple[SigningKey, ...] = ()

    def jwks(self) -> dict[str, Any]:
        """The JWKS document (current key first): all an institution needs to verify."""
        return {"keys": [k.public_jwk() for k in (self.current, *self.previous)]}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: bytes, message_id: str, body: bytes, *, timestamp: int) -> dict[str, str]:
    """The three headers that sign ``body`` with an HMAC as message ``message_id`` sent at
    ``timestamp``.

    A retry re-signs with a new timestamp and the same id: the id names the message, the
    timestamp the attempt.
    """
    return sign_push(message_id, body, timestamp=timestamp, secret=secret)


def sign_push(
    message_id: str,
    body: bytes,
    *,
    timestamp: int,
    key: SigningKey | None = None,
    secret: bytes | None = None,
) -> dict[str, str]:
    """The headers signing ``body``: ``v1a`` with ``key``, ``v1`` with ``secret``, or both in
    one ``webhook-signature`` header (each verifier reads the entries of its version)."""
    if key is None and secret is None:
        raise ValueError("a key, a secret or both")
    if secret is not None and not secret:
        raise ValueError("an empty secret signs nothing")
    if not _header_safe(message_id):
        raise ValueError("message_id must be printable ASCII without spaces")
    if timestamp < 0:
        raise ValueError("timestamp must be unix seconds")
    headers = {ID_HEADER: message_id, TIMESTAMP_HEADER: str(timestamp)}
    signatures = []
    if secret is not None:
        digest = _digest(secret, message_id, timestamp, body)
        signatures.append(f"{VERSION},{base64.b64encode(digest).decode()}")
    if key is not None:
        signature = key.sign(_signed_content(message_id, timestamp, body))
        signatures.append(f"{ASYMMETRIC_VERSION},{base64.b64encode(signature).decode()}")
        headers[KEY_ID_HEADER] = key.kid
    headers[SIGNATURE_HEADER] = " ".join(signatures)
    return headers


class _FreshnessGuard:
    """What both verifiers share: headers present, timestamp in the window, no replay.

    A timestamp further than ``tolerance_s`` from ``clock()`` is stale; within the window, an
    accepted (message id, timestamp) pair is refused if seen again, so a captured request
    cannot be replayed, while Jokko's legitimate re-send (same id, new timestamp) is accepted.
    Thread-safe.
    """

    def __init__(self, *, tolerance_s: int, clock: Callable[[], float]) -> None:
        if tolerance_s <= 0:
            raise ValueError("tolerance_s must be positive")
        self._tolerance_s = tolerance_s
        self._clock = clock
        self._seen: dict[tuple[str, int], object] = {}  # (id, timestamp) -> its carrier
        self._expiry: list[tuple[int, str]] = []  # heap of (timestamp, message id)
        self._lock = threading.Lock()

    def verify(
        self,
        headers: Mapping[str, str],
        body: bytes,
        *,
        now: float | None = None,
        carrier: object = None,
    ) -> str:
        """The message id of a genuine, fresh, first-seen request; else ``SignatureRejected``.

        ``now``: the instant the request is judged at (the clock's by default); a Kafka record
        is judged when it was written, not when a consumer that was away reads it.
        ``carrier``: what carried the request (a record's topic, partition and offset): the
        same pair read again from the same carrier is a re-read (at-least-once delivery),
        not a replay; with None every second sight is a replay."""
        lower = {k.lower(): v for k, v in headers.items()}
        message_id = lower.get(ID_HEADER, "")
        raw_ts = lower.get(TIMESTAMP_HEADER, "")
        signatures = lower.get(SIGNATURE_HEADER, "")
        for name, value in (
            (ID_HEADER, message_id),
            (TIMESTAMP_HEADER, raw_ts),
            (SIGNATURE_HEADER, signatures),
        ):
            if not value.strip():
                raise SignatureRejected(Reason.MISSING_HEADER, f"no {name} header")
        raw_ts = raw_ts.strip()
        if not (raw_ts.isascii() and raw_ts.isdigit()) or len(raw_ts) > 12:
            raise SignatureRejected(
                Reason.MISSING_HEADER, f"{TIMESTAMP_HEADER} is not unix seconds"
            )
        timestamp = int(raw_ts)
        against = "the time it was written" if now is not None else "the receiver's clock"
        if now is None:
            now = self._clock()
        if abs(now - timestamp) > self._tolerance_s:
            raise SignatureRejected(
                Reason.STALE_TIMESTAMP, f"more than {self._tolerance_s} s from {against}"
            )
        self._check_signature(lower, message_id, timestamp, body, signatures)
        with self._lock:
            self._forget_before(now - self._tolerance_s)
            key = (message_id, timestamp)
            if key in self._seen:
                if carrier is None or self._seen[key] != carrier:
                    raise SignatureRejected(
                        Reason.REPLAYED, "this id and timestamp were already used"
                    )
                return message_id
            self._seen[key] = carrier
            heapq.heappush(self._expiry, (timestamp, message_id))
        return message_id

    def _check_signature(
        self,
        headers: Mapping[str, str],
        message_id: str,
        timestamp: int,
        body: bytes,
        signatures: str,
    ) -> None:
        raise NotImplementedError

    def _forget_before(self, oldest: float) -> None:
        """Drop pairs whose timestamp left the window: they would be refused as stale anyway."""
        while self._expiry and self._expiry[0][0] < oldest:
            timestamp, message_id = heapq.heappop(self._expiry)
            self._seen.pop((message_id, timestamp), None)

    @property
    def remembered(self) -> int:
        """How many (id, timestamp) pairs are held for replay detection (bounded by the window)."""
        with self._lock:
            return len(self._seen)


def _offered(signatures: str, version: str) -> list[str]:
    out = []
    for entry in signatures.split()[:MAX_SIGNATURES]:
        v, _, value = entry.partition(",")
        if v == version and value:
            out.append(value)
    return out


class Verifier(_FreshnessGuard):
    """Checks HMAC-signed (``v1``) requests for one partner endpoint; remembers what it
    accepted. Any of ``secrets`` may have signed (rotation: hold the old and the new key while
    senders switch)."""

    def __init__(
        self,
        secrets: Sequence[bytes],
        *,
        tolerance_s: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secrets or not all(secrets):
            raise ValueError("at least one secret, none empty")
        super().__init__(tolerance_s=tolerance_s, clock=clock)
        self._secrets = tuple(bytes(s) for s in secrets)

    def _check_signature(
        self,
        headers: Mapping[str, str],
        message_id: str,
        timestamp: int,
        body: bytes,
        signatures: str,
    ) -> None:
        offered = [o.encode() for o in _offered(signatures, VERSION)]
        if not offered:
            raise SignatureRejected(Reason.BAD_SIGNATURE, "no v1 signature")
        expected = [
            base64.b64encode(_digest(s, message_id, timestamp, body)) for s in self._secrets
        ]
        # Every comparison runs (no early exit) and each is constant-time.
        matches = [hmac.compare_digest(o, e) for o in offered for e in expected]
        if not any(matches):
            raise SignatureRejected(Reason.BAD_SIGNATURE, "no signature matches")


def keys_of(jwks: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 public keys of a JWKS document by ``kid``; other keys are passed over."""
    keys: dict[str, Ed25519PublicKey] = {}
    entries = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError("a JWKS document has a list of keys")
    for jwk in entries:
        if not isinstance(jwk, Mapping):
            continue
        kid, x = jwk.get("kid"), jwk.get("x")
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        if not isinstance(kid, str) or not kid or not isinstance(x, str):
            continue
        try:
            keys[kid] = Ed25519PublicKey.from_public_bytes(_b64url_decode(x))
        except (ValueError, binascii.Error):
            continue
    return keys


class JwksVerifier(_FreshnessGuard):
    """Checks Ed25519-signed (``v1a``) requests with nothing but Jokko's JWKS document.

    ``jwks`` is the document, or a function returning it (an institution fetching
    ``/.well-known/jokko-message-keys.json``): called again, at most every ``refresh_s``,
    when a request names a key id the verifier does not know, so a rotation is picked up.
    """

    def __init__(
        self,
        jwks: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        *,
        tolerance_s: int = 300,
        clock: Callable[[], float] = time.time,
        refresh_s: float = 30.0,
    ) -> None:
        super().__init__(tolerance_s=tolerance_s, clock=clock)
        self._source = jwks if callable(jwks) else None
        self._keys: dict[str, Ed25519PublicKey] = {} if callable(jwks) else keys_of(jwks)
        self._fetched_at: float | None = None
        self._refresh_s = refresh_s

    def key(self, kid: str) -> Ed25519PublicKey:
        key = self._keys.get(kid)
        if key is None and self._source is not None:
            now = time.monotonic()
            if self._fetched_at is None or now - self._fetched_at >= self._refresh_s:
                self._fetched_at = now
                try:
                    self._keys = keys_of(self._source())
                except (OSError, ValueError) as exc:
                    raise SignatureRejected(
                        Reason.UNKNOWN_KEY, f"cannot read the JWKS: {exc}"
                    ) from None
                key = self._keys.get(kid)
        if key is None:
            raise SignatureRejected(Reason.UNKNOWN_KEY, f"key {kid!r} is not in the JWKS")
        return key

    def _check_signature(
        self,
        headers: Mapping[str, str],
        message_id: str,
        timestamp: int,
        body: bytes,
        signatures: str,
    ) -> None:
        kid = headers.get(KEY_ID_HEADER, "").strip()
        if not kid:
            raise SignatureRejected(Reason.MISSING_HEADER, f"no {KEY_ID_HEADER} header")
        key = self.key(kid)
        if not _offered(signatures, ASYMMETRIC_VERSION):
            raise SignatureRejected(Reason.BAD_SIGNATURE, "no v1a signature")
        _match_v1a(key, kid, _signed_content(message_id, timestamp, body), signatures)


def _match_v1a(key: Ed25519PublicKey, kid: str, content: bytes, signatures: str) -> None:
    """One of the ``v1a`` signatures offered is ``key``'s over ``content``, or
    ``SignatureRejected``: the check a push and a Kafka record share."""
    for offered in _offered(signatures, ASYMMETRIC_VERSION):
        try:
            key.verify(base64.b64decode(offered, validate=True), content)
            return
        except (InvalidSignature, ValueError, binascii.Error):
            continue
    raise SignatureRejected(Reason.BAD_SIGNATURE, f"no signature matches key {kid!r}")


class AllOf:
    """Every verifier must accept (a partner checking both the HMAC and the Ed25519 one)."""

    def __init__(self, *verifiers: _FreshnessGuard) -> None:
        if not verifiers:
            raise ValueError("at least one verifier")
        self._verifiers = verifiers

    def verify(
        self,
        headers: Mapping[str, str],
        body: bytes,
        *,
        now: float | None = None,
        carrier: object = None,
    ) -> str:
        ids = [v.verify(headers, body, now=now, carrier=carrier) for v in self._verifiers]
        return ids[0]


# --- detached signature of a file ------------------------------------------------------------

SIG_SUFFIX = ".sig"
"""The signature of ``J....dat`` is ``J....dat.sig``, written before the file appears."""


def sign_file(key: SigningKey, content: bytes) -> bytes:
    """The detached signature document of a file: ``{"alg", "kid", "sig"}``, ``sig`` the
    Ed25519 signature of the file's exact bytes in base64url (as JOSE writes it)."""
    doc = {"alg": ALG, "kid": key.kid, "sig": _b64url(key.sign(content))}
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def file_signature(signature: bytes) -> str:
    """The Ed25519 signature of a ``sign_file`` document in standard base64 (as the message
    log keeps every signature)."""
    return base64.b64encode(_b64url_decode(json.loads(signature)["sig"])).decode()


def verify_file(jwks: Mapping[str, Any] | JwksVerifier, content: bytes, signature: bytes) -> str:
    """The key id that signed ``content``, or ``SignatureRejected``. ``jwks``: the signer's
    JWKS document, or a verifier holding it (an institution's ack files, ``router.receipts``).
    A detached signature signs no time: there is no replay window (a file applied twice is
    applied once)."""
    try:
        doc = json.loads(signature)
        kid, alg, sig = doc["kid"], doc["alg"], _b64url_decode(doc["sig"])
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise SignatureRejected(
            Reason.MISSING_HEADER, f"unreadable signature file: {exc}"
        ) from None
    if alg != ALG:
        raise SignatureRejected(Reason.BAD_SIGNATURE, f"algorithm {alg!r}, not {ALG}")
    if not isinstance(kid, str) or not kid:
        raise SignatureRejected(Reason.UNKNOWN_KEY, f"key {kid!r} is not in the JWKS")
    if isinstance(jwks, JwksVerifier):
        key = jwks.key(kid)
    else:
        found = keys_of(jwks).get(kid)
        if found is None:
            raise SignatureRejected(Reason.UNKNOWN_KEY, f"key {kid!r} is not in the JWKS")
        key = found
    try:
        key.verify(sig, content)
    except InvalidSignature:
        raise SignatureRejected(Reason.BAD_SIGNATURE, "the file is not what was signed") from None
    return kid


# --- a Kafka record ------------------------------------------------------------------------


def sign_record(
    key: SigningKey, message_id: str, value: bytes, *, timestamp: int
) -> list[tuple[str, bytes]]:
    """The Kafka headers signing a record's ``value`` (its exact bytes, sealed or not): the
    headers of a push (``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` with its
    ``v1a`` entry, ``webhook-key-id``) over the same ``{id}.{timestamp}.{value}``."""
    headers = sign_push(message_id, value, timestamp=timestamp, key=key)
    return [(name, text.encode()) for name, text in headers.items()]


def verify_record(
    jwks: Mapping[str, Any], headers: Sequence[tuple[str, bytes]], value: bytes
) -> str:
    """The key id that signed a Kafka record, or ``SignatureRejected``: what an institution
    reading its topic does, with nothing but Jokko's JWKS. No freshness window and no replay
    memory: a record is read whenever its consumer gets to it, and one read twice (after a
    rebalance) is the same record, which the consumer drops by its ``message_id``."""
    lower = {k.lower(): v.decode("utf-8", "replace") for k, v in headers}
    message_id, raw_ts = lower.get(ID_HEADER, ""), lower.get(TIMESTAMP_HEADER, "").strip()
    kid = lower.get(KEY_ID_HEADER, "").strip()
    if not message_id or not kid or not (raw_ts.isascii() and raw_ts.isdigit()):
        raise SignatureRejected(Reason.MISSING_HEADER, "the record's signature headers are missing")
    key = keys_of(jwks).get(kid)
    if key is None:
        raise SignatureRejected(Reason.UNKNOWN_KEY, f"key {kid!r} is not in the JWKS")
    content = _signed_content(message_id, int(raw_ts), value)
    _match_v1a(key, kid, content, lower.get(SIGNATURE_HEADER, ""))
    return kid
