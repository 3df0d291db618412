"""IPRES wire format v1: fixed-width record layouts, and reading and writing one record line.

Every record is one line of UTF-8 text whose width is counted in *characters* (Unicode code
points, NFC), not bytes: ``Ndèye`` takes five columns. Columns are 1-based and inclusive, as in
FORMAT.md, which documents the same tables (a unit test keeps the two in step). A field is
left-aligned and padded with spaces; a blank field is all spaces. Numbers are right-aligned and
zero-padded. No value is ever echoed in an error: records carry names and NINs.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from schemas.errors import FieldError
from schemas.types import DEPENDENT_ID_PATTERN, MAX_XOF, MEMBER_ID_PATTERN, Region

Check = Callable[[str], str | None]
"""Returns why a non-blank field value is wrong, or None when it is fine."""

FORMAT_VERSION = 1
SENDER = "MSNAS"
RECEIVER = "IPRES"


# --- field checks --------------------------------------------------------------------------------


def _regex(pattern: str, expected: str) -> Check:
    compiled = re.compile(pattern)

    def check(value: str) -> str | None:
        return None if compiled.fullmatch(value) else f"must be {expected}"

    return check


def _one_of(*codes: str) -> Check:
    allowed = frozenset(codes)
    expected = "one of " + ", ".join(codes)

    def check(value: str) -> str | None:
        return None if value in allowed else f"must be {expected}"

    return check


def _date8(value: str) -> str | None:
    if len(value) != 8 or not value.isascii() or not value.isdigit():
        return "must be a date YYYYMMDD"
    try:
        day = date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return "must be a calendar date YYYYMMDD"
    return None if day.year >= 1900 else "must not be before 1900"


def _amount(value: str) -> str | None:
    if not value.isascii() or not value.isdigit():
        return "must be digits (whole XOF, zero-padded)"
    return None if 0 < int(value) <= MAX_XOF else f"must be between 1 and {MAX_XOF} XOF"


_FORBIDDEN_IN_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _text(value: str) -> str | None:
    if _FORBIDDEN_IN_TEXT.search(value):
        return "must not contain control characters or line separators"
    if value[0].isspace():
        return "must not start with a blank"
    return None


_UUID = _regex(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "a lowercase UUID")
_MEMBER_ID = _regex(MEMBER_ID_PATTERN.strip("^$"), "a member id such as MSNAS-DK-000123")
_DEPENDENT_ID = _regex(DEPENDENT_ID_PATTERN.strip("^$"), "a dependent id (member id + -Dnn)")
_NIN = _regex(r"[0-9]{13}", "a NIN of 13 digits")
_PHONE = _regex(r"\+[1-9][0-9]{7,14}", "a phone number in E.164")
_PERIOD = _regex(r"20[0-9]{2}(?:0[1-9]|1[0-2])", "a month YYYYMM")
_REASON = _regex(r"[A-Z][A-Z0-9_]{1,31}", "a reason code (A-Z, 0-9, _)")
_PAYMENT_REF = _regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{3,63}", "a payment reference")
_FILE_ID = _regex(r"[A-Z0-9][A-Z0-9._-]{0,19}", "a file id (A-Z, 0-9, . _ -)")
_COUNT = _regex(r"[0-9]{9}", "9 digits")
_TOTAL = _regex(r"[0-9]{18}", "18 digits")
_REGION = _one_of(*(r.value for r in Region))
_SEX = _one_of("M", "F")
_SIGN = _one_of("+", "-")


# --- layouts -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    start: int
    """First column, 1-based."""
    width: int
    check: Check
    required: bool
    meaning: str

    @property
    def end(self) -> int:
        return self.start + self.width - 1

    def loc(self, line: int) -> str:
        return f"line {line}, col {self.start}-{self.end} ({self.name})"


@dataclass(frozen=True, slots=True)
class Layout:
    record_type: str
    title: str
    columns: tuple[Column, ...]

    @property
    def length(self) -> int:
        return self.columns[-1].end

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


Spec = tuple[str, int, Check, bool, str]


def make_layout(record_type: str, title: str, specs: Sequence[Spec]) -> Layout:
    columns, start = [], 1
    for name, width, check, required, meaning in (
        ("record_type", 1, _one_of(record_type), True, f"`{record_type}`"),
        *specs,
    ):
        columns.append(Column(name, start, width, check, required, meaning))
        start += width
    return Layout(record_type, title, tuple(columns))


_R, _O = True, False  # required / optional (movement rules below may require more)

HEADER = make_layout(
    "H",
    "Header (first line of a declaration file)",
    [
        ("format_version", 2, _one_of("01"), _R, "`01`"),
        ("sender", 10, _one_of(SENDER), _R, "`MSNAS`"),
        ("receiver", 10, _one_of(RECEIVER), _R, "`IPRES`"),
        ("file_id", 20, _FILE_ID, _R, "sender's file id, unique per file"),
        ("created", 8, _date8, _R, "creation date YYYYMMDD"),
    ],
)

AFFILIATION = make_layout(
    "A",
    "Affiliation of the insured (kind `ipres.affiliation`)",
    [
        ("message_id", 36, _UUID, _R, "Jokko message id, echoed by the ack"),
        ("movement", 2, _one_of("AF", "MO", "ST"), _R, "AF affiliation, MO change, ST status"),
        ("member_id", 23, _MEMBER_ID, _R, "MSNAS member id (IPRES matches on it)"),
        ("nin", 13, _NIN, _O, "NIN"),
        ("family_name", 50, _text, _O, "family name"),
        ("given_names", 50, _text, _O, "given names"),
        ("sex", 1, _SEX, _O, "M / F"),
        ("birth_date", 8, _date8, _O, "YYYYMMDD"),
        ("phone", 16, _PHONE, _O, "E.164"),
        ("region", 5, _REGION, _O, "ISO 3166-2:SN, e.g. SN-DK"),
        ("departement", 30, _text, _O, "département"),
        ("trade", 30, _text, _O, "trade (métier)"),
        ("package", 1, _one_of("B", "C"), _O, "B base / C complementary"),
        ("old_age", 1, _one_of("O"), _O, "O: opted into old age (AF; MO if re-opted)"),
        ("status", 1, _one_of("A", "S", "L", "D"), _O, "A active, S suspended, L lapsed, D dead"),
        ("effective_date", 8, _date8, _R, "YYYYMMDD: enrolment, change or status date"),
        ("reason_code", 32, _REASON, _O, "mutual's reason for a status change"),
    ],
)

DEPENDENT = make_layout(
    "B",
    "Beneficiary (ayant droit) of the insured (kind `ipres.dependent`)",
    [
        ("message_id", 36, _UUID, _R, "Jokko message id"),
        ("movement", 2, _one_of("AJ", "RT"), _R, "AJ added, RT removed"),
        ("member_id", 23, _MEMBER_ID, _R, "the insured's member id"),
        ("dependent_id", 27, _DEPENDENT_ID, _R, "member id + -Dnn"),
        ("relationship", 1, _one_of("C", "E", "A", "T"), _O, "C spouse, E child, A parent, T ward"),
        ("nin", 13, _NIN, _O, "NIN (young children have none)"),
        ("family_name", 50, _text, _O, "family name"),
        ("given_names", 50, _text, _O, "given names"),
        ("sex", 1, _SEX, _O, "M / F"),
        ("birth_date", 8, _date8, _O, "YYYYMMDD"),
        (
            "effective_date",
            8,
            _date8,
            _R,
            "YYYYMMDD: from (AJ) / coverage ends the day before (RT)",
        ),
        ("removal_reason", 2, _one_of("DC", "DV", "AL", "ND", "ER"), _O, "RT only"),
    ],
)

CONTRIBUTION = make_layout(
    "D",
    "Contribution detail, one per member and period (kind `ipres.contribution`)",
    [
        ("message_id", 36, _UUID, _R, "Jokko message id"),
        ("movement", 2, _one_of("CO", "AN"), _R, "CO contribution, AN cancellation"),
        ("member_id", 23, _MEMBER_ID, _R, "member id"),
        ("nin", 13, _NIN, _O, "NIN; blank in v1 (not in contribution events)"),
        ("period", 6, _PERIOD, _R, "contribution month YYYYMM"),
        ("sign", 1, _SIGN, _R, "`+` for CO, `-` for AN"),
        ("amount", 10, _amount, _R, "old-age share, whole XOF, zero-padded"),
        ("payment_reference", 64, _PAYMENT_REF, _R, "operator's payment reference"),
        ("channel", 2, _one_of("WV", "OM", "FM", "CA", "BK"), _O, "CO only"),
        ("payment_date", 8, _date8, _R, "YYYYMMDD: payment (CO) / reversal (AN)"),
        ("original_message_id", 36, _UUID, _O, "AN only: message id of the CO cancelled"),
        ("reversal_reason", 2, _one_of("DP", "PF", "CB", "ER", "RF"), _O, "AN only"),
    ],
)

TRAILER = make_layout(
    "T",
    "Trailer (last line of a declaration file)",
    [
        ("record_count", 9, _COUNT, _R, "number of A, B and D lines"),
        ("total_sign", 1, _SIGN, _R, "sign of the control total"),
        ("control_total", 18, _TOTAL, _R, "sum of the D lines' signed amounts"),
    ],
)

MESSAGE_LAYOUTS: Mapping[str, Layout] = {
    "A": AFFILIATION,
    "B": DEPENDENT,
    "D": CONTRIBUTION,
}
KIND_OF_TYPE: Mapping[str, str] = {
    "A": "ipres.affiliation",
    "B": "ipres.dependent",
    "D": "ipres.contribution",
}
TYPE_OF_KIND: Mapping[str, str] = {kind: t for t, kind in KIND_OF_TYPE.items()}


# --- writing -------------------------------------------------------------------------------------

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def fit(value: str, width: int) -> str:
    """A text value as written: NFC, control characters as ``?``, cut to ``width`` characters,
    no leading or trailing blanks (so what is read back is exactly what was meant)."""
    if value.isascii() and value.isprintable():  # fast path: codes, ids, amounts, most names
        return value.strip()[:width].rstrip()
    clean = _CONTROL.sub("?", unicodedata.normalize("NFC", value)).strip()
    return clean[:width].rstrip()


def format_record(layout: Layout, values: Mapping[str, str]) -> str:
    """One record line (without line end); missing fields are blank, texts are cut to width."""
    parts = [layout.record_type]
    for col in layout.columns[1:]:
        value = values.get(col.name)
        parts.append(" " * col.width if value is None else fit(value, col.width).ljust(col.width))
    return "".join(parts)


# --- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One A, B or D line as read: non-blank fields, right blanks removed."""

    record_type: str
    line: int
    fields: Mapping[str, str]

    @property
    def kind(self) -> str:
        return KIND_OF_TYPE[self.record_type]

    @property
    def message_id(self) -> str:
        return self.fields["message_id"]

    @property
    def member_id(self) -> str:
        return self.fields["member_id"]

    @property
    def amount(self) -> int:
        """Signed amount counted in the control total: the D lines' amounts, 0 otherwise."""
        if self.record_type != "D":
            return 0
        value = int(self.fields["amount"])
        return -value if self.fields["sign"] == "-" else value


