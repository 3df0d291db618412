"""The HTTP push channel against a partner whose connections drop and whose answers come too
late: every message ends accepted, and the partner applies each one once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from adapters.base import AckStatus, Institution
from router.store import DeliveryState
from tests.fakes.base import CLIENT_GONE
from tests.integration import test_partners
from tests.integration.test_partners import Partners, Run, activity, in_member_order

pytestmark = pytest.mark.integration

partners = test_partners.partners
start = test_partners.start


def test_dropped_connections_and_timeouts_end_accepted_and_applied_once(
    start: Callable[..., Run], partners: Partners
) -> None:
    css = partners.css
    # A third of the connections close after CSS has taken the message: the answer is lost,
    # Jokko cannot know, and must send it again without CSS applying it twice.
    css.faults.drop_rate = 0.3
    # First CSS answers after 3 s, past Jokko's 1 s timeout (it hangs up: 499, not taken).
    css.faults.latency_s = 3.0
    css_settings = {**partners.settings["css"], "timeout_s": 1.0}  # type: ignore[dict-item]
    run = start(activity(members=6, months=2), css=css_settings, delivery_max_attempts=30)
    run.wait(lambda: css.requests.by_status[CLIENT_GONE] >= 3, 60, "Jokko to time out")
    css.faults.latency_s = 0.0
    run.wait(lambda: run.unfinished() == 0, 120, "every delivery to end")

    rows = [r for r in run.rows() if r.institution == Institution.CSS]
    assert len(rows) == 18
    assert all(r.state == DeliveryState.ACCEPTED for r in run.rows())
    counts = css.requests
    assert counts.by_status[CLIENT_GONE] >= 3, "timed-out requests"
    assert counts.dropped > 0, "dropped connections"
    # applied once: one first reception per message, every other copy recognised as a re-send
    first = Counter(m.message_id for m in css.received if not m.resent)
    assert first == Counter({r.message_id: 1 for r in rows})
    resent = [m for m in css.received if m.resent]
    assert resent, "some answers were lost after CSS took the message"
    assert all(m.status == AckStatus.ACCEPTED for m in css.received)
    # the re-send got CSS's first answer: the file number Jokko keeps is the one CSS holds
    refs = {m.message_id: m.institution_ref for m in css.received if not m.resent}
    assert {r.message_id: r.institution_ref for r in rows} == refs
    assert run.relay.workers[Institution.CSS].channel.requests == counts.total  # type: ignore[attr-defined]
    in_member_order(run, [m.message_id for m in css.received if not m.resent], Institution.CSS)
    print(
        f"CSS drops and timeouts: {len(rows)} messages, {counts.total} requests, "
        f"{counts.by_status[CLIENT_GONE]} timed out, {counts.dropped} dropped, "
        f"{len(resent)} re-sends recognised, all accepted once"
    )
