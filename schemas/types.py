"""Constrained types and vocabularies shared by the canonical events.

Every type here validates *and* normalises: a value that passes is in its one canonical form
(phone in E.164, NIN without separators, names in Unicode NFC, datetimes in UTC), so two
events that mean the same thing dump to the same bytes.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated

import phonenumbers
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field, StringConstraints
from stdnum.exceptions import ValidationError as StdnumValidationError
from stdnum.sn import ninea

from schemas.errors import field_error


class Region(StrEnum):
    """The 14 regions of Senegal, as ISO 3166-2:SN codes."""

    # Exactly the 14 codes of ISO 3166-2:SN; "SN-DI" is a common mistake (Diourbel is SN-DB).

    DAKAR = "SN-DK"
    DIOURBEL = "SN-DB"
    FATICK = "SN-FK"
    KAFFRINE = "SN-KA"
    KAOLACK = "SN-KL"
    KEDOUGOU = "SN-KE"
    KOLDA = "SN-KD"
    LOUGA = "SN-LG"
    MATAM = "SN-MT"
    SAINT_LOUIS = "SN-SL"
    SEDHIOU = "SN-SE"
    TAMBACOUNDA = "SN-TC"
    THIES = "SN-TH"
    ZIGUINCHOR = "SN-ZG"


class Sex(StrEnum):
    FEMALE = "female"
    MALE = "male"


class Package(StrEnum):
    """``complementary`` is the package whose bills CMU pays directly (2023 reform)."""

    BASE = "base"
    COMPLEMENTARY = "complementary"


class Branch(StrEnum):
    """Benefit branches a member opts into; each is served by one institution."""

    HEALTH = "health"  # CMU
    FAMILY = "family"  # CSS
    WORK_ACCIDENT = "work_accident"  # CSS (AT/MP)
    OLD_AGE = "old_age"  # IPRES


class Relationship(StrEnum):
    SPOUSE = "spouse"
    CHILD = "child"
    PARENT = "parent"
    WARD = "ward"


class MemberStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    LAPSED = "lapsed"
    DECEASED = "deceased"


class Channel(StrEnum):
    WAVE = "wave"
    ORANGE_MONEY = "orange_money"
    FREE_MONEY = "free_money"
    CASH = "cash"
    BANK = "bank"


MOBILE_MONEY_CHANNELS = frozenset({Channel.WAVE, Channel.ORANGE_MONEY, Channel.FREE_MONEY})


# Declaration orders, taken once: iterating an enum class per event is slow (see bench/).
_BRANCHES = tuple(Branch)
_PACKAGES = tuple(Package)


def _branch_set(values: tuple[Branch, ...]) -> tuple[Branch, ...]:
    # A set in meaning, a tuple in declaration order on the wire: dumps stay deterministic.
    if len(set(values)) != len(values):
        raise field_error("duplicate_branch", "must not list a branch twice")
    return tuple(b for b in _BRANCHES if b in values)


def _package_set(values: tuple[Package, ...]) -> tuple[Package, ...]:
    if len(set(values)) != len(values):
        raise field_error("duplicate_package", "must not list a package twice")
    return tuple(p for p in _PACKAGES if p in values)


Branches = Annotated[tuple[Branch, ...], Field(min_length=1), AfterValidator(_branch_set)]
Packages = Annotated[tuple[Package, ...], Field(min_length=1), AfterValidator(_package_set)]


# --- identifiers -------------------------------------------------------------------------------

_REGION_SUFFIXES = "|".join(sorted(r.value.removeprefix("SN-") for r in Region))

MUTUAL_CODE_PATTERN = r"^[A-Z][A-Z0-9]{1,9}$"
MEMBER_ID_PATTERN = rf"^[A-Z][A-Z0-9]{{1,9}}-(?:{_REGION_SUFFIXES})-[0-9]{{6,9}}$"
"""``<mutual>-<region of enrolment>-<serial>``, e.g. ``MSNAS-DK-000123``.

The region part is the enrolling unit's ISO suffix and never changes when the member moves;
6 to 9 digits leave room for 10 million members in one region.
"""
DEPENDENT_ID_PATTERN = MEMBER_ID_PATTERN.removesuffix("$") + "-D[0-9]{2}$"
"""The member's id plus ``-Dnn``, e.g. ``MSNAS-DK-000123-D01``."""
BENEFICIARY_ID_PATTERN = MEMBER_ID_PATTERN.removesuffix("$") + "(?:-D[0-9]{2})?$"
AGREEMENT_NUMBER_PATTERN = rf"^CONV-(?:{_REGION_SUFFIXES})-[0-9]{{5}}$"
"""A care provider's agreement (convention) number, e.g. ``CONV-TH-00042``."""

MutualCode = Annotated[str, StringConstraints(pattern=MUTUAL_CODE_PATTERN)]
MemberId = Annotated[str, StringConstraints(pattern=MEMBER_ID_PATTERN)]
DependentId = Annotated[str, StringConstraints(pattern=DEPENDENT_ID_PATTERN)]
BeneficiaryId = Annotated[
    str,
    StringConstraints(pattern=BENEFICIARY_ID_PATTERN),
    Field(description="The member's id, or one of their dependents' ids."),
]
AgreementNumber = Annotated[str, StringConstraints(pattern=AGREEMENT_NUMBER_PATTERN)]
AgentId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{1,31}$")]
ClaimId = Annotated[str, StringConstraints(pattern=r"^CLM-20[0-9]{2}-[0-9]{6,10}$")]
AccidentId = Annotated[str, StringConstraints(pattern=r"^AT-20[0-9]{2}-[0-9]{6,10}$")]
PregnancyId = Annotated[str, StringConstraints(pattern=r"^MAT-20[0-9]{2}-[0-9]{6,10}$")]
PaymentReference = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{3,63}$")]
ReasonCode = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{1,31}$")]
ItemCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9.-]{1,19}$")]
Icd10Code = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z][0-9]{2}(?:\.[0-9]{1,2})?$"),
    Field(description="WHO ICD-10 code: a letter, two digits, optional subdivision (J45.9)."),
]


