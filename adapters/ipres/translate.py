"""Canonical events to IPRES record lines: one OutboundMessage per A, B or D record."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

from adapters.base import (
    Institution,
    InvalidMessage,
    MemberProfile,
    OutboundMessage,
    UnsupportedEvent,
    message_id,
)
from adapters.ipres.records import (
    AFFILIATION,
    CONTRIBUTION,
    DEPENDENT,
    FORMAT_VERSION,
    KIND_OF_TYPE,
    MESSAGE_LAYOUTS,
    TYPE_OF_KIND,
    Layout,
    Record,
    format_record,
    parse_record,
)
from schemas import (
    Branch,
    CanonicalEvent,
    Channel,
    ContributionPaid,
    ContributionReversed,
    Dependent,
    DependentAdded,
    DependentRemoved,
    MemberEnrolled,
    MemberStatus,
    MemberStatusChanged,
    MemberUpdated,
    Package,
    RemovalReason,
    ReversalReason,
    Sex,
)
from schemas.errors import FieldError
from schemas.types import Relationship

INSTITUTION = Institution.IPRES
CONTENT_TYPE = "text/plain; charset=utf-8"

AFFILIATION_KIND = KIND_OF_TYPE["A"]
DEPENDENT_KIND = KIND_OF_TYPE["B"]
CONTRIBUTION_KIND = KIND_OF_TYPE["D"]

_SEX = {Sex.MALE: "M", Sex.FEMALE: "F"}
_PACKAGE = {Package.BASE: "B", Package.COMPLEMENTARY: "C"}
_STATUS = {
    MemberStatus.ACTIVE: "A",
    MemberStatus.SUSPENDED: "S",
    MemberStatus.LAPSED: "L",
    MemberStatus.DECEASED: "D",
}
_RELATIONSHIP = {
    Relationship.SPOUSE: "C",
    Relationship.CHILD: "E",
    Relationship.PARENT: "A",
    Relationship.WARD: "T",
}
_REMOVAL = {
    RemovalReason.DECEASED: "DC",
    RemovalReason.DIVORCE: "DV",
    RemovalReason.AGE_LIMIT: "AL",
    RemovalReason.NO_LONGER_DEPENDENT: "ND",
    RemovalReason.ENTRY_ERROR: "ER",
}
_CHANNEL = {
    Channel.WAVE: "WV",
    Channel.ORANGE_MONEY: "OM",
    Channel.FREE_MONEY: "FM",
    Channel.CASH: "CA",
    Channel.BANK: "BK",
}
_REVERSAL = {
    ReversalReason.DUPLICATE_PAYMENT: "DP",
    ReversalReason.PAYMENT_FAILED: "PF",
    ReversalReason.CHARGEBACK: "CB",
    ReversalReason.ENTRY_ERROR: "ER",
    ReversalReason.REFUND: "RF",
}


def _d(day: date) -> str:
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def _message(
    event: CanonicalEvent, kind: str, layout: Layout, values: dict[str, str], seq: int = 0
) -> OutboundMessage:
    mid = message_id(INSTITUTION, event.event_id, kind, seq)
    line = format_record(layout, {"message_id": mid, "member_id": event.member_id, **values})
    return OutboundMessage(
        message_id=mid,
        institution=INSTITUTION,
        event_id=event.event_id,
        member_id=event.member_id,
        kind=kind,
        content_type=CONTENT_TYPE,
        body=line.encode("utf-8"),
        format_version=FORMAT_VERSION,
    )


def _dependent_values(dependent: Dependent) -> dict[str, str]:
    who = dependent.identity
    values = {
        "dependent_id": dependent.dependent_id,
        "relationship": _RELATIONSHIP[dependent.relationship],
        "family_name": who.family_name,
        "given_names": who.given_names,
        "sex": _SEX[who.sex],
        "birth_date": _d(who.birth_date),
    }
    if who.nin is not None:
        values["nin"] = who.nin
    return values


def _enrolled(event: MemberEnrolled) -> list[OutboundMessage]:
    p, who = event.payload, event.payload.identity
    since = _d(event.occurred_at.date())
    affiliation = {
        "movement": "AF",
        "nin": who.nin,
        "family_name": who.family_name,
        "given_names": who.given_names,
        "sex": _SEX[who.sex],
        "birth_date": _d(who.birth_date),
        "phone": who.phone,
        "region": p.region.value,
        "departement": p.departement,
        "trade": p.trade,
        "package": _PACKAGE[p.package],
        "old_age": "O",
        "status": "A",
        "effective_date": since,
    }
    out = [_message(event, AFFILIATION_KIND, AFFILIATION, affiliation)]
    for seq, dependent in enumerate(p.dependents, start=1):
        values = {"movement": "AJ", "effective_date": since, **_dependent_values(dependent)}
        out.append(_message(event, DEPENDENT_KIND, DEPENDENT, values, seq))
    return out


def _updated(event: MemberUpdated) -> list[OutboundMessage]:
    c = event.payload.changes
    values = {"movement": "MO", "effective_date": _d(event.occurred_at.date())}
    texts = {
        "nin": c.nin,
        "family_name": c.family_name,
        "given_names": c.given_names,
        "phone": c.phone,
        "departement": c.departement,
        "trade": c.trade,
    }
    values.update({k: v for k, v in texts.items() if v is not None})
    if c.sex is not None:
        values["sex"] = _SEX[c.sex]
    if c.birth_date is not None:
        values["birth_date"] = _d(c.birth_date)
    if c.region is not None:
        values["region"] = c.region.value
    if c.package is not None:
        values["package"] = _PACKAGE[c.package]
    if c.opted_branches is not None:
        if Branch.OLD_AGE not in c.opted_branches:
            raise UnsupportedEvent("member.updated leaves the old-age branch: not routed to IPRES")
        values["old_age"] = "O"
    return [_message(event, AFFILIATION_KIND, AFFILIATION, values)]


def _status_changed(event: MemberStatusChanged) -> list[OutboundMessage]:
    p = event.payload
    values = {
        "movement": "ST",
        "status": _STATUS[p.status],
        "effective_date": _d(p.effective_date),
    }
    if p.reason_code is not None:
        values["reason_code"] = p.reason_code
    return [_message(event, AFFILIATION_KIND, AFFILIATION, values)]


def _dependent_added(event: DependentAdded) -> list[OutboundMessage]:
    values = {
        "movement": "AJ",
        "effective_date": _d(event.occurred_at.date()),
        **_dependent_values(event.payload.dependent),
    }
    return [_message(event, DEPENDENT_KIND, DEPENDENT, values)]


def _dependent_removed(event: DependentRemoved) -> list[OutboundMessage]:
    p = event.payload
    values = {
        "movement": "RT",
        "dependent_id": p.dependent_id,
        "effective_date": _d(p.effective_date),
        "removal_reason": _REMOVAL[p.reason],
    }
    return [_message(event, DEPENDENT_KIND, DEPENDENT, values)]


def _old_age_share(allocation: Mapping[Branch, int]) -> int:
    share = allocation.get(Branch.OLD_AGE, 0)
    if share <= 0:
        raise UnsupportedEvent("contribution without an old-age share: not routed to IPRES")
    return share


def _paid(event: ContributionPaid) -> list[OutboundMessage]:
    p = event.payload
    values = {
        "movement": "CO",
        "period": p.period.replace("-", ""),
        "sign": "+",
        "amount": f"{_old_age_share(p.allocation):010d}",
        "payment_reference": p.payment_reference,
        "channel": _CHANNEL[p.channel],
        "payment_date": _d(event.occurred_at.date()),
    }
    return [_message(event, CONTRIBUTION_KIND, CONTRIBUTION, values)]


def _reversed(event: ContributionReversed) -> list[OutboundMessage]:
    p = event.payload
    values = {
        "movement": "AN",
        "period": p.period.replace("-", ""),
        "sign": "-",
        "amount": f"{_old_age_share(p.allocation):010d}",
        "payment_reference": p.payment_reference,
        "payment_date": _d(event.occurred_at.date()),
        "original_message_id": message_id(INSTITUTION, p.original_event_id, CONTRIBUTION_KIND),
        "reversal_reason": _REVERSAL[p.reason],
    }
    return [_message(event, CONTRIBUTION_KIND, CONTRIBUTION, values)]


def translate(event: CanonicalEvent, member: MemberProfile | None) -> list[OutboundMessage]:
    """The IPRES records for ``event``: A (affiliation), B (dependents) or D (contribution).

    Member events need ``member`` opted into old age; contributions need an old-age share.
    Anything else raises ``UnsupportedEvent``.
    """
    if isinstance(event, ContributionPaid):
        return _paid(event)
    if isinstance(event, ContributionReversed):
        return _reversed(event)
    member_event = (
        MemberEnrolled,
        MemberUpdated,
        MemberStatusChanged,
        DependentAdded,
        DependentRemoved,
    )
    if not isinstance(event, member_event):
        raise UnsupportedEvent(f"{event.event_type} is not routed to IPRES")
    if member is None or Branch.OLD_AGE not in member.opted_branches:
        raise UnsupportedEvent(f"{event.event_type} of a member not opted into old age")
    if isinstance(event, MemberEnrolled):
        return _enrolled(event)
    if isinstance(event, MemberUpdated):
        return _updated(event)
    if isinstance(event, MemberStatusChanged):
        return _status_changed(event)
    if isinstance(event, DependentAdded):
        return _dependent_added(event)
    return _dependent_removed(event)


def message_errors(message: OutboundMessage, line: int = 1) -> list[FieldError]:
    """What is wrong with one message as an IPRES record (empty when it is valid)."""
    return check_message(message, line)[1]


def check_message(
    message: OutboundMessage, line: int = 1
) -> tuple[Record | None, list[FieldError]]:
    """The record a message holds, and what is wrong with it (the record is None if anything)."""
    errors: list[FieldError] = []
    where = f"line {line}"
    if message.institution != INSTITUTION:
        errors.append(FieldError(where, "is not a message for IPRES", "institution"))
    if message.format_version != FORMAT_VERSION:
        errors.append(FieldError(where, f"format version must be {FORMAT_VERSION}", "version"))
    if message.content_type != CONTENT_TYPE:
        errors.append(FieldError(where, f"content type must be {CONTENT_TYPE}", "content_type"))
    expected_type = TYPE_OF_KIND.get(message.kind)
    if expected_type is None:
        errors.append(FieldError(where, "kind is not an IPRES record kind", "kind"))
    try:
        text = message.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [*errors, FieldError(f"{where}, byte {exc.start}", "is not UTF-8", "encoding")]
    if "\n" in text or "\r" in text:
        return None, [
            *errors,
            FieldError(where, "a message is one record, without line end", "lines"),
        ]
    record, record_errors = parse_record(text, line)
    errors += record_errors
    if record is None:
        return None, errors
    if expected_type is not None and record.record_type != expected_type:
        errors.append(
            FieldError(f"{where}, col 1-1 (record_type)", "does not match the kind", "kind")
        )
    layout = MESSAGE_LAYOUTS[record.record_type]
    for name, expected in (("message_id", message.message_id), ("member_id", message.member_id)):
        if record.fields[name] != expected:
            errors.append(
                FieldError(layout.column(name).loc(line), "differs from the message's", "id")
            )
    return (None, errors) if errors else (record, [])


def validate(message: OutboundMessage) -> None:
    """Raise ``InvalidMessage`` unless the body is one valid IPRES v1 record of its kind."""
    errors = message_errors(message)
    if errors:
        raise InvalidMessage(INSTITUTION, "record", errors)
