"""Reads of personal data, audited: one chained ``audit_log`` row per request that returned a
member's data, committed before the answer leaves (no row, no answer).

Audited: a dead letter's detail (its original record), deliveries (member ids, what was sent
to whom, rejection reasons), an event's status trail, a member's events (console), a
reconciliation report (members, amounts, differing values). Not audited: lists of dead letters
and runs, the flow page and run summaries (counts and ids, no member), and reads that found
nothing. The console calls the same route functions, so its reads are audited by the same code,
with the console page as the endpoint.

A row names the caller (``actor``: the client id), the action (``read.<what>``), the endpoint
(``target``: method and path, never the query, which may hold what was searched for) and the
member when there is one; a page of several members lists their ids in ``detail``. Member ids
only: never a NIN, name or phone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from fastapi import Request
from sqlalchemy.orm import Session

from router.audit import append
from services.api.auth import Principal


def audit_read(
    session: Session,
    request: Request,
    who: Principal,
    action: str,
    members: Iterable[str] = (),
    *,
    detail: str | None = None,
) -> None:
    """Record that ``who`` was shown the data of ``members`` through this request, and commit.

    ``session`` is the request's: reading the ORM rows it loaded after this expires them."""
    ids = sorted(set(members))
    if len(ids) > 1 and detail is None:
        detail = json.dumps({"members": len(ids), "member_ids": ids}, separators=(",", ":"))
    append(
        session,
        actor=who.client_id,
        action=action,
        target=f"{request.method} {request.url.path}",
        member_id=ids[0] if len(ids) == 1 else None,
        detail=detail,
    )
    session.commit()
