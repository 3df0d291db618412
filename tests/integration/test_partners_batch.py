"""Batched HTTP pushes (``batch_size`` > 1: the CMU batch Bundle, the CSS ``Batch``) against the
fake institutions, broken on purpose: CSS flapping and dropping answers, CMU rejecting a member.
Every message still ends accepted or rejected once, in member order, in fewer requests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from adapters.base import AckStatus, Institution
from router.store import DeliveryState
from tests.integration import test_partners
from tests.integration.test_partners import Partners, Run, activity, in_member_order

pytestmark = pytest.mark.integration

partners = test_partners.partners
start = test_partners.start


def test_batched_pushes_end_once_in_member_order_through_503s_drops_and_a_rejection(
    start: Callable[..., Run], partners: Partners
) -> None:
    cmu, css = partners.cmu, partners.css
    css.faults.error_rate = 0.3  # whole requests refused: every message in them is tried again
    css.faults.drop_rate = 0.1  # taken, answer lost: the whole batch is sent again
    cmu.faults.reject_members = {"MSNAS-TH-000004"}
    run = start(
        activity(members=12, months=3),
        cmu={**partners.settings["cmu"], "batch_size": 20},  # type: ignore[dict-item]
        css={**partners.settings["css"], "batch_size": 20},  # type: ignore[dict-item]
        delivery_max_attempts=40,
    )
    run.wait(lambda: run.unfinished() == 0, 180, "every delivery to end")

    for inst, fake in ((Institution.CMU, cmu), (Institution.CSS, css)):
        rows = [r for r in run.rows() if r.institution == inst]
        assert len(rows) == 48  # 12 enrolments, 36 contributions
        rejected = {r.message_id for r in rows if r.member_id in fake.faults.reject_members}
        for r in rows:
            expected = (
                DeliveryState.REJECTED if r.message_id in rejected else DeliveryState.ACCEPTED
            )
            assert r.state == expected, r
            if r.state == DeliveryState.ACCEPTED:
                assert r.institution_ref, "each message's own reference, out of the batch answer"
        # applied once: one first reception per message; copies are recognised re-sends
        first = Counter(m.message_id for m in fake.received if not m.resent)
        assert first == Counter({r.message_id: 1 for r in rows})  # CMU drops nothing
        assert fake.recorder.accepted_ids() == {
            r.message_id for r in rows if r.state == DeliveryState.ACCEPTED
        }
        refs = {m.message_id: m.institution_ref for m in fake.received if not m.resent}
        assert all(refs[r.message_id] == r.institution_ref for r in rows if r.message_id in refs)
        in_member_order(run, [m.message_id for m in fake.received if not m.resent], inst)
        channel = run.relay.workers[inst].channel
        assert channel.requests == fake.requests.total  # type: ignore[attr-defined]
    assert cmu.requests.total <= 48 / 4, "CMU got its messages in batches"
    assert css.requests.by_status[503] > 0
    assert css.requests.dropped > 0
    assert any(m.resent for m in css.received), "a lost batch answer made CSS see copies"
    assert all(
        m.status == AckStatus.REJECTED for m in cmu.received if m.member_id == "MSNAS-TH-000004"
    )
    print(
        f"batched: CMU {cmu.requests.total} requests, CSS {css.requests.total} "
        f"({dict(css.requests.by_status)}, {css.requests.dropped} dropped) for 48 messages each"
    )


def test_a_batch_the_institution_cannot_read_is_retried_then_dead_not_lost(
    start: Callable[..., Run], partners: Partners
) -> None:
    """A batch envelope CSS refuses (here: signed with another id than its batchId, as a
    broken proxy could do) is a transient failure of each message, never an acceptance."""
    css = partners.css
    original = css.split

    def mismatched(body: bytes) -> tuple[str, list[tuple[str, bytes]]] | None:
        parts = original(body)
        return None if parts is None else ("not-the-signed-id", parts[1])

    css.split = mismatched  # type: ignore[method-assign]
    run = start(
        activity(members=4, months=0),
        css={**partners.settings["css"], "batch_size": 10},  # type: ignore[dict-item]
        delivery_max_attempts=1,  # one try: a later lone probe would be no batch at all
    )
    run.wait(lambda: run.unfinished(Institution.CSS) == 0, 60, "CSS's messages to end")
    rows = [r for r in run.rows() if r.institution == Institution.CSS]
    assert len(rows) == 4
    assert all(r.state == DeliveryState.DEAD for r in rows)
    assert css.received == [], "nothing in a refused batch was taken"
    assert css.requests.by_status[400] == css.requests.total == 1, "one batch of four"
