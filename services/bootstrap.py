"""The composition root: the one place that builds real engines, clients and workers.

Tests build the same graph with their own settings (a test schema, a topic prefix), so what
they exercise is what production runs.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import ssl
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from kafka import KafkaProducer
from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url

from adapters.base import Institution, OutboundAdapter
from router.acks import AckConsumer, AckFilePicker
from router.broker import ensure_topics, group_consumer, idempotent_producer, wait_until_ready
from router.channels import EncodeBatch, FileChannel, HttpChannel
from router.db import make_engine
from router.delivery import Channel, RetryPolicy
from router.migrate import upgrade
from router.processing import Processor
from router.registry import outbound_adapters
from router.relay import AckIntake, Relay
from router.signing import JwksVerifier, MessageKeys, Scheme, keys_of
from router.store import KeyCheckRow, utcnow
from router.topics import Topics
from router.vault import KeySet, SealError, Vault
from router.worker import RouterWorker
from services import keyring
from services.settings import DeliveryMode, InvalidSettings, PartnerSettings, Settings

log = logging.getLogger(__name__)


@dataclass
class Jokko:
    settings: Settings
    engine: Engine
    topics: Topics
    adapters: dict[Institution, OutboundAdapter]
    vault: Vault
    message_keys: MessageKeys
    """Jokko's Ed25519 keys signing pushes and files (the current one signs; all published)."""

    def processor(self) -> Processor:
        return Processor(
            self.engine,
            self.adapters,
            self.vault,
            duplicate_policy=self.settings.duplicate_member_policy,
        )

    def router(self) -> RouterWorker:
        consumer = group_consumer(
            self.settings.kafka_bootstrap,
            self.settings.router_group,
            [self.topics.canonical],
            client_id="jokko-router",
            instance_id=self.settings.router_instance_id,
            max_poll_records=self.settings.router_batch_size,
        )
        return RouterWorker(consumer, self.processor())

    def retry_policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(
            max_attempts=s.delivery_max_attempts,
            initial_s=s.delivery_backoff_initial_s,
            max_s=s.delivery_backoff_max_s,
            breaker_failures=s.delivery_breaker_failures,
            breaker_reset_s=s.delivery_breaker_reset_s,
        )

    def partner(self, institution: Institution) -> PartnerSettings:
        settings: PartnerSettings = getattr(self.settings, institution.value)
        return settings

    def channels(self) -> dict[Institution, Channel]:
        """The non-Kafka channels chosen in settings (Kafka is the relay's default)."""
        chosen: dict[Institution, Channel] = {}
        for inst in Institution:
            p = self.partner(inst)
            if p.mode == DeliveryMode.HTTP:
                url, secret = p.http_target()
                signing_key = None if p.signature is Scheme.HMAC else self.message_keys.current
                encode_batch: EncodeBatch | None = getattr(
                    self.adapters[inst], "encode_batch", None
                )
                if p.batch_size > 1 and encode_batch is None:
                    raise InvalidSettings(f"{inst} has no batch envelope: batch_size must be 1")
                chosen[inst] = HttpChannel(
                    inst,
                    self.adapters[inst],
                    url,
                    secret,
                    tls=partner_tls(inst, p) if url.startswith("https://") else None,
                    signing_key=signing_key,
                    timeout_s=p.timeout_s,
                    concurrency=p.concurrency,
                    batch_size=p.batch_size,
                    encode_batch=encode_batch,
                    receipts=receipt_verifier(inst, p),
                    require_signed_acks=p.require_signed_acks,
                    batch_part=getattr(self.adapters[inst], "batch_part", None),
                )
            elif p.mode == DeliveryMode.FILE:
                chosen[inst] = FileChannel(
                    p.file_dirs()[0], institution=inst, signing_key=self.message_keys.current
                )
        return chosen

    def ack_intake(self, producer: KafkaProducer) -> list[AckIntake]:
        """Where acknowledgements come back: the ack topic, or the ack file directory (HTTP
        answers are acks themselves); each checks the institution's signatures when it
        registered its keys."""
        intake: list[AckIntake] = []
        for inst in Institution:
            p = self.partner(inst)
            if p.mode == DeliveryMode.KAFKA:
                consumer = partial(
                    group_consumer,
                    self.settings.kafka_bootstrap,
                    f"{self.settings.router_group}-acks-{inst.value}",
                    [self.topics.acks(inst)],
                    client_id=f"jokko-acks-{inst.value}",
                )
                intake.append(
                    AckConsumer(
                        self.engine,
                        consumer,
                        inst,
                        self.adapters[inst],
                        producer=producer,
                        canonical_topic=self.topics.canonical,
                        vault=self.vault,
                        receipts=receipt_verifier(inst, p),
                        require_signed_acks=p.require_signed_acks,
                    )
                )
            elif p.mode == DeliveryMode.FILE:
                ack_dir = p.file_dirs()[1]
                intake.append(
                    AckFilePicker(
                        self.engine,
                        ack_dir,
                        inst,
                        self.adapters[inst],
                        receipts=receipt_verifier(inst, p),
                        require_signed_acks=p.require_signed_acks,
                        signature_grace_s=p.ack_signature_grace_s,
                        vault=self.vault,
                    )
                )
        return intake

    def relay(self, *, with_acks: bool = True) -> Relay:
        s = self.settings
        topic_keys = self.topic_keys()  # first: a missing key stops the relay before it connects
        producer = idempotent_producer(s.kafka_bootstrap, client_id="jokko-relay", max_block_s=10)
        return Relay(
            self.engine,
            producer,
            self.topics,
            batch_size=s.relay_batch_size,
            policy=self.retry_policy(),
            channels=self.channels(),
            intake=self.ack_intake(producer) if with_acks else (),
            vault=self.vault,
            topic_keys=topic_keys,
            signing_key=self.message_keys.current,
        )

    def topic_keys(self) -> dict[Institution, KeySet]:
        """The topic key of each institution that reads its Kafka topic. One without a key
        stops the relay at start, unless its ``allow_clear_topic`` says its topic may carry
        its messages in clear (which the log then says)."""
        keys: dict[Institution, KeySet] = {}
        for inst in Institution:
            p = self.partner(inst)
            if p.mode != DeliveryMode.KAFKA:
                continue
            if p.topic_key_file is None:
                if not p.allow_clear_topic:
                    name = f"JOKKO_{inst.value.upper()}__TOPIC_KEY_FILE"
                    raise InvalidSettings(
                        f"{name}: mode kafka publishes personal data on the institution's topic:"
                        " give its topic key (jokko keys topic), or set"
                        f" JOKKO_{inst.value.upper()}__ALLOW_CLEAR_TOPIC=true for a test broker"
                    )
                log.warning("%s: no topic_key_file, its topic carries its messages in clear", inst)
                continue
            keys[inst] = keyring.load_topic_key(p.topic_key_file)
        return keys


