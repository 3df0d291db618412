"""What the fake institutions share: one signed POST endpoint behind the fault knobs, and a
record of what arrived, so a test can compare what Jokko sent with what the partner holds.

Order of events for one request: count it; ``down`` → 503 at once; one random draw
(``Faults.fate``); ``latency_s`` (a client that hangs up meanwhile is counted 499 and its
message is not processed); a drawn error → 503 (not processed); a drawn drop before
processing → connection closed; signature check → 401, nothing recorded (Ed25519 ``v1a``
against Jokko's JWKS alone with ``jwks``: ``router.signing.JwksVerifier``; HMAC ``v1`` with
``secret``: ``router.signing.Verifier``; both when given both); the institution's own
processing (recorded in ``received``); a drawn drop after processing, or one the institution
chooses (``lose_answer``) → connection closed, the answer is lost but the message counts.

A message id that was accepted once is accepted again with the same answer (institutions apply
a re-sent message once: FHIR conditional creates, CSS and IPRES by message id); a rejected one
is judged afresh, so a test can fix a member and see the re-send go through.

A batch envelope (the adapter's ``split_batch``: several messages in one request, signed with
the batch's id) is processed message by message, as if each had come alone, and answered by
one document naming each (``combine``); the faults apply to the request as a whole.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from adapters.base import AckStatus, Institution, InvalidMessage
from router.signing import (
    KEY_ID_HEADER,
    AllOf,
    JwksVerifier,
    SignatureRejected,
    SigningKey,
    Verifier,
    sign_push,
)
from tests.fakes.faults import Fate, Faults
from tests.fakes.server import dropped

CLIENT_GONE = 499
"""Counted (nginx's convention) when the client hung up during ``latency_s``: not processed."""
DEFAULT_REJECT_CODE = "R042"
"""NIN unknown: a code every institution's table has (CMU's FORMAT.md has no table of its own)."""


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    message_id: str
    member_id: str | None
    body: bytes
    status: AckStatus
    reason_code: str | None = None
    institution_ref: str | None = None
    resent: bool = False
    """The same message id had already been accepted: applied once, answered the same way."""


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer as bytes, so it can be given again."""

    status: int
    media_type: str
    body: bytes

    def response(self) -> Response:
        return Response(self.body, status_code=self.status, media_type=self.media_type)


@dataclass
class RequestCounts:
    total: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    dropped: int = 0
    """Connections closed without an answer (not in ``by_status``)."""


class Recorder:
    """Thread-safe record of messages and answers, and the memory of what was accepted."""

    def __init__(self) -> None:
        self.received: list[ReceivedMessage] = []
        self.requests = RequestCounts()
        self._accepted: dict[str, tuple[ReceivedMessage, Answer | None]] = {}
        self._lock = threading.Lock()
        self._seq = 0
        self.key_ids: Counter[str] = Counter()
        """Verified requests by the ``webhook-key-id`` that signed them ("" for HMAC only)."""

    def verified(self, key_id: str) -> None:
        with self._lock:
            self.key_ids[key_id] += 1

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def count(self, status: int | None) -> None:
        """One request finished with ``status``, or was dropped (None)."""
        with self._lock:
            if status is None:
                self.requests.dropped += 1
            else:
                self.requests.by_status[status] += 1

    def arrived(self) -> None:
        with self._lock:
            self.requests.total += 1

    def accepted_before(self, message_id: str) -> tuple[ReceivedMessage, Answer | None] | None:
        with self._lock:
            return self._accepted.get(message_id)

    def record(self, message: ReceivedMessage, answer: Answer | None = None) -> None:
        """Keep ``message``; an accepted one's ``answer`` is given again to a re-send."""
        with self._lock:
            self.received.append(message)
            if message.status is AckStatus.ACCEPTED:
                self._accepted.setdefault(message.message_id, (message, answer))

    def accepted_ids(self) -> set[str]:
        with self._lock:
            return set(self._accepted)


Jwks = Mapping[str, Any] | Callable[[], Mapping[str, Any]]
"""Jokko's message-keys JWKS document, or a function fetching it (``JwksVerifier``)."""


def push_verifier(
    secret: bytes | Sequence[bytes] | None,
    jwks: Jwks | None,
    clock: Callable[[], float] = time.time,
) -> Verifier | JwksVerifier | AllOf:
    """What an institution checks: Jokko's Ed25519 signature with its JWKS, the HMAC with a
    shared secret, or both (a partner whose setting is ``both``)."""
    hmac = None
    if secret is not None:
        hmac = Verifier([secret] if isinstance(secret, bytes) else list(secret), clock=clock)
    ed25519 = JwksVerifier(jwks, clock=clock) if jwks is not None else None
    if hmac is not None and ed25519 is not None:
        return AllOf(ed25519, hmac)
    if ed25519 is not None:
        return ed25519
    if hmac is not None:
        return hmac
    raise ValueError("a fake institution verifies with a JWKS, a secret or both")


class HttpFake:
    """One institution's HTTP endpoint: subclasses implement ``answer`` and ``unauthorized``."""

    institution: Institution
    path: str

    def __init__(
        self,
        secret: bytes | Sequence[bytes] | None = None,
        faults: Faults | None = None,
        *,
        jwks: Jwks | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.faults = faults if faults is not None else Faults()
        self.verifier = push_verifier(secret, jwks, clock)
        self.recorder = Recorder()
        self.schema_checks = True
        """Check every message with an independent validator (fhir.resources, xmlschema) on
        top of the cheap structural checks. Off only in benchmarks: those validators cost the
        fake ~3 ms a message, so on the machine Jokko runs on they, not Jokko, set the pace."""
        self.app = FastAPI(
            title=f"fake {self.institution}", docs_url=None, redoc_url=None, openapi_url=None
        )
        self.app.add_api_route(self.path, self._endpoint, methods=["POST"])
        self.ack_key: SigningKey | None = None
        """Signs each answer (Standard Webhooks ``v1a`` over the answered id): a receipt."""
        self.receipt_fault: str | None = None
        """``forge`` (sign with ``forge_key``), ``alter`` (change the body after signing),
        ``omit`` (no signature): a receipt Jokko must refuse."""
        self.forge_key: SigningKey | None = None
        self._receipt_ts: dict[str, int] = {}

    @property
    def received(self) -> list[ReceivedMessage]:
        return self.recorder.received

    @property
    def requests(self) -> RequestCounts:
        return self.recorder.requests

    def reject_code(self) -> str:
        return self.faults.reject_code or DEFAULT_REJECT_CODE

    def answer(
        self, message_id: str, body: bytes, content_type: str
    ) -> tuple[Answer, ReceivedMessage]:
        """The institution's answer to a message whose signature was verified, and what it
        keeps of it."""
        raise NotImplementedError

    def unauthorized(self, error: SignatureRejected) -> Answer:
        raise NotImplementedError

    def extract(self) -> str:
        """The institution's reconciliation extract of what it accepted, in its own format."""
        raise NotImplementedError

    def split(self, body: bytes) -> tuple[str, list[tuple[str, bytes]]] | None:
        """``(batch_id, [(message_id, body), ...])`` of a batch envelope, None for a single
        message (the institution's adapter module's ``split_batch``)."""
        return None

    def combine(self, answers: list[Answer]) -> Answer:
        """One answer to a batch from the answers to each of its messages."""
        raise NotImplementedError

    def lose_answer(self, message_id: str) -> bool:
        """Whether the answer to this processed message is lost on the way back (an
        institution's own fault knob; the base never loses one)."""
        return False

    def process(self, message_id: str, body: bytes, content_type: str) -> Answer:
        """One message, its signature taken as verified, processed as a request carrying it
        would be (without transport faults): what contract tests run in process."""
        return self._process(message_id, body, content_type)

    def _process(self, message_id: str, body: bytes, content_type: str) -> Answer:
        prior = self.recorder.accepted_before(message_id)
        first, answer = prior if prior is not None else (None, None)
        if first is not None and answer is not None:
            self.recorder.record(replace(first, body=body, resent=True))
            return answer
        fresh, received = self.answer(message_id, body, content_type)
        self.recorder.record(received, fresh)
        return fresh

    async def _endpoint(self, request: Request) -> Response:
        self.recorder.arrived()
        body = await request.body()
        faults = self.faults
        if faults.down:
            return self._counted(_unavailable())
        fate = faults.fate()
        if faults.latency_s > 0 and not await _still_there(request, faults.latency_s):
            self.recorder.count(CLIENT_GONE)
            return dropped()
        if fate is Fate.ERROR:
            return self._counted(_unavailable())
        if fate is Fate.DROP and faults.drop_before_processing:
            return self._counted(None)
        try:
            message_id = self.verifier.verify(request.headers, body)
        except SignatureRejected as exc:
            return self._counted(self.unauthorized(exc))
        self.recorder.verified(request.headers.get(KEY_ID_HEADER, ""))
        content_type = request.headers.get("content-type", "")
        try:
            batch = self.split(body)
        except InvalidMessage as exc:
            return self._counted(Answer(400, "text/plain", f"malformed batch: {exc}".encode()))
        if batch is None:
            answer = self._process(message_id, body, content_type)
            lost = self.lose_answer(message_id)
        else:
            batch_id, parts = batch
            if batch_id != message_id:
                return self._counted(Answer(400, "text/plain", b"batch id is not the signed id"))
            answers = [self._process(m, doc, content_type) for m, doc in parts]
            answer = self.combine(answers)
            lost = any([self.lose_answer(m) for m, _ in parts])  # each one counted
        if fate is Fate.DROP or lost:
            return self._counted(None)
        return self._signed(self._counted(answer), message_id, answer)

    def _signed(self, response: Response, signed_id: str, answer: Answer) -> Response:
        """The answer signed as the institution's receipt (when the fake has a key)."""
        key = self.forge_key if self.receipt_fault == "forge" else self.ack_key
        if key is None or self.receipt_fault == "omit" or answer.status >= 500:
            return response
        # each answer to an id a later timestamp: a genuine re-answer is never a replay
        ts = max(int(time.time()), self._receipt_ts.get(signed_id, 0) + 1)
        self._receipt_ts[signed_id] = ts
        headers = sign_push(signed_id, answer.body, timestamp=ts, key=key)
        if self.receipt_fault == "alter":
            response.body = answer.body + b" "  # one byte more than was signed
            response.headers["content-length"] = str(len(response.body))
        for name, value in headers.items():
            response.headers[name] = value
        return response

    def _counted(self, answer: Answer | None) -> Response:
        self.recorder.count(None if answer is None else answer.status)
        if answer is None:
            return dropped()
        response = answer.response()
        if answer.status == 503:
            response.headers["Retry-After"] = "1"
        return response


async def _still_there(request: Request, seconds: float) -> bool:
    """Wait ``seconds``; False as soon as the client hangs up (its timeout was shorter)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        await asyncio.sleep(min(left, 0.05))
        if await request.is_disconnected():
            return False
    return True


def _unavailable() -> Answer:
    return Answer(503, "text/plain", b"Service Unavailable (fault injected)")
