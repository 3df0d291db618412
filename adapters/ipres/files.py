"""Whole files: the declaration file Jokko sends (H, records, T) and the ack file IPRES returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from adapters.base import (
    Ack,
    AckStatus,
    Institution,
    InvalidMessage,
    MalformedAck,
    OutboundMessage,
    WireFormatError,
)
from adapters.ipres.records import (
    ACK_HEADER,
    ACK_LINE,
    ACK_TRAILER,
    FORMAT_VERSION,
    HEADER,
    RECEIVER,
    SENDER,
    TRAILER,
    Layout,
    Record,
    format_record,
    parse_fields,
    parse_record,
)
from adapters.ipres.translate import INSTITUTION, check_message
from schemas.errors import FieldError

LINE_END = "\r\n"
MAX_ERRORS = 50
"""A broken file reports its first problems, not ten thousand copies of the same one."""


class DeclarationFileError(WireFormatError):
    """A declaration file that IPRES must reject as a whole."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(Institution.IPRES, "declaration file", errors)


class MalformedDeclarationFile(DeclarationFileError):
    """Not UTF-8, no header or trailer where they belong, or a record that does not parse."""


class TrailerMismatch(DeclarationFileError):
    """The trailer's count and control total both disagree with the records."""


class RecordCountMismatch(TrailerMismatch):
    """The trailer's record count is not the number of A, B and D lines."""


class ControlTotalMismatch(TrailerMismatch):
    """The trailer's control total is not the sum of the D lines' signed amounts."""


@dataclass(frozen=True, slots=True)
class DeclarationFile:
    file_id: str
    created: date
    format_version: int
    sender: str
    records: tuple[Record, ...]
    record_count: int
    control_total: int
    """Sum of the D lines' signed amounts (cancellations count negative), checked on read."""


def _d(day: date) -> str:
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def _date(value: str) -> date:
    return date(int(value[:4]), int(value[4:6]), int(value[6:]))


def _trailer_values(count: int, total: int) -> dict[str, str]:
    return {
        "record_count": f"{count:09d}",
        "total_sign": "-" if total < 0 else "+",
        "control_total": f"{abs(total):018d}",
    }


def build_declaration_file(
    messages: Sequence[OutboundMessage], *, file_id: str, created: date
) -> bytes:
    """Header, the messages' record lines in order, trailer; UTF-8 with CRLF line ends.

    Every message is validated first (``InvalidMessage`` locates problems by file line), and a
    message id may appear once: a re-sent message goes in a new file, not twice in one.
    """
    problem = HEADER.column("file_id").check(file_id)
    if problem is not None or len(file_id) > HEADER.column("file_id").width:
        raise ValueError(f"file_id {problem or 'must be at most 20 characters'}")
    errors: list[FieldError] = []
    seen: set[str] = set()
    lines = [
        format_record(
            HEADER,
            {
                "format_version": f"{FORMAT_VERSION:02d}",
                "sender": SENDER,
                "receiver": RECEIVER,
                "file_id": file_id,
                "created": _d(created),
            },
        )
    ]
    total = 0
    for line, message in enumerate(messages, start=2):
        record, message_errors = check_message(message, line)
        errors += message_errors
        if message.message_id in seen:
            errors.append(FieldError(f"line {line}", "repeats a message id", "duplicate"))
        seen.add(message.message_id)
        if len(errors) >= MAX_ERRORS:
            break
        if record is not None:
            total += record.amount
            lines.append(message.body.decode("utf-8"))
    if errors:
        raise InvalidMessage(INSTITUTION, "declaration file", errors[:MAX_ERRORS])
    lines.append(format_record(TRAILER, _trailer_values(len(messages), total)))
    return (LINE_END.join(lines) + LINE_END).encode("utf-8")


