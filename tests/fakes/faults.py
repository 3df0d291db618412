"""The knobs that make a fake institution misbehave, turned by tests while the fake runs.

One ``Faults`` belongs to one fake. Its fields are plain attributes: a test assigns them at
any time (``faults.down = True``) and the next request sees the change. The random draws come
from a ``random.Random(seed)`` under a lock, one draw per request, so a run of sequential
requests gets the same errors and drops every time.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from enum import Enum


class Fate(Enum):
    """What a fake does with one request, decided on arrival."""

    SERVE = "serve"
    ERROR = "error"
    """Answered 503 without being processed."""
    DROP = "drop"
    """The connection is closed without an answer (before or after processing)."""


@dataclass
class Faults:
    latency_s: float = 0.0
    """Added to every HTTP answer (and to a 503 of ``error_rate``, not to one of ``down``)."""
    error_rate: float = 0.0
    """Fraction of requests answered 503, not processed."""
    drop_rate: float = 0.0
    """Fraction of requests whose connection is closed with no answer at all."""
    drop_before_processing: bool = False
    """False (default): the message is processed and recorded, then its answer is lost — the
    ambiguous case that forces the sender to re-send. True: lost on the way in."""
    reject_members: set[str] = field(default_factory=set)
    """Member ids whose messages the institution rejects (with ``reject_code``)."""
    reject_code: str | None = None
    """Reason code of those rejections; None means each institution's usual one (R042)."""
    duplicate_acks: bool = False
    """File/Kafka-style acks are written twice (two ack files for one declaration file)."""
    late_ack_s: float = 0.0
    """File/Kafka-style acks are written this long after the declaration is read."""
    down: bool = False
    """Every request is answered 503 at once."""
    create_clashes: int = 0
    """The next this many transactions holding a conditional create are answered 409, nothing
    applied: a FHIR server's answer when a concurrent transaction has just created the same
    identifier (HAPI FHIR: HAPI-0550 conditional constraint failure). CMU's fake only."""
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False, compare=False)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def reseed(self, seed: int) -> None:
        """Start the draws again, as if the fake had just been built with ``seed``."""
        with self._lock:
            self.seed = seed
            self._rng = random.Random(seed)

    def fate(self) -> Fate:
        """One draw: 503 with probability ``error_rate``, a drop with ``drop_rate``."""
        if self.down:
            return Fate.ERROR
        with self._lock:
            draw = self._rng.random()
        if draw < self.error_rate:
            return Fate.ERROR
        if draw < self.error_rate + self.drop_rate:
            return Fate.DROP
        return Fate.SERVE

    def clash(self) -> bool:
        """Whether this transaction's conditional create loses a race (``create_clashes``)."""
        with self._lock:
            if self.create_clashes <= 0:
                return False
            self.create_clashes -= 1
            return True

    def rejects(self, member_id: str | None) -> bool:
        return member_id is not None and member_id in self.reject_members
