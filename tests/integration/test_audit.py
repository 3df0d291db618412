"""The hash-chained audit log on SQLite and PostgreSQL: appends chain from the first row and
never fork under concurrent writers; ``verify`` (and ``jokko audit verify``) names the row that
was altered, rewritten, removed or inserted behind the application's back; the table itself
refuses UPDATE and DELETE; migration 0009 chains the rows written before it."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from router.audit import GENESIS, AuditEntry, append, chain_hash, verify
from router.migrate import alembic_config, upgrade
from router.store import AuditRow, UtcDateTime
from services.api.auth import Authority
from services.cli import app as cli
from services.reconcile_runs import create_run

pytestmark = pytest.mark.integration


def fill(engine: Engine, n: int, start: int = 1) -> None:
    """``n`` reads of ``n`` members, each appended in a transaction of its own."""
    for i in range(start, start + n):
        with Session(engine) as s, s.begin():
            append(
                s,
                actor=f"operator-{i % 3}",
                action="read.event",
                target=f"GET /v1/events/{i}",
                member_id=f"MSNAS-DK-{i:06d}",
                detail=None if i % 2 else f"note {i}",
            )


def chain(engine: Engine) -> list[AuditRow]:
    with Session(engine) as s:
        return list(s.scalars(select(AuditRow).order_by(AuditRow.id)))


@contextmanager
def unguarded(engine: Engine) -> Iterator[Connection]:
    """A connection as someone with DDL rights has it: the append-only triggers out of the way
    (PostgreSQL: disabled in this transaction only; SQLite: dropped, as an attacker would)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        else:
            conn.execute(text("DROP TRIGGER audit_log_no_update"))
            conn.execute(text("DROP TRIGGER audit_log_no_delete"))
        yield conn
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))


def database_url(engine: Engine) -> str:
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            schema = conn.execute(text("select current_schema()")).scalar_one()
        url += f"?options=-csearch_path%3D{schema}"
    return url


