"""Field-level conversions from what MSNAS agents type to canonical values.

Each converter returns the canonical (JSON-shaped) value or raises ``BadValue``. Converters only
handle *shape* and *vocabulary* (names to codes, "15 000" to 15000, French dates to ISO); the
rules on the values themselves stay in ``schemas`` (the single source of truth). Messages never
repeat the value: it may be personal data.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

from schemas import (
    Branch,
    Channel,
    ClaimKind,
    ClaimOutcome,
    MemberStatus,
    Package,
    ProviderSector,
    ProviderType,
    Region,
    Relationship,
    RemovalReason,
    ReversalReason,
    Sex,
)


class BadValue(Exception):
    """A value the adapter cannot turn into its canonical form (internal, never escapes)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.type = error_type
        self.message = message


Converter = Callable[[Any], Any]

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


@lru_cache(maxsize=4096)
def key(text: str) -> str:
    """Lower case, accents and punctuation removed: ``"Thiès"``, ``"THIES"``, ``"thies "`` agree."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).lower()
    return _NON_ALNUM.sub(" ", plain).strip()


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadValue("string_type", f"must be text ({what})")
    return value


# --- vocabularies ------------------------------------------------------------------------------


def _table(enum: type[StrEnum], labels: Mapping[str, StrEnum]) -> dict[str, str]:
    table = {key(member.value): member.value for member in enum}
    table.update({key(label): member.value for label, member in labels.items()})
    return table


def _vocabulary(enum: type[StrEnum], labels: Mapping[str, StrEnum], what: str) -> Converter:
    table = _table(enum, labels)
    expected = ", ".join(sorted(labels)) if labels else ", ".join(m.value for m in enum)

    def convert(value: Any) -> str:
        found = table.get(key(_text(value, what)))
        if found is None:
            raise BadValue(f"unknown_{what}", f"is not a known {what}; expected one of: {expected}")
        return found

    return convert


_REGION_NAMES: dict[str, Region] = {
    "Dakar": Region.DAKAR,
    "Diourbel": Region.DIOURBEL,
    "Fatick": Region.FATICK,
    "Kaffrine": Region.KAFFRINE,
    "Kaolack": Region.KAOLACK,
    "Kédougou": Region.KEDOUGOU,
    "Kolda": Region.KOLDA,
    "Louga": Region.LOUGA,
    "Matam": Region.MATAM,
    "Saint-Louis": Region.SAINT_LOUIS,
    "St-Louis": Region.SAINT_LOUIS,
    "Sédhiou": Region.SEDHIOU,
    "Tambacounda": Region.TAMBACOUNDA,
    "Thiès": Region.THIES,
    "Ziguinchor": Region.ZIGUINCHOR,
}
_REGIONS = {key(name): region.value for name, region in _REGION_NAMES.items()}
for _r in Region:
    _REGIONS[key(_r.value)] = _r.value  # "SN-TH", "sn th"
    _REGIONS[key(_r.value.removeprefix("SN-"))] = _r.value  # "TH"
del _r


def region(value: Any) -> str:
    """A region name (with or without accents, any case) or code (``SN-TH`` or ``TH``)."""
    found = _REGIONS.get(key(_text(value, "region")))
    if found is None:
        raise BadValue(
            "unknown_region", "is not one of the 14 regions of Senegal (name or ISO code)"
        )
    return found


channel = _vocabulary(
    Channel,
    {
        "Wave": Channel.WAVE,
        "Orange Money": Channel.ORANGE_MONEY,
        "OM": Channel.ORANGE_MONEY,
        "Free Money": Channel.FREE_MONEY,
        "Mixx by Yas": Channel.FREE_MONEY,
        "Yas": Channel.FREE_MONEY,
        "Espèces": Channel.CASH,
        "Liquide": Channel.CASH,
        "Banque": Channel.BANK,
        "Virement": Channel.BANK,
    },
    "channel",
)
sex = _vocabulary(
    Sex,
    {
        "F": Sex.FEMALE,
        "Femme": Sex.FEMALE,
        "Féminin": Sex.FEMALE,
        "M": Sex.MALE,
        "H": Sex.MALE,
        "Homme": Sex.MALE,
        "Masculin": Sex.MALE,
    },
    "sex",
)
package = _vocabulary(
    Package, {"base": Package.BASE, "complémentaire": Package.COMPLEMENTARY}, "package"
)
_BRANCH_LABELS: dict[str, StrEnum] = {
    "santé": Branch.HEALTH,
    "maladie": Branch.HEALTH,
    "famille": Branch.FAMILY,
    "prestations familiales": Branch.FAMILY,
    "accident_travail": Branch.WORK_ACCIDENT,
    "AT": Branch.WORK_ACCIDENT,
    "ATMP": Branch.WORK_ACCIDENT,
    "vieillesse": Branch.OLD_AGE,
    "retraite": Branch.OLD_AGE,
}
branch = _vocabulary(Branch, _BRANCH_LABELS, "branch")
relationship = _vocabulary(
    Relationship,
    {
        "conjoint": Relationship.SPOUSE,
        "conjointe": Relationship.SPOUSE,
        "époux": Relationship.SPOUSE,
        "épouse": Relationship.SPOUSE,
        "enfant": Relationship.CHILD,
        "père": Relationship.PARENT,
        "mère": Relationship.PARENT,
        "pupille": Relationship.WARD,
    },
    "relationship",
)
removal_reason = _vocabulary(
    RemovalReason,
    {
        "décès": RemovalReason.DECEASED,
        "divorce": RemovalReason.DIVORCE,
        "limite_age": RemovalReason.AGE_LIMIT,
        "limite d'âge": RemovalReason.AGE_LIMIT,
        "plus_a_charge": RemovalReason.NO_LONGER_DEPENDENT,
        "plus à charge": RemovalReason.NO_LONGER_DEPENDENT,
        "erreur_saisie": RemovalReason.ENTRY_ERROR,
        "erreur de saisie": RemovalReason.ENTRY_ERROR,
    },
    "removal_reason",
)
member_status = _vocabulary(
    MemberStatus,
    {
        "actif": MemberStatus.ACTIVE,
        "suspendu": MemberStatus.SUSPENDED,
        "radié": MemberStatus.LAPSED,
        "déchu": MemberStatus.LAPSED,
        "décédé": MemberStatus.DECEASED,
    },
    "status",
)
reversal_reason = _vocabulary(
    ReversalReason,
    {
        "doublon": ReversalReason.DUPLICATE_PAYMENT,
        "échec_paiement": ReversalReason.PAYMENT_FAILED,
        "contestation": ReversalReason.CHARGEBACK,
        "erreur_saisie": ReversalReason.ENTRY_ERROR,
        "erreur de saisie": ReversalReason.ENTRY_ERROR,
        "remboursement": ReversalReason.REFUND,
    },
    "reversal_reason",
)
claim_kind = _vocabulary(
    ClaimKind,
    {"santé": ClaimKind.HEALTH, "maladie": ClaimKind.HEALTH, "maternité": ClaimKind.MATERNITY},
    "claim_kind",
)
claim_outcome = _vocabulary(
    ClaimOutcome,
    {
        "accordée": ClaimOutcome.APPROVED,
        "partielle": ClaimOutcome.PARTIALLY_APPROVED,
        "rejetée": ClaimOutcome.REJECTED,
    },
    "outcome",
)
provider_type = _vocabulary(
    ProviderType,
    {
        "hôpital": ProviderType.HOSPITAL,
        "centre de santé": ProviderType.HEALTH_CENTRE,
        "poste de santé": ProviderType.HEALTH_POST,
        "clinique": ProviderType.CLINIC,
        "pharmacie": ProviderType.PHARMACY,
        "laboratoire": ProviderType.LABORATORY,
        "imagerie": ProviderType.IMAGING_CENTRE,
    },
    "provider_type",
)
provider_sector = _vocabulary(
    ProviderSector,
    {
        "public": ProviderSector.PUBLIC,
        "privé": ProviderSector.PRIVATE,
        "communautaire": ProviderSector.COMMUNITY,
    },
    "sector",
)


# --- numbers -----------------------------------------------------------------------------------

_GROUPED = re.compile(r"[0-9]{1,3}(?: [0-9]{3})+|[0-9]+")
_CURRENCY = re.compile(r"\s*(?:F\s*CFA|FCFA|XOF|F)$", re.IGNORECASE)
_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " ", "\u2009": " "})


def amount(value: Any) -> int:
    """Whole francs: ``15000``, ``"15000"``, ``"15 000"``, ``"15 000 FCFA"``; never decimals."""
    if isinstance(value, bool):
        raise BadValue("amount_type", "must be a whole number of francs")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        raise BadValue("amount_decimal", "must be a whole number of francs, not a decimal number")
    if not isinstance(value, str):
        raise BadValue("amount_type", "must be a whole number of francs")
    text = _CURRENCY.sub("", value.translate(_SPACES).strip())
    if "," in text or "." in text:
        raise BadValue(
            "amount_decimal",
            "must be a whole number of francs, without decimals or separators other than spaces",
        )
    if not _GROUPED.fullmatch(text) or len(text) > 20:
        raise BadValue("amount_invalid", "must be a whole number of francs, e.g. 15000 or 15 000")
    return int(text.replace(" ", ""))


def count(value: Any) -> int:
    """A whole number written as a number or as digits."""
    if isinstance(value, bool):
        raise BadValue("int_type", "must be a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        if len(value.strip()) > 12:
            raise BadValue("int_invalid", "must be a whole number")
        return int(value.strip())
    raise BadValue("int_type", "must be a whole number")


_TRUE = {"oui", "o", "vrai", "true", "1", "yes", "y"}
_FALSE = {"non", "n", "faux", "false", "0", "no"}


def boolean(value: Any) -> bool:
    """``true``/``false`` in JSON; ``oui``/``non`` (or 1/0) in CSV."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        k = key(value)
        if k in _TRUE:
            return True
        if k in _FALSE:
            return False
    raise BadValue("bool_type", "must be oui or non")


