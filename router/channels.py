"""The ways Jokko reaches an institution besides its Kafka topic: signed HTTP push, file drop.

Channels move bytes and report per message (``router.delivery.Delivery``); retries, order and
dead letters are the delivery worker's business. Both keep a member's order inside a batch:
once one of a member's messages fails, its later ones are not sent and are reported failed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from uuid import UUID

import httpx

from adapters.base import (
    Ack,
    AckStatus,
    Institution,
    InvalidMessage,
    MalformedAck,
    OutboundAdapter,
    OutboundMessage,
)
from adapters.ipres import build_declaration_file
from adapters.ipres import validate as validate_ipres
from router.delivery import ChannelUnavailable, Delivery, Parcel, Result
from router.msglog import Sent, carried_in, v1a_signature
from router.receipts import Receipt, Refusal, check_receipt
from router.signing import (
    KEY_ID_HEADER,
    SIG_SUFFIX,
    SIGNATURE_HEADER,
    JwksVerifier,
    SigningKey,
    file_signature,
    sign_file,
    sign_push,
)

log = logging.getLogger(__name__)

ParseAck = Callable[[bytes], list[Ack]]
ParseAnswer = Callable[[bytes, str], list[Ack]]
"""An adapter's ``parse_answer(raw, message_id)``: the answer to one pushed message, which may
name no message (a plain FHIR server's); ``parse_ack`` when the adapter has none."""
EncodeBatch = Callable[[str, Sequence[tuple[str, bytes]]], bytes]
"""An adapter's ``encode_batch(batch_id, [(message_id, body), ...])``: its batch envelope."""
_REPLAY_WINDOW_S = 600
"""Longer than any partner's tolerance (``router.signing.Verifier``: 300 s by default)."""
_PRUNE_AT = 10_000
_TRANSIENT_STATUSES = frozenset({401, 403, 408, 409, 412, 429})
"""Answers that decide nothing about the message (5xx too): the channel's own failure (401,
403), a time-out or a throttle, and a FHIR server's concurrency failures — 409 when concurrent
conditional creates of one identifier clash (HAPI-0550), 412 for a failed precondition. The
message is sent again later, with back-off; any other answer is read as the ack."""
_EXPLAINED = frozenset({409, 412})


def delivery_of(ack: Ack, batch_ref: str | None = None) -> Delivery:
    """What an ack says about its message, CMU's decision included (the worker turns it into
    ``claim.adjudicated``, as ``router.acks`` does for acks arriving by topic or file)."""
    return Delivery(
        ack.message_id,
        Result.ACCEPTED if ack.status == AckStatus.ACCEPTED else Result.REJECTED,
        reason_code=ack.reason_code,
        reason_text=ack.reason_text,
        institution_ref=ack.institution_ref,
        batch_ref=batch_ref,
        adjudication=ack.adjudication,
        decided_at=ack.decided_at,
    )


def tls_context(
    ca_file: Path | None = None,
    client_cert_file: Path | None = None,
    client_key_file: Path | None = None,
    crl_file: Path | None = None,
) -> ssl.SSLContext:
    """The client side of mutual TLS to one institution: TLS 1.2 at least, the server's
    certificate checked against ``ca_file`` (the system's trust store without it) and its host
    name, and Jokko's client certificate presented when one is given. With ``crl_file`` (the
    CA's revocation list, PEM) a server certificate it names is refused, and so is one whose
    CA has no list there.

    Raises ``OSError`` or ``ssl.SSLError`` for a file that is missing or not PEM, a key that
    does not match its certificate."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if crl_file is not None:
        context.load_verify_locations(cafile=str(crl_file))
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    if client_cert_file is not None:
        context.load_cert_chain(
            str(client_cert_file), str(client_key_file) if client_key_file else None
        )
    return context


_TLS_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the institution requires a client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the institution refused Jokko's client certificate "
    "as expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the institution refused Jokko's client certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the institution refused Jokko's client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the institution does not trust the CA of Jokko's client certificate",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the institution refused the handshake",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version both sides accept (1.2 at least)",
    "WRONG_VERSION_NUMBER": "the server does not speak TLS",
    "RECORD_LAYER_FAILURE": "the server does not speak TLS",
    "PACKET_LENGTH_TOO_LONG": "the server does not speak TLS",
}


def transport_failure(exc: httpx.HTTPError) -> str:
    """Why a request failed, in words an operator can act on: a TLS failure is named ("tls:
    the server's certificate has expired"), anything else by its exception class as before."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return type(exc).__name__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"tls: the server's certificate is refused: {cause.verify_message}"
    reason = getattr(cause, "reason", None) or ""
    named = _TLS_ALERTS.get(reason)
    if named is None:
        return f"tls: handshake failed: {reason or cause}"
    return f"tls: {named} ({reason})"


@dataclass(frozen=True)
class _Answer:
    acks: list[Ack]
    receipt: Receipt | None = None


@dataclass(frozen=True)
class Failure:
    """Why a request failed (transient); ``refused`` names a receipt's refused signature."""

    text: str
    refused: str | None = None

    def delivery(self, message_id: str) -> Delivery:
        return Delivery(
            message_id, Result.FAILED, reason_text=self.text, receipt_refused=self.refused
        )


def _held_back(p: Parcel) -> Delivery:
    """Not sent: an earlier message of its member failed, and order comes first."""
    return Delivery(p.message_id, Result.FAILED, reason_text="an earlier message failed")


class HttpChannel:
    """POSTs each message to the institution's endpoint, signed (``router.signing``: Ed25519
    with ``signing_key``, HMAC with ``secret``, or both), and reads the institution's answer in
    its own format as the acknowledgement.

    An answer the adapter reads as an ack is final (accepted or rejected, whatever the HTTP
    status: a 400 or 404 OperationOutcome is a rejection with the server's diagnostics); 5xx,
    401, 403, 408, 409, 412, 429, timeouts, dropped connections and unreadable answers are
    transient (a 409 or 412 failure names the server's reason when it gives one).
    Members are sent concurrently (``concurrency``), each member's messages one after another.

    With ``batch_size`` > 1 and the adapter's ``encode_batch``, messages of different members
    share a request (the institution's batch envelope, answered by one ack naming each): a
    member has at most one message in a request, and its next one goes in a later request
    only once the earlier one is answered, so a member's order holds as with single pushes.
    A request holding a single message is sent as the plain message.

    An ``https://`` URL is reached with ``tls`` (``tls_context``: the institution's CA, Jokko's
    client certificate, TLS 1.2+); a handshake that fails (a certificate not trusted, expired
    or for another host, a server without TLS, a client certificate refused) fails the
    message with its reason named: nothing goes out in clear and nothing reaches the
    institution's application (under TLS 1.3 a refused client certificate is only announced
    after the encrypted request has left, which the server then discards). Whether a plain
    ``http://`` URL may be used at all is the settings' decision (loopback test peers only).
    """

    name = "http"

    def __init__(
        self,
        institution: Institution,
        adapter: OutboundAdapter,
        url: str,
        secret: bytes | None = None,
        *,
        signing_key: SigningKey | None = None,
        timeout_s: float = 10.0,
        concurrency: int = 8,
        client: httpx.Client | None = None,
        tls: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
        batch_size: int = 1,
        encode_batch: EncodeBatch | None = None,
        receipts: JwksVerifier | None = None,
        require_signed_acks: bool = False,
        batch_part: Callable[[bytes], bytes] | None = None,
    ) -> None:
        """``batch_part``: the bytes of a message its batch envelope holds (the adapter's
        ``batch_part``; the whole body by default), located in the message log."""
        self._batch_part = batch_part or (lambda body: body)
        if require_signed_acks and receipts is None:
            raise ValueError(f"signed acks from {institution} need its public keys")
        self._receipts = receipts
        self._require_signed = require_signed_acks
        if batch_size > 1 and encode_batch is None:
            raise ValueError(f"{institution} has no batch envelope: batch_size must be 1")
        if secret is None and signing_key is None:
            raise ValueError(f"pushes to {institution} need a signing key, a secret or both")
        self._signing_key = signing_key
        self._batch_size = batch_size
        self._encode_batch = encode_batch
        self._institution = institution
        self._parse_ack = adapter.parse_ack
        self._parse_answer: ParseAnswer | None = getattr(adapter, "parse_answer", None)
        self._url = url
        self._secret = secret
        if client is None:
            # without a context of its own: the system's trust store, TLS 1.2 at least
            verify = tls if tls is not None else tls_context()
            client = httpx.Client(timeout=timeout_s, verify=verify)
        self._client = client
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix=f"push-{institution}")
        self._clock = clock
        self._last_ts: dict[str, int] = {}
        self._prune_at = _PRUNE_AT
        self._lock = threading.Lock()
        self.requests = 0

    @property
    def institution(self) -> Institution:
        return self._institution

    def deliver(self, parcels: Sequence[Parcel]) -> list[Delivery]:
        by_member: dict[str, list[Parcel]] = {}
        for p in parcels:
            by_member.setdefault(p.member_id, []).append(p)
        results: dict[str, Delivery] = {}
        if self._batch_size > 1:
            self._deliver_in_rounds(list(by_member.values()), results)
        else:
            for member_results in self._pool.map(self._send_member, by_member.values()):
                results.update(member_results)
        return [results[p.message_id] for p in parcels]

    def _deliver_in_rounds(self, members: list[list[Parcel]], results: dict[str, Delivery]) -> None:
        """Round k sends every member's k-th message, ``batch_size`` to a request; a member
        whose message failed sends nothing more in this batch."""
        queues = [iter(m) for m in members]
        while queues:
            heads = [(q, next(q, None)) for q in queues]
            live = [(q, p) for q, p in heads if p is not None]
            if not live:
                return
            round_ = [p for _, p in live]
            chunks = [
                round_[i : i + self._batch_size] for i in range(0, len(round_), self._batch_size)
            ]
            for chunk_results in self._pool.map(self._send_chunk, chunks):
                results.update(chunk_results)
            queues = []
            for q, p in live:
                if results[p.message_id].result != Result.FAILED:
                    queues.append(q)
                    continue
                results.update((rest.message_id, _held_back(rest)) for rest in q)

    def _send_chunk(self, chunk: list[Parcel]) -> dict[str, Delivery]:
        if len(chunk) == 1:
            return {chunk[0].message_id: self._send(chunk[0])}
        assert self._encode_batch is not None  # checked in __init__
        batch_id = str(uuid.uuid4())  # never re-used: a fresh id needs no timestamp bookkeeping
        body = self._encode_batch(batch_id, [(p.message_id, p.body) for p in chunk])
        carried = tuple(p.message_id for p in chunk)
        try:
            detail: Mapping[str, object] | None = carried_in(
                "batch", body, [(p.message_id, p.body, self._batch_part(p.body)) for p in chunk]
            )
        except ValueError as exc:  # an envelope that is not its messages' bytes: digest only
            log.warning("batch %s: its messages are not located in the log: %s", batch_id, exc)
            detail = None
        answer, sent = self._post(
            batch_id, body, chunk[0].content_type, int(self._clock()), carried, detail
        )
        if isinstance(answer, Failure):
            return {p.message_id: replace(answer.delivery(p.message_id), sent=sent) for p in chunk}
        by_message: dict[str, list[Ack]] = {}
        for a in answer.acks:
            by_message.setdefault(a.message_id, []).append(a)
        return {
            p.message_id: replace(
                self._decided(p, by_message.get(p.message_id, []), answer.receipt), sent=sent
            )
            for p in chunk
        }

    def _send_member(self, parcels: list[Parcel]) -> dict[str, Delivery]:
        out: dict[str, Delivery] = {}
        failed = False
        for p in parcels:
            if failed:
                out[p.message_id] = _held_back(p)
                continue
            out[p.message_id] = d = self._send(p)
            failed = d.result == Result.FAILED
        return out

    def _timestamp(self, message_id: str) -> int:
        """Each attempt of a message gets a later timestamp than the last, so a partner's
        replay protection never mistakes a legitimate retry for a replayed request. Kept after
        a success too: its answer may never be committed (database away, CMU's decision not
        published) and the message is sent again at once. Forgotten once older than any
        partner's replay window."""
        with self._lock:
            now = int(self._clock())
            ts = max(now, self._last_ts.get(message_id, 0) + 1)
            self._last_ts[message_id] = ts
            if len(self._last_ts) > self._prune_at:
                horizon = now - _REPLAY_WINDOW_S
                self._last_ts = {m: t for m, t in self._last_ts.items() if t > horizon}
                self._prune_at = max(_PRUNE_AT, 2 * len(self._last_ts))
            return ts

    def _post(
        self,
        signed_id: str,
        body: bytes,
        content_type: str,
        timestamp: int,
        carried: tuple[str, ...],
        detail: Mapping[str, object] | None = None,
        *,
        single: bool = False,
    ) -> tuple[_Answer | Failure, Sent]:
        """The answer's acks (and its receipt), or why the request failed (transient,
        whatever it held), and what the message log keeps of the request. ``signed_id`` is
        the message's id, or a batch's; ``carried`` the messages in it; ``single``: the
        request is one message (``signed_id``), the only one its answer can be about."""
        headers = sign_push(
            signed_id, body, timestamp=timestamp, key=self._signing_key, secret=self._secret
        )
        headers["content-type"] = content_type
        sent = Sent(
            signed_id,
            carried,
            timestamp,
            hashlib.sha256(body).hexdigest(),
            headers.get(KEY_ID_HEADER),
            v1a_signature(headers[SIGNATURE_HEADER]),
            None,
            detail,
        )
        try:
            with self._lock:
                self.requests += 1
            response = self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Failure(transport_failure(exc)), sent
        sent = replace(sent, status=response.status_code)
        status = response.status_code
        if status >= 500 or status in _TRANSIENT_STATUSES:
            answering = signed_id if single else None
            why = self._reason(response.content, answering) if status in _EXPLAINED else None
            return Failure(f"HTTP {status}: {why}" if why else f"HTTP {status}"), sent
        receipt = self._receipt(signed_id, response)
        if isinstance(receipt, Failure):
            return receipt, sent
        try:
            # pure adapters; CSS keeps lxml per thread
            return _Answer(
                self._read(response.content, signed_id if single else None), receipt
            ), sent
        except MalformedAck as exc:
            return Failure(f"HTTP {response.status_code}, unreadable answer: {exc}"), sent

    def _read(self, body: bytes, single: str | None) -> list[Ack]:
        """The acks of an answer; ``single``: the one message the request carried."""
        if single is not None and self._parse_answer is not None:
            return self._parse_answer(body, single)
        return self._parse_ack(body)

    def _reason(self, body: bytes, single: str | None) -> str | None:
        """The reason an answer gives, read as an ack would be (a FHIR OperationOutcome's
        diagnostics), or None when it gives none."""
        try:
            acks = self._read(body, single)
        except MalformedAck:
            return None
        return next((a.reason_text for a in acks if a.reason_text), None)

    def _receipt(self, signed_id: str, response: httpx.Response) -> Receipt | Failure | None:
        """The answer's verified signature, None for an unsigned answer that may be applied,
        or the refusal (before the answer is read: nothing of it is applied)."""
        if self._receipts is None:
            return None
        checked = check_receipt(
            self._receipts,
            response.headers,
            response.content,
            required=self._require_signed,
            expected_id=signed_id,
        )
        if isinstance(checked, Refusal):
            return Failure(checked.text, refused=checked.refused)
        return checked

    def _send(self, p: Parcel) -> Delivery:
        answer, sent = self._post(
            p.message_id,
            p.body,
            p.content_type,
            self._timestamp(p.message_id),
            (p.message_id,),
            single=True,
        )
        if isinstance(answer, Failure):
            return replace(answer.delivery(p.message_id), sent=sent)
        acks = [a for a in answer.acks if a.message_id == p.message_id]
        return replace(self._decided(p, acks, answer.receipt), sent=sent)

    def _decided(self, p: Parcel, acks: list[Ack], receipt: Receipt | None = None) -> Delivery:
        if not acks:
            return Delivery(
                p.message_id, Result.FAILED, reason_text="the answer does not name this message"
            )
        # The first answer about the message decides its state; a decision may come beside
        # it (a batch-response with the transaction-response and a ClaimResponse).
        decision = next((a for a in acks if a.adjudication is not None), None)
        if decision is None:
            return replace(delivery_of(acks[0]), receipt=receipt)
        return replace(
            delivery_of(acks[0]),
            adjudication=decision.adjudication,
            decided_at=decision.decided_at,
            receipt=receipt,
        )

    def close(self) -> None:
        self._pool.shutdown()
        self._client.close()


class FileChannel:
    """Writes each batch as one IPRES declaration file into the exchange's outbox directory.

    The file is written under a temporary name and renamed, so the institution never reads a
    half-written file. With ``signing_key``, its detached signature (``<file>.sig``,
    ``router.signing.sign_file``) is in place before the file appears. Its acknowledgement
    comes later as an ack file (``router.acks``).
    """

    name = "file"

    def __init__(
        self,
        outbox: Path,
        *,
        institution: Institution = Institution.IPRES,
        today: Callable[[], date] = date.today,
        signing_key: SigningKey | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signing_key = signing_key
        self._clock = clock
        self._outbox = outbox
        self._institution = institution
        self._today = today
        outbox.mkdir(parents=True, exist_ok=True)

    @property
    def institution(self) -> Institution:
        return self._institution

    def deliver(self, parcels: Sequence[Parcel]) -> list[Delivery]:
        file_id = f"J{uuid.uuid4().hex[:19].upper()}"
        candidates = [
            OutboundMessage(
                message_id=p.message_id,
                institution=self._institution,
                event_id=UUID(p.event_id),
                member_id=p.member_id,
                kind=p.kind,
                content_type=p.content_type,
                body=p.body,
                format_version=p.format_version,
            )
            for p in parcels
        ]
        refused: dict[str, Delivery] = {}
        messages = []
        for m in candidates:  # one bad record must not hold the whole file back
            try:
                validate_ipres(m)
                messages.append(m)
            except InvalidMessage as exc:
                refused[m.message_id] = Delivery(
                    m.message_id, Result.UNDELIVERABLE, "invalid_message", str(exc)
                )
        if not messages:
            return [refused[p.message_id] for p in parcels]
        content = build_declaration_file(messages, file_id=file_id, created=self._today())
        final = self._outbox / f"{file_id}.dat"
        signed: str | None = None
        try:
            if self._signing_key is not None:
                signature = sign_file(self._signing_key, content)
                signed = file_signature(signature)
                _write_then_rename(signature, final.with_name(final.name + SIG_SUFFIX))
            _write_then_rename(content, final)
        except OSError as exc:
            raise ChannelUnavailable(f"cannot write {final}: {exc}") from exc
        sent = Sent(
            final.name,
            tuple(m.message_id for m in messages),
            int(self._clock()),
            hashlib.sha256(content).hexdigest(),
            self._signing_key.kid if self._signing_key is not None else None,
            signed,
            None,
            carried_in(
                "file", content, [(m.message_id, m.body, m.body) for m in messages], file=final.name
            ),
        )
        return [
            refused.get(p.message_id)
            or Delivery(p.message_id, Result.SENT, batch_ref=file_id, sent=sent)
            for p in parcels
        ]

    def close(self) -> None:
        """Nothing held open between batches."""


def _write_then_rename(content: bytes, final: Path) -> None:
    temp = final.with_name(f".{final.name}.tmp")
    try:
        with temp.open("wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        temp.rename(final)
    except OSError:
        temp.unlink(missing_ok=True)
        raise
