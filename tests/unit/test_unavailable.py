"""Which failures of a dependency the API answers 503, and which remain errors."""

from __future__ import annotations

import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from router.canonical import OutcomeUnknown
from router.errors import BrokerUnavailable, StoreUnavailable, unavailable
from services.api.idempotency import KeyPending

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("exc", "dependency"),
    [
        (OperationalError("select 1", {}, ConnectionRefusedError()), "database"),
        (PoolTimeout("QueuePool limit reached"), "database"),
        (StoreUnavailable("down"), "database"),
        (KafkaTimeoutError("no ack"), "kafka"),
        (KafkaConnectionError("refused"), "kafka"),
        (BrokerUnavailable("down"), "kafka"),
        (KeyPending("pending"), "kafka"),
    ],
)
def test_unavailable_dependencies(exc: Exception, dependency: str) -> None:
    found = unavailable(exc)
    assert found is not None
    assert found.dependency == dependency


@pytest.mark.parametrize(
    "exc",
    [
        IntegrityError("insert", {}, ValueError("duplicate key")),
        ProgrammingError("selec 1", {}, ValueError("syntax error")),
        ValueError("a bug"),
    ],
)
def test_other_errors_are_not_unavailability(exc: Exception) -> None:
    assert unavailable(exc) is None


def test_an_unknown_outcome_tells_the_client_to_resend_under_its_key() -> None:
    assert OutcomeUnknown.detail is not None
    assert "Idempotency-Key" in OutcomeUnknown.detail
    assert issubclass(OutcomeUnknown, BrokerUnavailable)
