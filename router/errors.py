"""Errors raised by the router's I/O; each says what the caller can do about it."""

from __future__ import annotations

from schemas.errors import JokkoError


class RetryableError(JokkoError):
    """A transient failure: the same work may succeed later (back off, then retry)."""


class BrokerUnavailable(RetryableError):
    """The Kafka broker did not answer."""