# --- personal data -----------------------------------------------------------------------------


def _nfc(value: str) -> str:
    return unicodedata.normalize("NFC", value)


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(_nfc),
]
Label = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_nfc),
]
Narrative = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=2000),
    AfterValidator(_nfc),
]

_NIN_SEPARATORS = re.compile(r"[ .-]")
_NIN = re.compile(r"[0-9]{13}")


def _nin(value: str) -> str:
    # python-stdnum has no module for Senegal's NIN (only ``sn.ninea``, the business number),
    # and the NIN has no published check digit: the shape is all that can be checked.
    compact = _NIN_SEPARATORS.sub("", value)
    if not _NIN.fullmatch(compact):
        raise field_error("nin_invalid", "must be a NIN of 13 digits")
    return compact


Nin = Annotated[
    str,
    AfterValidator(_nin),
    Field(
        description=(
            "National identification number on the CEDEAO biometric ID card: 13 digits, "
            "stored bare and only in that form; spaces, dots and hyphens are accepted and "
            "removed, anything else is refused: nin_invalid."
        )
    ),
]


SENEGAL_CALLING_CODE = 221
"""The one rule for phones: every number in an event is Senegalese. Members, dependents,
witnesses and providers live in Senegal, and Wave, Orange Money and Free Money pay from
Senegalese numbers; a foreign number is a keying error more often than a fact, and an agent
can correct it on the spot, so it is refused (``phone_not_senegalese``), never stored."""


@functools.lru_cache(maxsize=16_384)
def _phone(value: str) -> str:
    # phonenumbers takes ~45 µs a number, most of parse_event; a member's phone comes back
    # with each of their events (enrolment, monthly contributions, re-reads by the router).
    # Only valid numbers are cached (an exception is not); 16k entries are a few MiB.
    try:
        number = phonenumbers.parse(value, "SN")
    except phonenumbers.NumberParseException:
        raise field_error("phone_invalid", "must be a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise field_error("phone_invalid", "must be a valid phone number")
    if number.country_code != SENEGAL_CALLING_CODE:
        raise field_error("phone_not_senegalese", "must be a Senegalese number (+221)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


PhoneE164 = Annotated[
    str,
    StringConstraints(max_length=32),
    AfterValidator(_phone),
    Field(
        description=(
            "Senegalese phone number, stored in E.164 (+221771234567) and only in that form: "
            "national forms with spaces, dots or hyphens and without the country code "
            "('77 123 45 67', '771234567', '00221 77 123 45 67') are accepted and normalised. "
            "A foreign number (another country code) is refused: phone_not_senegalese."
        )
    ),
]


def _ninea(value: str) -> str:
    try:
        return str(ninea.validate(value))
    except StdnumValidationError:
        raise field_error("ninea_invalid", "must be a valid NINEA") from None


Ninea = Annotated[
    str,
    StringConstraints(max_length=16),
    AfterValidator(_ninea),
    Field(description="Business identification number (NINEA), checked with python-stdnum."),
]


# --- money and time ----------------------------------------------------------------------------

MAX_XOF = 1_000_000_000
"""No single payment, claim or line comes near a billion francs; more is a keying error."""

Xof = Annotated[int, Field(gt=0, le=MAX_XOF, description="Amount in whole CFA francs (XOF).")]
XofOrZero = Annotated[int, Field(ge=0, le=MAX_XOF, description="Amount in whole CFA francs.")]
Count = Annotated[int, Field(ge=1, le=10_000)]


def today() -> date:
    """Senegal keeps UTC all year round, so the UTC date is the local date."""
    return datetime.now(UTC).date()


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[
    AwareDatetime,
    AfterValidator(_utc),
    Field(description="ISO 8601 date-time with a UTC offset; stored in UTC."),
]


def _not_future_date(value: date) -> date:
    if value > today():
        raise field_error("date_in_future", "must not be in the future")
    return value


def _not_before_1900(value: date) -> date:
    if value.year < 1900:
        raise field_error("date_too_old", "must not be before 1900")
    return value


PastDate = Annotated[date, AfterValidator(_not_future_date)]
BirthDate = Annotated[date, AfterValidator(_not_future_date), AfterValidator(_not_before_1900)]

PERIOD_PATTERN = r"^20[0-9]{2}-(?:0[1-9]|1[0-2])$"


def _not_future_period(value: str) -> str:
    now = datetime.now(UTC)
    if value > f"{now.year:04d}-{now.month:02d}":
        raise field_error("period_in_future", "must not be a month in the future")
    return value


Period = Annotated[
    str,
    StringConstraints(pattern=PERIOD_PATTERN),
    AfterValidator(_not_future_period),
    Field(description="Contribution month, YYYY-MM, not after the current month."),
]


def period_of(moment: datetime) -> str:
    """The ``YYYY-MM`` month a UTC instant falls in."""
    return f"{moment.year:04d}-{moment.month:02d}"


def _refuse_non_int(value: object) -> object:
    # A Literal[1] would otherwise accept ``true`` and ``1.0`` even in strict mode.
    if type(value) is not int:
        raise field_error("int_type", "Input should be a valid integer")
    return value


ExactInt = BeforeValidator(_refuse_non_int)
