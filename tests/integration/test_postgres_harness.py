"""The database harness: SQLAlchemy 2 against a real PostgreSQL and the embedded SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import BigInteger, Engine, String, UniqueConstraint, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from router.db import make_engine

pytestmark = pytest.mark.integration


class _Base(DeclarativeBase):
    pass


class _Payment(_Base):
    __tablename__ = "harness_payment"
    __table_args__ = (UniqueConstraint("reference"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str] = mapped_column(String(64))
    payer: Mapped[str] = mapped_column(String(200))
    amount_xof: Mapped[int] = mapped_column(BigInteger)


def _round_trip(engine: Engine) -> None:
    _Base.metadata.create_all(engine)
    with Session(engine) as s, s.begin():
        s.add(
            _Payment(
                reference="WAVE-2026-11-0001", payer="Ndèye Fatou Diop", amount_xof=3_500_000_000
            )
        )
    with Session(engine) as s:
        row = s.scalars(select(_Payment)).one()
        assert (row.reference, row.payer, row.amount_xof) == (
            "WAVE-2026-11-0001",
            "Ndèye Fatou Diop",
            3_500_000_000,
        )
    # The unique constraint, not a read-before-write, is what refuses a second copy.
    with pytest.raises(IntegrityError), Session(engine) as s, s.begin():
        s.add(_Payment(reference="WAVE-2026-11-0001", payer="someone else", amount_xof=1))
    with Session(engine) as s:
        assert s.scalar(select(_Payment.amount_xof).where(_Payment.payer == "someone else")) is None


def test_postgres_round_trip(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        assert (
            conn.execute(text("select current_setting('server_version_num')::int")).scalar_one()
            >= 150000
        )
    _round_trip(pg_engine)


def test_each_test_has_its_own_schema(pg_engine: Engine) -> None:
    # The table made by the other test lives in another schema: this one starts empty.
    assert "harness_payment" not in inspect(pg_engine).get_table_names()
    with pg_engine.connect() as conn:
        assert conn.execute(text("select current_schema()")).scalar_one().startswith("t_")


def test_sqlite_round_trip(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/nested/jokko.db")
    try:
        _round_trip(engine)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
    finally:
        engine.dispose()
