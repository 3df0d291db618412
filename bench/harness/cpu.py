"""CPU each process used (/proc): whether a stage was bound by its own CPU or waiting on
another process sharing the machine's cores."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from bench.harness.infra import Infra


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU of one process so far (/proc), to tell a CPU bound from waiting;
    with ``children``, also its live children's and what its reaped children used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                child = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # exited meanwhile
                continue
            if int(child[1]) == pid:
                ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def infra_cpu(infra: Infra) -> dict[str, float]:
    """CPU seconds so far of the broker (JVM) and PostgreSQL (postmaster and backends)."""
    broker = int((infra.broker.directory / "kafka.pid").read_text().split()[0])
    postmaster = int((infra.pg.directory / "data" / "postmaster.pid").read_text().split()[0])
    return {"broker": cpu_seconds(broker), "postgres": cpu_seconds(postmaster, children=True)}


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot (/proc/stat; idle and iowait not busy)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


def process_cpu(
    infra: Infra,
    procs: Mapping[str, subprocess.Popen[bytes]],
    others: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """CPU seconds so far, by kind: Jokko's processes (``router-1`` and ``router-2`` both
    count as ``router``), then ``others`` (name -> pid), then the broker and PostgreSQL."""
    out: dict[str, float] = {}
    for key, proc in procs.items():
        kind = key.split("-")[0]
        out[kind] = out.get(kind, 0.0) + cpu_seconds(proc.pid)
    out.update({name: cpu_seconds(pid) for name, pid in (others or {}).items()})
    out.update(infra_cpu(infra))
    return out


class CoreMeter:
    """Cores used from its creation on: each of ``sample``'s processes, and the machine's."""

    def __init__(self, sample: Callable[[], dict[str, float]]) -> None:
        self._sample = sample
        self._before = sample()
        self._jiffies = machine_jiffies()

    def cores(self, seconds: float) -> dict[str, float]:
        """Cores each process used over ``seconds`` (its CPU seconds / wall seconds)."""
        return {k: (v - self._before[k]) / seconds for k, v in self._sample().items()}

    def machine(self) -> float:
        """The share of all cores busy since creation, whoever used them."""
        busy0, total0 = self._jiffies
        busy1, total1 = machine_jiffies()
        return (busy1 - busy0) / (total1 - total0)
