"""Records sealed on the topics (router/envelope.py), and institutions' topic key files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.canonical import canonical_record
from router.envelope import (
    SEALED,
    Unsealable,
    header,
    open_canonical,
    open_for_institution,
    seal_for_institution,
)
from router.vault import Keyring, KeySet, Vault, new_key
from schemas import MemberEnrolled, dump_event
from schemas.examples import load_examples
from services import keyring
from services.settings import InvalidSettings

pytestmark = pytest.mark.unit


def a_vault(*kids: str) -> Vault:
    keys = KeySet(kids[0], {k: new_key() for k in kids})
    return Vault(Keyring(data=keys, token=keys))


def enrolment() -> MemberEnrolled:
    return next(e for e in load_examples() if isinstance(e, MemberEnrolled))


def test_a_canonical_record_is_sealed_whole_and_opens_to_the_same_json() -> None:
    vault, event = a_vault("data-1"), enrolment()
    value, headers = canonical_record(event, vault)
    clear = dump_event(event)
    assert event.payload.identity.nin.encode() not in value
    assert event.payload.identity.phone.encode() in clear
    assert event.payload.identity.phone.encode() not in value
    assert header(headers, SEALED) == "data-1"
    assert header(headers, "event_id") == str(event.event_id)
    assert open_canonical(vault, value, headers) == clear
    assert open_canonical(vault, clear, headers[:3]) == clear, "a clear legacy record is read"


def test_a_canonical_record_that_does_not_open_is_unsealable() -> None:
    vault, event = a_vault("data-1"), enrolment()
    value, headers = canonical_record(event, vault)
    for i in (20, len(value) // 2, len(value) - 1):  # the nonce, the ciphertext, the tag
        altered = value[:i] + bytes([value[i] ^ 1]) + value[i + 1 :]
        with pytest.raises(Unsealable, match="altered"):
            open_canonical(vault, altered, headers)
    moved = [
        (k, b"00000000-0000-4000-8000-000000000000" if k == "event_id" else v) for k, v in headers
    ]
    with pytest.raises(Unsealable, match="altered or moved"):
        open_canonical(vault, value, moved)
    with pytest.raises(Unsealable, match="no key 'data-1'"):
        open_canonical(a_vault("data-2"), value, headers)
    with pytest.raises(Unsealable, match="event_id"):
        open_canonical(vault, value, [h for h in headers if h[0] != "event_id"])
    with pytest.raises(Unsealable, match="malformed"):
        open_canonical(vault, value[:9], headers)
    with pytest.raises(Unsealable, match="no keyring"):
        open_canonical(None, value, headers)


def test_after_a_rotation_records_sealed_under_the_previous_key_still_open() -> None:
    before = a_vault("data-1")
    value, headers = canonical_record(enrolment(), before)
    keys = KeySet("data-2", {"data-2": new_key(), "data-1": before.keyring.data.keys["data-1"]})
    after = Vault(Keyring(data=keys, token=keys))
    assert open_canonical(after, value, headers) == dump_event(enrolment())
    assert header(canonical_record(enrolment(), after)[1], SEALED) == "data-2"


def test_an_institution_opens_its_topic_with_its_key_and_no_other(tmp_path: Path) -> None:
    cmu_file, css_file = tmp_path / "cmu.json", tmp_path / "css.json"
    first = keyring.topic_key(cmu_file, "cmu")
    keyring.topic_key(css_file, "css")
    cmu, css = keyring.load_topic_key(cmu_file), keyring.load_topic_key(css_file)
    body = b'{"resourceType": "Patient", "identifier": [{"value": "2751198801234"}]}'
    value, sealed = seal_for_institution(cmu, "cmu", "m-1", body)
    assert b"2751198801234" not in value
    assert sealed == (SEALED, first.encode())
    assert open_for_institution(cmu, "cmu", "m-1", value) == body
    with pytest.raises(Unsealable, match="no key"):
        open_for_institution(css, "cmu", "m-1", value)
    with pytest.raises(Unsealable, match="altered or moved"):
        open_for_institution(cmu, "cmu", "m-2", value)  # moved onto another message
    # rotation: a new current key, the previous one still opens what it sealed
    second = keyring.topic_key(cmu_file, "cmu")
    rotated = keyring.load_topic_key(cmu_file)
    assert rotated.current == second != first
    assert open_for_institution(rotated, "cmu", "m-1", value) == body
    with pytest.raises(InvalidSettings, match="'css'"):
        keyring.topic_key(css_file, "cmu")
    assert json.loads(cmu_file.read_text())["institution"] == "cmu"
    assert cmu_file.stat().st_mode & 0o777 == 0o600


def test_a_missing_or_foreign_topic_key_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(InvalidSettings, match="jokko keys topic"):
        keyring.load_topic_key(tmp_path / "absent.json")
    (tmp_path / "ring.json").write_text('{"version": 1, "data": {}}')
    with pytest.raises(InvalidSettings, match="not a Jokko topic key file"):
        keyring.load_topic_key(tmp_path / "ring.json")
