from __future__ import annotations

import pytest

from services.settings import InvalidSettings, Settings, load_settings

pytestmark = pytest.mark.unit


def test_defaults_are_the_embedded_demo_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("JOKKO_KAFKA_BOOTSTRAP", "JOKKO_DATABASE_URL", "JOKKO_CANONICAL_TOPIC"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.database_url.startswith("sqlite:///")
    assert s.canonical_topic == "jokko.events.v1"


def test_environment_is_read_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOKKO_KAFKA_BOOTSTRAP", "127.0.0.1:9092, kafka-2:9093")
    monkeypatch.setenv("JOKKO_DATABASE_URL", "postgresql+psycopg://jokko@db:5432/jokko")
    s = load_settings()
    assert s.kafka_bootstrap == "127.0.0.1:9092,kafka-2:9093"
    assert s.database_url == "postgresql+psycopg://jokko@db:5432/jokko"


@pytest.mark.parametrize(
    ("field", "value", "env_name"),
    [
        ("kafka_bootstrap", "localhost", "JOKKO_KAFKA_BOOTSTRAP"),
        ("kafka_bootstrap", "a:1,,b:2", "JOKKO_KAFKA_BOOTSTRAP"),
        ("database_url", "mysql://x@y/z", "JOKKO_DATABASE_URL"),
        ("database_url", "not a url", "JOKKO_DATABASE_URL"),
        ("canonical_topic", "bad topic!", "JOKKO_CANONICAL_TOPIC"),
        ("canonical_partitions", 0, "JOKKO_CANONICAL_PARTITIONS"),
    ],
)
def test_bad_setting_is_refused_with_its_name(field: str, value: object, env_name: str) -> None:
    with pytest.raises(InvalidSettings) as info:
        load_settings(**{field: value})
    assert env_name in str(info.value)


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(InvalidSettings, match="JOKKO_KAFKA_BOOTSTRAPS"):
        load_settings(kafka_bootstraps="127.0.0.1:9092")


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValueError, match="frozen"):
        s.canonical_topic = "other"  # type: ignore[misc]
