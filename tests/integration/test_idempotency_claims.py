"""Claims on an Idempotency-Key (``services.api.idempotency``), on SQLite and PostgreSQL: a key
is claimed before its events are published, then answered, released, or left pending while
the broker's answer is unknown; a pending key abandoned long enough is taken over."""

from __future__ import annotations

from datetime import datetime

import pytest
from fastapi import HTTPException
from sqlalchemy import Engine, select

from router.store import IdempotencyRow
from services.api import idempotency
from services.api.idempotency import KeyPending, Outcomes, StoredAnswer

pytestmark = pytest.mark.integration

LONG = 3600.0
ANSWER = StoredAnswer(202, b'{"status": "accepted"}')


def _claim(store: Engine, digest: str = "d1", takeover_after_s: float = LONG) -> object:
    with store.connect() as conn:
        return idempotency.claim(
            conn, "msnas", "k-1", digest, ["e-1"], takeover_after_s=takeover_after_s
        )


def test_claimed_then_answered_replays_and_refuses_another_body(store: Engine) -> None:
    claimed = _claim(store)
    assert isinstance(claimed, datetime)
    with pytest.raises(KeyPending):
        _claim(store)  # its outcome is not known yet: not published twice
    with pytest.raises(HTTPException) as conflict:
        _claim(store, digest="d2")
    assert conflict.value.status_code == 409
    with store.connect() as conn:
        assert idempotency.finish(conn, "msnas", "k-1", ANSWER) == ANSWER
        # a late second outcome of the same request does not replace the first
        other = StoredAnswer(202, b'{"offset": 9}')
        assert idempotency.finish(conn, "msnas", "k-1", other) == ANSWER
    assert _claim(store) == ANSWER


def test_released_claim_is_claimed_afresh(store: Engine) -> None:
    claimed = _claim(store)
    assert isinstance(claimed, datetime)
    with store.connect() as conn:
        idempotency.release(conn, "msnas", "k-1", claimed)
    again = _claim(store)
    assert isinstance(again, datetime)
    assert again != claimed


def test_abandoned_claim_is_taken_over_once(store: Engine) -> None:
    first = _claim(store)
    assert isinstance(first, datetime)
    taken = _claim(store, takeover_after_s=0)
    assert isinstance(taken, datetime)
    assert taken > first
    with store.connect() as conn:  # the first attempt's late release leaves the new claim be
        idempotency.release(conn, "msnas", "k-1", first)
    with pytest.raises(KeyPending):
        _claim(store)


def test_outcomes_recorded_off_the_request_path(store: Engine) -> None:
    outcomes = Outcomes(store)
    answered = _claim(store)
    assert isinstance(answered, datetime)
    outcomes.record("msnas", "k-1", answered, ANSWER)
    with store.connect() as conn:
        released = idempotency.claim(conn, "msnas", "k-2", "d", ["e-2"], takeover_after_s=LONG)
    assert isinstance(released, datetime)
    outcomes.record("msnas", "k-2", released, None)
    outcomes.close()
    with store.connect() as conn:
        rows = dict(conn.execute(select(IdempotencyRow.key, IdempotencyRow.status_code)).all())
    assert rows == {"k-1": 202}
    assert _claim(store) == ANSWER
