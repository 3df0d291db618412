"""The keyring file: Jokko's data, token and message-signing keys, each with an id, outside
the database.

A JSON document, readable by its owner only (0600)::

    {"version": 1,
     "data":  {"current": "data-20261207T2100-3f2a", "keys": {"data-...": "<base64 32 bytes>"}},
     "token": {"current": "token-...", "keys": {"token-...": "<base64>"}},
     "message": {"current": "message-...", "keys": {"message-...": "<base64 Ed25519 seed>"}}}

``data`` keys wrap members' data keys and seal what belongs to no member; ``token`` keys make
NIN tokens (``router.vault``); ``message`` keys are Ed25519 private keys (the raw 32 bytes of
RFC 8032) signing what Jokko sends (``router.signing``), their public halves published as a
JWKS. Rotation adds a key and makes it current; the previous ones stay, to open what they
sealed, to find NINs tokenised under them, and to stay in the JWKS for what they signed. A key
is never removed by Jokko: once ``jokko keys rewrap`` has re-sealed everything (or, for a
message key, once no institution still needs to verify what it signed), an operator may retire
one by hand (docs/operations.md, "Keys").
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from router.signing import MessageKeys, SigningKey
from router.vault import Keyring, KeySet, new_key
from services.settings import InvalidSettings

Kind = Literal["data", "token", "message"]
KINDS: tuple[Kind, ...] = ("data", "token")
"""The kinds every keyring has had from the start (the vault's)."""
MESSAGE: Kind = "message"
ALL_KINDS: tuple[Kind, ...] = (*KINDS, MESSAGE)


def _key_id(kind: Kind) -> str:
    return f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


def _new_key(kind: Kind) -> str:
    raw = Ed25519PrivateKey.generate().private_bytes_raw() if kind == MESSAGE else new_key()
    return base64.b64encode(raw).decode()


def _fresh() -> dict[str, Any]:
    doc: dict[str, Any] = {"version": 1}
    for kind in ALL_KINDS:
        kid = _key_id(kind)
        doc[kind] = {"current": kid, "keys": {kid: _new_key(kind)}}
    return doc


def _parse(doc: dict[str, Any], path: Path) -> Keyring:
    try:
        sets = {
            kind: KeySet(
                current=doc[kind]["current"],
                keys={k: base64.b64decode(v, validate=True) for k, v in doc[kind]["keys"].items()},
            )
            for kind in KINDS
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidSettings(f"keyring {path}: not a Jokko keyring ({exc})") from None
    return Keyring(data=sets["data"], token=sets["token"])


def _write_new(path: Path, doc: dict[str, Any]) -> bool:
    """Write ``doc`` at ``path`` unless a file is already there (atomic: several processes
    starting at once agree on one keyring). Returns whether this call created it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keyring-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # fails if the file exists: never overwrites
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def _replace(path: Path, doc: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keyring-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_document(path: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidSettings(
            f"JOKKO_KEYRING_FILE: no keyring at {path}; create one with `jokko keys create` "
            "(and back it up: without it the personal data Jokko holds cannot be read)"
        ) from None
    except (OSError, ValueError) as exc:
        raise InvalidSettings(f"JOKKO_KEYRING_FILE: cannot read {path}: {exc}") from None
    return doc


def load(path: Path, *, create: bool = False) -> Keyring:
    """The keyring at ``path``; with ``create``, a new one is made first if there is none."""
    if create and not path.exists():
        _write_new(path, _fresh())
    return _parse(read_document(path), path)


def create(path: Path) -> bool:
    """A new keyring at ``path``; False (and nothing written) if one is already there."""
    return _write_new(path, _fresh())


def _parse_message(doc: dict[str, Any], path: Path) -> MessageKeys:
    try:
        section = doc[MESSAGE]
        current = section["current"]
        keys = {
            kid: SigningKey.from_seed(kid, base64.b64decode(v, validate=True))
            for kid, v in section["keys"].items()
        }
        return MessageKeys(keys[current], tuple(k for kid, k in keys.items() if kid != current))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidSettings(f"keyring {path}: no readable message keys ({exc})") from None


class _Locked:
    """An exclusive lock beside the keyring, so that processes adding a section at the same
    time agree on one key (the last writer would otherwise replace the others' key)."""

    def __init__(self, path: Path) -> None:
        self._path = path.with_name(f".{path.name}.lock")

    def __enter__(self) -> None:
        self._fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def message_keys(path: Path, *, create: bool = False) -> MessageKeys:
    """Jokko's message-signing keys. A keyring made before they existed has none: with
    ``create`` one is added (under a lock), otherwise ``jokko keys rotate message`` adds it."""
    doc = read_document(path)
    if MESSAGE not in doc:
        if not create:
            raise InvalidSettings(
                f"keyring {path} has no message-signing key: add one with "
                "`jokko keys rotate message`"
            )
        with _Locked(path):
            doc = read_document(path)
            if MESSAGE not in doc:
                kid = _key_id(MESSAGE)
                doc[MESSAGE] = {"current": kid, "keys": {kid: _new_key(MESSAGE)}}
                _replace(path, doc)
    return _parse_message(doc, path)


def rotate(path: Path, kind: Kind) -> str:
    """Add a new ``kind`` key and make it current; returns its id."""
    read_document(path)  # a missing keyring is named before anything is locked
    with _Locked(path):
        doc = read_document(path)
        _parse(doc, path)
        kid = _key_id(kind)
        doc.setdefault(kind, {"keys": {}})["keys"][kid] = _new_key(kind)
        doc[kind]["current"] = kid
        if kind == MESSAGE:
            _parse_message(doc, path)
        _replace(path, doc)
    return kid


# --- an institution's topic key ------------------------------------------------------------
# ``{"version": 1, "institution": "cmu", "current": "topic-cmu-...", "keys": {id: base64}}``:
# the same file is handed to the institution (its consumer opens its topic's records with it,
# ``router.envelope``); Jokko's keyring is never handed to anyone.


def load_topic_key(path: Path) -> KeySet:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidSettings(
            f"topic key: no file at {path}; make it with `jokko keys topic <institution>`"
        ) from None
    except (OSError, ValueError) as exc:
        raise InvalidSettings(f"topic key: cannot read {path}: {exc}") from None
    try:
        return KeySet(
            current=doc["current"],
            keys={k: base64.b64decode(v, validate=True) for k, v in doc["keys"].items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidSettings(f"topic key {path}: not a Jokko topic key file ({exc})") from None


def topic_key(path: Path, institution: str) -> str:
    """Make the topic key file of ``institution`` at ``path``, or add a new current key to
    it (rotation: the previous keys stay, to open what is still on the topic). Returns the
    new key's id."""
    kid = f"topic-{institution}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"
    key = base64.b64encode(new_key()).decode()
    if not path.exists():
        fresh = {"version": 1, "institution": institution, "current": kid, "keys": {kid: key}}
        if _write_new(path, fresh):
            return kid
    load_topic_key(path)
    doc: dict[str, Any] = read_document(path)
    if doc.get("institution") != institution:
        raise InvalidSettings(f"topic key {path} is {doc.get('institution')!r}'s")
    doc["keys"][kid] = key
    doc["current"] = kid
    _replace(path, doc)
    return kid


def describe(path: Path) -> list[tuple[str, str, bool]]:
    """(kind, key id, is current) of every key: ids only, never key material."""
    keyring = load(path)
    rows = [
        (kind, kid, kid == keys.current)
        for kind, keys in (("data", keyring.data), ("token", keyring.token))
        for kid in keys.keys
    ]
    if MESSAGE in read_document(path):
        signing = message_keys(path)
        rows += [
            (MESSAGE, k.kid, k is signing.current) for k in (signing.current, *signing.previous)
        ]
    return rows