def test_rows_chain_from_genesis_with_consecutive_ids(store: Engine) -> None:
    fill(store, 5)
    rows = chain(store)
    assert [r.id for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_hash == GENESIS
    for before, row in itertools.pairwise(rows):
        assert row.prev_hash == before.row_hash
        entry = AuditEntry(
            row.id, row.at, row.actor, row.action, row.target, row.member_id, row.detail
        )
        assert row.row_hash == chain_hash(before.row_hash, entry)
    verdict = verify(store)
    assert (verdict.ok, verdict.checked, verdict.head_id) == (True, 5, 5)
    assert verdict.head_hash == rows[-1].row_hash


def test_an_audit_row_rolls_back_with_the_change_it_records(store: Engine) -> None:
    fill(store, 2)

    def failing_change() -> None:
        with Session(store) as s, s.begin():
            append(s, actor="ops", action="client.add", target="never-added")
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        failing_change()
    fill(store, 1, start=3)
    assert [(r.id, r.target) for r in chain(store)][-1] == (3, "GET /v1/events/3")
    assert verify(store).ok


def test_the_table_refuses_update_delete_and_rows_without_a_hash(store: Engine) -> None:
    fill(store, 3)
    for sql in ("UPDATE audit_log SET detail = 'x' WHERE id = 2", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), store.begin() as conn:
            conn.execute(text(sql))
    with pytest.raises(IntegrityError), store.begin() as conn:
        conn.execute(sa.insert(AuditRow).values(id=4, at=datetime.now(UTC), actor="x", action="y"))
    assert len(chain(store)) == 3
    assert verify(store).ok


def test_jokko_audit_verify_names_a_tampered_row(
    store: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(store, 5)
    monkeypatch.setenv("JOKKO_DATABASE_URL", database_url(store))
    runner = CliRunner()
    intact = runner.invoke(cli, ["audit", "verify"])
    assert intact.exit_code == 0, intact.output
    assert "5 rows checked" in intact.stdout
    assert f"head: row 5 {chain(store)[-1].row_hash}" in intact.stdout

    with unguarded(store) as conn:
        conn.execute(text("UPDATE audit_log SET detail = 'nothing to see' WHERE id = 3"))
    broken = runner.invoke(cli, ["audit", "verify"])
    assert broken.exit_code == 1
    assert "row 3 was altered" in broken.stderr
    verdict = verify(store)
    assert (verdict.ok, verdict.row_id, verdict.checked) == (False, 3, 2)


def test_a_row_rewritten_with_its_hash_recomputed_is_named(store: Engine) -> None:
    """Whoever knows the encoding can recompute the row's own hash, not its successor's link."""
    fill(store, 5)
    row = chain(store)[2]
    forged = AuditEntry(row.id, row.at, "someone-else", row.action, row.target, None, None)
    with unguarded(store) as conn:
        conn.execute(
            text(
                "UPDATE audit_log SET actor = :actor, member_id = NULL, detail = NULL, "
                "row_hash = :h WHERE id = 3"
            ),
            {"actor": forged.actor, "h": chain_hash(row.prev_hash, forged)},
        )
    verdict = verify(store)
    assert (verdict.ok, verdict.row_id) == (False, 3)
    assert verdict.problem == (
        "row 3 was rewritten (its hash recomputed): row 4 does not chain onto it"
    )


@pytest.mark.parametrize(
    ("removed", "named", "problem"),
    [
        ([3], 3, "row 3 removed: row 4 does not chain onto row 2"),
        ([2, 3, 4], 2, "rows 2-4 removed: row 5 does not chain onto row 1"),
        ([1], 2, "the chain does not start at row 2: rows before it were removed"),
    ],
    ids=["middle", "several", "first"],
)
def test_removed_rows_are_named(
    store: Engine, removed: list[int], named: int, problem: str
) -> None:
    fill(store, 6)
    with unguarded(store) as conn:
        conn.execute(sa.delete(AuditRow).where(AuditRow.id.in_(removed)))
    verdict = verify(store)
    assert (verdict.ok, verdict.row_id, verdict.problem) == (False, named, problem)


def test_the_last_row_removed_shows_only_against_a_recorded_head(
    store: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chain's blind spot: a cut at its end leaves a whole, shorter chain. A head hash
    recorded earlier, outside the database, is what shows it."""
    fill(store, 4)
    recorded = verify(store).head_hash
    assert recorded is not None
    assert verify(store, head=recorded).ok
    fill(store, 2, start=5)
    assert verify(store, head=recorded).ok, "later rows do not invalidate an older head"
    with unguarded(store) as conn:
        conn.execute(text("DELETE FROM audit_log WHERE id >= 4"))
    blind = verify(store)
    assert (blind.ok, blind.checked) == (True, 3)
    verdict = verify(store, head=recorded)
    assert not verdict.ok
    assert f"the recorded head {recorded} is not in the chain" in str(verdict.problem)

    monkeypatch.setenv("JOKKO_DATABASE_URL", database_url(store))
    cli_verdict = CliRunner().invoke(cli, ["audit", "verify", "--head", recorded.upper()])
    assert cli_verdict.exit_code == 1
    assert "is not in the chain" in cli_verdict.stderr


def test_migration_chains_existing_rows_and_an_inserted_row_is_named(store: Engine) -> None:
    """Rows written before 0009 (ids with gaps, as a PostgreSQL sequence leaves them) are
    chained by the migration; a forged row slipped into a gap is named once the unique
    ``prev_hash`` index that refuses it has been dropped too."""
    cfg = alembic_config(store)
    with store.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0008")
    legacy = sa.table(
        "audit_log",
        sa.column("id", sa.Integer()),
        sa.column("at", UtcDateTime()),
        sa.column("actor", sa.String()),
        sa.column("action", sa.String()),
        sa.column("target", sa.String()),
        sa.column("detail", sa.Text()),
    )
    at = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    with store.begin() as conn:
        conn.execute(
            sa.insert(legacy),
            [
                {"id": i, "at": at, "actor": "cli:ops", "action": "client.add", "target": f"c{i}",
                 "detail": "scopes=events:read"}
                for i in (1, 2, 5, 6)
            ],
        )  # fmt: skip
    upgrade(store)
    verdict = verify(store)
    assert (verdict.ok, verdict.checked, verdict.head_id) == (True, 4, 6)
    fill(store, 1)
    assert [r.id for r in chain(store)] == [1, 2, 5, 6, 7]
    assert verify(store).ok

    row2 = chain(store)[1]
    forged = AuditEntry(3, at, "cli:ops", "client.revoke", "c1", None, None)
    values = {"id": 3, "at": at, "actor": forged.actor, "action": forged.action,
              "target": forged.target, "prev_hash": row2.row_hash,
              "row_hash": chain_hash(row2.row_hash, forged)}  # fmt: skip
    with pytest.raises(IntegrityError), store.begin() as conn:
        conn.execute(sa.insert(AuditRow).values(**values))
    with store.begin() as conn:
        conn.execute(text("DROP INDEX ix_audit_log_prev_hash"))
        conn.execute(sa.insert(AuditRow).values(**values))
    verdict = verify(store)
    assert (verdict.ok, verdict.row_id) == (False, 3)
    assert verdict.problem == "row 3 was inserted: row 5 chains onto the row before it"


def test_concurrent_appenders_leave_one_unbroken_chain(store: Engine) -> None:
    """Two writers (two API processes' worth: each its own connection and transactions) append
    at once; without the lock both would read the same head and one would fail or fork."""
    per_thread = 200
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(name: str) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                with Session(store) as s, s.begin():
                    append(s, actor=name, action="read.delivery", target=f"{name}/{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("api-1", "api-2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = chain(store)
    assert [r.id for r in rows] == list(range(1, 2 * per_thread + 1))
    assert {r.actor for r in rows[: per_thread + 1]} == {"api-1", "api-2"}, "interleaved"
    verdict = verify(store, batch=64)
    assert (verdict.ok, verdict.checked) == (True, 2 * per_thread)


def test_every_writer_of_the_audit_log_chains(store: Engine, tmp_path: Path) -> None:
    """Client and key changes, replays recorded by the authority and reconciliation runs all
    append through the one function: one chain, whole."""
    authority = Authority(store)
    authority.add_client("ops-1", ["dead_letters:manage"], actor="cli:ops")
    authority.rotate(actor="cli:ops")
    authority.revoke_client("ops-1", actor="cli:ops")
    authority.audit("ops-1", "dead_letter.replay", "dead_letter:7", "replayed")
    ledger = tmp_path / "ledger.csv"
    ledger.write_text("")
    run_id = create_run(store, "cli:ops", ledger, {})
    with Session(store) as s:
        actions = list(s.scalars(select(AuditRow.action).order_by(AuditRow.id)))
        count = s.scalar(select(func.count()).select_from(AuditRow))
    assert actions == [
        "client.add", "key.rotate", "client.revoke", "dead_letter.replay", "reconcile.run"
    ]  # fmt: skip
    assert chain(store)[-1].target == f"run {run_id}"
    verdict = verify(store)
    assert (verdict.ok, verdict.checked) == (True, count)
