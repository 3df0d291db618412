"""Sealing and NIN tokens (router/vault.py) and the keyring file (services/keyring.py)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from router.vault import SealError, Vault
from services import keyring
from services.settings import InvalidSettings

pytestmark = pytest.mark.unit

NIN = "2751198801234"


@pytest.fixture
def ring(tmp_path: Path) -> Path:
    path = tmp_path / "keyring.json"
    assert keyring.create(path)
    return path


def test_sealed_values_open_only_with_their_key_and_context(ring: Path) -> None:
    vault = Vault(keyring.load(ring))
    sealed = vault.seal(b'{"nin": "2751198801234"}', b"dead_letter")
    assert NIN.encode() not in sealed
    assert vault.open(sealed, b"dead_letter") == b'{"nin": "2751198801234"}'
    with pytest.raises(SealError):
        vault.open(sealed, b"idempotency")  # moved to another place
    altered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealError):
        vault.open(altered, b"dead_letter")
    assert vault.open(b"legacy clear", b"dead_letter") == b"legacy clear"


def test_a_members_body_needs_their_key_and_is_gone_with_it(ring: Path) -> None:
    vault = Vault(keyring.load(ring))
    kid, wrapped, dek = vault.new_member_key("MSNAS-DK-000123")
    assert vault.unwrap("MSNAS-DK-000123", kid, wrapped) == dek
    with pytest.raises(SealError):
        vault.unwrap("MSNAS-DK-000124", kid, wrapped)  # another member's row
    body = vault.seal_for_member(dek, b"<Nin>2751198801234</Nin>", b"msg-1")
    assert vault.open_for_member(dek, body, b"msg-1") == b"<Nin>2751198801234</Nin>"
    with pytest.raises(SealError):
        vault.open_for_member(dek, body, b"msg-2")
    with pytest.raises(SealError, match="erased"):
        vault.open_for_member(None, body, b"msg-1")


def test_rotation_keeps_old_values_readable_and_old_tokens_findable(ring: Path) -> None:
    before = Vault(keyring.load(ring))
    sealed, token = before.seal(b"x", b"a"), before.nin_token(NIN)
    kid, wrapped, dek = before.new_member_key("MSNAS-DK-000123")
    new_data = keyring.rotate(ring, "data")
    keyring.rotate(ring, "token")
    after = Vault(keyring.load(ring))
    assert after.keyring.data.current == new_data != kid
    assert after.open(sealed, b"a") == b"x"
    assert after.sealed_under(after.seal(b"x", b"a")) == new_data
    assert after.unwrap("MSNAS-DK-000123", kid, wrapped) == dek
    tokens = after.nin_tokens(NIN)
    assert tokens[0] != token, "new token under the new current key"
    assert token in tokens[1:], "the old token is still looked up"
    assert NIN not in "".join(tokens)


def test_keyring_file_is_private_never_overwritten_and_listed_without_keys(ring: Path) -> None:
    assert stat.S_IMODE(ring.stat().st_mode) == 0o600
    first = ring.read_text()
    assert not keyring.create(ring), "an existing keyring is left alone"
    assert ring.read_text() == first
    listed = keyring.describe(ring)
    assert sorted(kind for kind, _, current in listed if current) == ["data", "message", "token"]
    secrets = [
        v for kind in ("data", "token", "message") for v in json.loads(first)[kind]["keys"].values()
    ]
    assert not any(s in repr(listed) for s in secrets)


def test_missing_or_broken_keyring_is_refused_with_the_setting_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidSettings, match=r"JOKKO_KEYRING_FILE.*jokko keys create"):
        keyring.load(tmp_path / "none.json")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"version": 1, "data": {"current": "a", "keys": {}}}))
    with pytest.raises(InvalidSettings, match="not a Jokko keyring"):
        keyring.load(broken)
    made = keyring.load(tmp_path / "new" / "keyring.json", create=True)
    assert made.data.current in made.data.keys
