"""The committed contracts in ``openapi/`` are what the code generates, and say what they must.

Building the OpenAPI document builds the app on an in-memory SQLite engine that is never
opened, and no Kafka producer (that is made when the app starts serving): no I/O here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from adapters.base import MemberProfile, UnsupportedEvent
from router.delivery import Parcel
from router.registry import outbound_adapters
from router.relay import KafkaChannel
from router.signing import SigningKey
from router.topics import Topics
from router.vault import KeySet, new_key
from schemas import MemberEnrolled
from schemas.events import EVENT_CLASSES
from schemas.examples import load_examples
from services.api.auth import TOKEN_PATH, Scope
from services.api.problems import PROBLEM_JSON
from services.contracts import (
    ASYNCAPI_FILE,
    OPENAPI_FILE,
    asyncapi_document,
    export_contracts,
    openapi_document,
    render_asyncapi,
    render_openapi,
)

pytestmark = pytest.mark.unit

COMMITTED = Path(__file__).resolve().parents[2] / "openapi"
REGENERATE = "run `jokko contracts export` and commit openapi/"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    return openapi_document()


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    return asyncapi_document()


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if method in METHODS
    ]


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_committed_openapi_is_the_apps(openapi: dict[str, Any]) -> None:
    committed = (COMMITTED / OPENAPI_FILE).read_text(encoding="utf-8")
    assert committed == render_openapi(openapi), f"openapi.json drifted from the app: {REGENERATE}"


def test_committed_asyncapi_is_generated(asyncapi: dict[str, Any]) -> None:
    committed = (COMMITTED / ASYNCAPI_FILE).read_text(encoding="utf-8")
    assert committed == render_asyncapi(asyncapi), f"asyncapi.yaml drifted: {REGENERATE}"
    assert yaml.safe_load(committed) == asyncapi


def test_export_writes_both_files_deterministically(tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in export_contracts(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in export_contracts(tmp_path / "b")}
    assert sorted(first) == [ASYNCAPI_FILE, OPENAPI_FILE]
    assert first == second
    assert all(text.endswith(b"\n") and not text.endswith(b"\n\n") for text in first.values())


def test_openapi_is_self_contained(openapi: dict[str, Any]) -> None:
    refs = _refs(openapi)
    assert refs
    assert all(r.startswith("#/") for r in refs), "no reference leaves the document"
    for ref in refs:
        _resolve(openapi, ref)


def test_openapi_declares_oauth2_client_credentials(openapi: dict[str, Any]) -> None:
    schemes = openapi["components"]["securitySchemes"]
    [(name, scheme)] = schemes.items()
    assert scheme["type"] == "oauth2"
    flow = scheme["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == TOKEN_PATH == "/v1/oauth/token"
    assert set(flow["scopes"]) == {s.value for s in Scope}
    public = {
        "/healthz",
        "/readyz",
        "/metrics",
        "/.well-known/jwks.json",
        "/.well-known/jokko-message-keys.json",  # Jokko's message-signing JWKS
        TOKEN_PATH,
    }
    for method, path, op in _operations(openapi):
        if path in public:
            assert "security" not in op, f"{method} {path} is public"
            continue
        [requirement] = op["security"]
        assert set(requirement) == {name}, f"{method} {path}"
        assert set(requirement[name]) <= set(flow["scopes"]), f"{method} {path}"


def test_openapi_errors_are_problem_json(openapi: dict[str, Any]) -> None:
    problem = openapi["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["properties"])
    secured = [(m, p, op) for m, p, op in _operations(openapi) if "security" in op]
    assert secured
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for method, path, op in secured:
        for status in ("401", "403", "429"):
            content = op["responses"][status]["content"]
            assert content == {PROBLEM_JSON: {"schema": problem_ref}}, f"{method} {path} {status}"
        # a batch where no item was accepted answers 422 with its per-item results
        content = op["responses"]["422"]["content"]
        assert content[PROBLEM_JSON] == {"schema": problem_ref}, f"{method} {path}"
    for method, path, op in _operations(openapi):
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")) and path != TOKEN_PATH:
                assert PROBLEM_JSON in response.get("content", {}), f"{method} {path} {status}"


def test_openapi_event_bodies_are_the_canonical_schema(openapi: dict[str, Any]) -> None:
    body = openapi["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    union = _resolve(openapi, body["schema"]["$ref"])
    types = {
        _resolve(openapi, m["$ref"])["properties"]["event_type"]["const"] for m in union["oneOf"]
    }
    assert types == set(EVENT_CLASSES)
    assert union["discriminator"]["propertyName"] == "event_type"


def test_asyncapi_has_a_channel_per_topic(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    addresses = sorted(c["address"] for c in asyncapi["channels"].values())
    assert addresses == sorted(spec.name for spec in Topics().specs())
    assert asyncapi["servers"]["kafka"]["protocol"] == "kafka"


def test_asyncapi_operations_and_references_resolve(asyncapi: dict[str, Any]) -> None:
    for ref in _refs(asyncapi):
        assert ref.startswith("#/"), ref
        _resolve(asyncapi, ref)
    used = {
        op["channel"]["$ref"].removeprefix("#/channels/") for op in asyncapi["operations"].values()
    }
    assert used == set(asyncapi["channels"]), "every topic is sent or received by Jokko"
    for name, op in asyncapi["operations"].items():
        assert op["action"] in ("send", "receive"), name
        channel = op["channel"]["$ref"]
        assert all(m["$ref"].startswith(f"{channel}/messages/") for m in op["messages"]), name


def test_asyncapi_canonical_payload_covers_every_event_type(asyncapi: dict[str, Any]) -> None:
    [canonical] = [c for c in asyncapi["channels"].values() if c["address"] == Topics().canonical]
    [message] = [_resolve(asyncapi, m["$ref"]) for m in canonical["messages"].values()]
    assert message["contentType"] == "application/json"
    payload = _resolve(asyncapi, message["payload"]["$ref"])
    members = [_resolve(asyncapi, m["$ref"]) for m in payload["oneOf"]]
    assert sorted(m["properties"]["event_type"]["const"] for m in members) == sorted(EVENT_CLASSES)
    key = message["bindings"]["kafka"]["key"]
    assert {k["pattern"] for k in key["anyOf"]} == {
        m["properties"]["member_id"]["pattern"] for m in members
    }


def test_asyncapi_outbound_messages_carry_the_relay_headers(asyncapi: dict[str, Any]) -> None:
    expected_types = {
        "cmu": "application/fhir+json",
        "css": "application/xml",
        "ipres": "text/plain",
    }
    for inst, content_type in expected_types.items():
        [channel] = [
            c for c in asyncapi["channels"].values() if c["address"] == Topics().outbound(inst)
        ]
        [message] = [_resolve(asyncapi, m["$ref"]) for m in channel["messages"].values()]
        assert message["contentType"].split(";")[0] == content_type
        assert set(message["headers"]["properties"]) == {
            "message_id",
            "event_id",
            "kind",
            "content_type",
            "member_seq",
            "format_version",
            "sealed",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "webhook-key-id",
        }
        assert "sealed" not in message["headers"]["required"]  # absent: no topic key
        assert "webhook-signature" in message["headers"]["required"]  # always signed
    [dlq] = [c for c in asyncapi["channels"].values() if c["address"] == Topics().dead_letters]
    [dead] = [_resolve(asyncapi, m["$ref"]) for m in dlq["messages"].values()]
    assert set(dead["headers"]["properties"]) == {
        "dead_letter_id",
        "reason",
        "source",
        "event_id",
        "message_id",
        "institution",
        "attempts",
    }


SIGNING_KEY = SigningKey.from_seed("message-test", bytes(32))


class _RecordingProducer:
    """Stands for KafkaProducer in ``KafkaChannel``: keeps what would have been sent."""

    config: ClassVar[dict[str, int]] = {"delivery_timeout_ms": 120_000}

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, list[tuple[str, bytes]]]] = []

    def send(
        self, topic: str, *, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> _RecordingProducer:
        self.sent.append((topic, key, headers))
        return self

    def get(self, timeout: float) -> None:
        return None


def test_asyncapi_outbound_headers_are_what_the_relay_sends(asyncapi: dict[str, Any]) -> None:
    """Every example event through the real adapters and ``KafkaChannel``: each record's
    headers and key conform to its topic's message in the document."""
    events = load_examples()
    profile = MemberProfile.from_enrolment(next(e for e in events if isinstance(e, MemberEnrolled)))
    producer = _RecordingProducer()
    topics = Topics()
    for inst, adapter in outbound_adapters().items():
        topic_key = KeySet(f"topic-{inst.value}", {f"topic-{inst.value}": new_key()})
        channel = KafkaChannel(producer, topics, inst, key=topic_key, signing_key=SIGNING_KEY)
        for event in events:
            try:
                messages = adapter.translate(event, profile)
            except UnsupportedEvent:
                continue
            channel.deliver(
                [
                    Parcel(
                        m.message_id,
                        str(m.event_id),
                        m.member_id,
                        i + 1,
                        m.kind,
                        m.content_type,
                        m.format_version,
                        m.body,
                    )
                    for i, m in enumerate(messages)
                ]
            )
    by_address = {
        c["address"]: _resolve(asyncapi, next(iter(c["messages"].values()))["$ref"])
        for c in asyncapi["channels"].values()
    }
    assert {topic for topic, _, _ in producer.sent} == {
        topics.outbound(i) for i in outbound_adapters()
    }
    for topic, key, headers in producer.sent:
        message = by_address[topic]
        schema = message["headers"]
        values = {name: raw.decode() for name, raw in headers}
        assert sorted(values) == sorted(schema["properties"])
        assert sorted(schema["required"]) == sorted(set(values) - {"sealed"})
        assert values["sealed"] == f"topic-{topic.split('.')[-2]}"
        props = schema["properties"]
        assert values["kind"] in props["kind"]["enum"], (topic, values["kind"])
        assert values["content_type"] == props["content_type"]["const"] == message["contentType"]
        assert values["format_version"] == props["format_version"]["const"]
        assert re.fullmatch(props["member_seq"]["pattern"], values["member_seq"])
        assert key is not None
        patterns = [k["pattern"] for k in message["bindings"]["kafka"]["key"]["anyOf"]]
        assert any(re.fullmatch(p, key.decode()) for p in patterns), key
