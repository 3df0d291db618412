"""The API's rate-limit settings: defaults that leave the demo and the bench unthrottled, and
a wrong value refused at start with its variable's name."""

from __future__ import annotations

import pytest

from services.settings import InvalidSettings, load_settings

pytestmark = pytest.mark.unit


def test_defaults_leave_room_for_the_bench_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOKKO_API_RATE_PER_S", raising=False)
    monkeypatch.delenv("JOKKO_API_RATE_BURST", raising=False)
    s = load_settings()
    assert s.api_rate_per_s >= 300, "bench.api offers 300 single-event POSTs a second"
    assert s.api_rate_burst >= s.api_rate_per_s


def test_rate_limit_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOKKO_API_RATE_PER_S", "2.5")
    monkeypatch.setenv("JOKKO_API_RATE_BURST", "10")
    s = load_settings()
    assert (s.api_rate_per_s, s.api_rate_burst) == (2.5, 10)


@pytest.mark.parametrize(
    ("field", "value", "env_name"),
    [
        ("api_rate_per_s", 0, "JOKKO_API_RATE_PER_S"),
        ("api_rate_per_s", -1, "JOKKO_API_RATE_PER_S"),
        ("api_rate_burst", 0, "JOKKO_API_RATE_BURST"),
    ],
)
def test_a_rate_that_cannot_work_is_refused(field: str, value: object, env_name: str) -> None:
    with pytest.raises(InvalidSettings) as info:
        load_settings(**{field: value})
    assert env_name in str(info.value)