# --- dates -------------------------------------------------------------------------------------

_FR_DATE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")
_FR_DATETIME = re.compile(
    r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})[ T]([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?"
)
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _as_date(text: str) -> date | None:
    try:
        if _ISO_DATE.fullmatch(text):
            return date.fromisoformat(text)
        m = _FR_DATE.fullmatch(text)
        if m:
            return date(int(m[3]), int(m[2]), int(m[1]))
    except ValueError:
        raise BadValue("date_invalid", "is not a real calendar date") from None
    return None


def day(value: Any) -> str:
    """A date, ``2026-01-05`` or ``05/01/2026`` (day first, as written in Senegal)."""
    text = _text(value, "date").strip()
    found = _as_date(text)
    if found is None:
        raise BadValue("date_invalid", "must be a date, YYYY-MM-DD or DD/MM/YYYY")
    return found.isoformat()


def moment(value: Any) -> str:
    """A date-time; without an offset it is in UTC (Senegal keeps UTC all year round).

    A bare date stands for midnight UTC that day.
    """
    text = _text(value, "date-time").strip()
    found: datetime | None = None
    try:
        as_date = _as_date(text)
        if as_date is not None:
            found = datetime(as_date.year, as_date.month, as_date.day)
        elif m := _FR_DATETIME.fullmatch(text):
            found = datetime(int(m[3]), int(m[2]), int(m[1]), int(m[4]), int(m[5]), int(m[6] or 0))
        elif len(text) <= 40 and text[:4].isdigit():
            found = datetime.fromisoformat(text)
    except ValueError:
        found = None
    if found is None:
        raise BadValue(
            "datetime_invalid", "must be a date-time, e.g. 2026-01-05T09:12:30Z or 05/01/2026 09:12"
        )
    if found.tzinfo is None:
        found = found.replace(tzinfo=UTC)
    return found.isoformat().replace("+00:00", "Z")


_PERIOD_ISO = re.compile(r"([0-9]{4})[-/]([0-9]{1,2})")
_PERIOD_FR = re.compile(r"([0-9]{1,2})[-/]([0-9]{4})")


def period(value: Any) -> str:
    """A contribution month: ``2026-02``, ``2026/02`` or ``02/2026``."""
    text = _text(value, "period").strip()
    if m := _PERIOD_ISO.fullmatch(text):
        year, month = m[1], m[2]
    elif m := _PERIOD_FR.fullmatch(text):
        year, month = m[2], m[1]
    else:
        raise BadValue("period_invalid", "must be a month, YYYY-MM or MM/YYYY")
    return f"{year}-{int(month):02d}"


def listing(value: Any) -> list[Any]:
    """A JSON list, or in CSV a ``|``-separated cell (``santé|famille``)."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [part.strip() for part in value.split("|") if part.strip()]
    raise BadValue("list_type", "must be a list (in CSV: values separated by |)")


def text(value: Any) -> Any:
    """Passed through as typed; the canonical schema checks it (and its type)."""
    return value


def identifier(value: Any) -> str:
    """A record id: text (or a whole number, as some exports write them)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadValue("id_type", "must be text")
    ident = str(value).strip()
    if not ident or len(ident) > 64 or not ident.isprintable():
        raise BadValue("id_invalid", "must be 1 to 64 printable characters")
    return ident
