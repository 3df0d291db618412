"""Signing of Jokko's HTTP pushes, and their verification by partners (Standard Webhooks v1).

Why HMAC as in https://www.standardwebhooks.com rather than JWS: each institution shares one
symmetric secret with Jokko, so public-key machinery buys nothing; the signature covers the body
byte for byte as sent (``{id}.{timestamp}.{body}``), with no re-encoding into a JWS payload that
would have to be canonicalised or carried base64-encoded; off-the-shelf verifiers exist in many
languages (an institution's IT need not run our code); and the signed timestamp plus the message
id give a replay window. Several ``v1,`` signatures may be sent (space-separated) and a verifier
may hold several secrets, so keys rotate without a flag day. Pure: stdlib only, the clock is
injected.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum

from schemas.errors import JokkoError

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
VERSION = "v1"
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


class SignatureRejected(JokkoError):
    """A request whose signature headers do not prove it comes, unchanged and fresh, from Jokko."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        super().__init__(f"signature rejected ({reason}): {detail}")


def _digest(secret: bytes, message_id: str, timestamp: int, body: bytes) -> bytes:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return hmac.new(secret, signed, hashlib.sha256).digest()


def _header_safe(message_id: str) -> bool:
    return (
        bool(message_id)
        and message_id.isascii()
        and message_id.isprintable()
        and (" " not in message_id)
    )


def sign(secret: bytes, message_id: str, body: bytes, *, timestamp: int) -> dict[str, str]:
    """The three headers that sign ``body`` as message ``message_id`` sent at ``timestamp``.

    A retry re-signs with a new timestamp and the same id: the id names the message, the
    timestamp the attempt.
    """
    if not secret:
        raise ValueError("an empty secret signs nothing")
    if not _header_safe(message_id):
        raise ValueError("message_id must be printable ASCII without spaces")
    if timestamp < 0:
        raise ValueError("timestamp must be unix seconds")
    signature = base64.b64encode(_digest(secret, message_id, timestamp, body)).decode()
    return {
        ID_HEADER: message_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: f"{VERSION},{signature}",
    }


class Verifier:
    """Checks signed requests for one partner endpoint; remembers what it accepted.

    Any of ``secrets`` may have signed (rotation: hold the old and the new key while senders
    switch). A timestamp further than ``tolerance_s`` from ``clock()`` is stale; within the
    window, an accepted (message id, timestamp) pair is refused if seen again, so a captured
    request cannot be replayed, while Jokko's legitimate re-send (same id, new timestamp) is
    accepted. Thread-safe.
    """

    def __init__(
        self,
        secrets: Sequence[bytes],
        *,
        tolerance_s: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secrets or not all(secrets):
            raise ValueError("at least one secret, none empty")
        if tolerance_s <= 0:
            raise ValueError("tolerance_s must be positive")
        self._secrets = tuple(bytes(s) for s in secrets)
        self._tolerance_s = tolerance_s
        self._clock = clock
        self._seen: set[tuple[str, int]] = set()
        self._expiry: list[tuple[int, str]] = []  # heap of (timestamp, message id)
        self._lock = threading.Lock()

    def verify(self, headers: Mapping[str, str], body: bytes) -> str:
        """The message id of a genuine, fresh, first-seen request; else ``SignatureRejected``."""
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
        now = self._clock()
        if abs(now - timestamp) > self._tolerance_s:
            raise SignatureRejected(
                Reason.STALE_TIMESTAMP, f"more than {self._tolerance_s} s from the receiver's clock"
            )
        if not self._signed_by_a_secret(message_id, timestamp, body, signatures):
            raise SignatureRejected(Reason.BAD_SIGNATURE, "no signature matches")
        with self._lock:
            self._forget_before(now - self._tolerance_s)
            key = (message_id, timestamp)
            if key in self._seen:
                raise SignatureRejected(Reason.REPLAYED, "this id and timestamp were already used")
            self._seen.add(key)
            heapq.heappush(self._expiry, (timestamp, message_id))
        return message_id

    def _signed_by_a_secret(
        self, message_id: str, timestamp: int, body: bytes, signatures: str
    ) -> bool:
        offered = []
        for entry in signatures.split()[:MAX_SIGNATURES]:
            version, _, value = entry.partition(",")
            if version == VERSION and value:
                offered.append(value.encode())
        if not offered:
            return False
        expected = [
            base64.b64encode(_digest(s, message_id, timestamp, body)) for s in self._secrets
        ]
        # Every comparison runs (no early exit) and each is constant-time.
        matches = [hmac.compare_digest(o, e) for o in offered for e in expected]
        return any(matches)

    def _forget_before(self, oldest: float) -> None:
        """Drop pairs whose timestamp left the window: they would be refused as stale anyway."""
        while self._expiry and self._expiry[0][0] < oldest:
            timestamp, message_id = heapq.heappop(self._expiry)
            self._seen.discard((message_id, timestamp))

    @property
    def remembered(self) -> int:
        """How many (id, timestamp) pairs are held for replay detection (bounded by the window)."""
        with self._lock:
            return len(self._seen)
