"""Reading what the store keeps sealed (``router.vault``): outbox bodies, dead-letter originals,
the API's signing keys."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Table,
    bindparam,
    select,
    update,
)

from router.bulk import insert_new
from router.store import DeadLetterRow, MemberKeyRow, OutboxRow, SigningKeyRow, utcnow
from router.vault import MEMBER, SealError, Vault

MEMBER_KEY: Table = MemberKeyRow.__table__  # type: ignore[assignment]
_KEYS = select(MEMBER_KEY.c.member_id, MEMBER_KEY.c.kek_id, MEMBER_KEY.c.wrapped_dek).where(
    MEMBER_KEY.c.member_id.in_(bindparam("ids", expanding=True))
)
_REWRAP = (
    update(MEMBER_KEY)
    .where(MEMBER_KEY.c.member_id == bindparam("m"))
    .values(kek_id=bindparam("kid"), wrapped_dek=bindparam("w"))
)

DEAD_LETTER_AAD = b"dead_letter"
"""Associated data of a dead letter's original sealed under a keyring key."""


def signing_key_aad(kid: str) -> bytes:
    """Associated data of an API signing key's sealed PEM: bound to its kid, so a sealed key
    copied into another row does not open."""
    return b"signing_key:" + kid.encode()


def member_keys(conn: Connection, vault: Vault, members: Iterable[str]) -> dict[str, bytes | None]:
    """Each known member's data key, None for an erased member; absent: no key (yet)."""
    rows = conn.execute(_KEYS, {"ids": sorted(set(members))})
    return {
        member: None if wrapped is None else vault.unwrap(member, kid, wrapped)
        for member, kid, wrapped in rows
    }


def writable_keys(
    conn: Connection, vault: Vault, members: Iterable[str]
) -> dict[str, bytes | None]:
    """Each member's data key (None: erased), made for those who have none, and re-wrapped
    under the current keyring key when it was wrapped under an older one (rotation is lazy:
    a member's key moves to the new keyring key the next time one of their events is routed)."""
    ids = sorted(set(members))
    deks: dict[str, bytes | None] = {}
    stale: list[dict[str, Any]] = []
    for member, kid, wrapped in conn.execute(_KEYS, {"ids": ids}):
        if wrapped is None:
            deks[member] = None
            continue
        dek = deks[member] = vault.unwrap(member, kid, wrapped)
        if not vault.is_current(kid):
            new_kid, rewrapped = vault.wrap(member, dek)
            stale.append({"m": member, "kid": new_kid, "w": rewrapped})
    if stale:
        conn.execute(_REWRAP, stale)
    missing = [m for m in ids if m not in deks]
    if missing:
        now, fresh, rows = utcnow(), {}, []
        for member in missing:
            kid, wrapped, fresh[member] = vault.new_member_key(member)
            rows.append(
                {"member_id": member, "kek_id": kid, "wrapped_dek": wrapped, "created_at": now}
            )
        made = insert_new(conn, MEMBER_KEY, rows, "member_id")
        deks.update({m: fresh[m] for m in made})
        if len(made) < len(missing):  # made meanwhile by another router: theirs stands
            deks.update(member_keys(conn, vault, set(missing) - made))
    return deks


def open_body(
    vault: Vault | None,
    deks: Mapping[str, bytes | None],
    member_id: str,
    message_id: str,
    body: bytes,
) -> bytes:
    """An outbox body in clear; raises ``SealError`` when it cannot be (erased, altered)."""
    if not body.startswith(MEMBER):
        return body
    if vault is None:
        raise SealError("a sealed body and no keyring to open it")
    return vault.open_for_member(deks.get(member_id), body, message_id.encode())


def open_original(conn: Connection, vault: Vault, dead: DeadLetterRow) -> bytes:
    """A dead letter's original in clear: sealed under a keyring key (canonical records), or
    the outbox body it copies (sealed under its member's key)."""
    if not dead.original.startswith(MEMBER):
        return vault.open(dead.original, DEAD_LETTER_AAD)
    member = conn.scalar(select(OutboxRow.member_id).where(OutboxRow.message_id == dead.message_id))
    if member is None or dead.message_id is None:
        raise SealError("the message this dead letter copies is unknown")
    deks = member_keys(conn, vault, [member])
    return open_body(vault, deks, member, dead.message_id, dead.original)


