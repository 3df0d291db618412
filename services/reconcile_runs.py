"""Reconciliation runs kept in the database, and re-drive of what an institution is missing.

Re-drive sends the *same* outbox message again (same message id, same bytes): every
institution applies it once (CMU conditional creates, CSS and IPRES keyed on the message id),
so re-driving something that did arrive has no second effect there. In Jokko it is also
once-only: each discrepancy records its re-drive outcome, and a second request returns it
without touching the outbox. Per outbox state of the missing record's delivery:

* ``accepted`` / ``sent`` / ``dead`` -> back to ``pending`` with a fresh retry budget, like a
  dead-letter replay (``router.replay._redeliver``): the institution acknowledged or was sent
  it, yet its extract lacks it, so it is sent again; the next run shows it closed.
* ``pending`` -> ``already_pending``: it is on its way; nothing to do.
* ``rejected`` -> ``rejected``: re-sending what the institution refused would be refused again;
  the reason code says what to fix first.
* no outbox row -> ``no_delivery``: Jokko never received the event; the mutual must submit it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.orm import Session

from router.audit import append as append_audit
from router.store import (
    DeliveryState,
    InboxRow,
    MemberDuplicateRow,
    MemberProfileRow,
    OutboxRow,
    ReconciliationItemRow,
    ReconciliationRunRow,
    Stage,
    TrailRow,
    utcnow,
)
from services.reconcile import (
    EVERY_MONTH,
    INSTITUTIONS,
    Discrepancy,
    Kind,
    Scope,
    Totals,
)
from services.reconcile_shards import DEFAULT_ENGINE, reconcile_files

_BATCH = 5_000
LEDGER_NAME = "ledger.csv"
EXTRACT_NAMES = {"cmu": "cmu.ndjson", "css": "css.csv", "ipres": "ipres.txt"}
"""The files a scheduled run reads from the reconciliation folder when none is named."""


def reconcile_dir() -> Path:
    """Where ledger exports and extracts arrive (``JOKKO_RECONCILE_DIR``): they are large and
    come by file transfer, so runs name files in this folder rather than upload them."""
    return Path(os.environ.get("JOKKO_RECONCILE_DIR", ".jokko/reconcile")).resolve()


class _DbCollector:
    """Writes discrepancies in batches, in the run's own session; ``reset`` empties them."""

    def __init__(self, engine: Engine, run_id: int) -> None:
        self.engine, self.run_id = engine, run_id
        self.buf: list[dict[str, object]] = []
        self.count = 0

    def add(self, d: Discrepancy) -> None:
        row = d._asdict()
        row["record"] = str(row["record"])
        row["kind"] = str(row["kind"])
        row["run_id"] = self.run_id
        self.buf.append(row)
        self.count += 1
        if len(self.buf) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            with Session(self.engine) as s, s.begin():
                s.execute(insert(ReconciliationItemRow), self.buf)
            self.buf = []

    def reset(self) -> None:
        self.buf = []
        self.count = 0
        with Session(self.engine) as s, s.begin():
            s.execute(
                delete(ReconciliationItemRow).where(ReconciliationItemRow.run_id == self.run_id)
            )


def summary_of(totals: Totals) -> dict[str, object]:
    """The JSON summary kept with a run (and shown in every report)."""

    def rows(*dims: str) -> list[dict[str, object]]:
        return [
            {**dict(zip(dims, key, strict=True)), "count": c, "xof_difference": x}
            for key, (c, x) in totals.by(*dims).items()
        ]

    return {
        "compared": {i: {"ledger": c[0], "held": c[1]} for i, c in totals.compared.items()},
        "by_kind": rows("institution", "record", "kind"),
        "by_region_period": rows("region", "period"),
        "by_institution_region_period_branch": rows("institution", "region", "period", "branch"),
        "total": sum(c for c, _ in totals.cells.values()),
    }


def create_run(
    engine: Engine, actor: str, ledger: Path, extracts: dict[str, Path], scope: Scope = EVERY_MONTH
) -> int:
    """A kept run of these institutions (the extracts given) over ``scope``'s months."""
    with Session(engine) as s, s.begin():
        run = ReconciliationRunRow(
            actor=actor,
            institutions=",".join(i for i in INSTITUTIONS if i in extracts),
            sources=json.dumps({"ledger": str(ledger), **{k: str(v) for k, v in extracts.items()}}),
            period_from=scope.period_from,
            period_to=scope.period_to if scope.period_from else None,
        )
        s.add(run)
        s.flush()
        append_audit(s, actor=actor, action="reconcile.run", target=f"run {run.id}")
        return run.id


def execute_run(
    engine: Engine,
    run_id: int,
    ledger: Path,
    extracts: dict[str, Path],
    *,
    chunk: int = 500_000,
    progress: Callable[[int], object] | None = None,
    workers: int = 1,
    reconcile_engine: str = DEFAULT_ENGINE,
) -> dict[str, object]:
    """Compare and store; the run ends ``done`` with its summary, or ``failed`` with why.
    The scope is the one kept with the run; ``workers`` processes share the comparison of the
    ``python`` engine; ``reconcile_engine`` is ``duckdb`` or ``python`` (same discrepancies)."""
    collector, totals = _DbCollector(engine, run_id), Totals()
    with Session(engine) as s:
        row = s.get_one(ReconciliationRunRow, run_id)
        scope = Scope(row.period_from, row.period_to)
    try:
        unknown = set(extracts) - set(INSTITUTIONS)
        if unknown:
            raise ValueError(f"unknown institution(s): {', '.join(sorted(unknown))}")
        reconcile_files(
            ledger,
            extracts,
            collector,
            totals,
            workers=workers,
            chunk=chunk,
            scope=scope,
            progress=progress,
            engine=reconcile_engine,
        )
        for d in duplicate_members(engine, set(extracts)):
            collector.add(d)
            totals.add(d)
        collector.flush()
    except Exception as exc:
        collector.reset()
        with Session(engine) as s, s.begin():
            run = s.get_one(ReconciliationRunRow, run_id)
            run.state, run.error, run.finished_at = "failed", str(exc)[:2000], utcnow()
        raise
    summary = summary_of(totals)
    with Session(engine) as s, s.begin():
        run = s.get_one(ReconciliationRunRow, run_id)
        run.state, run.summary, run.finished_at = "done", json.dumps(summary), utcnow()
    return summary


