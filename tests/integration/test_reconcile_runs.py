"""Reconciliation runs in the database: kept with their discrepancies, re-drive once only per
outbox state, and the next run shows re-driven records closed."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

from adapters.cmu.extract import extract_line
from adapters.extract import Rec
from router.migrate import upgrade
from router.store import (
    DeliveryState,
    InboxRow,
    OutboxRow,
    ReconciliationItemRow,
    ReconciliationRunRow,
    TrailRow,
)
from services.reconcile import INSTITUTIONS, Kind, Scope
from services.reconcile_data import generate
from services.reconcile_runs import items, redrive, run_files

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    e = create_engine(f"sqlite:///{tmp_path / 'j.db'}")
    upgrade(e)
    return e


def _files(tmp_path: Path) -> tuple[dict[str, Path], set[tuple[str, ...]]]:
    bufs = {k: io.StringIO(newline="") for k in ("ledger", *INSTITUTIONS)}
    gen = generate(150, 3, {k: b.write for k, b in bufs.items()}, rate=0.03, seed=11)
    paths = {}
    for k, b in bufs.items():
        paths[k] = tmp_path / k
        paths[k].write_text(b.getvalue(), encoding="utf-8", newline="")
    return paths, set(gen.truth)


def _outbox(s: Session, event_id: str, institution: str, state: str, n: int) -> None:
    now = datetime.now(UTC)
    s.add(InboxRow(event_id=event_id, event_type="contribution.paid", member_id="M",
                   recorded_at=now, destinations=institution))  # fmt: skip
    s.add(OutboxRow(message_id=f"00000000-0000-4000-8000-{n:012d}", event_id=event_id,
                    institution=institution, member_id="M", member_seq=n, kind="k",
                    content_type="x", format_version=1, body=b"x", state=state))  # fmt: skip


def test_a_run_is_kept_with_exactly_the_injected_discrepancies(
    engine: Engine, tmp_path: Path
) -> None:
    paths, truth = _files(tmp_path)
    extracts = {i: paths[i] for i in INSTITUTIONS}
    run_id = run_files(engine, "test", paths["ledger"], extracts)
    with Session(engine) as s:
        run = s.get_one(ReconciliationRunRow, run_id)
        assert run.state == "done"
        assert json.loads(run.summary or "{}")["total"] == len(truth)
        found = {(r.institution, r.record, r.kind, r.member_id, r.period, r.branch, r.ref)
                 for r in items(s, run_id)}  # fmt: skip
    assert found == truth


def test_redrive_puts_deliveries_back_once_and_the_next_run_shows_them_closed(
    engine: Engine, tmp_path: Path
) -> None:
    paths, _ = _files(tmp_path)
    run_id = run_files(engine, "test", paths["ledger"], {i: paths[i] for i in INSTITUTIONS})
    with Session(engine) as s:
        missing = [r for r in items(s, run_id) if r.kind == Kind.MISSING and r.event_id]
    assert len(missing) >= 4
    states = [
        DeliveryState.ACCEPTED,
        DeliveryState.PENDING,
        DeliveryState.REJECTED,
        DeliveryState.DEAD,
    ]
    with Session(engine) as s, s.begin():
        for n, (item, state) in enumerate(zip(missing, states, strict=False), start=1):
            _outbox(s, item.event_id, item.institution, state, n)
    ids = [m.id for m in missing]
    first = redrive(engine, run_id, ids, "test")
    assert [first[i] for i in ids[:4]] == ["redriven", "already_pending", "rejected", "redriven"]
    assert all(first[i] == "no_delivery" for i in ids[4:])
    assert redrive(engine, run_id, ids, "test") == first  # once only
    with Session(engine) as s:
        rows = s.scalars(select(OutboxRow).order_by(OutboxRow.id)).all()
        assert [r.state for r in rows] == ["pending", "pending", "rejected", "pending"]
        assert len(s.scalars(select(TrailRow)).all()) == 2
        extra = s.scalars(
            select(ReconciliationItemRow).where(ReconciliationItemRow.kind == Kind.EXTRA)
        ).first()
    assert extra is not None
    assert redrive(engine, run_id, [extra.id, 10**9], "test") == {
        extra.id: "not_missing",
        10**9: "unknown",
    }

    # the institution now holds the first re-driven record: the next run no longer reports it
    closed = next(m for m in missing if m.institution == "cmu")
    if closed:
        with paths["cmu"].open("a", encoding="utf-8", newline="") as f:
            f.write(extract_line(Rec(closed.member_id, "cmu", closed.record, closed.period,
                                     closed.branch, closed.ref, closed.expected_amount,
                                     *_attrs(closed.expected))) + "\n")  # fmt: skip
        run2 = run_files(engine, "test", paths["ledger"], {i: paths[i] for i in INSTITUTIONS})
        with Session(engine) as s:
            keys = {(r.member_id, r.record, r.period, r.ref) for r in items(s, run2)}
        assert (closed.member_id, closed.record, closed.period, closed.ref) not in keys


def _attrs(text: str) -> tuple[str, str, int]:
    d = dict(p.split("=") for p in text.split(";"))
    return d.get("package", ""), d.get("status", ""), int(d.get("dependents", -1))


def test_a_failed_run_says_why(engine: Engine, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("not,a,ledger\n")
    with pytest.raises(Exception, match="ledger"):
        run_files(engine, "test", bad, {"cmu": bad})
    with Session(engine) as s:
        run = s.scalars(select(ReconciliationRunRow)).one()
    assert run.state == "failed"
    assert run.error


def test_a_scoped_run_keeps_its_scope_and_only_its_discrepancies(
    engine: Engine, tmp_path: Path
) -> None:
    paths, truth = _files(tmp_path)
    scope = Scope("2025-02", "2025-02")
    run_id = run_files(engine, "cron", paths["ledger"], {"css": paths["css"]}, scope=scope)
    with Session(engine) as s:
        run = s.get_one(ReconciliationRunRow, run_id)
        assert (run.institutions, run.period_from, run.period_to) == ("css", "2025-02", "2025-02")
        found = {(r.institution, r.record, r.kind, r.member_id, r.period, r.branch, r.ref)
                 for r in items(s, run_id)}  # fmt: skip
    expected = {t for t in truth if t[0] == "css" and t[4] in ("2025-02", "")}
    assert {t[4] for t in truth if t[0] == "css"} - {"2025-02", ""}  # other months had some
    assert found == expected
