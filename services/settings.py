"""One typed settings class, read from ``JOKKO_*`` environment variables and validated at start.

A bad configuration is refused when the process starts, with the field that is wrong,
not at the first message an hour later.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from router.channels import tls_context
from router.processing import DuplicatePolicy
from router.signing import Scheme
from schemas.errors import JokkoError

_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


def _bootstrap_servers(value: str) -> str:
    servers = [s.strip() for s in value.split(",")]
    bad = [s for s in servers if not _HOST_PORT.match(s)]
    if not servers or bad:
        raise ValueError(f"expected host:port[,host:port...], got {value!r}")
    return ",".join(servers)


def _database_url(value: str) -> str:
    try:
        backend = make_url(value).get_backend_name()
    except ArgumentError as exc:
        raise ValueError(f"not a database URL: {exc}") from None
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database {backend!r}: use sqlite or postgresql")
    return value


class InvalidSettings(JokkoError):
    """The configuration cannot start Jokko; the message names each wrong setting."""


class DeliveryMode(StrEnum):
    KAFKA = "kafka"
    """The institution consumes jokko.out.<inst>.v1 and answers on jokko.acks.<inst>.v1."""
    HTTP = "http"
    """Jokko POSTs each message, signed; the answer is the acknowledgement."""
    FILE = "file"
    """Declaration files dropped in ``outbox_dir``; ack files picked up from ``ack_dir``."""


class PartnerSettings(BaseModel):
    """How one institution is reached (``JOKKO_CSS__MODE=http``, ``JOKKO_CSS__URL=...``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: DeliveryMode = DeliveryMode.KAFKA
    url: HttpUrl | None = None
    signature: Scheme = Scheme.ED25519
    """How pushes are signed: ``ed25519`` (Jokko's message key, verifiable with its JWKS),
    ``hmac`` (the shared ``secret``, for a partner that asks for it) or ``both``."""
    secret: SecretStr | None = None
    """Shared HMAC key for signing pushes (Standard Webhooks ``v1``), at least 32 bytes; only
    with ``signature`` hmac or both."""
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    concurrency: Annotated[int, Field(ge=1, le=256)] = 8
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 1
    """Messages per HTTP request, in the institution's batch envelope (CMU and CSS FORMAT.md);
    1 sends each message on its own, for a partner that does not read batches."""
    outbox_dir: Path | None = None
    ack_dir: Path | None = None
    ca_file: Path | None = None
    """PEM bundle of the CAs that sign the institution's server certificate (mode http over
    ``https://``); without it, the system's trust store."""
    client_cert_file: Path | None = None
    """Jokko's client certificate for this institution, PEM (intermediates after it): mutual
    TLS. Files on disk, mounted as secrets: never in the database. Only the relay reads them
    (``services.bootstrap.partner_tls``, at its start): the other processes need not see them."""
    client_key_file: Path | None = None
    """The private key of ``client_cert_file``, PEM, unencrypted (readable by Jokko only)."""
    crl_file: Path | None = None
    """The revocation list of the institution's CA (PEM): a server certificate it names is
    refused. Replace the file and restart the relay to revoke one."""
    allow_plain_http: bool = False
    """Let mode http use an ``http://`` URL, to a loopback address only (a test peer on this
    machine). Off, as production leaves it: personal data never leaves in clear by mistake."""
    ack_jwks_file: Path | None = None
    """The institution's registered public keys (a JWKS document, OKP/Ed25519 keys by
    ``kid``): its signed answers are verified against them and kept as receipts. Replace the
    file (old and new keys in it while the institution rotates) and restart the relay."""
    require_signed_acks: bool = False
    """Refuse an answer that carries no valid signature (never applied, retried); off, an
    unsigned answer is applied as before, and a signed one must still be valid. The same for
    every way acks come back: HTTP answers, the API, ack topic records, ack files."""
    ack_signature_grace_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    """Mode file with ``ack_jwks_file``: how long an ack file waits for its ``.sig`` (from
    its modification time) before it is judged unsigned (refused when signatures are
    required, applied without a receipt otherwise)."""
    topic_key_file: Path | None = None
    """Mode kafka: the key file (``jokko keys topic INST``) sealing this institution's topic,
    held by Jokko and that institution only. Without one the relay does not start, unless
    ``allow_clear_topic``."""
    allow_clear_topic: bool = False
    """Mode kafka without ``topic_key_file``: let this institution's messages go on its topic
    in clear (a test broker on this machine). Off, as production leaves it: the relay refuses
    to start rather than publish personal data in clear by mistake."""

    @model_validator(mode="after")
    def _complete_for_its_mode(self) -> PartnerSettings:
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("client_cert_file and client_key_file go together")
        if self.mode == DeliveryMode.HTTP:
            if self.url is None:
                raise ValueError("mode http needs url")
            if self.signature is not Scheme.ED25519 and (
                self.secret is None or len(self.secret.get_secret_value()) < 32
            ):
                raise ValueError(
                    f"signature {self.signature} needs a secret of at least 32 characters"
                )
            self._transport_is_safe(self.url)
        if self.require_signed_acks and self.ack_jwks_file is None:
            raise ValueError("require_signed_acks needs ack_jwks_file (the institution's keys)")
        if self.mode == DeliveryMode.FILE and (self.outbox_dir is None or self.ack_dir is None):
            raise ValueError("mode file needs outbox_dir and ack_dir")
        return self

    def _transport_is_safe(self, url: HttpUrl) -> None:
        """https, or plain http to this machine when allowed."""
        if url.scheme == "https":
            return
        if not self.allow_plain_http:
            raise ValueError(
                "mode http pushes personal data: url must be https:// (allow_plain_http "
                "lets a test peer on a loopback address use http://)"
            )
        if not _is_loopback(url.host or ""):
            raise ValueError(f"allow_plain_http is for loopback peers only, not {url.host}")
        if any(f is not None for f in (self.ca_file, self.client_cert_file, self.crl_file)):
            raise ValueError("ca_file, client_cert_file and crl_file need an https:// url")

    def tls_context(self) -> ssl.SSLContext:
        """The client side of TLS to this institution (``router.channels.tls_context``);
        ``OSError`` or ``ssl.SSLError`` when its files do not load."""
        return tls_context(self.ca_file, self.client_cert_file, self.client_key_file, self.crl_file)

    def http_target(self) -> tuple[str, bytes | None]:
        """The URL, and the HMAC secret when the partner's ``signature`` asks for one."""
        if self.url is None:
            raise InvalidSettings("an http partner needs url")
        if self.signature is Scheme.ED25519:
            return str(self.url), None
        if self.secret is None:
            raise InvalidSettings(f"signature {self.signature} needs a secret")
        return str(self.url), self.secret.get_secret_value().encode()

    def file_dirs(self) -> tuple[Path, Path]:
        if self.outbox_dir is None or self.ack_dir is None:
            raise InvalidSettings("a file partner needs outbox_dir and ack_dir")
        return self.outbox_dir, self.ack_dir


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="JOKKO_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    kafka_bootstrap: Annotated[str, AfterValidator(_bootstrap_servers)] = "127.0.0.1:9092"
    database_url: Annotated[str, AfterValidator(_database_url)] = "sqlite:///.jokko/jokko.db"
    canonical_topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9._\-]{1,249}$")] = "jokko.events.v1"
    canonical_partitions: Annotated[int, Field(ge=1, le=1000)] = 6
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9._\-]{0,64}$")] = ""
    router_group: Annotated[str, Field(min_length=1, max_length=128)] = "jokko-router"
    router_instance_id: Annotated[str | None, Field(min_length=1, max_length=128)] = None
    """Static group membership (e.g. the pod name): a restarted router resumes at once."""
    relay_batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    router_batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    """Records polled, and applied in one transaction, at a time."""
    delivery_max_attempts: Annotated[int, Field(ge=1, le=1000)] = 12
    """Tries per message and institution before it becomes a dead letter."""
    delivery_backoff_initial_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    delivery_backoff_max_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    delivery_breaker_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    """Consecutive whole-batch failures that open an institution's circuit."""
    delivery_breaker_reset_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """How long an open circuit waits before one message probes the institution."""
    api_host: Annotated[str, Field(min_length=1, max_length=255)] = "127.0.0.1"
    api_port: Annotated[int, Field(ge=1, le=65535)] = 8000
    api_tls_cert_file: Path | None = None
    """Serve the API over HTTPS with this certificate (PEM, chain after it); plain HTTP
    without it (behind a reverse proxy that terminates TLS, docs/operations.md)."""
    api_tls_key_file: Path | None = None
    """The private key of ``api_tls_cert_file``, PEM."""
    api_tls_client_ca_file: Path | None = None
    """Require a client certificate signed by one of these CAs (PEM bundle) from every
    client of the API: mutual TLS for the institutions' systems."""
    api_rate_per_s: Annotated[float, Field(gt=0, le=1_000_000)] = 500.0
    """Requests a second per client, on average (token bucket, per API process)."""
    api_rate_burst: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    """Requests a client may send at once above the rate (a month-end batch upload)."""
    database_timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    """Longest wait for a pooled PostgreSQL connection (pool check-out), and the connect
    timeout (libpq rounds it up to whole seconds, at least 2): past it, the API answers 503."""
    api_broker_timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    """Longest a submission waits for the broker (send, flush and the acks=all answer) before
    the API answers 503."""
    api_broker_delivery_timeout_s: Annotated[float, Field(ge=2, le=600)] = 30.0
    """How long the API's producer keeps retrying an event it could not get acknowledged in
    time (its outcome is unknown meanwhile); an Idempotency-Key left pending longer than this
    (plus a margin) by a vanished process is taken over by its re-send."""
    api_retry_after_s: Annotated[int, Field(ge=1, le=3600)] = 2
    """``Retry-After`` of a 503 (a dependency is down): when a client should try again."""
    keyring_file: Path = Path(".jokko/keyring.json")
    """Data and token keys (services/keyring.py): a file outside the database, 0600."""
    keyring_autocreate: bool = True
    """Make a keyring where there is none (a first start on a laptop). Production sets this
    to false and mounts its keyring: a missing file is then an error, not a fresh key."""
    duplicate_member_policy: DuplicatePolicy = DuplicatePolicy.FLAG
    """What an enrolment whose NIN is already enrolled under another member id does."""
    erasure_retention_days: Annotated[int, Field(ge=0, le=36_500)] = 3650
    """A member's personal data may be erased this long after their last event (accounting
    records are kept 10 years: OHADA Uniform Act on accounting, art. 24)."""
    cmu: PartnerSettings = PartnerSettings()
    css: PartnerSettings = PartnerSettings()
    ipres: PartnerSettings = PartnerSettings()

    @model_validator(mode="after")
    def _api_tls_complete(self) -> Settings:
        if (self.api_tls_cert_file is None) != (self.api_tls_key_file is None):
            raise ValueError("JOKKO_API_TLS_CERT_FILE and JOKKO_API_TLS_KEY_FILE go together")
        if self.api_tls_client_ca_file is not None and self.api_tls_cert_file is None:
            raise ValueError("JOKKO_API_TLS_CLIENT_CA_FILE needs JOKKO_API_TLS_CERT_FILE")
        return self


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings; overrides win over the environment."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = [
            (f"JOKKO_{'_'.join(str(p) for p in err['loc']).upper()}: " if err["loc"] else "")
            + err["msg"]
            for err in exc.errors(include_input=False, include_url=False)
        ]
        raise InvalidSettings("invalid settings:\n  " + "\n  ".join(lines)) from None
