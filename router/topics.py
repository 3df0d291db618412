"""Jokko's topic names, versioned; a prefix isolates test runs and tenants on one broker."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.base import Institution
from router.broker import TopicSpec


@dataclass(frozen=True)
class Topics:
    canonical: str = "jokko.events.v1"
    prefix: str = ""
    partitions: int = 6

    def outbound(self, institution: Institution | str) -> str:
        return f"{self.prefix}jokko.out.{Institution(institution).value}.v1"

    def acks(self, institution: Institution | str) -> str:
        return f"{self.prefix}jokko.acks.{Institution(institution).value}.v1"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}jokko.dlq.v1"

    def specs(self) -> list[TopicSpec]:
        names = [self.canonical, self.dead_letters]
        for inst in Institution:
            names += [self.outbound(inst), self.acks(inst)]
        return [TopicSpec(n, self.partitions) for n in names]
