"""What a client may do: the API's scopes, those an institution's client may hold, and the
authenticated caller of one request."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from adapters.base import Institution


class Scope(StrEnum):
    EVENTS_SUBMIT = "events:submit"
    """The mutual submits canonical events."""
    EVENTS_READ = "events:read"
    """Status trails (the mutual, operators)."""
    DELIVERIES_READ = "deliveries:read"
    """Institutions (their own only), operators (all)."""
    ACKS_WRITE = "acks:write"
    """Institutions post their own acknowledgements."""
    EXTRACTS_WRITE = "extracts:write"
    """Institutions post their own extracts for reconciliation."""
    DEAD_LETTERS = "dead_letters:manage"
    """Operators: list, replay, discard."""
    RECONCILE = "reconcile:run"
    """Operators."""
    CLIENTS_ADMIN = "clients:admin"


SCOPES = frozenset(s.value for s in Scope)
INSTITUTION_SCOPES = frozenset(
    s.value for s in (Scope.DELIVERIES_READ, Scope.ACKS_WRITE, Scope.EXTRACTS_WRITE)
)
"""All an institution's client may hold: anything else would reach past its own records."""

SCOPE_HELP = {
    Scope.EVENTS_SUBMIT: "Submit canonical events (the mutual).",
    Scope.EVENTS_READ: "Read events' status trails.",
    Scope.DELIVERIES_READ: "Read deliveries (an institution: its own only).",
    Scope.ACKS_WRITE: "Post acknowledgements (an institution: its own only).",
    Scope.EXTRACTS_WRITE: "Post extracts for reconciliation (an institution: its own only).",
    Scope.DEAD_LETTERS: "List, replay and discard dead letters.",
    Scope.RECONCILE: "Run reconciliations and read their reports.",
    Scope.CLIENTS_ADMIN: "Administer API clients.",
}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    client_id: str
    scopes: frozenset[str]
    institution: Institution | None
    """Set for an institution's client: the only institution whose records it may see."""

    def may_see(self, institution: str | Institution) -> bool:
        """Whether records of ``institution`` are visible; callers answer 404 when not, so
        another institution's records do not even appear to exist."""
        return self.institution is None or self.institution.value == str(institution)

    def has(self, scope: Scope) -> bool:
        return scope.value in self.scopes
