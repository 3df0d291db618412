"""An institution that reads its own Kafka topic and answers on its ack topic.

It judges each message with the fake institution's HTTP endpoint (the same checks, the same
answers in the institution's format), so the Kafka path and the push path are held to one
standard (over mutual TLS with ``tls``, as Jokko reaches it). ``duplicate_acks`` publishes
every answer twice.

With ``topic_key`` (the institution's topic key file, loaded) it opens each sealed record with
that key alone, as the institution would; a record it cannot open (another institution's
key, altered bytes) is counted in ``unsealable`` and never answered.

With ``jwks`` (Jokko's published JWKS document) it checks each record's signature first, as
the institution would, with that document alone (``router.signing.verify_record``); a record
unsigned, altered or signed with another key is counted in ``forged`` and never answered.

With ``ack_key`` (the institution's own key) each ack record is signed as the institution
signs it (Standard Webhooks ``v1a`` headers on the record, over its value, a fresh ack id per
record); ``receipt_fault`` stages what Jokko must refuse: ``forge`` (signed with
``forge_key``), ``alter`` (a byte added to the value after signing), ``omit`` (no headers).
"""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
from kafka import KafkaProducer

from adapters.base import Institution
from router.broker import group_consumer
from router.envelope import Unsealable, is_sealed, open_for_institution
from router.signing import SignatureRejected, SigningKey, sign, sign_push, verify_record
from router.topics import Topics
from router.vault import KeySet


class KafkaPartner:
    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        institution: Institution,
        endpoint: str,
        secret: bytes,
        *,
        duplicate_acks: bool = False,
        tls: ssl.SSLContext | None = None,
        topic_key: KeySet | None = None,
        jwks: Mapping[str, Any] | None = None,
    ) -> None:
        self._jwks = jwks
        self.forged = 0
        self._bootstrap = bootstrap
        self._topics = topics
        self._institution = institution
        self._endpoint = endpoint
        self._secret = secret
        self.duplicate_acks = duplicate_acks
        self._verify: ssl.SSLContext | bool = tls if tls is not None else True
        self.consumed = 0
        self.unsealable = 0
        self._topic_key = topic_key
        self.ack_key: SigningKey | None = None
        self.forge_key: SigningKey | None = None
        self.receipt_fault: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"partner-{institution}")
        self._failure: BaseException | None = None

    def __enter__(self) -> KafkaPartner:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._failure is not None:
            raise self._failure

    def signed(self, value: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
        """An ack record's value and headers, signed when the partner has a key."""
        key = self.forge_key if self.receipt_fault == "forge" else self.ack_key
        if key is None or self.receipt_fault == "omit":
            return value, []
        headers = sign_push(f"ack-{uuid.uuid4()}", value, timestamp=int(time.time()), key=key)
        if self.receipt_fault == "alter":
            value += b" "  # one byte more than was signed
        return value, [(k, v.encode()) for k, v in headers.items()]

    def _open(self, message_id: str, value: bytes) -> bytes:
        if self._topic_key is None:
            raise Unsealable("a sealed record and no topic key")
        return open_for_institution(self._topic_key, self._institution.value, message_id, value)

    def _run(self) -> None:
        consumer = group_consumer(
            self._bootstrap,
            f"partner-{self._institution}-{uuid.uuid4().hex[:6]}",
            [self._topics.outbound(self._institution)],
        )
        producer = KafkaProducer(bootstrap_servers=self._bootstrap, acks="all")
        client = httpx.Client(timeout=10, verify=self._verify)
        try:
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=200).values():
                    for r in records:
                        headers = {k: v.decode() for k, v in r.headers}
                        message_id = headers["message_id"]
                        body = r.value
                        if self._jwks is not None:
                            try:
                                verify_record(self._jwks, r.headers, r.value)
                            except SignatureRejected:
                                self.forged += 1
                                continue
                        if is_sealed(body):
                            try:
                                body = self._open(message_id, body)
                            except Unsealable:
                                self.unsealable += 1
                                continue
                        signed = sign(self._secret, message_id, body, timestamp=int(time.time()))
                        answer = client.post(
                            self._endpoint,
                            content=body,
                            headers={**signed, "content-type": headers["content_type"]},
                        )
                        ack_topic = self._topics.acks(self._institution)
                        for _ in range(2 if self.duplicate_acks else 1):
                            value, record_headers = self.signed(answer.content)
                            producer.send(ack_topic, key=r.key, value=value, headers=record_headers)
                        self.consumed += 1
                producer.flush()
                consumer.commit()
        except BaseException as exc:
            self._failure = exc
        finally:
            client.close()
            producer.close()
            consumer.close()
