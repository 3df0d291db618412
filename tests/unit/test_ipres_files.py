"""IPRES declaration files: build/read round trip, totals, and the precise errors on reading."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adapters.ipres as ipres
from adapters.base import InvalidMessage, OutboundMessage, WireFormatError
from adapters.ipres import (
    ControlTotalMismatch,
    MalformedDeclarationFile,
    RecordCountMismatch,
    TrailerMismatch,
    build_declaration_file,
    read_declaration_file,
)
from router.routing import destinations
from schemas import Branch, CanonicalEvent, ContributionPaid, ContributionReversed
from tests.contract.suite import opted_into_everything
from tests.contract.test_ipres_contract import golden_messages
from tests.strategies import events

pytestmark = pytest.mark.unit

CREATED = date(2026, 7, 1)


def example_messages() -> list[OutboundMessage]:
    return [m for _e, ms in golden_messages() for m in ms]


def build(messages: list[OutboundMessage], file_id: str = "F-0001") -> bytes:
    return build_declaration_file(messages, file_id=file_id, created=CREATED)


def lines_of(raw: bytes) -> list[str]:
    return raw.decode("utf-8").split("\r\n")[:-1]


def join(lines: list[str], end: str = "\r\n") -> bytes:
    return (end.join(lines) + end).encode("utf-8")


def with_trailer(raw: bytes, count: int, total: int) -> bytes:
    lines = lines_of(raw)
    lines[-1] = f"T{count:09d}{'-' if total < 0 else '+'}{abs(total):018d}"
    return join(lines)


def test_round_trip_keeps_every_record_in_order_with_its_totals() -> None:
    messages = example_messages()
    raw = build(messages)
    parsed = read_declaration_file(raw)
    assert parsed.file_id == "F-0001"
    assert parsed.created == CREATED
    assert parsed.format_version == 1
    assert parsed.sender == "MSNAS"
    assert [r.message_id for r in parsed.records] == [m.message_id for m in messages]
    assert [r.kind for r in parsed.records] == [m.kind for m in messages]
    assert parsed.record_count == len(messages)
    # 2000 + 2000 - 2000 (reversal) + 2500 + 2000: the old-age shares of the examples
    assert parsed.control_total == 6500
    assert raw.endswith(b"+000000000000006500\r\n")


def test_each_line_is_a_message_body_between_header_and_trailer() -> None:
    messages = example_messages()
    lines = lines_of(build(messages))
    assert lines[0] == "H01MSNAS     IPRES     F-0001              20260701"
    assert [line.encode() for line in lines[1:-1]] == [m.body for m in messages]
    assert lines[-1] == f"T{len(messages):09d}+{6500:018d}"


def test_an_empty_declaration_is_well_formed() -> None:
    parsed = read_declaration_file(build([]))
    assert (parsed.record_count, parsed.control_total, parsed.records) == (0, 0, ())


def test_a_file_of_cancellations_has_a_negative_control_total() -> None:
    reversal = [m for m in example_messages() if m.body.startswith(b"D") and b"AN" in m.body[37:39]]
    raw = build(reversal)
    assert raw.endswith(b"T000000001-000000000000002000\r\n")
    assert read_declaration_file(raw).control_total == -2000


def test_lf_line_ends_and_a_missing_last_line_end_are_read() -> None:
    raw = build(example_messages())
    lf = raw.replace(b"\r\n", b"\n")
    assert read_declaration_file(lf) == read_declaration_file(raw)
    assert read_declaration_file(raw.removesuffix(b"\r\n")) == read_declaration_file(raw)


def test_a_control_total_that_does_not_match_is_rejected() -> None:
    messages = example_messages()
    raw = with_trailer(build(messages), len(messages), 6501)
    with pytest.raises(ControlTotalMismatch) as info:
        read_declaration_file(raw)
    (error,) = info.value.errors
    assert error.loc == f"line {len(messages) + 2}, col 12-29 (control_total)"
    assert "6501" in error.message
    assert "6500" in error.message


def test_a_tampered_amount_breaks_the_control_total() -> None:
    messages = example_messages()
    lines = lines_of(build(messages))
    i = next(n for n, line in enumerate(lines) if line.startswith("D"))
    lines[i] = lines[i][:82] + "0000002001" + lines[i][92:]
    with pytest.raises(ControlTotalMismatch):
        read_declaration_file(join(lines))


def test_a_record_count_that_does_not_match_is_rejected() -> None:
    messages = example_messages()
    raw = with_trailer(build(messages), len(messages) + 1, 6500)
    with pytest.raises(RecordCountMismatch) as info:
        read_declaration_file(raw)
    (error,) = info.value.errors
    assert error.loc == f"line {len(messages) + 2}, col 2-10 (record_count)"


def test_a_dropped_line_breaks_count_and_total_together() -> None:
    lines = lines_of(build(example_messages()))
    dropped = [line for line in lines if not line.startswith("D0405b395")]
    assert len(dropped) == len(lines) - 1
    with pytest.raises(TrailerMismatch) as info:
        read_declaration_file(join(dropped))
    assert type(info.value) is TrailerMismatch
    assert [e.type for e in info.value.errors] == ["count", "control_total"]


Mutation = Callable[[list[str]], list[str]]


@pytest.mark.parametrize(
    ("name", "mutate", "loc"),
    [
        ("no header", lambda ls: ls[1:], "line 1, col 1-1 (record_type)"),
        ("no trailer", lambda ls: ls[:-1], "col 1-1 (record_type)"),
        ("two headers", lambda ls: [ls[0], *ls], "line 2, col 1-1 (record_type)"),
        ("blank line", lambda ls: [ls[0], "", *ls[1:]], "line 2, col 1-1 (record_type)"),
        ("short record", lambda ls: [ls[0], ls[1][:-1], *ls[2:]], "line 2"),
        ("wrong version", lambda ls: ["H02" + ls[0][3:], *ls[1:]], "line 1, col 2-3"),
        ("duplicate", lambda ls: [ls[0], ls[1], *ls[1:]], "line 3, col 2-37 (message_id)"),
        (
            "bad amount",
            lambda ls: [
                line[:82] + "00000x2000" + line[92:] if line[0] == "D" else line for line in ls
            ],
            "col 83-92 (amount)",
        ),
    ],
)
def test_malformed_files_say_where(name: str, mutate: Mutation, loc: str) -> None:
    lines = lines_of(build([m for m in example_messages() if m.kind != "ipres.affiliation"]))
    with pytest.raises(MalformedDeclarationFile) as info:
        read_declaration_file(join(mutate(lines)))
    assert any(loc in e.loc for e in info.value.errors), (name, info.value.errors)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"", "empty"),
        (b"\xef\xbb\xbfH01", "bom"),
        (b"H01\xe9\r\n", "encoding"),
        (b"H\rX\n", "lines"),
    ],
)
def test_unreadable_files_are_malformed(raw: bytes, kind: str) -> None:
    with pytest.raises(MalformedDeclarationFile) as info:
        read_declaration_file(raw)
    assert info.value.errors[0].type == kind


def test_every_file_error_is_a_wire_format_error_of_ipres() -> None:
    with pytest.raises(WireFormatError) as info:
        read_declaration_file(b"garbage")
    assert info.value.institution == ipres.INSTITUTION


def test_build_refuses_invalid_or_repeated_messages() -> None:
    messages = example_messages()
    broken = dataclasses.replace(messages[0], body=messages[0].body[:-1])
    with pytest.raises(InvalidMessage) as info:
        build([messages[1], broken])
    assert info.value.errors[0].loc == "line 3"
    with pytest.raises(InvalidMessage) as info:
        build([messages[0], messages[0]])
    assert info.value.errors[0].type == "duplicate"


@pytest.mark.parametrize("file_id", ["", "lower", "X" * 21, "A B"])
def test_build_refuses_a_bad_file_id(file_id: str) -> None:
    with pytest.raises(ValueError, match="file_id"):
        build([], file_id)


def _old_age(event: CanonicalEvent) -> bool:
    return ipres.INSTITUTION in destinations(event, opted_into_everything(event))


contributions = st.one_of(events("contribution.paid"), events("contribution.reversed")).filter(
    _old_age
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(contributions, max_size=15, unique_by=lambda e: e.event_id))
def test_any_batch_of_contributions_reads_back_with_matching_totals(
    batch: list[CanonicalEvent],
) -> None:
    messages = [m for e in batch for m in ipres.translate(e, None)]
    expected = 0
    for e in batch:
        assert isinstance(e, ContributionPaid | ContributionReversed)
        share = e.payload.allocation[Branch.OLD_AGE]
        expected += share if isinstance(e, ContributionPaid) else -share
    parsed = read_declaration_file(build(messages))
    assert parsed.record_count == len(messages) == len(batch)
    assert parsed.control_total == expected
    assert [r.message_id for r in parsed.records] == [m.message_id for m in messages]
