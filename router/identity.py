"""Members' NINs as tokens: a second enrolment of the same person is found, never silent.

The NIN is never stored or compared in clear: each enrolment's NIN is tokenised under every
token key of the keyring (``Vault.nin_tokens``) and looked up; a NIN held by no one is claimed
under the current key by an insert on the token's primary key, so two routers enrolling the
same NIN at once cannot both take it: the loser sees the winner as the owner.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Table, bindparam, select

from router.bulk import insert_new
from router.store import MemberIdentityRow, utcnow
from router.vault import Vault
from schemas import MemberEnrolled

IDENTITY: Table = MemberIdentityRow.__table__  # type: ignore[assignment]
_OWNERS = select(IDENTITY.c.token, IDENTITY.c.member_id, IDENTITY.c.mutual).where(
    IDENTITY.c.token.in_(bindparam("tokens", expanding=True))
)

Owner = tuple[str, str]
"""(member id, mutual) holding a NIN."""


def claim_identities(
    conn: Connection, vault: Vault, enrolments: Sequence[MemberEnrolled]
) -> dict[str, Owner]:
    """Claim each enrolment's NIN for its member; returns, by event id, the other member who
    already holds it, for the enrolments that are second affiliations of the same NIN."""
    if not enrolments:
        return {}
    tokens = {str(e.event_id): vault.nin_tokens(e.payload.identity.nin) for e in enrolments}
    wanted = sorted({t for ts in tokens.values() for t in ts})
    owners: dict[str, Owner] = {
        token: (member, mutual)
        for token, member, mutual in conn.execute(_OWNERS, {"tokens": wanted})
    }
    duplicates: dict[str, Owner] = {}
    claims: dict[str, tuple[str, MemberEnrolled]] = {}  # current token -> (event id, event)
    for e in enrolments:
        eid, mine = str(e.event_id), tokens[str(e.event_id)]
        owner = next((owners[t] for t in mine if t in owners), None)
        if owner is None and mine[0] in claims:  # the same NIN twice in this batch
            other = claims[mine[0]][1]
            owner = (other.member_id, other.source.mutual)
        if owner is None:
            claims[mine[0]] = (eid, e)
        elif owner[0] != e.member_id:
            duplicates[eid] = owner
    if claims:
        now = utcnow()
        rows = [
            {
                "token": token,
                "member_id": e.member_id,
                "mutual": e.source.mutual,
                "event_id": eid,
                "created_at": now,
            }
            for token, (eid, e) in claims.items()
        ]
        taken = insert_new(conn, IDENTITY, rows, "token")
        lost = sorted(set(claims) - taken)  # claimed meanwhile by another router
        if lost:
            for token, member, mutual in conn.execute(_OWNERS, {"tokens": lost}):
                eid, e = claims[token]
                if member != e.member_id:
                    duplicates[eid] = (member, mutual)
    return duplicates
