"""Personal data at rest: sealed with AES-GCM, members' NINs matched by keyed tokens.

Envelope encryption with two levels, so that erasing one member is deleting one key:
- each member has a data key (DEK) of their own, stored only *wrapped* (AES-GCM) under a
  key-encryption key (KEK) of the keyring, with the member id as associated data; the messages
  Jokko keeps for that member (outbox bodies) are sealed under it. Erasure drops the wrapped DEK:
  every body of that member becomes unreadable at once, while the rows themselves (states, acks,
  amounts' trail) stay for reconciliation ("crypto-shredding").
- what belongs to no member (dead-letter originals, idempotency answers, the API's signing
  keys) is sealed under the current KEK directly.

Keys live in the keyring (a file or settings, never the database), each with an id; a sealed
value names the key it was sealed under, so rotation adds a key and older values stay readable
until they are re-sealed (lazily when a member's DEK is next loaded, or by ``jokko keys rewrap``).

NINs are matched, never compared in clear: ``nin_tokens`` gives the HMAC-SHA256 of a NIN under
every token key (the current one first), so a rotation does not hide an earlier enrolment.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.errors import JokkoError

KEY_BYTES = 32
_NONCE = 12
SYSTEM = b"JK1"
"""Prefix of a value sealed under a KEK: ``JK1`` + key-id length + key id + nonce + ciphertext."""
MEMBER = b"JKm"
"""Prefix of a value sealed under a member's DEK: ``JKm`` + nonce + ciphertext."""


class SealError(JokkoError):
    """A sealed value cannot be opened: unknown key, erased member, or altered bytes."""


@dataclass(frozen=True)
class KeySet:
    """Keys of one purpose by id; ``current`` seals, every key opens."""

    current: str
    keys: Mapping[str, bytes]

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ValueError(f"current key {self.current!r} is not in the set")
        for kid, key in self.keys.items():
            if not kid or len(kid) > 64 or not kid.isascii():
                raise ValueError(f"key id {kid!r}: 1-64 ASCII characters")
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {kid!r}: {KEY_BYTES} bytes expected, {len(key)} given")


@dataclass(frozen=True)
class Keyring:
    data: KeySet
    """Key-encryption keys: wrap members' DEKs, seal what belongs to no member."""
    token: KeySet
    """HMAC keys of NIN tokens."""


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def sealed_under(blob: bytes) -> str | None:
    """The key id a ``seal_under`` value names (None: not such a value)."""
    if not blob.startswith(SYSTEM) or len(blob) <= len(SYSTEM):
        return None
    n = blob[len(SYSTEM)]
    try:
        return blob[len(SYSTEM) + 1 : len(SYSTEM) + 1 + n].decode("ascii")
    except UnicodeDecodeError:
        return None


def sealed_nonce(blob: bytes) -> bytes | None:
    """The nonce of a ``seal_under`` value (None: not such a value): with the key id, all
    that ``reseal`` needs to make the same bytes again from the clear value."""
    kid = sealed_under(blob)
    if kid is None:
        return None
    start = len(SYSTEM) + 1 + len(kid)
    nonce = blob[start : start + _NONCE]
    return nonce if len(nonce) == _NONCE else None