def parse_fields(layout: Layout, text: str, line: int) -> tuple[dict[str, str], list[FieldError]]:
    """The non-blank fields of ``text`` read with ``layout``, and what is wrong with them."""
    if len(text) != layout.length:
        return {}, [
            FieldError(
                f"line {line}",
                f"a {layout.record_type} record must be {layout.length} characters long, "
                f"not {len(text)}",
                "record_length",
            )
        ]
    errors: list[FieldError] = []
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        errors.append(FieldError(f"line {line}", "must be in Unicode NFC", "not_nfc"))
    values: dict[str, str] = {}
    for col in layout.columns:
        value = text[col.start - 1 : col.end].rstrip(" ")
        if not value:
            if col.required:
                errors.append(FieldError(col.loc(line), "is required", "missing"))
            continue
        problem = col.check(value)
        if problem is not None:
            errors.append(FieldError(col.loc(line), problem, "invalid"))
        values[col.name] = value
    return values, errors


def _rule(
    layout: Layout, values: Mapping[str, str], line: int, movement: str
) -> Callable[[Sequence[str], Sequence[str]], list[FieldError]]:
    def check(required: Sequence[str], blank: Sequence[str]) -> list[FieldError]:
        errors = [
            FieldError(
                layout.column(n).loc(line), f"is required for movement {movement}", "missing"
            )
            for n in required
            if n not in values
        ]
        errors += [
            FieldError(
                layout.column(n).loc(line), f"must be blank for movement {movement}", "extra"
            )
            for n in blank
            if n in values
        ]
        return errors

    return check


