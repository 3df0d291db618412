"""Set-based writes of a whole batch, shared by the router (``processing``) and the relay
(``delivery``, ``acks``).

Going through the ORM a batch costs a statement (and a flush's bookkeeping) per row; here it
is one binary COPY for appended rows and one ``UPDATE`` per group of rows on PostgreSQL, and
one ``executemany`` (the driver's own loop) on SQLite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table, any_, bindparam, cast, func, insert, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from router.store import Base, TrailRow

Columns = tuple[tuple[str, str], ...]
"""Column, PostgreSQL type: COPY … (FORMAT BINARY) sends each value in the server's own
representation (bytea bodies raw, not hex-escaped), and must name the types to do so."""

TRAIL: Table = TrailRow.__table__  # type: ignore[assignment]
TRAIL_COLUMNS: Columns = (
    ("event_id", "varchar"),
    ("stage", "varchar"),
    ("institution", "varchar"),
    ("message_id", "varchar"),
    ("detail", "text"),
    ("at", "timestamptz"),
)


def copy_rows(
    conn: Connection, table: str, columns: Columns, rows: Sequence[tuple[Any, ...]]
) -> None:
    """Append rows: PostgreSQL's binary COPY (one stream, no statement per row), else
    executemany."""
    if not rows:
        return
    names = [c for c, _ in columns]
    if conn.dialect.name != "postgresql":
        conn.execute(
            insert(Base.metadata.tables[table]),
            [dict(zip(names, r, strict=True)) for r in rows],
        )
        return
    quote = conn.dialect.identifier_preparer.quote
    sql = f"COPY {quote(table)} ({', '.join(quote(c) for c in names)}) FROM STDIN (FORMAT BINARY)"
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    with dbapi.cursor() as cur, cur.copy(sql) as copy:
        copy.set_types([t for _, t in columns])
        for row in rows:
            copy.write_row(row)


def update_rows(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], key: str = "id"
) -> None:
    """Set each row's own values, by primary key ``key``; every row names the same columns.

    PostgreSQL: one statement. A column with the same value in every row is one parameter;
    the others travel as one array each and are joined by ``unnest``; when none differ it is
    ``UPDATE … WHERE id = ANY(:ids)``. SQLite: one executemany.
    """
    if not rows:
        return
    columns = [c for c in rows[0] if c != key]
    if conn.dialect.name != "postgresql":
        stmt = (
            update(table)
            .where(table.c[key] == bindparam(f"k_{key}"))
            .values({c: bindparam(f"v_{c}") for c in columns})
        )
        conn.execute(
            stmt, [{f"k_{key}": r[key], **{f"v_{c}": r[c] for c in columns}} for r in rows]
        )
        return
    first = rows[0]
    same = [c for c in columns if all(r[c] == first[c] for r in rows)]
    varying = [c for c in columns if c not in same]
    params: dict[str, Any] = {f"v_{c}": first[c] for c in same}

    def array(name: str) -> Any:
        params[f"a_{name}"] = [r[name] for r in rows]
        kind = ARRAY(table.c[name].type)
        return cast(bindparam(f"a_{name}", type_=kind), kind)

    values: dict[str, Any] = {c: bindparam(f"v_{c}", type_=table.c[c].type) for c in same}
    if not varying:
        stmt = update(table).where(table.c[key] == any_(array(key))).values(values)
    else:
        given = (
            func.unnest(*(array(c) for c in [key, *varying]))
            .table_valued(*(f"u_{c}" for c in [key, *varying]))
            .render_derived(name="given")
        )
        values.update({c: given.c[f"u_{c}"] for c in varying})
        stmt = update(table).where(table.c[key] == given.c[f"u_{key}"]).values(values)
    conn.execute(stmt, params)


def insert_new(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], key: str
) -> set[Any]:
    """Insert the rows whose ``key`` is free; returns the keys this call took. A key taken
    meanwhile by another transaction is simply not returned: the unique index decides, not a
    read before the write (members' data keys, NIN tokens)."""
    upsert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = upsert(table).on_conflict_do_nothing(index_elements=[key]).returning(table.c[key])
    return set(conn.execute(stmt, list(rows)).scalars())
