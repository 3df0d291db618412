"""One typed settings class, read from ``JOKKO_*`` environment variables and validated at start.

A bad configuration is refused when the process starts, with the field that is wrong,
not at the first message an hour later.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOKKO_", extra="forbid", frozen=True)

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


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings; overrides win over the environment."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = [
            f"JOKKO_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        ]
        raise InvalidSettings("invalid settings:\n  " + "\n  ".join(lines)) from None
