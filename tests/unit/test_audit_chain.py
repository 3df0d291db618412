"""The audit chain's hash: frozen encoding, every field covered, the predecessor bound in."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest

from router.audit import GENESIS, AuditEntry, canonical, chain_hash

pytestmark = pytest.mark.unit

ENTRY = AuditEntry(
    id=7,
    at=datetime(2026, 12, 7, 21, 30, 0, 123456, tzinfo=UTC),
    actor="operator",
    action="read.dead_letter",
    target="GET /v1/dead-letters/3",
    member_id="MSNAS-DK-000123",
    detail=None,
)


def test_the_encoding_is_frozen() -> None:
    """Rows hashed years ago are verified with today's code: this vector must never change."""
    assert canonical(ENTRY) == (
        b'[7,"2026-12-07T21:30:00.123456+00:00","operator","read.dead_letter",'
        b'"GET /v1/dead-letters/3","MSNAS-DK-000123",null]'
    )
    assert chain_hash(GENESIS, ENTRY) == (
        "27ef0a97ab8468e8bf9992cee93e3ad7858feda9bee9a8a2c7066cc11088af7d"
    )
    assert chain_hash(GENESIS, ENTRY) == hashlib.sha256(bytes(32) + canonical(ENTRY)).hexdigest()


@pytest.mark.parametrize(
    "change",
    [
        {"id": 8},
        {"at": ENTRY.at + timedelta(microseconds=1)},
        {"actor": "operator2"},
        {"action": "read.delivery"},
        {"target": None},
        {"member_id": "MSNAS-DK-000124"},
        {"member_id": None},
        {"detail": ""},
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_field_is_covered(change: dict[str, object]) -> None:
    assert chain_hash(GENESIS, dataclasses.replace(ENTRY, **change)) != chain_hash(GENESIS, ENTRY)  # type: ignore[arg-type]


def test_the_predecessor_is_bound_in() -> None:
    other = hashlib.sha256(b"another row").hexdigest()
    assert chain_hash(other, ENTRY) != chain_hash(GENESIS, ENTRY)


def test_text_moved_between_fields_is_another_row() -> None:
    """A naive join ('a|b') would let 'x|' and '|x' collide; the JSON encoding does not."""
    a = dataclasses.replace(ENTRY, target="x,", detail="y")
    b = dataclasses.replace(ENTRY, target="x", detail=",y")
    c = dataclasses.replace(ENTRY, target='x","y', detail=None)
    assert len({chain_hash(GENESIS, e) for e in (a, b, c)}) == 3


def test_the_same_instant_in_another_zone_is_the_same_row() -> None:
    """A database may hand the timestamp back in its session's zone: only the instant counts."""
    plus_one = ENTRY.at.astimezone(timezone(timedelta(hours=1)))
    assert chain_hash(GENESIS, dataclasses.replace(ENTRY, at=plus_one)) == chain_hash(
        GENESIS, ENTRY
    )
