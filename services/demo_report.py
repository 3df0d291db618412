"""What ``jokko demo`` observed and how it reports it: the deliveries tallied from the store,
the reconciliation tables, and the checks that make its verdict."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from router.store import DeadLetterRow, DeliveryState, MemberDuplicateRow, OutboxRow
from services.demo_data import DUPLICATE_EVERY
from services.reconcile import INSTITUTIONS


@dataclass
class Tally:
    """Deliveries per institution and state, from the store."""

    states: dict[str, Counter[str]] = field(default_factory=dict)

    def of(self, institution: str, state: DeliveryState) -> int:
        return self.states.get(institution, Counter())[state.value]

    def total(self, institution: str) -> int:
        return sum(self.states.get(institution, Counter()).values())


@dataclass
class Outcome:
    """What the demo observed, for its verdict and for tests."""

    submitted: int = 0
    refused_by_api: int = 0
    first: Tally = field(default_factory=Tally)
    final: Tally = field(default_factory=Tally)
    dead_letters: Counter[str] = field(default_factory=Counter)
    found: Counter[tuple[str, str]] = field(default_factory=Counter)
    after_redrive: Counter[tuple[str, str]] = field(default_factory=Counter)
    redrive: Counter[str] = field(default_factory=Counter)
    desk: Counter[str] = field(default_factory=Counter)
    css_requests: int = 0
    duplicates: int = 0
    """Enrolments flagged as the same NIN under another member id."""
    console_url: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def count_deliveries(engine: Engine) -> Tally:
    tally = Tally()
    with Session(engine) as s:
        rows = s.execute(
            select(OutboxRow.institution, OutboxRow.state, func.count()).group_by(
                OutboxRow.institution, OutboxRow.state
            )
        )
        for institution, state, n in rows:
            tally.states.setdefault(str(institution), Counter())[str(state)] += n
    return tally


def open_dead_letters(engine: Engine) -> Counter[str]:
    with Session(engine) as s:
        rows = s.execute(
            select(DeadLetterRow.source, DeadLetterRow.reason, func.count())
            .where(DeadLetterRow.replayed_at.is_(None), DeadLetterRow.discarded_at.is_(None))
            .group_by(DeadLetterRow.source, DeadLetterRow.reason)
        )
        return Counter({f"{src}: {reason}": n for src, reason, n in rows})


def print_tally(
    console: Console, engine: Engine, outcome: Outcome, tally: Tally, title: str
) -> None:
    table = Table(title=title)
    for column in ("institution", "delivered", "accepted", "rejected", "dead"):
        table.add_column(column, justify="left" if column == "institution" else "right")
    for inst in INSTITUTIONS:
        table.add_row(
            inst.upper(),
            f"{tally.total(inst):,}",
            f"{tally.of(inst, DeliveryState.ACCEPTED):,}",
            f"{tally.of(inst, DeliveryState.REJECTED):,}",
            f"{tally.of(inst, DeliveryState.DEAD):,}",
        )
    console.print(table)
    letters = ", ".join(f"{k}: {v}" for k, v in outcome.dead_letters.items())
    console.print(
        f"open dead letters: {letters or 'none'}; "
        f"requests CSS received so far: {outcome.css_requests:,}"
    )
    with Session(engine) as s:
        pairs = s.execute(
            select(MemberDuplicateRow.member_id, MemberDuplicateRow.other_member_id)
            .where(MemberDuplicateRow.reviewed_at.is_(None))
            .order_by(MemberDuplicateRow.id)
        ).all()
    outcome.duplicates = len(pairs)
    shown = ", ".join(f"{m} = {o}" for m, o in pairs[:5]) + (", ..." if len(pairs) > 5 else "")
    console.print(
        f"duplicate enrolments flagged (same NIN under another member id): {len(pairs)}"
        + (f" ({shown})" if pairs else "")
    )


def print_reconciliation(
    console: Console, api: str, run_id: int, found: Counter[tuple[str, str]]
) -> None:
    table = Table(title=f"Reconciliation run {run_id}: the mutual's ledger against the extracts")
    kinds = ("missing", "extra", "mismatch", "duplicate", "duplicate_member")
    for column in ("institution", *kinds):
        table.add_column(column, justify="left" if column == "institution" else "right")
    for inst in INSTITUTIONS:
        table.add_row(inst.upper(), *(str(found[(inst, k)]) for k in kinds))
    console.print(table)
    console.print(f"report: {api}/v1/reconciliations/{run_id}/report?format=html")


def expect_first(outcome: Outcome, members: int, rejected_member: str) -> None:
    """Missing at each institution = its dead deliveries' records + the rejected member's."""
    t, found = outcome.first, outcome.found
    if outcome.refused_by_api != 1:
        outcome.problems.append("the invalid event was not refused with 422")
    if not any(k.startswith("canonical") for k in outcome.dead_letters):
        outcome.problems.append("the poison record is not among the dead letters")
    if t.of("cmu", DeliveryState.REJECTED) == 0:
        outcome.problems.append(f"CMU rejected nothing of {rejected_member}")
    twins = sum(1 for i in range(members) if i % DUPLICATE_EVERY == DUPLICATE_EVERY // 2)
    if outcome.duplicates != twins:
        outcome.problems.append(
            f"{outcome.duplicates} duplicate enrolments flagged, {twins} in the month"
        )
    for kind in ("extra", "mismatch", "duplicate"):
        if any(found[(i, kind)] for i in INSTITUTIONS):
            outcome.problems.append(f"first run reports {kind} records")
    if t.of("css", DeliveryState.DEAD) and not found[("css", "missing")]:
        outcome.problems.append("CSS has dead deliveries but nothing missing")
    if not found[("cmu", "missing")]:
        outcome.problems.append("the rejected CMU records are not reported missing")


def expect_closed(console: Console, outcome: Outcome, rejected_member: str) -> None:
    t, left = outcome.final, outcome.after_redrive
    for inst in INSTITUTIONS:
        if t.of(inst, DeliveryState.DEAD):
            outcome.problems.append(f"{inst}: deliveries still dead after the re-drive")
    if left[("css", "missing")] or left[("ipres", "missing")]:
        outcome.problems.append("records still missing at CSS or IPRES after re-drive")
    if any(left[(i, k)] for i in INSTITUTIONS for k in ("extra", "mismatch", "duplicate")):
        outcome.problems.append("the second run reports extra/mismatch/duplicate")
    rejected = outcome.first.of("cmu", DeliveryState.REJECTED)
    if left[("cmu", "missing")] > rejected:
        outcome.problems.append("CMU misses more than the records it rejected")
    console.print(
        f"left after the re-drive: {left[('cmu', 'missing')]} record(s) of {rejected_member} "
        "that CMU rejected (reason kept on the delivery): a rejection is the institution's "
        "decision, so the mutual corrects the record; a re-drive never overrides it"
    )


def farewell(console: Console, outcome: Outcome, operator_secret: str) -> None:
    verdict = (
        "[green]the month reached every institution exactly once and reconciles[/]"
        if outcome.ok
        else "[red]" + "; ".join(outcome.problems) + "[/]"
    )
    console.print(verdict)
    console.print(
        f"operator console: [bold]{outcome.console_url}[/] — client id "
        f"[bold]operator-demo[/], secret [bold]{operator_secret}[/]"
    )
