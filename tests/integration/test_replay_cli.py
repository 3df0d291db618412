"""``jokko replay`` as an operator runs it: the real command in a subprocess, against a
PostgreSQL schema and broker of the test's own.

Two dead letters of the two kinds: a member update that arrived before the member's enrolment
(canonical, ``member_unknown``) and a CSS delivery that ran out of retries. Replaying them
re-drives each once; replaying them again changes nothing; an unknown id is refused with a
clear message, a non-zero exit and nothing replayed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, Select, func, select, text
from sqlalchemy.orm import Session

from adapters.base import Institution
from router.delivery import Delivery, DeliveryWorker, Parcel, Result, RetryPolicy
from router.migrate import upgrade
from router.processing import Outcome, Processor, RawRecord
from router.registry import outbound_adapters
from router.store import DeadLetterRow, DeliveryState, InboxRow, OutboxRow, Stage, TrailRow
from schemas import dump_event
from schemas.examples import load_examples
from tests.factories import contributions
from tests.infra import PostgresCluster

pytestmark = pytest.mark.integration

JOKKO = str(Path(sys.executable).parent / "jokko")
MEMBER = "MSNAS-SL-000077"


@dataclass
class Unreachable:
    institution: Institution
    name: str = "scripted"

    def deliver(self, parcels: Sequence[Parcel]) -> list[Delivery]:
        return [Delivery(p.message_id, Result.FAILED, reason_text="HTTP 503") for p in parcels]

    def close(self) -> None:
        pass


def env_for(engine: Engine, postgres: PostgresCluster, bootstrap: str) -> dict[str, str]:
    with engine.connect() as conn:
        schema = conn.execute(text("select current_schema()")).scalar_one()
    prefix = f"r{uuid.uuid4().hex[:8]}."
    return {
        **os.environ,
        "JOKKO_KAFKA_BOOTSTRAP": bootstrap,
        "JOKKO_DATABASE_URL": f"{postgres.url}?options=-csearch_path%3D{schema}",
        "JOKKO_CANONICAL_TOPIC": f"{prefix}jokko.events.v1",
        "JOKKO_TOPIC_PREFIX": prefix,
        "COLUMNS": "200",
    }


def jokko_replay(env: dict[str, str], *ids: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JOKKO, "replay", *map(str, ids)], env=env, capture_output=True, text=True, timeout=120
    )


def dead_letters(engine: Engine) -> tuple[int, int]:
    """(the canonical dead letter, the delivery one), after building both the real way."""
    examples = load_examples()
    enrolled = next(
        e for e in examples if e.event_type == "member.enrolled" and e.member_id == MEMBER
    )
    updated = next(
        e for e in examples if e.event_type == "member.updated" and e.member_id == MEMBER
    )
    processor = Processor(engine, outbound_adapters())
    assert processor.process(RawRecord("jokko.events.v1", 0, 0, dump_event(updated))) == (
        Outcome.DEAD_LETTERED
    )
    records = [dump_event(enrolled), *(dump_event(e) for e in contributions(1, 1))]
    for i, value in enumerate(records, start=1):
        assert processor.process(RawRecord("jokko.events.v1", 0, i, value)) == Outcome.ROUTED

    policy = RetryPolicy(max_attempts=2, initial_s=0.001, max_s=0.001, breaker_failures=100)
    worker = DeliveryWorker(engine, Unreachable(Institution.CSS), policy=policy)
    with Session(engine) as s:
        css_rows = s.scalar(
            select(func.count()).select_from(OutboxRow).where(OutboxRow.institution == "css")
        )
    for _ in range(50):
        with Session(engine) as s:
            dead = s.scalars(select(DeadLetterRow).order_by(DeadLetterRow.id)).all()
        if len(dead) == 1 + (css_rows or 0):
            break
        worker.deliver_once()
    canonical = [d for d in dead if d.source == "canonical"]
    delivery = [d for d in dead if d.source.startswith("delivery")]
    assert [d.reason for d in canonical] == ["member_unknown"]
    assert {d.reason for d in delivery} == {"retries_exhausted"}
    return canonical[0].id, delivery[0].id


@dataclass(frozen=True)
class Snapshot:
    """What a replay could change."""

    inbox: int
    routed: int
    """Outbox rows of the replayed member update."""
    delivery: str | None
    """State of the replayed CSS delivery."""
    trail: int
    dead_letters: int


def snapshot(engine: Engine, canonical_event: str, message_id: str) -> Snapshot:
    def count(query: Select[int]) -> int:
        return s.scalar(query) or 0

    with Session(engine) as s:
        return Snapshot(
            count(select(func.count()).select_from(InboxRow)),
            count(
                select(func.count())
                .select_from(OutboxRow)
                .where(OutboxRow.event_id == canonical_event)
            ),
            s.scalar(select(OutboxRow.state).where(OutboxRow.message_id == message_id)),
            count(select(func.count()).select_from(TrailRow)),
            count(select(func.count()).select_from(DeadLetterRow)),
        )


def test_jokko_replay_redrives_once_and_refuses_unknown_ids(
    pg_engine: Engine, postgres: PostgresCluster, kafka_bootstrap: str
) -> None:
    upgrade(pg_engine)
    canonical_id, delivery_id = dead_letters(pg_engine)
    with Session(pg_engine) as s:
        dl = s.get_one(DeadLetterRow, delivery_id)
        message_id = dl.message_id or ""
    event_id = next(
        str(e.event_id)
        for e in load_examples()
        if e.event_type == "member.updated" and e.member_id == MEMBER
    )
    env = env_for(pg_engine, postgres, kafka_bootstrap)
    before = snapshot(pg_engine, event_id, message_id)
    assert (before.routed, before.delivery) == (0, DeliveryState.DEAD)

    unknown = 10**9
    refused = jokko_replay(env, canonical_id, unknown)
    assert refused.returncode != 0
    assert f"no dead letter {unknown}" in refused.stderr
    assert "nothing replayed" in refused.stderr
    assert snapshot(pg_engine, event_id, message_id) == before

    first = jokko_replay(env, canonical_id, delivery_id)
    assert first.returncode == 0, first.stderr
    assert f"dead letter {canonical_id}: routed" in first.stdout
    assert f"dead letter {delivery_id}: redelivered" in first.stdout
    after = snapshot(pg_engine, event_id, message_id)
    assert after.inbox == before.inbox + 1, "the update is in the inbox now"
    assert after.routed >= 1, "and routed to its institutions"
    assert after.delivery == DeliveryState.PENDING, "the delivery is due again"
    assert after.dead_letters == before.dead_letters, "no new dead letter"
    with Session(pg_engine) as s:
        requeued = s.scalars(
            select(TrailRow.detail).where(
                TrailRow.message_id == message_id, TrailRow.stage == Stage.QUEUED
            )
        ).all()
        row = s.scalars(select(OutboxRow).where(OutboxRow.message_id == message_id)).one()
        replayed = [s.get_one(DeadLetterRow, i).replayed_at for i in (canonical_id, delivery_id)]
    assert requeued == [None, f"replay of dead letter {delivery_id}"]
    assert row.attempts == 0, "a fresh retry budget"
    assert all(at is not None for at in replayed)

    second = jokko_replay(env, canonical_id, delivery_id)
    assert second.returncode == 0, second.stderr
    assert f"dead letter {canonical_id}: duplicate" in second.stdout
    assert f"dead letter {delivery_id}: already_redelivered" in second.stdout
    assert snapshot(pg_engine, event_id, message_id) == after, "a second replay changes nothing"
