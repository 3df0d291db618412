"""A real, minimal outbound adapter: one message per event whose body is the canonical JSON.

It lets the router's tests count and order messages without depending on any institution's
wire format; the institution adapters have their own contract suite.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.base import (
    Ack,
    Institution,
    MemberProfile,
    OutboundMessage,
    message_id,
)
from schemas import CanonicalEvent, dump_event


@dataclass(frozen=True)
class EchoAdapter:
    INSTITUTION: Institution
    FORMAT_VERSION: int = 1

    def translate(
        self, event: CanonicalEvent, member: MemberProfile | None
    ) -> list[OutboundMessage]:
        return [
            OutboundMessage(
                message_id=message_id(self.INSTITUTION, event.event_id, "echo"),
                institution=self.INSTITUTION,
                event_id=event.event_id,
                member_id=event.member_id,
                kind="echo",
                content_type="application/json",
                body=dump_event(event),
            )
        ]

    def parse_ack(self, raw: bytes) -> list[Ack]:
        return []

    def validate(self, message: OutboundMessage) -> None:
        return None


def echo_adapters() -> dict[Institution, EchoAdapter]:
    return {inst: EchoAdapter(inst) for inst in Institution}