_IDENTITY = ("nin", "family_name", "given_names", "sex", "birth_date")
_CONTACT = ("phone", "region", "departement", "trade", "package", "old_age")


def movement_errors(layout: Layout, values: Mapping[str, str], line: int) -> list[FieldError]:
    """Rules across fields: which fields each movement needs and forbids."""
    movement = values.get("movement", "")
    rule = _rule(layout, values, line, movement)
    if layout is AFFILIATION:
        if movement == "AF":
            mandatory = ("nin", "family_name", "given_names", "sex", "birth_date")
            return rule((*mandatory, *_CONTACT, "status"), ("reason_code",)) + (
                [FieldError(AFFILIATION.column("status").loc(line), "must be A for AF", "invalid")]
                if values.get("status", "A") != "A"
                else []
            )
        if movement == "MO":
            errors = rule((), ("status", "reason_code"))
            if not any(n in values for n in (*_IDENTITY, *_CONTACT)):
                errors.append(
                    FieldError(
                        f"line {line}, col {AFFILIATION.column('nin').start}-"
                        f"{AFFILIATION.column('old_age').end} (changes)",
                        "a MO record must change at least one field",
                        "missing",
                    )
                )
            return errors
        if movement == "ST":
            return rule(("status",), (*_IDENTITY, *_CONTACT))
    if layout is DEPENDENT:
        identity = ("relationship", "family_name", "given_names", "sex", "birth_date")
        if movement == "AJ":
            return rule(identity, ("removal_reason",))
        if movement == "RT":
            return rule(("removal_reason",), (*identity, "nin"))
    if layout is CONTRIBUTION:
        sign = {"CO": "+", "AN": "-"}.get(movement)
        errors = []
        if sign is not None and values.get("sign", sign) != sign:
            errors.append(
                FieldError(
                    CONTRIBUTION.column("sign").loc(line),
                    f"must be {sign} for {movement}",
                    "invalid",
                )
            )
        if movement == "CO":
            return errors + rule(("channel",), ("original_message_id", "reversal_reason"))
        if movement == "AN":
            return errors + rule(("original_message_id", "reversal_reason"), ("channel",))
    return []


