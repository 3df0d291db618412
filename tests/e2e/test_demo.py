"""``jokko demo`` end to end, as a new user runs it: real processes (API, router, relay, fake
institutions), the real broker, the embedded SQLite store. The demo checks itself; this test
checks the demo, from the store it leaves behind, against the month it was generated from."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from router.db import make_engine
from router.store import (
    DeadLetterRow,
    DeliveryState,
    InboxRow,
    OutboxRow,
    ReconciliationItemRow,
    ReconciliationRunRow,
)
from services.demo_data import DUPLICATE_EVERY, generate_month, previous_period
from tests.infra import KafkaBroker
from tests.integration.test_personal_data import personal_values
from tests.segments import found_in, segment_files, topics_of
from tests.segments import personal_values as nins_and_phones

pytestmark = pytest.mark.e2e
MEMBERS = 140


def test_demo_runs_the_month_through_and_closes_its_reconciliation(
    kafka_bootstrap: str, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    prefix = f"d{uuid.uuid4().hex[:8]}."
    env = {
        **os.environ,
        "JOKKO_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "JOKKO_CANONICAL_TOPIC": f"{prefix}jokko.events.v1",
        "JOKKO_TOPIC_PREFIX": prefix,
        "JOKKO_ROUTER_GROUP": f"{prefix}router",
        "COLUMNS": "120",
    }
    work = tmp_path / "demo"
    jokko = Path(sys.executable).with_name("jokko")
    done = subprocess.run(
        [str(jokko), "demo", "--members", str(MEMBERS), "--workdir", str(work), "--exit"],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    print(done.stdout[-6000:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "reconciles" in done.stdout
    assert "operator console: http://127.0.0.1:" in done.stdout

    month = generate_month(MEMBERS, previous_period(datetime.now(UTC)))
    engine = make_engine(f"sqlite:///{work / 'jokko.db'}")
    with Session(engine) as s:
        routed = set(s.scalars(select(InboxRow.event_id)))
        states = Counter(
            (str(i), str(st)) for i, st in s.execute(select(OutboxRow.institution, OutboxRow.state))
        )
        letters = Counter(s.scalars(select(DeadLetterRow.source)))
        open_letters = s.scalar(
            select(func.count())
            .select_from(DeadLetterRow)
            .where(DeadLetterRow.replayed_at.is_(None), DeadLetterRow.discarded_at.is_(None))
        )
        runs = list(s.scalars(select(ReconciliationRunRow).order_by(ReconciliationRunRow.id)))
        items = Counter(
            (r, str(inst), str(kind))
            for r, inst, kind in s.execute(
                select(
                    ReconciliationItemRow.run_id,
                    ReconciliationItemRow.institution,
                    ReconciliationItemRow.kind,
                )
            )
        )
        per_message = s.scalar(
            select(func.count()).select_from(
                select(OutboxRow.message_id)
                .group_by(OutboxRow.message_id)
                .having(func.count() > 1)
                .subquery()
            )
        )
    engine.dispose()
    assert routed == {e["event_id"] for e in month.events}, "every submitted event, once"
    assert per_message == 0, "one delivery per message"
    finals = {DeliveryState.ACCEPTED.value, DeliveryState.REJECTED.value}
    assert {st for _, st in states} <= finals, f"nothing pending or dead at the end: {states}"
    assert states[("cmu", "rejected")] >= 1, "the member CMU rejects"
    assert not any(n for (i, st), n in states.items() if i != "cmu" and st == "rejected")
    assert letters["canonical"] == 1, "the poison record, dead-lettered once"
    assert open_letters == 0, "the operator's round replayed or discarded every dead letter"
    assert len(runs) == 2
    first, second = runs[0].id, runs[1].id
    # CMU is healthy: what it misses is exactly what it rejected; CSS flapped, so it misses
    # the records of the messages that died, which the re-drive then closes.
    assert items[(first, "cmu", "missing")] == states[("cmu", "rejected")]
    assert items[(first, "css", "missing")] > 0
    assert_no_personal_data_in_clear(work, month.events)
    # The month enrols a few people twice under another member id: flagged at enrolment,
    # reported by every run (an affiliation has no period) at each institution they reached.
    twins = sum(1 for i in range(MEMBERS) if i % DUPLICATE_EVERY == DUPLICATE_EVERY // 2)
    assert twins == 2
    for run in (first, second):
        assert items[(run, "cmu", "duplicate_member")] == twins, "CMU affiliates every member"
    others = ("missing", "duplicate_member")
    assert not any(n for (r, _, k), n in items.items() if r == first and k not in others)
    assert items[(second, "cmu", "missing")] == states[("cmu", "rejected")]
    left = sum(n for (r, _, k), n in items.items() if r == second and k != "duplicate_member")
    assert left == states[("cmu", "rejected")]
    # what the demo left on the broker's disks: its topics (canonical, DLQ, institutions', acks)
    # hold none of the month's NINs and phone numbers in clear
    nins, phones = nins_and_phones(month.events)
    segments = segment_files(kafka_broker, prefix)
    assert f"{prefix}jokko.events.v1" in topics_of(segments)
    assert f"{prefix}jokko.dlq.v1" in topics_of(segments)
    assert sum(len(raw) for raw in segments.values()) > 100_000
    assert len(nins) >= MEMBERS
    assert found_in(segments, nins) == {}
    assert found_in(segments, phones) == {}


def assert_no_personal_data_in_clear(work: Path, events: list[dict[str, object]]) -> None:
    """Issue 21's proof on what the demo leaves behind: every table of its store read raw
    (text, and binary both decoded and as hex) and every log of its processes hold no NIN,
    name or phone number of the month; the fake institutions' log is their side."""
    needles = personal_values(events)
    assert len(needles) > 300
    with sqlite3.connect(work / "jokko.db") as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        dump = []
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        dump += [value.decode("utf-8", "replace"), value.hex()]
                    else:
                        dump.append(str(value))
    stored = "\n".join(dump)
    logs = {
        p.name: p.read_text(errors="replace")
        for p in work.rglob("*.log")
        if not p.name.startswith("partners")
    }
    assert logs, "the demo's processes wrote logs"
    leaks = [v for v in needles if v in stored or v.encode().hex() in stored]
    assert leaks == [], f"{len(leaks)} personal values in clear in the store"
    logged = [(name, v) for name, text in logs.items() for v in needles if v in text]
    assert logged == []