def _split_lines(raw: bytes) -> tuple[list[str], list[FieldError]]:
    """Text lines of a file: UTF-8 without BOM, CRLF or LF, the last line end optional."""
    if raw.startswith(b"\xef\xbb\xbf"):
        return [], [FieldError("line 1, col 1", "must not start with a byte-order mark", "bom")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = raw.count(b"\n", 0, exc.start) + 1
        return [], [FieldError(f"line {at}, byte {exc.start}", "is not UTF-8", "encoding")]
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    out: list[str] = []
    errors: list[FieldError] = []
    for n, line in enumerate(lines, start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if "\r" in line:
            errors.append(FieldError(f"line {n}", "contains a stray carriage return", "lines"))
        out.append(line)
    if not out:
        errors.append(FieldError("line 1", "the file is empty", "empty"))
    return out, errors


def _frame(
    lines: list[str], header: Layout, trailer: Layout
) -> tuple[dict[str, str], dict[str, str], list[FieldError]]:
    """Header and trailer fields, checking that they are the first and last lines."""
    errors: list[FieldError] = []
    if lines[0][:1] != header.record_type:
        errors.append(FieldError("line 1, col 1-1 (record_type)", "must be a header H", "header"))
    last = len(lines)
    if last < 2 or lines[-1][:1] != trailer.record_type:
        errors.append(
            FieldError(f"line {last}, col 1-1 (record_type)", "must be a trailer T", "trailer")
        )
    if errors:
        return {}, {}, errors
    head, head_errors = parse_fields(header, lines[0], 1)
    tail, tail_errors = parse_fields(trailer, lines[-1], last)
    return head, tail, head_errors + tail_errors


def read_declaration_file(raw: bytes) -> DeclarationFile:
    """Parse and check a declaration file; reject it unless every line and both totals are right.

    Raises ``MalformedDeclarationFile`` (structure, encoding, a bad record, a repeated message
    id), ``RecordCountMismatch``, ``ControlTotalMismatch`` or ``TrailerMismatch`` (both).
    """
    lines, errors = _split_lines(raw)
    if errors:
        raise MalformedDeclarationFile(errors)
    head, tail, errors = _frame(lines, HEADER, TRAILER)
    records: list[Record] = []
    seen: set[str] = set()
    for n, text in enumerate(lines[1:-1], start=2):
        if len(errors) >= MAX_ERRORS:
            break
        record, record_errors = parse_record(text, n)
        errors += record_errors
        if record is not None:
            if record.message_id in seen:
                errors.append(
                    FieldError(f"line {n}, col 2-37 (message_id)", "repeats a message id", "dup")
                )
            seen.add(record.message_id)
            records.append(record)
    if errors:
        raise MalformedDeclarationFile(errors[:MAX_ERRORS])
    total = sum(r.amount for r in records)
    declared_total = int(tail["control_total"]) * (-1 if tail["total_sign"] == "-" else 1)
    count_loc = TRAILER.column("record_count").loc(len(lines))
    total_loc = TRAILER.column("control_total").loc(len(lines))
    count_ok = int(tail["record_count"]) == len(records)
    total_ok = declared_total == total
    count_error = FieldError(
        count_loc, f"says {int(tail['record_count'])} records, the file has {len(records)}", "count"
    )
    total_error = FieldError(
        total_loc, f"says {declared_total} XOF, the D lines add up to {total}", "control_total"
    )
    if not count_ok and not total_ok:
        raise TrailerMismatch([count_error, total_error])
    if not count_ok:
        raise RecordCountMismatch([count_error])
    if not total_ok:
        raise ControlTotalMismatch([total_error])
    return DeclarationFile(
        file_id=head["file_id"],
        created=_date(head["created"]),
        format_version=int(head["format_version"]),
        sender=head["sender"],
        records=tuple(records),
        record_count=len(records),
        control_total=total,
    )


# --- acknowledgements ----------------------------------------------------------------------------

_ACK_STATUS = {"A": AckStatus.ACCEPTED, "R": AckStatus.REJECTED}


def _malformed(errors: list[FieldError]) -> MalformedAck:
    return MalformedAck(INSTITUTION, "ack file", errors[:MAX_ERRORS])


def parse_ack(raw: bytes) -> list[Ack]:
    """One ``Ack`` per R line of an IPRES ack file, in file order.

    Raises ``MalformedAck`` for anything but a well-formed file: wrong encoding or framing, an
    unknown status, a missing or repeated message id, a rejection without a reason code, or
    trailer counts that disagree with the lines.
    """
    lines, errors = _split_lines(raw)
    if errors:
        raise _malformed(errors)
    _head, tail, errors = _frame(lines, ACK_HEADER, ACK_TRAILER)
    acks: list[Ack] = []
    seen: set[str] = set()
    for n, text in enumerate(lines[1:-1], start=2):
        if len(errors) >= MAX_ERRORS:
            break
        if text[:1] != ACK_LINE.record_type:
            errors.append(
                FieldError(f"line {n}, col 1-1 (record_type)", "must be an ack line R", "record")
            )
            continue
        values, line_errors = parse_fields(ACK_LINE, text, n)
        errors += line_errors
        if line_errors:
            continue
        mid = values["message_id"]
        if mid in seen:
            errors.append(
                FieldError(ACK_LINE.column("message_id").loc(n), "answers a message twice", "dup")
            )
        seen.add(mid)
        status = _ACK_STATUS[values["status"]]
        if status is AckStatus.REJECTED and "reason_code" not in values:
            errors.append(
                FieldError(
                    ACK_LINE.column("reason_code").loc(n), "is required to reject", "missing"
                )
            )
        acks.append(
            Ack(
                message_id=mid,
                institution=INSTITUTION,
                status=status,
                reason_code=values.get("reason_code"),
                reason_text=values.get("reason_text"),
                institution_ref=values.get("ipres_ref"),
            )
        )
    if errors:
        raise _malformed(errors)
    last = len(lines)
    accepted = sum(a.status is AckStatus.ACCEPTED for a in acks)
    for name, actual in (
        ("line_count", len(acks)),
        ("accepted_count", accepted),
        ("rejected_count", len(acks) - accepted),
    ):
        if int(tail[name]) != actual:
            errors.append(
                FieldError(
                    ACK_TRAILER.column(name).loc(last),
                    f"says {int(tail[name])}, the file has {actual}",
                    "count",
                )
            )
    if errors:
        raise _malformed(errors)
    return acks


def build_ack_file(
    answers: Sequence[Ack], *, file_id: str, declaration_file_id: str, created: date
) -> bytes:
    """An ack file as IPRES writes it (for tests, fakes and the documentation examples)."""
    lines = [
        format_record(
            ACK_HEADER,
            {
                "format_version": f"{FORMAT_VERSION:02d}",
                "sender": RECEIVER,
                "receiver": SENDER,
                "file_id": file_id,
                "declaration_file_id": declaration_file_id,
                "created": _d(created),
            },
        )
    ]
    for a in answers:
        values = {"message_id": a.message_id, "status": "A" if a.status == "accepted" else "R"}
        for name, value in (
            ("reason_code", a.reason_code),
            ("reason_text", a.reason_text),
            ("ipres_ref", a.institution_ref),
        ):
            if value is not None:
                values[name] = value
        lines.append(format_record(ACK_LINE, values))
    accepted = sum(a.status == AckStatus.ACCEPTED for a in answers)
    counts = {
        "line_count": f"{len(answers):09d}",
        "accepted_count": f"{accepted:09d}",
        "rejected_count": f"{len(answers) - accepted:09d}",
    }
    lines.append(format_record(ACK_TRAILER, counts))
    return (LINE_END.join(lines) + LINE_END).encode("utf-8")