def receipt_verifier(institution: Institution, partner: PartnerSettings) -> JwksVerifier | None:
    """The verifier of an institution's signed answers, its registered JWKS loaded now: a
    missing or unreadable file stops the relay at start."""
    if partner.ack_jwks_file is None:
        return None
    name = f"JOKKO_{institution.value.upper()}__ACK_JWKS_FILE"
    try:
        jwks = json.loads(partner.ack_jwks_file.read_bytes())
        keys = keys_of(jwks)
    except (OSError, ValueError) as exc:
        raise InvalidSettings(f"{name}: the institution's keys do not load: {exc}") from None
    if not keys:
        raise InvalidSettings(f"{name}: no OKP/Ed25519 key in {partner.ack_jwks_file}")
    return JwksVerifier(jwks)


def partner_tls(institution: Institution, partner: PartnerSettings) -> ssl.SSLContext:
    """The TLS context to reach an institution, its files loaded now: a missing file, a PEM
    that does not parse or a key that is not the certificate's stops the relay at start."""
    try:
        return partner.tls_context()
    except (OSError, ssl.SSLError) as exc:
        prefix = f"JOKKO_{institution.value.upper()}__"
        names = ", ".join(
            prefix + f for f in ("CA_FILE", "CLIENT_CERT_FILE", "CLIENT_KEY_FILE", "CRL_FILE")
        )
        raise InvalidSettings(f"{names}: the TLS files do not load: {exc}") from None


def bootstrap(settings: Settings, *, migrate: bool = True, kafka: bool = True) -> Jokko:
    """Connect, bring the store to the current schema and make sure the topics exist."""
    vault = Vault(keyring.load(settings.keyring_file, create=settings.keyring_autocreate))
    message_keys = keyring.message_keys(settings.keyring_file, create=settings.keyring_autocreate)
    engine = make_engine(settings.database_url, **_pool(settings))
    if migrate:
        try:
            upgrade(engine)
            check_keyring(engine, vault, settings.keyring_file)
        except BaseException:
            engine.dispose()  # a refused start leaves no connection behind
            raise
    topics = Topics(
        canonical=settings.canonical_topic,
        prefix=settings.topic_prefix,
        partitions=settings.canonical_partitions,
    )
    if kafka:
        wait_until_ready(settings.kafka_bootstrap)
        ensure_topics(settings.kafka_bootstrap, topics.specs())
    return Jokko(settings, engine, topics, outbound_adapters(), vault, message_keys)


_PROOF = b"jokko keyring check"


def check_keyring(engine: Engine, vault: Vault, path: Path) -> None:
    """Refuse to start with a keyring that lacks a key the store has used (a process started
    with another keyring would write what the others cannot read), and record the current key."""
    with engine.begin() as conn:
        proofs = dict(conn.execute(select(KeyCheckRow.kid, KeyCheckRow.proof)).all())
        for kid, proof in proofs.items():
            try:
                if vault.open(proof, kid.encode()) != _PROOF:
                    raise SealError("wrong proof")
            except SealError:
                raise InvalidSettings(
                    f"JOKKO_KEYRING_FILE: the keyring at {path} cannot open what the store "
                    f"sealed under key {kid!r}: start with the keyring this store was made with"
                ) from None
        current = vault.keyring.data.current
        if current not in proofs:
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            conn.execute(
                insert(KeyCheckRow)
                .values(
                    kid=current, proof=vault.seal(_PROOF, current.encode()), created_at=utcnow()
                )
                .on_conflict_do_nothing(index_elements=["kid"])
            )


POOL_SIZE = 40
"""PostgreSQL connections kept open: as many as the API's threadpool has threads (anyio's
default 40), since every keyed ingest request takes one twice. With SQLAlchemy's default of
5 (+10 overflow) the overflow connections were closed on return and opened again per request
(a backend fork each): bench/api.py served 67 keyed single-event POSTs a second."""


def _pool(settings: Settings) -> dict[str, Any]:
    """PostgreSQL's pool, with a bounded wait for a connection: an unreachable database
    fails a request within ``database_timeout_s`` instead of hanging it."""
    if make_url(settings.database_url).get_backend_name() != "postgresql":
        return {}
    timeout = settings.database_timeout_s
    return {
        "pool_size": POOL_SIZE,
        "max_overflow": 0,
        "pool_timeout": timeout,
        "connect_args": {"connect_timeout": max(2, math.ceil(timeout))},
    }


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so workers finish their batch and close cleanly."""
    stop = threading.Event()

    def _handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop
