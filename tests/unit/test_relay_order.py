"""Which claimed rows may leave now without overtaking a member's earlier message."""

from __future__ import annotations

import pytest

from router.delivery import _in_order
from router.store import OutboxRow

pytestmark = pytest.mark.unit


def row(row_id: int, member: str, inst: str = "cmu") -> OutboxRow:
    return OutboxRow(id=row_id, member_id=member, institution=inst)


def ids(rows: list[OutboxRow]) -> list[int]:
    return [r.id for r in rows]


def test_all_claimed_rows_leave_when_nothing_earlier_is_held_elsewhere() -> None:
    claimed = [row(1, "A"), row(2, "B"), row(3, "A")]
    pending = [("cmu", "A", 1), ("cmu", "B", 2), ("cmu", "A", 3)]
    assert ids(_in_order(claimed, pending)) == [1, 2, 3]


def test_a_member_waits_behind_its_earlier_row_held_by_another_relay() -> None:
    # another relay holds row 2 of member A: this relay sends 1 but not 3
    claimed = [row(1, "A"), row(3, "A"), row(4, "B")]
    pending = [("cmu", "A", 1), ("cmu", "A", 2), ("cmu", "A", 3), ("cmu", "B", 4)]
    assert ids(_in_order(claimed, pending)) == [1, 4]


def test_the_other_relay_does_not_overtake_either() -> None:
    claimed = [row(2, "A")]
    pending = [("cmu", "A", 1), ("cmu", "A", 2), ("cmu", "A", 3)]
    assert _in_order(claimed, pending) == []


def test_order_is_per_institution() -> None:
    claimed = [row(2, "A", "css")]
    pending = [("cmu", "A", 1), ("css", "A", 2)]
    assert ids(_in_order(claimed, pending)) == [2]
