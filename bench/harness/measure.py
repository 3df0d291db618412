"""Progress lines, the statistics every record uses, and the span of a run on a shared machine."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

SECONDS_PER_FIGURE = 0.6


def log(msg: str) -> None:
    print(msg, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def rate(work: Callable[[], Any], seconds: float = SECONDS_PER_FIGURE) -> float:
    """Calls per second of ``work``, after a short warm-up."""
    for _ in range(20):
        work()
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            work()
        n += 50
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def _no_load() -> tuple[float, float, float]:
    return (0.0, 0.0, 0.0)


@dataclass
class Window:
    """A run's wall time and the machine's load average (1/5/15 min) at each end: the cores
    are shared with the broker, PostgreSQL and other runs, and the records say how busy."""

    started: float = field(default_factory=time.perf_counter)
    load_before: tuple[float, float, float] = field(default_factory=os.getloadavg)
    seconds: float = 0.0
    load_after: tuple[float, float, float] = field(default_factory=_no_load)

    def close(self) -> None:
        self.seconds = time.perf_counter() - self.started
        self.load_after = os.getloadavg()
