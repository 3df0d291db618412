"""The benchmarks' shared harness (bench/harness/): the pieces that decide a figure without any
process or broker: percentiles, the bytes of a request, reading an answer, the served rate,
and the workload's expected messages."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import cast

import pytest

from adapters.base import Institution
from bench.harness.api_client import Offered, exchange, post
from bench.harness.measure import percentile
from bench.harness.workload import routed_examples, with_profiles, workload
from router.routing import destinations

pytestmark = pytest.mark.unit


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0


def test_post_is_one_http_1_1_request_with_its_length() -> None:
    assert post("/v1/events", b"{}", "tok", "k-1") == (
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer tok\r\nIdempotency-Key: k-1\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert b"Idempotency-Key" not in post("/v1/events/batch", b"[]", "tok")


class _Written:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def test_exchange_reads_the_whole_answer_and_leaves_the_next_one() -> None:
    async def run() -> tuple[int, int, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}"
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
        )
        written = _Written()
        writer = cast(asyncio.StreamWriter, written)
        first = await exchange(reader, writer, b"one")
        second = await exchange(reader, writer, b"two")
        return first, second, written.data

    assert asyncio.run(run()) == (202, 503, b"onetwo")


def test_served_counts_answers_not_cuts_from_the_first_due_time() -> None:
    offered = Offered(
        scheduled=[10.0, 10.5, 11.0],
        answered=[10.2, None, 11.1],
        statuses=Counter({202: 2, 0: 1}),
        lag_ms=[0.1, 0.2, 0.1],
        connections=2,
        finished=14.0,
    )
    assert offered.served == pytest.approx(2 / 4.0)


def test_a_workload_enrols_its_members_first_and_expects_each_routed_message() -> None:
    load = workload(40, seed="unit")
    enrolled = [e for e in load.events if e.event_type == "member.enrolled"]
    assert load.events[: len(enrolled)] == enrolled
    assert len(enrolled) == 2
    assert load.contributions == 40
    assert set(load.expected) == {str(e.event_id) for e in load.events}
    for e, profile in with_profiles(load.events):
        assert load.expected[str(e.event_id)] >= len(destinations(e, profile))


def test_routed_examples_are_routed_to_their_institution() -> None:
    for inst in Institution:
        for event, member in routed_examples(inst).values():
            assert inst in destinations(event, member)
    assert routed_examples(Institution.CMU)
