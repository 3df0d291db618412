"""Database rows of the router: inbox, outbox, member profiles, dead letters, status trail.

These are the third of Jokko's three models (canonical event, wire message, row); mapping
between them is explicit in ``router.processing``. The schema itself is created by Alembic
(``router/migrations``); ``Base.metadata`` is what the migrations are checked against.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware on both dialects: SQLite stores naive values, PostgreSQL timestamptz."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DEAD = "dead"


class Stage(StrEnum):
    """Steps of an event's status trail, in the order they normally happen."""

    RECEIVED = "received"
    ROUTED = "routed"
    QUEUED = "queued"
    PUBLISHED = "published"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DEAD = "dead"
    DUPLICATE = "duplicate"
    DUPLICATE_MEMBER = "duplicate_member"
    """The NIN was already enrolled under another member id (``member_duplicate``)."""
    CONFLICT = "conflict"
    """The same event id came again with other content; that copy is a dead letter."""
    RETRYING = "retrying"
    RECEIPT_REFUSED = "receipt_refused"
    """The institution's answer carried no valid signature: not applied (detail: the reason)."""


class Base(DeclarativeBase):
    pass


class InboxRow(Base):
    """One row per canonical event ever processed; the unique key is the idempotency check."""

    __tablename__ = "inbox"

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(64))
    member_id: Mapped[str] = mapped_column(String(64), index=True)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime())
    topic: Mapped[str | None] = mapped_column(String(249))
    partition: Mapped[int | None] = mapped_column(Integer)
    offset: Mapped[int | None] = mapped_column(BigInteger)
    destinations: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    content_digest: Mapped[str | None] = mapped_column(String(64))
    """``schemas.fingerprint``: a redelivery with another digest is a conflict (null: routed
    before digests were kept, so a redelivery can only be taken for a duplicate)."""
    field_digests: Mapped[str | None] = mapped_column(Text)
    """Per-field keyed digests (JSON), to name what a conflicting copy changed: no values."""


class SubmittedEventRow(Base):
    """An event the API put on the canonical topic, with its content digest: the same id with
    other content is refused (409) even before the router has seen the first one."""

    __tablename__ = "submitted_event"

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    content_digest: Mapped[str] = mapped_column(String(64))
    submitted_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class MemberKeyRow(Base):
    """A member's own data key, wrapped under a keyring key (``router.vault``). Erasure sets
    ``wrapped_dek`` to null: every body sealed under it is unreadable from then on."""

    __tablename__ = "member_key"

    member_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kek_id: Mapped[str] = mapped_column(String(64))
    wrapped_dek: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    erased_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    erasure_reason: Mapped[str | None] = mapped_column(Text)


class MemberIdentityRow(Base):
    """A member's NIN, as a keyed token only: to find a second enrolment of the same person."""

    __tablename__ = "member_identity"

    token: Mapped[str] = mapped_column(String(100), primary_key=True)
    member_id: Mapped[str] = mapped_column(String(64), index=True)
    mutual: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class MemberDuplicateRow(Base):
    """An enrolment whose NIN was already enrolled under another member id: never a silent
    second affiliation. ``action``: ``flagged`` (routed, to review) or ``held`` (a dead
    letter until an operator decides)."""

    __tablename__ = "member_duplicate"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), index=True)
    member_id: Mapped[str] = mapped_column(String(64), index=True)
    other_member_id: Mapped[str] = mapped_column(String(64))
    mutual: Mapped[str] = mapped_column(String(16))
    other_mutual: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    reviewed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class KeyCheckRow(Base):
    """A value sealed under each keyring key the store has used: a process whose keyring
    lacks one refuses to start instead of writing what the others cannot read."""

    __tablename__ = "key_check"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    proof: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class MemberProfileRow(Base):
    """The member's current package and branches, which later events are routed by."""

    __tablename__ = "member_profile"

    member_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    package: Mapped[str] = mapped_column(String(32))
    opted_branches: Mapped[str] = mapped_column(String(128))
    region: Mapped[str] = mapped_column(String(8))
    departement: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


_PENDING_ONLY = text(f"state = '{DeliveryState.PENDING.value}'")


