"""Validation of outgoing documents and parsing of CSS acknowledgements."""

from __future__ import annotations

from adapters.base import Ack, AckStatus, Institution, InvalidMessage, MalformedAck, OutboundMessage
from adapters.css._translate import ROOT_OF_KIND
from adapters.css._wire import (
    FORMAT_VERSION,
    check_root,
    local,
    parse,
    qname,
    schema_errors,
)
from schemas.errors import FieldError

ACK_ROOT = "Acknowledgement"
_DOCUMENT_ROOTS = set(ROOT_OF_KIND.values())


def validate(message: OutboundMessage) -> None:
    """Refuse a message the CSS v1 XSD (or its own envelope) disagrees with: a bug in Jokko."""
    errors = _message_errors(message)
    if errors:
        raise InvalidMessage(Institution.CSS, f"message {message.message_id}", errors)


def _message_errors(message: OutboundMessage) -> list[FieldError]:
    root, errors = parse(message.body, what="message body")
    if root is None:
        return errors
    expected = ROOT_OF_KIND.get(message.kind)
    if expected is None:
        return [FieldError("", f"unknown CSS message kind {message.kind}", "kind_unknown")]
    errors = check_root(root, {expected})
    if errors:
        return errors
    errors = schema_errors(root)
    if errors:
        return errors
    loc = f"{root.sourceline}:/{local(root)}"
    envelope = {
        "messageId": message.message_id,
        "eventId": str(message.event_id),
        "memberId": message.member_id,
        "formatVersion": str(message.format_version),
    }
    out = [
        FieldError(f"{loc}/@{name}", "differs from the message envelope", "envelope_mismatch")
        for name, value in envelope.items()
        if root.get(name) != value
    ]
    if message.format_version != FORMAT_VERSION:
        out.append(FieldError("", "format_version must be 1", "format_version_mismatch"))
    if message.institution is not Institution.CSS:
        out.append(FieldError("", "institution must be css", "institution_mismatch"))
    return out


def parse_ack(raw: bytes) -> list[Ack]:
    """One ``Ack`` per ``Receipt`` of a CSS ``Acknowledgement`` (schema-checked, XXE-safe).

    Raises ``MalformedAck`` with located errors for anything else: not XML, a DOCTYPE, another
    namespace or version, an unknown status, a missing or repeated message id, a rejection
    without a reason, an acceptance without a file number.
    """
    root, errors = parse(raw, what="acknowledgement")
    if root is not None:
        errors = check_root(root, {ACK_ROOT}) or schema_errors(root)
    if root is None or errors:
        raise MalformedAck(Institution.CSS, "acknowledgement", errors)
    acks: list[Ack] = []
    problems: list[FieldError] = []
    for i, receipt in enumerate(root.iterchildren(qname("Receipt")), start=1):
        loc = f"{receipt.sourceline}:/{ACK_ROOT}/Receipt[{i}]"
        mid = receipt.get("messageId", "")
        status = AckStatus(receipt.get("status", ""))
        reason = receipt.find(qname("Reason"))
        file_number = receipt.get("fileNumber")
        if status is AckStatus.ACCEPTED:
            if file_number is None:
                problems.append(
                    FieldError(
                        f"{loc}/@fileNumber", "required when accepted", "file_number_missing"
                    )
                )
            if reason is not None:
                problems.append(
                    FieldError(f"{loc}/Reason", "not allowed when accepted", "reason_unexpected")
                )
            acks.append(Ack(mid, Institution.CSS, status, institution_ref=file_number))
        else:
            if reason is None:
                problems.append(
                    FieldError(f"{loc}/Reason", "required when rejected", "reason_missing")
                )
                continue
            if file_number is not None:
                problems.append(
                    FieldError(
                        f"{loc}/@fileNumber", "not allowed when rejected", "file_number_unexpected"
                    )
                )
            acks.append(
                Ack(
                    mid,
                    Institution.CSS,
                    status,
                    reason_code=reason.get("code"),
                    reason_text=reason.text,
                )
            )
    if problems:
        raise MalformedAck(Institution.CSS, "acknowledgement", problems)
    return acks
