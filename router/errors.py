"""Errors raised by the router's I/O; each says what the caller can do about it."""

from __future__ import annotations

from kafka.errors import KafkaError
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from schemas.errors import JokkoError


class RetryableError(JokkoError):
    """A transient failure: the same work may succeed later (back off, then retry)."""

    dependency = "unknown"
    """What is unavailable, as ``/readyz`` and the API's metrics name it."""
    detail: str | None = None
    """What a client may be told, if more than that the dependency is unavailable."""


class BrokerUnavailable(RetryableError):
    """The Kafka broker did not answer."""

    dependency = "kafka"


class StoreUnavailable(RetryableError):
    """The database did not answer: refused, dropped, restarting, or no pooled connection
    could be checked out in time."""

    dependency = "database"


def unavailable(exc: BaseException) -> RetryableError | None:
    """The ``RetryableError`` a library exception stands for, or None if it is not one.

    A refused or dropped connection, a server shutting down or starting up (all DBAPI
    ``OperationalError``), a closed connection (``InterfaceError``), an invalidated one and
    a pool check-out that timed out mean the database is unavailable; any ``KafkaError``
    out of a client means the broker is. A programming error (bad SQL, a constraint) is
    not unavailability and stays what it is.
    """
    if isinstance(exc, RetryableError):
        return exc
    if isinstance(exc, KafkaError):
        return BrokerUnavailable(type(exc).__name__)
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout | DisconnectionError):
        return StoreUnavailable(type(exc).__name__)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return StoreUnavailable(type(exc).__name__)
    return None