def seal_under(
    keys: KeySet,
    plaintext: bytes,
    aad: bytes,
    aead: Callable[[str], AESGCM] | None = None,
    *,
    kid: str | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """``plaintext`` sealed under the current key of ``keys``: ``JK1`` + key-id length (one
    byte) + key id (ASCII) + nonce (12 bytes) + AES-256-GCM ciphertext and tag (16 bytes),
    ``aad`` authenticated but not stored. ``aead`` caches the cipher of a key id.

    ``kid`` and ``nonce`` are for evidence only (``router.msglog``): the exact bytes of a
    value sealed earlier, made again from the same clear value (same key, nonce and data, so
    nothing new is revealed); never for a new value, whose nonce must be fresh."""
    kid = kid or keys.current
    if kid not in keys.keys:
        raise SealError(f"unknown key id {kid!r}")
    nonce = nonce if nonce is not None else os.urandom(_NONCE)
    cipher = aead(kid) if aead is not None else AESGCM(keys.keys[kid])
    return SYSTEM + bytes([len(kid)]) + kid.encode() + nonce + cipher.encrypt(nonce, plaintext, aad)


def open_under(
    keys: KeySet, blob: bytes, aad: bytes, aead: Callable[[str], AESGCM] | None = None
) -> bytes:
    """A value sealed by ``seal_under`` with any key of ``keys``; a value without the prefix
    is a legacy clear value, returned as it is. Raises ``SealError`` for an unknown key id, a
    malformed value, or a tag that fails (altered bytes, other associated data)."""
    if not blob.startswith(SYSTEM):
        return blob
    kid = sealed_under(blob)
    if kid is None:
        raise SealError("a sealed value is malformed")
    start = len(SYSTEM) + 1 + len(kid)
    nonce, sealed = blob[start : start + _NONCE], blob[start + _NONCE :]
    if len(nonce) != _NONCE:
        raise SealError("a sealed value is malformed")
    if aead is not None:
        cipher = aead(kid)
    elif kid in keys.keys:
        cipher = AESGCM(keys.keys[kid])
    else:
        raise SealError(f"no key {kid!r} to open it")
    try:
        return cipher.decrypt(nonce, sealed, aad)
    except InvalidTag:
        raise SealError("a sealed value was altered or moved") from None


@dataclass
class Vault:
    keyring: Keyring
    _aead: dict[str, AESGCM] = field(default_factory=dict, repr=False)

    def _kek(self, kid: str) -> AESGCM:
        aead = self._aead.get(kid)
        if aead is None:
            key = self.keyring.data.keys.get(kid)
            if key is None:
                raise SealError(f"no key {kid!r} in the keyring")
            aead = self._aead[kid] = AESGCM(key)
        return aead

    # --- what belongs to no member ---------------------------------------------------------

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return seal_under(self.keyring.data, plaintext, aad, self._kek)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """A value sealed by ``seal``; a value without the prefix is a legacy clear value,
        returned as it is (``jokko keys rewrap`` seals those)."""
        return open_under(self.keyring.data, blob, aad, self._kek)

    def sealed_under(self, blob: bytes) -> str | None:
        """The KEK id a system-sealed value names (None: clear, or sealed under a DEK)."""
        return sealed_under(blob)

    # --- members' data keys --------------------------------------------------------------------

    def new_member_key(self, member_id: str) -> tuple[str, bytes, bytes]:
        """A fresh DEK: (KEK id, wrapped DEK to store, the DEK itself)."""
        dek = new_key()
        kid, wrapped = self.wrap(member_id, dek)
        return kid, wrapped, dek

    def wrap(self, member_id: str, dek: bytes) -> tuple[str, bytes]:
        kid = self.keyring.data.current
        nonce = os.urandom(_NONCE)
        return kid, nonce + self._kek(kid).encrypt(nonce, dek, member_id.encode())

    def unwrap(self, member_id: str, kid: str, wrapped: bytes) -> bytes:
        try:
            return self._kek(kid).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], member_id.encode())
        except InvalidTag:
            raise SealError(f"the data key of {member_id} was altered or moved") from None

    def is_current(self, kid: str) -> bool:
        return kid == self.keyring.data.current

    @staticmethod
    def seal_for_member(dek: bytes | AESGCM, plaintext: bytes, aad: bytes) -> bytes:
        """``dek`` may be the key's ``AESGCM`` already: a member's several messages in a
        batch then set the key up once (a tenth of the cost of sealing a 2 KiB body)."""
        cipher = dek if isinstance(dek, AESGCM) else AESGCM(dek)
        nonce = os.urandom(_NONCE)
        return MEMBER + nonce + cipher.encrypt(nonce, plaintext, aad)

    @staticmethod
    def open_for_member(dek: bytes | None, blob: bytes, aad: bytes) -> bytes:
        """A value sealed by ``seal_for_member`` (legacy clear values are returned as they are);
        ``dek`` None: the member was erased."""
        if not blob.startswith(MEMBER):
            return blob
        if dek is None:
            raise SealError("the member's personal data was erased")
        start = len(MEMBER)
        try:
            return AESGCM(dek).decrypt(blob[start : start + _NONCE], blob[start + _NONCE :], aad)
        except InvalidTag:
            raise SealError("a sealed value was altered or moved") from None

    # --- NIN tokens ------------------------------------------------------------------------------

    def nin_tokens(self, nin: str) -> list[str]:
        """The NIN's token under every token key, the current one first (``kid:hex``)."""
        keys = self.keyring.token
        order = [keys.current, *(k for k in keys.keys if k != keys.current)]
        return [
            f"{kid}:{hmac.new(keys.keys[kid], nin.encode(), hashlib.sha256).hexdigest()}"
            for kid in order
        ]

    def nin_token(self, nin: str) -> str:
        return self.nin_tokens(nin)[0]