class OutboxRow(Base):
    """One message for one institution; ``id`` order is the publication order."""

    __tablename__ = "outbox"
    # Every row is written into every index, so each one here earns its place (0006):
    # member first, the sequence also serves look-ups by member (API, order checks);
    # the pending rows alone, in publication order per institution, serve the relay's claims.
    __table_args__ = (
        UniqueConstraint("member_id", "institution", "member_seq", name="uq_outbox_member_seq"),
        Index(
            "ix_outbox_pending",
            "institution",
            "id",
            postgresql_where=_PENDING_ONLY,
            sqlite_where=_PENDING_ONLY,
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(36), unique=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("inbox.event_id"), index=True)
    institution: Mapped[str] = mapped_column(String(16))
    member_id: Mapped[str] = mapped_column(String(64))
    member_seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(64))
    format_version: Mapped[int] = mapped_column(Integer)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reason_code: Mapped[str | None] = mapped_column(String(64))
    reason_text: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    """Not before this instant: the row is backing off after a failed delivery."""
    last_error: Mapped[str | None] = mapped_column(Text)
    institution_ref: Mapped[str | None] = mapped_column(String(64))
    batch_ref: Mapped[str | None] = mapped_column(String(40), index=True)
    """The file (or batch request) that carried the row, for acks that answer a whole file."""
    acked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class DeadLetterRow(Base):
    """Work that could not be done, kept whole so an operator can replay it.

    A poison record from the canonical topic is keyed by its position, so the same record
    re-delivered after a crash is recorded once.
    """

    __tablename__ = "dead_letter"
    __table_args__ = (UniqueConstraint("topic", "partition", "offset", name="uq_dead_position"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    event_id: Mapped[str | None] = mapped_column(String(36), index=True)
    message_id: Mapped[str | None] = mapped_column(String(36), index=True)
    member_id: Mapped[str | None] = mapped_column(String(64), index=True)
    """Whose data the original holds, when known: erasure finds their letters by it."""
    institution: Mapped[str | None] = mapped_column(String(16))
    topic: Mapped[str | None] = mapped_column(String(249))
    partition: Mapped[int | None] = mapped_column(Integer)
    offset: Mapped[int | None] = mapped_column(BigInteger)
    original: Mapped[bytes] = mapped_column(LargeBinary)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    replayed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    discarded_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class TrailRow(Base):
    """An event's status trail: what happened to it, when, for which institution."""

    __tablename__ = "status_trail"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), index=True)
    stage: Mapped[str] = mapped_column(String(16))
    institution: Mapped[str | None] = mapped_column(String(16))
    message_id: Mapped[str | None] = mapped_column(String(36))
    detail: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ReceiptRow(Base):
    """An institution's signed answer to a message, verified against its registered keys:
    the proof that it acknowledged what Jokko sent. Written in the ack's own transaction."""

    __tablename__ = "receipt"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(36), index=True)
    institution: Mapped[str] = mapped_column(String(16))
    signed_id: Mapped[str] = mapped_column(String(64))
    """The ``webhook-id`` signed: the message id, or the batch id of a batch answer."""
    body: Mapped[bytes] = mapped_column(LargeBinary)
    """The answer's exact bytes, as signed."""
    body_sha256: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[str] = mapped_column(Text)
    """The ``webhook-signature`` header as received."""
    kid: Mapped[str] = mapped_column(String(64))
    verified_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class AckAnomalyRow(Base):
    """An acknowledgement that answers nothing Jokko sent, or that contradicts an earlier one.

    Kept, not dropped: an institution holding a message Jokko does not know is exactly what
    an auditor must see.
    """

    __tablename__ = "ack_anomaly"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    institution: Mapped[str] = mapped_column(String(16))
    message_id: Mapped[str] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    reason_code: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ClientRow(Base):
    """An API client (OAuth2 client credentials): the mutual, an institution, an operator."""

    __tablename__ = "api_client"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(255))
    scopes: Mapped[str] = mapped_column(String(512))
    """Space-separated, as in OAuth2."""
    institution: Mapped[str | None] = mapped_column(String(16))
    """For an institution's client: the only institution whose records it may see."""
    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class SigningKeyRow(Base):
    """Keys signing access tokens; a retired key stays in the JWKS until its tokens expire."""

    __tablename__ = "signing_key"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    private_pem: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class IdempotencyRow(Base):
    """The first answer given to a client's Idempotency-Key, replayed for the same request."""

    __tablename__ = "idempotency_key"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class AuditRow(Base):
    """Who did or read what: replays, discards, client changes, reconciliation runs, reads of
    personal data. Append-only and hash-chained: written by ``router.audit.append`` alone."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    """Given by ``append`` (the head's + 1), so the ids of a chain have no gaps."""
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(255))
    member_id: Mapped[str | None] = mapped_column(String(64), index=True)
    """The member whose data was read or acted on, when there is exactly one."""
    detail: Mapped[str | None] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    """The previous row's ``row_hash``: unique, so the chain cannot fork."""
    row_hash: Mapped[str] = mapped_column(String(64))


