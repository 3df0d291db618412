"""The pure parts of API security: visibility, secret hashing, the per-client rate limiter."""

from __future__ import annotations

import threading

import pytest

from adapters.base import Institution
from services.api.auth import (
    INSTITUTION_SCOPES,
    AuthError,
    Principal,
    RateLimiter,
    Scope,
    hash_secret,
    secret_matches,
)

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_an_institution_sees_only_its_own_records() -> None:
    css = Principal("css-prod", frozenset({Scope.DELIVERIES_READ.value}), Institution.CSS)
    assert css.may_see(Institution.CSS)
    assert css.may_see("css")
    assert not css.may_see(Institution.CMU)
    assert not css.may_see("ipres")
    assert not css.may_see("no-such-institution")


def test_an_operator_sees_every_institution() -> None:
    ops = Principal("ops", frozenset({Scope.DELIVERIES_READ.value}), None)
    assert all(ops.may_see(i) for i in Institution)
    assert ops.has(Scope.DELIVERIES_READ)
    assert not ops.has(Scope.DEAD_LETTERS)


def test_institution_scopes_never_reach_past_the_institution() -> None:
    assert frozenset({"deliveries:read", "acks:write", "extracts:write"}) == INSTITUTION_SCOPES
    assert Scope.DEAD_LETTERS.value not in INSTITUTION_SCOPES


def test_auth_error_carries_status_code_and_public_message() -> None:
    exc = AuthError(401, "invalid_token", "the access token is invalid or expired")
    assert (exc.status, exc.code, str(exc)) == (401, "invalid_token", exc.message)


def test_secret_hash_is_salted_and_does_not_contain_the_secret() -> None:
    secret = "s3cret-value-of-forty-three-characters-long"
    first, second = hash_secret(secret), hash_secret(secret)
    assert first != second  # per-secret salt
    assert secret not in first
    assert first.startswith("scrypt$")
    assert secret_matches(secret, first)
    assert secret_matches(secret, second)
    assert not secret_matches(secret + "x", first)
    assert not secret_matches("", first)


@pytest.mark.parametrize(
    "stored", ["", "plain-text", "scrypt$1$2$3", "bcrypt$16384$8$1$AAAA$AAAA", "scrypt$x$8$1$A$A"]
)
def test_a_malformed_stored_hash_never_matches(stored: str) -> None:
    assert not secret_matches("anything", stored)


def test_rate_limiter_allows_a_burst_then_refuses_with_a_retry_delay() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("a")
    assert wait == pytest.approx(0.5)
    clock.t += 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0


def test_rate_limiter_refills_up_to_the_burst_only() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    limiter.acquire("a")
    limiter.acquire("a")
    clock.t += 3600
    assert [limiter.acquire("a") for _ in range(3)][2] > 0


def test_rate_limits_are_per_client() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=Clock())
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    assert limiter.acquire("b") == 0.0


def test_rate_limiter_is_thread_safe() -> None:
    limiter = RateLimiter(rate=0.001, burst=100, clock=Clock())
    allowed: list[float] = []
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(50):
            wait = limiter.acquire("a")
            with lock:
                allowed.append(wait)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for w in allowed if w == 0.0) == 100


def test_rate_limiter_memory_stays_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock, max_clients=10)
    for i in range(1000):
        limiter.acquire(f"client-{i}")
    assert len(limiter._buckets) <= 10
    clock.t += 10
    limiter.acquire("late")
    assert len(limiter._buckets) <= 10


def test_rate_limiter_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate=0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(rate=1, burst=0)
