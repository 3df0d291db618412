"""An institution's signed acknowledgement checked against its registered keys, whichever way
it came: the HTTP answer to a push, an ack posted to the API or a record on its ack topic
(Standard Webhooks ``v1a`` headers over the exact bytes), or an ack file (its detached
``<name>.sig``, the format of the declaration files' signatures).

A verified one is the receipt Jokko keeps (``receipt`` table), the proof that the institution
said what it said; a refused one is never applied, and its reason (``router.signing.Reason``,
``unsigned`` or ``wrong_id``) is the detail of the ``receipt_refused`` trail step and the label
of ``jokko_receipts_refused_total``. Pure: no store, no network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from router.signing import (
    ID_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    JwksVerifier,
    SignatureRejected,
    verify_file,
)

UNSIGNED = "unsigned"
"""No signature on an acknowledgement from an institution whose acks must be signed."""
WRONG_ID = "wrong_id"
"""A valid signature over another message's (or batch's) answer: a receipt replayed across."""
FILE_TIMESTAMP = 0
"""A detached file signature signs no time: its receipt's ``timestamp``."""


@dataclass(frozen=True)
class Receipt:
    """An institution's acknowledgement whose signature was verified.

    ``signature`` is the ``webhook-signature`` header as received, or for an ack file the
    whole detached signature document (``{"alg", "kid", "sig"}``): either way what a third
    party needs, with the institution's JWKS, to check ``body`` again."""

    signed_id: str
    body: bytes
    timestamp: int
    signature: str
    kid: str

    def columns(self) -> dict[str, object]:
        """The ``receipt`` row's columns but the message's (message id, institution, time)."""
        return {
            "signed_id": self.signed_id,
            "body": self.body,
            "body_sha256": hashlib.sha256(self.body).hexdigest(),
            "timestamp": self.timestamp,
            "signature": self.signature,
            "kid": self.kid,
        }


@dataclass(frozen=True)
class Refusal:
    """Why an acknowledgement's signature was refused: nothing of it is applied."""

    refused: str
    """The reason, a short label (the trail's detail, the metric's ``reason``)."""
    detail: str

    @property
    def text(self) -> str:
        return f"receipt refused: {self.refused}: {self.detail}"


def check_receipt(
    verifier: JwksVerifier,
    headers: Mapping[str, str],
    body: bytes,
    *,
    required: bool,
    expected_id: str | None = None,
    now: float | None = None,
    carrier: object = None,
) -> Receipt | Refusal | None:
    """An institution's signed acknowledgement checked against its registered keys: the
    receipt, None when unsigned and not ``required``, or the refusal with its reason.
    ``expected_id``: the id the answer must be signed for (the message or batch answered);
    ``now`` and ``carrier`` as ``JwksVerifier.verify`` takes them (an ack record: when it was
    written, and its position)."""
    lower = {k.lower(): v for k, v in headers.items()}
    if not lower.get(SIGNATURE_HEADER, "").strip():
        if required:
            return Refusal(UNSIGNED, "the acknowledgement is not signed")
        return None
    answered = lower.get(ID_HEADER, "").strip()
    if expected_id is not None and answered and answered != expected_id:
        return Refusal(WRONG_ID, f"the answer is signed for {answered!r}, not {expected_id!r}")
    try:
        signed_id = verifier.verify(lower, body, now=now, carrier=carrier)
    except SignatureRejected as exc:
        return Refusal(exc.reason.value, str(exc))
    return Receipt(
        signed_id=signed_id,
        body=body,
        timestamp=int(lower[TIMESTAMP_HEADER].strip()),
        signature=lower[SIGNATURE_HEADER],
        kid=lower.get(KEY_ID_HEADER, "").strip(),
    )


def check_file_receipt(
    verifier: JwksVerifier,
    name: str,
    content: bytes,
    signature: bytes | None,
    *,
    required: bool,
) -> Receipt | Refusal | None:
    """An ack file checked with its detached signature (None: no ``.sig`` beside it): the
    receipt (signed id: the file's name), None when unsigned and not ``required``, or the
    refusal. No replay window: a file signs no time, and applying one twice changes nothing."""
    if signature is None:
        if required:
            return Refusal(UNSIGNED, f"no signature file beside {name}")
        return None
    try:
        kid = verify_file(verifier, content, signature)
    except SignatureRejected as exc:
        return Refusal(exc.reason.value, str(exc))
    return Receipt(
        signed_id=name,
        body=content,
        timestamp=FILE_TIMESTAMP,
        signature=signature.decode("ascii", "replace").strip(),
        kid=kid,
    )
