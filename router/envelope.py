"""Records sealed on Jokko's topics: the canonical topic, and the institutions' own topics.

**The whole value is sealed, not a list of personal fields.** Personal data is most of a
canonical event (identity, NIN, phones, birth dates, diagnosis codes, household, ...) and it is
spread over the payloads of a dozen event types and their versions: a list of fields to seal
would have to follow every schema change, and a field forgotten is a field in clear on the
broker's disks. Sealing the whole value covers the fields the schema adds later, costs one
AES-GCM operation per record (``bench/seal.py``), and every reader of the topic (the router,
replay, the tests' readers) opens it the same way. What a consumer needs *without* opening a
record stays in clear: the record key (``member_id``, a scheme id chosen by the mutual, not
the NIN; it decides the partition, hence per-member order) and the headers ``event_id``,
``event_type``, ``schema_version``, plus ``sealed`` naming the key id.

Canonical record (``jokko.events.v1``)::

    key      member_id (UTF-8)
    headers  event_id, event_type, schema_version, sealed = <data key id>
    value    "JK1" | len(kid) (1 byte) | kid | nonce (12) | AES-256-GCM(canonical JSON) | tag (16)
    AAD      b"jokko.canonical:" + event_id (the header's)

The associated data binds the value to its ``event_id`` header: a value moved onto another
record fails its tag. It names no topic, so a record copied between topics or prefixes (a
mirror, a replay) still opens. Sealed under the keyring's current ``data`` key; every key of
the keyring opens, so a rotation leaves the records already on the topic readable. A record
whose value does not start with ``JK1`` is a clear record from before sealing, read as it is.

Institution record (``jokko.out.<institution>.v1``): the institution's message (its format,
as ``adapters/<institution>/FORMAT.md`` describes) sealed the same way under *that
institution's* topic key (``JOKKO_<INST>__TOPIC_KEY_FILE``, a file Jokko and that institution
alone hold), with AAD ``b"jokko.out.<institution>:" + message_id`` and a ``sealed`` header; an
institution without a topic key gets its messages in clear (as before) and the relay says so
at start.
"""

from __future__ import annotations

from collections.abc import Iterable

from router.vault import SYSTEM, KeySet, SealError, Vault, open_under, seal_under, sealed_under
from schemas.errors import JokkoError

SEALED = "sealed"
"""Header naming the key id a record's value is sealed under (absent: a clear record)."""
UNSEALABLE = "unsealable"
"""Dead-letter reason: a sealed record that cannot be opened (unknown key, altered bytes)."""


class Unsealable(JokkoError):
    """A sealed record cannot be opened: it is never applied, it becomes a dead letter."""


def header(headers: Iterable[tuple[str, bytes]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("utf-8", "replace")
    return None


def canonical_aad(event_id: str) -> bytes:
    return b"jokko.canonical:" + event_id.encode()


def seal_canonical(vault: Vault, event_id: str, value: bytes) -> tuple[bytes, tuple[str, bytes]]:
    """The sealed value of a canonical record and its ``sealed`` header."""
    sealed = vault.seal(value, canonical_aad(event_id))
    return sealed, (SEALED, vault.keyring.data.current.encode())


def is_sealed(value: bytes) -> bool:
    return value.startswith(SYSTEM)


def open_canonical(
    vault: Vault | None, value: bytes, headers: Iterable[tuple[str, bytes]]
) -> bytes:
    """A canonical record's value in clear (a clear legacy value as it is); raises
    ``Unsealable`` when a sealed value cannot be opened."""
    if not is_sealed(value):
        return value
    if vault is None:
        raise Unsealable("a sealed record and no keyring to open it")
    event_id = header(headers, "event_id")
    if not event_id:
        raise Unsealable(f"a sealed record without an event_id header (key {_kid(value)})")
    try:
        return vault.open(value, canonical_aad(event_id))
    except SealError as exc:
        raise Unsealable(f"event {event_id}, key {_kid(value)}: {exc}") from None


def institution_aad(institution: str, message_id: str) -> bytes:
    return f"jokko.out.{institution}:".encode() + message_id.encode()


def seal_for_institution(
    keys: KeySet, institution: str, message_id: str, body: bytes
) -> tuple[bytes, tuple[str, bytes]]:
    """An institution's message sealed under its topic key, and the ``sealed`` header."""
    sealed = seal_under(keys, body, institution_aad(institution, message_id))
    return sealed, (SEALED, keys.current.encode())


def reseal_for_institution(
    keys: KeySet, institution: str, message_id: str, body: bytes, kid: str, nonce: bytes
) -> bytes:
    """The exact value ``seal_for_institution`` produced from ``body`` under key ``kid`` with
    ``nonce`` (as the message log recorded them): what Jokko signed, for an evidence bundle."""
    return seal_under(keys, body, institution_aad(institution, message_id), kid=kid, nonce=nonce)


def open_for_institution(keys: KeySet, institution: str, message_id: str, value: bytes) -> bytes:
    """What an institution does with a record of its topic (its fake consumer does this)."""
    if not is_sealed(value):
        return value
    try:
        return open_under(keys, value, institution_aad(institution, message_id))
    except SealError as exc:
        raise Unsealable(f"message {message_id}, key {_kid(value)}: {exc}") from None


def _kid(value: bytes) -> str:
    return repr(sealed_under(value))
