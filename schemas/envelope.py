"""The envelope every canonical event travels in."""

from __future__ import annotations

from typing import Annotated, Literal, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.errors import field_error
from schemas.types import AgentId, ExactInt, MemberId, MutualCode, Region, UtcDatetime

SCHEMA_VERSION: Literal[1] = 1


class CanonicalModel(BaseModel):
    """Base of every canonical model.

    Strict (no coercion: ``1000.0`` and ``true`` are not amounts), closed (unknown fields are
    errors, not silently dropped) and frozen (an event is a fact, not a record to edit).
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Source(CanonicalModel):
    """Who recorded the event: a mutual, one of its regional units, one of its agents."""

    mutual: MutualCode = Field(description="Code of the emitting mutual, e.g. MSNAS.")
    region: Region = Field(description="Regional unit that recorded the event.")
    agent_id: AgentId = Field(description="Agent (or system job) that recorded the event.")


class Envelope(CanonicalModel):
    """Fields shared by every event; each event class adds ``event_type`` and its ``payload``."""

    event_id: UUID = Field(description="Unique id of this event; the idempotency key.")
    event_type: str
    schema_version: Annotated[Literal[1], ExactInt] = Field(
        description=(
            "Version of the canonical schema. Required: once a later version exists, an event "
            "without one must not be read as v1 by accident."
        )
    )
    occurred_at: UtcDatetime = Field(description="When the fact happened.")
    recorded_at: UtcDatetime = Field(description="When the mutual recorded it (>= occurred_at).")
    source: Source
    member_id: MemberId = Field(
        description=(
            "Ordering key (Kafka key): events with the same key are applied in order. "
            "Pattern <mutual>-<region>-<serial>, e.g. MSNAS-DK-000123."
        )
    )
    correlation_id: UUID = Field(
        description="Groups the events of one business flow; the event_id when it stands alone."
    )

    @model_validator(mode="after")
    def _recorded_after_it_occurred(self) -> Self:
        if self.recorded_at < self.occurred_at:
            raise field_error(
                "recorded_before_occurred", "must not be earlier than occurred_at", at="recorded_at"
            )
        return self
