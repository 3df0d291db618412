"""The bench's client of ``jokko api``: its submitting client, a token, readiness, and an
open-loop offer of prepared requests on a bare HTTP/1.1 client over asyncio streams."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from sqlalchemy import Engine

from services.api.auth import Authority, Scope

CLIENT = "bench-msnas"


def add_submitter(engine: Engine) -> str:
    """Register the bench's client, holding the ``events:submit`` scope; its secret."""
    return Authority(engine).add_client(CLIENT, [Scope.EVENTS_SUBMIT.value])


def token(url: str, secret: str) -> str:
    """A fresh access token (they live five minutes; each phase takes its own)."""
    r = httpx.post(
        f"{url}/v1/oauth/token", data={"grant_type": "client_credentials"}, auth=(CLIENT, secret)
    )
    r.raise_for_status()
    value: str = r.json()["access_token"]
    return value


def wait_ready(url: str, timeout_s: float = 90, gone: Callable[[], bool] | None = None) -> bool:
    """Whether ``/readyz`` answered 200 within ``timeout_s`` (False as soon as ``gone``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        if (gone is not None and gone()) or time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def post(path: str, body: bytes, bearer: str, idempotency_key: str | None = None) -> bytes:
    """One POST of JSON, as bytes on the wire."""
    key = f"Idempotency-Key: {idempotency_key}\r\n" if idempotency_key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {bearer}\r\n{key}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Write one request, read its whole answer; its status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    await reader.readexactly(int(m.group(1)) if m else 0)
    return status


@dataclass
class Offered:
    """What an open-loop offer saw, per request, in the times of the ``clock`` it ran on."""

    scheduled: list[float]
    """When each request was due."""
    answered: list[float | None]
    """When each answer was complete (None: cut at the offer's ``answer_within_s``)."""
    statuses: Counter[int]
    """Answers by status; 0 counts the requests cut."""
    lag_ms: list[float]
    """Per request sent: when it was written minus when it was due."""
    connections: int
    finished: float
    """When the last request was answered or cut."""

    @property
    def served(self) -> float:
        """Requests answered (cut ones excluded) a second, from the first due time on."""
        answered = sum(n for status, n in self.statuses.items() if status)
        return answered / (self.finished - self.scheduled[0])


def offer(
    port: int,
    requests: Sequence[bytes],
    per_s: float,
    max_connections: int,
    answer_within_s: float,
    clock: Callable[[], float] = time.time,
) -> Offered:
    """Send request i at start + i / per_s whatever the answers so far, on an idle connection
    or a new one (up to ``max_connections``, then the next one freed): latency counts from
    the scheduled time, so a server falling behind shows in it instead of slowing the
    offered rate. A request not answered ``answer_within_s`` after its scheduled time is cut
    (status 0), which keeps the run bounded when the server has fallen that far behind."""
    return asyncio.run(_offer(port, requests, per_s, max_connections, answer_within_s, clock))


async def _offer(
    port: int,
    requests: Sequence[bytes],
    per_s: float,
    max_connections: int,
    answer_within_s: float,
    clock: Callable[[], float],
) -> Offered:
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    opened: list[asyncio.StreamWriter] = []
    slots = max_connections
    t0 = clock() + 0.05
    scheduled = [t0 + i / per_s for i in range(len(requests))]
    answered: list[float | None] = [None] * len(requests)
    statuses: Counter[int] = Counter()
    lags: list[float] = []

    async def send(i: int) -> None:
        nonlocal slots
        if idle.empty() and slots > 0:
            slots -= 1  # taken before awaiting the connection, so the cap holds
            conn = await asyncio.open_connection("127.0.0.1", port)
            opened.append(conn[1])
        else:
            conn = await idle.get()
        lags.append((clock() - scheduled[i]) * 1000)
        try:
            status = await exchange(*conn, requests[i])
        except asyncio.CancelledError:
            conn[1].close()  # cut mid-answer: this connection is unusable, its slot is free
            slots += 1
            raise
        answered[i] = clock()
        statuses[status] += 1
        idle.put_nowait(conn)

    async def one(i: int) -> None:
        try:
            await asyncio.wait_for(send(i), answer_within_s)
        except TimeoutError:
            statuses[0] += 1

    tasks = []
    for i in range(len(requests)):
        delay = scheduled[i] - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    finished = clock()
    for w in opened:
        w.close()
    return Offered(scheduled, answered, statuses, lags, len(opened), finished)