def parse_record(text: str, line: int) -> tuple[Record | None, list[FieldError]]:
    """Read one A, B or D line; the record is None when anything is wrong with it."""
    layout = MESSAGE_LAYOUTS.get(text[:1])
    if layout is None:
        return None, [
            FieldError(
                f"line {line}, col 1-1 (record_type)",
                "must be A, B or D between header and trailer",
                "record_type",
            )
        ]
    values, errors = parse_fields(layout, text, line)
    if errors:
        return None, errors
    errors = movement_errors(layout, values, line)
    if layout is DEPENDENT and not values["dependent_id"].startswith(values["member_id"] + "-D"):
        errors.append(
            FieldError(
                DEPENDENT.column("dependent_id").loc(line), "must extend member_id", "invalid"
            )
        )
    if errors:
        return None, errors
    return Record(layout.record_type, line, values), []


# --- the acknowledgement file IPRES sends back ------------------------------------------------

ACK_HEADER = make_layout(
    "H",
    "Ack header (first line of an acknowledgement file)",
    [
        ("format_version", 2, _one_of("01"), _R, "`01`"),
        ("sender", 10, _one_of(RECEIVER), _R, "`IPRES`"),
        ("receiver", 10, _one_of(SENDER), _R, "`MSNAS`"),
        ("file_id", 20, _FILE_ID, _R, "IPRES's id of this ack file"),
        ("declaration_file_id", 20, _FILE_ID, _R, "file id of the declaration answered"),
        ("created", 8, _date8, _R, "YYYYMMDD"),
    ],
)

ACK_LINE = make_layout(
    "R",
    "Ack line, one per record answered",
    [
        ("message_id", 36, _UUID, _R, "message id of the A, B or D record answered"),
        ("status", 1, _one_of("A", "R"), _R, "A accepted, R rejected"),
        (
            "reason_code",
            8,
            _regex(r"[A-Z][A-Z0-9]{1,7}", "a reason code such as R042"),
            _O,
            "required when rejected (see reason codes)",
        ),
        ("reason_text", 100, _text, _O, "IPRES's wording of the reason"),
        (
            "ipres_ref",
            20,
            _regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,19}", "an IPRES reference"),
            _O,
            "IPRES's own id of what it stored",
        ),
    ],
)

ACK_TRAILER = make_layout(
    "T",
    "Ack trailer (last line)",
    [
        ("line_count", 9, _COUNT, _R, "number of R lines"),
        ("accepted_count", 9, _COUNT, _R, "R lines with status A"),
        ("rejected_count", 9, _COUNT, _R, "R lines with status R"),
    ],
)

ALL_LAYOUTS: Mapping[str, tuple[Layout, ...]] = {
    "declaration": (HEADER, AFFILIATION, DEPENDENT, CONTRIBUTION, TRAILER),
    "ack": (ACK_HEADER, ACK_LINE, ACK_TRAILER),
}