def duplicate_members(engine: Engine, institutions: set[str]) -> Iterable[Discrepancy]:
    """Second affiliations of one NIN still to review (``member_duplicate``), at each of these
    institutions the second enrolment was routed to. An affiliation has no period: every run
    reports them, until an operator marks them reviewed."""
    with Session(engine) as s:
        rows = s.execute(
            select(
                MemberDuplicateRow.member_id,
                MemberDuplicateRow.other_member_id,
                MemberDuplicateRow.event_id,
                InboxRow.destinations,
                MemberProfileRow.region,
            )
            .join(InboxRow, InboxRow.event_id == MemberDuplicateRow.event_id)
            .outerjoin(MemberProfileRow, MemberProfileRow.member_id == MemberDuplicateRow.member_id)
            .where(
                MemberDuplicateRow.reviewed_at.is_(None),
                MemberDuplicateRow.action == "flagged",
            )
            .order_by(MemberDuplicateRow.id)
        ).all()
    for member, other, event_id, destinations, region in rows:
        for institution in INSTITUTIONS:
            if institution in institutions and institution in destinations.split(","):
                yield Discrepancy(
                    institution, "member", Kind.DUPLICATE_MEMBER, member, "", "", other,
                    region or "", 0, 0, "nin", other, member, event_id,
                )  # fmt: skip


def run_files(
    engine: Engine,
    actor: str,
    ledger: Path,
    extracts: dict[str, Path],
    *,
    chunk: int = 500_000,
    progress: Callable[[int], object] | None = None,
    scope: Scope = EVERY_MONTH,
    workers: int = 1,
    reconcile_engine: str = DEFAULT_ENGINE,
) -> int:
    """``reconcile_engine``: ``duckdb`` or ``python`` (``engine`` is the database's)."""
    run_id = create_run(engine, actor, ledger, extracts, scope)
    execute_run(engine, run_id, ledger, extracts, chunk=chunk, progress=progress, workers=workers,
                reconcile_engine=reconcile_engine)  # fmt: skip
    return run_id


def items(session: Session, run_id: int) -> list[ReconciliationItemRow]:
    return list(
        session.scalars(
            select(ReconciliationItemRow)
            .where(ReconciliationItemRow.run_id == run_id)
            .order_by(ReconciliationItemRow.id)
        )
    )


def redrive(
    engine: Engine, run_id: int, item_ids: Iterable[int] | None, actor: str
) -> dict[int, str]:
    """Re-drive the chosen ``missing`` items of a run (all of them when ``item_ids`` is None);
    returns per item what happened (see the module docstring), ``not_missing`` for other kinds,
    ``unknown`` for an id not in the run."""
    with Session(engine) as s:
        q = select(ReconciliationItemRow.id).where(ReconciliationItemRow.run_id == run_id)
        if item_ids is None:
            q = q.where(ReconciliationItemRow.kind == Kind.MISSING)
        ids = (
            list(s.scalars(q.order_by(ReconciliationItemRow.id)))
            if item_ids is None
            else list(item_ids)
        )
    results: dict[int, str] = {}
    for item_id in ids:
        with Session(engine) as s, s.begin():
            results[item_id] = _redrive_one(s, run_id, item_id, actor)
    return results


def _redrive_one(s: Session, run_id: int, item_id: int, actor: str) -> str:
    item = s.get(ReconciliationItemRow, item_id, with_for_update=True)
    if item is None or item.run_id != run_id:
        return "unknown"
    if item.kind != Kind.MISSING:
        return "not_missing"
    if item.redrive is not None:
        return item.redrive  # once only: the first outcome stands
    rows = list(
        s.scalars(
            select(OutboxRow)
            .where(OutboxRow.event_id == item.event_id, OutboxRow.institution == item.institution)
            .order_by(OutboxRow.id)
            .with_for_update()
        )
    ) if item.event_id else []  # fmt: skip
    now = utcnow()
    if not rows:
        outcome = "no_delivery"
    elif any(r.state == DeliveryState.PENDING for r in rows):
        outcome = "already_pending"
    elif all(r.state == DeliveryState.REJECTED for r in rows):
        outcome = "rejected"
    else:
        for row in rows:
            if row.state == DeliveryState.REJECTED:
                continue
            row.state, row.attempts, row.next_attempt_at = DeliveryState.PENDING, 0, None
            s.add(
                TrailRow(
                    event_id=row.event_id,
                    stage=Stage.QUEUED,
                    institution=row.institution,
                    message_id=row.message_id,
                    detail=f"re-drive: missing at {item.institution} (reconciliation run {run_id})",
                    at=now,
                )
            )
        outcome = "redriven"
    item.redrive, item.redriven_at = outcome, now
    append_audit(
        s,
        actor=actor,
        action="reconcile.redrive",
        target=f"run {run_id} item {item_id}",
        member_id=item.member_id,
        detail=outcome,
        at=now,
    )
    return outcome