class MessageLogRow(Base):
    """One thing Jokko sent an institution (a push, a batch, a declaration file with the
    messages it carried, or a Kafka record):
    the digest of the exact bytes, Jokko's signature, the answer. Append-only and hash-chained
    like the audit log: written by ``router.msglog.append`` alone (migration 0010)."""

    __tablename__ = "message_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime())
    institution: Mapped[str] = mapped_column(String(16))
    signed_id: Mapped[str] = mapped_column(String(64), index=True)
    """``webhook-id``: the message's id, or the batch's."""
    message_ids: Mapped[str] = mapped_column(Text)
    """The messages the request carried, a JSON array (one for a single push)."""
    timestamp: Mapped[int] = mapped_column(BigInteger())
    """``webhook-timestamp`` (unix seconds): part of what was signed."""
    body_sha256: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(64))
    signature: Mapped[str | None] = mapped_column(Text)
    """Jokko's Ed25519 signature (base64): ``v1a`` over ``{signed_id}.{timestamp}.{body}``,
    or over a declaration file's bytes alone (``detail.kind == "file"``)."""
    status: Mapped[int | None] = mapped_column(Integer)
    """The HTTP status of the answer; None when none came (connection failed)."""
    outcome: Mapped[str] = mapped_column(Text)
    """What the answer said per message, a JSON object (or why the request failed)."""
    detail: Mapped[str | None] = mapped_column(Text)
    """How a batch, a declaration file or a Kafka record carried its messages, a JSON object
    (``router.msglog``); None for a single HTTP push (migration 0012)."""
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    row_hash: Mapped[str] = mapped_column(String(64))


class MessageLogIndexRow(Base):
    """Which ``message_log`` rows carried a message: a lookup, not evidence (the chained row's
    ``message_ids`` is what a bundle is checked against)."""

    __tablename__ = "message_log_index"

    message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    log_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True
    )


class ReconciliationRunRow(Base):
    """One reconciliation run: what was compared, by whom, and its totals (kept, audited)."""

    __tablename__ = "reconciliation_run"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="running")
    actor: Mapped[str] = mapped_column(String(64))
    institutions: Mapped[str] = mapped_column(String(64))
    sources: Mapped[str] = mapped_column(Text)
    """JSON: the ledger and extract files compared."""
    period_from: Mapped[str | None] = mapped_column(String(7))
    """First month the run reports on (``YYYY-MM``); null with ``period_to``: every month."""
    period_to: Mapped[str | None] = mapped_column(String(7))
    summary: Mapped[str | None] = mapped_column(Text)
    """JSON: counts and XOF differences per institution, region, period, branch, kind."""
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ReconciliationItemRow(Base):
    """One discrepancy of a run; ``redrive`` records what re-driving it did (once)."""

    __tablename__ = "reconciliation_item"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("reconciliation_run.id"), index=True)
    institution: Mapped[str] = mapped_column(String(16))
    record: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    member_id: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(7))
    branch: Mapped[str] = mapped_column(String(16))
    ref: Mapped[str] = mapped_column(String(64))
    region: Mapped[str] = mapped_column(String(8))
    expected_amount: Mapped[int] = mapped_column(BigInteger)
    actual_amount: Mapped[int] = mapped_column(BigInteger)
    fields: Mapped[str] = mapped_column(String(64))
    expected: Mapped[str] = mapped_column(String(255))
    actual: Mapped[str] = mapped_column(String(255))
    event_id: Mapped[str] = mapped_column(String(36))
    redrive: Mapped[str | None] = mapped_column(String(32))
    redriven_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
