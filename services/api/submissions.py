"""Conflicting resubmissions refused at the door: the same ``event_id`` with other content.

An event the API has published, or the router has applied, is known with its content digest
(``schemas.fingerprint``). A submission whose id is known under another digest is refused
(409) instead of being published to be dropped downstream. Where the API cannot know yet (two
conflicting copies racing, or the database away), the router's inbox catches the second copy
and dead-letters it (``conflicting_duplicate``): this check makes the answer honest earlier,
it is not what keeps the ledger right, so a database that is away does not stop submissions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import Engine, Table, bindparam, select, union_all
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from router.store import InboxRow, SubmittedEventRow, utcnow
from schemas import CanonicalEvent
from schemas.errors import JokkoError
from schemas.fingerprint import fingerprint

log = logging.getLogger(__name__)

_INBOX: Table = InboxRow.__table__  # type: ignore[assignment]
_SUBMITTED: Table = SubmittedEventRow.__table__  # type: ignore[assignment]
_KNOWN = union_all(
    select(_INBOX.c.event_id, _INBOX.c.content_digest).where(
        _INBOX.c.event_id.in_(bindparam("ids", expanding=True)),
        _INBOX.c.content_digest.is_not(None),
    ),
    select(_SUBMITTED.c.event_id, _SUBMITTED.c.content_digest).where(
        _SUBMITTED.c.event_id.in_(bindparam("ids", expanding=True))
    ),
)


class ConflictingEvent(JokkoError):
    """This ``event_id`` is already known with other content; the first content stands."""

    status = 409
    title = "Conflict"
    kind = "conflicting-event"

    def __init__(self, event_id: str) -> None:
        self.event_id = event_id
        super().__init__(
            f"event {event_id} was already submitted with other content; the first one "
            "stands and this one was not accepted: a correction is a new event "
            "(member.updated, contribution.reversed ...) with an id of its own"
        )


class Screening:
    """The events of one request, their digests, and which of them conflict."""

    def __init__(self, events: Sequence[CanonicalEvent]) -> None:
        self.events = list(events)
        self.digests = [fingerprint(e).digest for e in self.events]
        self.conflicts: set[int] = set()
        """Indexes into ``events`` that must not be published."""
        first: dict[str, str] = {}
        for i, (event, digest) in enumerate(zip(self.events, self.digests, strict=True)):
            if first.setdefault(str(event.event_id), digest) != digest:
                self.conflicts.add(i)  # the same id twice in one request, other content

    def check(self, engine: Engine, *, required: bool = False) -> None:
        """Mark the events known under another digest. If the store is away: the error goes
        up when ``required`` (a keyed request needs the store anyway: 503), else the check is
        skipped and logged (the router catches a conflict all the same)."""
        ids = sorted({str(e.event_id) for e in self.events})
        try:
            with engine.connect() as c:
                known: dict[str, set[str]] = {}
                for eid, digest in c.execute(_KNOWN, {"ids": ids}):
                    known.setdefault(eid, set()).add(digest)
        except SQLAlchemyError as exc:
            if required:
                raise
            log.warning("conflict check skipped, the router will catch any: %s", type(exc).__name__)
            return
        for i, (event, digest) in enumerate(zip(self.events, self.digests, strict=True)):
            if known.get(str(event.event_id), {digest}) - {digest}:
                self.conflicts.add(i)

    @property
    def accepted(self) -> list[CanonicalEvent]:
        return [e for i, e in enumerate(self.events) if i not in self.conflicts]

    def remember(self, engine: Engine) -> None:
        """After publishing: the accepted events' digests, the first one kept per id."""
        rows = {
            str(e.event_id): d
            for i, (e, d) in enumerate(zip(self.events, self.digests, strict=True))
            if i not in self.conflicts
        }
        if not rows:
            return
        now = utcnow()
        try:
            with engine.begin() as c:
                insert = pg_insert if c.dialect.name == "postgresql" else sqlite_insert
                c.execute(
                    insert(_SUBMITTED).on_conflict_do_nothing(index_elements=["event_id"]),
                    [
                        {"event_id": eid, "content_digest": d, "submitted_at": now}
                        for eid, d in rows.items()
                    ],
                )
        except SQLAlchemyError as exc:
            log.warning("submitted digests not kept: %s", type(exc).__name__)