def _chunks(
    engine: Engine, key: Any, query: Any, start: Any, chunk: int
) -> Iterator[tuple[Connection, Sequence[Row[Any]]]]:
    """``query``'s rows in ``key`` order, ``chunk`` at a time, each chunk in a transaction of
    its own that commits once the caller is done with it (keyset paging: no offset scans)."""
    last = start
    while True:
        with engine.begin() as conn:
            rows = conn.execute(query.where(key > last).order_by(key).limit(chunk)).all()
            if not rows:
                return
            yield conn, rows
            last = rows[-1][0]


def rewrap(engine: Engine, vault: Vault, chunk: int = 1000) -> dict[str, int]:
    """Re-seal under the current data key everything sealed under an older one, and seal
    what is still in clear from before encryption at rest; in chunks of ``chunk`` rows, each
    its own transaction (safe to run beside the router and relay, safe to run again)."""
    counts = {"member keys": 0, "dead letters": 0, "message bodies": 0, "signing keys": 0}
    current = vault.keyring.data.current
    signing = select(SigningKeyRow.kid, SigningKeyRow.private_pem)
    for conn, rows in _chunks(engine, SigningKeyRow.kid, signing, "", chunk):
        resealed = []  # the API's keys: in clear from before, or under an older keyring key
        for r in rows:
            if vault.sealed_under(r.private_pem) != current:
                aad = signing_key_aad(r.kid)
                resealed.append({"k": r.kid, "p": vault.seal(vault.open(r.private_pem, aad), aad)})
        if resealed:
            conn.execute(
                update(SigningKeyRow)
                .where(SigningKeyRow.kid == bindparam("k"))
                .values(private_pem=bindparam("p")),
                resealed,
            )
        counts["signing keys"] += len(resealed)
    stale_keys = select(MEMBER_KEY.c.member_id).where(
        MEMBER_KEY.c.kek_id != current, MEMBER_KEY.c.wrapped_dek.is_not(None)
    )
    for conn, rows in _chunks(engine, MEMBER_KEY.c.member_id, stale_keys, "", chunk):
        writable_keys(conn, vault, [r.member_id for r in rows])  # re-wraps the stale ones
        counts["member keys"] += len(rows)
    letters = select(DeadLetterRow.id, DeadLetterRow.original)
    for conn, rows in _chunks(engine, DeadLetterRow.id, letters, 0, chunk):
        stale = [  # under an older keyring key, or in clear
            {"i": r.id, "o": vault.seal(vault.open(r.original, DEAD_LETTER_AAD), DEAD_LETTER_AAD)}
            for r in rows
            if r.original
            and not r.original.startswith(MEMBER)
            and vault.sealed_under(r.original) != current
        ]
        if stale:
            conn.execute(
                update(DeadLetterRow)
                .where(DeadLetterRow.id == bindparam("i"))
                .values(original=bindparam("o")),
                stale,
            )
        counts["dead letters"] += len(stale)
    bodies = select(OutboxRow.id, OutboxRow.member_id, OutboxRow.message_id, OutboxRow.body)
    for conn, rows in _chunks(engine, OutboxRow.id, bodies, 0, chunk):
        clear = [r for r in rows if not r.body.startswith(MEMBER)]
        if not clear:
            continue
        deks = writable_keys(conn, vault, {r.member_id for r in clear})
        sealed = [
            {"i": r.id, "b": vault.seal_for_member(dek, r.body, r.message_id.encode())}
            for r in clear
            if (dek := deks.get(r.member_id)) is not None
        ]
        if sealed:
            conn.execute(
                update(OutboxRow).where(OutboxRow.id == bindparam("i")).values(body=bindparam("b")),
                sealed,
            )
        counts["message bodies"] += len(sealed)
    return counts
