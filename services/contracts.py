"""Jokko's published contracts, committed in ``openapi/`` and checked for drift by the tests.

* ``openapi.json``: the REST API, exactly as the app serves it at ``/openapi.json``.
* ``asyncapi.yaml``: the Kafka topics (AsyncAPI 3.0.0): the canonical topic with the canonical
  event's JSON Schema, each institution's outbound and acknowledgement topics, dead letters.

``jokko contracts export`` regenerates both; building them connects to nothing (no broker, no
database: the app is built on an unopened in-memory SQLite engine and its Kafka producer is
only created when it starts serving).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from adapters import ipres
from adapters.base import Institution
from adapters.cmu import mapping as cmu_mapping
from adapters.css import _translate as css_translate
from adapters.css import _wire as css_wire
from adapters.ipres.records import KIND_OF_TYPE
from router.topics import Topics
from schemas.envelope import SCHEMA_VERSION
from schemas.events import EVENT_CLASSES
from services.api.app import API_VERSION, create_app
from services.api.openapi import CANONICAL_EVENT, canonical_event_schemas
from services.bootstrap import bootstrap
from services.settings import Settings, load_settings

OPENAPI_FILE = "openapi.json"
ASYNCAPI_FILE = "asyncapi.yaml"
ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING = "0.5.0"

_SCHEMAS = "#/components/schemas/"
_MESSAGES = "#/components/messages/"
_UUID = {"type": "string", "format": "uuid"}


def openapi_document() -> dict[str, Any]:
    """The app's OpenAPI document, built without Kafka or a real database."""
    jokko = bootstrap(load_settings(database_url="sqlite:///:memory:"), migrate=False, kafka=False)
    try:
        return create_app(jokko).openapi()
    finally:
        jokko.engine.dispose()


# --- AsyncAPI ---------------------------------------------------------------------------------


def _default(field: str) -> Any:
    """A setting's built-in default, whatever the environment says (the document is fixed)."""
    return Settings.model_fields[field].default


_OUTBOUND: dict[Institution, dict[str, Any]] = {
    Institution.CMU: {
        "content_type": cmu_mapping.CONTENT_TYPE,
        "kinds": [cmu_mapping.KIND],
        "format_version": cmu_mapping.FORMAT_VERSION,
        "payload": {
            "type": "object",
            "description": (
                "An HL7 FHIR R4B transaction Bundle of conditional creates, updates and "
                "patches keyed on business identifiers (adapters/cmu/FORMAT.md)."
            ),
            "required": ["resourceType", "type", "entry"],
            "properties": {
                "resourceType": {"const": "Bundle"},
                "type": {"const": "transaction"},
                "entry": {"type": "array", "items": {"type": "object"}},
            },
        },
    },
    Institution.CSS: {
        "content_type": css_wire.CONTENT_TYPE,
        "kinds": sorted(css_translate.ROOT_OF_KIND),
        "format_version": css_wire.FORMAT_VERSION,
        "payload": {
            "type": "string",
            "description": (
                f"An XML document in the namespace {css_wire.NAMESPACE}, valid against "
                "css-v1.xsd; its root element follows the kind: "
                + ", ".join(f"{k} → {r}" for k, r in sorted(css_translate.ROOT_OF_KIND.items()))
                + " (adapters/css/FORMAT.md)."
            ),
        },
    },
    Institution.IPRES: {
        "content_type": ipres.CONTENT_TYPE,
        "kinds": sorted(KIND_OF_TYPE.values()),
        "format_version": ipres.FORMAT_VERSION,
        "payload": {
            "type": "string",
            "description": (
                "One fixed-width record line of the nominative declaration: "
                + ", ".join(f"{t} = {k}" for t, k in sorted(KIND_OF_TYPE.items()))
                + " (adapters/ipres/FORMAT.md)."
            ),
        },
    },
}

_ACKS: dict[Institution, dict[str, Any]] = {
    Institution.CMU: {
        "content_type": cmu_mapping.CONTENT_TYPE,
        "payload": {
            "type": "object",
            "description": (
                "A FHIR transaction-response or batch-response Bundle, an OperationOutcome, "
                "or a ClaimResponse (whose decision flows back as claim.adjudicated)."
            ),
            "required": ["resourceType"],
            "properties": {
                "resourceType": {"enum": ["Bundle", "OperationOutcome", "ClaimResponse"]}
            },
        },
    },
    Institution.CSS: {
        "content_type": css_wire.CONTENT_TYPE,
        "payload": {
            "type": "string",
            "description": (
                f"An Acknowledgement XML document in the namespace {css_wire.NAMESPACE}."
            ),
        },
    },
    Institution.IPRES: {
        "content_type": ipres.CONTENT_TYPE,
        "payload": {
            "type": "string",
            "description": "An acknowledgement file: one line per declared record.",
        },
    },
}


def _member_key() -> dict[str, Any]:
    """The record key: the event's ``member_id``, whose pattern depends on the event type (a
    member's id, or an agreement number for provider events)."""
    schemas = canonical_event_schemas(_SCHEMAS)
    ids: list[dict[str, Any]] = []
    for member in schemas[CANONICAL_EVENT]["oneOf"]:
        member_id = schemas[member["$ref"].removeprefix(_SCHEMAS)]["properties"]["member_id"]
        shape = {"pattern": member_id["pattern"], "description": member_id["description"]}
        if shape not in ids:
            ids.append(shape)
    return {
        "type": "string",
        "description": "The event's member_id: one key's records are in one partition, in order.",
        "anyOf": ids,
    }


def _headers(
    properties: dict[str, dict[str, Any]], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    required = sorted(set(properties) - set(optional))
    return {"type": "object", "required": required, "properties": properties}


_ENVELOPE = (
    '"JK1" | key-id length (1 byte) | key id (ASCII) | nonce (12 bytes) | AES-256-GCM '
    "ciphertext | tag (16 bytes)"
)
_SEALED_HEADER = {
    "type": "string",
    "description": "The id of the key the value is sealed under; absent on a clear record.",
}


_RECORD_SIGNATURE: dict[str, dict[str, Any]] = {
    "webhook-id": {"type": "string", "description": "The message_id, as signed."},
    "webhook-timestamp": {
        "type": "string",
        "pattern": "^[0-9]+$",
        "description": "Unix seconds of signing, as signed.",
    },
    "webhook-signature": {
        "type": "string",
        "pattern": "^v1a,",
        "description": "v1a,<base64 Ed25519 signature>.",
    },
    "webhook-key-id": {"type": "string", "description": "The kid of the signing key in the JWKS."},
}


def _canonical_message() -> dict[str, Any]:
    return {
        "name": "CanonicalEvent",
        "title": f"Canonical event v{SCHEMA_VERSION}",
        "summary": "One fact recorded by the mutual; event_type selects the payload's schema.",
        "description": (
            "Sealed on the topic (router/envelope.py): the value is the canonical event's JSON "
            f"sealed under a key of Jokko's keyring, {_ENVELOPE}, with associated data "
            '"jokko.canonical:" + the event_id header; the payload below is what it opens to. '
            "A value not starting with JK1 is a clear record from before sealing. A sealed "
            "value that does not open (unknown key, altered bytes) is a dead letter, "
            "reason unsealable."
        ),
        "contentType": "application/json",
        "headers": _headers(
            {
                "event_id": {**_UUID, "description": "The event's id (idempotency key)."},
                "event_type": {"type": "string", "enum": sorted(EVENT_CLASSES)},
                "schema_version": {"type": "string", "const": str(SCHEMA_VERSION)},
                "sealed": _SEALED_HEADER,
            },
            optional=("sealed",),
        ),
        "payload": {"$ref": _SCHEMAS + CANONICAL_EVENT},
        "bindings": {"kafka": {"key": _member_key(), "bindingVersion": KAFKA_BINDING}},
    }


def _outbound_message(inst: Institution) -> dict[str, Any]:
    spec = _OUTBOUND[inst]
    return {
        "name": f"{inst.value}.outbound",
        "title": f"Message for {inst.value.upper()}",
        "summary": (
            f"One message in {inst.value.upper()}'s own format; a re-sent message keeps its "
            "message_id, so the consumer drops copies."
        ),
        "description": (
            "Sealed when the institution has a topic key (JOKKO_<INST>__TOPIC_KEY_FILE, held "
            f"by Jokko and that institution only): {_ENVELOPE}, with associated data "
            f'"jokko.out.{inst.value}:" + the message_id header; the payload below is what it '
            "opens to. Without a topic key, the message in clear. Signed by Jokko (Ed25519, "
            "verifiable with its JWKS alone): the webhook-* headers carry the v1a signature "
            'of "{webhook-id}.{webhook-timestamp}." + the value exactly as produced (sealed '
            "or not), as for an HTTP push (router/signing.py, verify_record)."
        ),
        "contentType": spec["content_type"],
        "headers": _headers(
            {
                "message_id": {**_UUID, "description": "Stable id (UUIDv5 of event and kind)."},
                "event_id": {**_UUID, "description": "The canonical event it translates."},
                "kind": {"type": "string", "enum": spec["kinds"]},
                "content_type": {"type": "string", "const": spec["content_type"]},
                "member_seq": {
                    "type": "string",
                    "pattern": "^[0-9]+$",
                    "description": "1, 2, 3... per member and institution: gaps mean a loss.",
                },
                "format_version": {"type": "string", "const": str(spec["format_version"])},
                "sealed": _SEALED_HEADER,
                **_RECORD_SIGNATURE,
            },
            optional=("sealed",),
        ),
        "payload": spec["payload"],
        "bindings": {"kafka": {"key": _member_key(), "bindingVersion": KAFKA_BINDING}},
    }


def _ack_message(inst: Institution) -> dict[str, Any]:
    spec = _ACKS[inst]
    return {
        "name": f"{inst.value}.ack",
        "title": f"Acknowledgement from {inst.value.upper()}",
        "summary": "Accepts or rejects messages Jokko sent, by their message_id.",
        "contentType": spec["content_type"],
        "payload": spec["payload"],
    }


def _dead_letter_message() -> dict[str, Any]:
    optional = "empty when not known"
    return {
        "name": "DeadLetter",
        "title": "Dead letter",
        "summary": (
            "Work Jokko could not do, exactly as it failed: a poison canonical record, or a "
            "message an institution never accepted. Operators replay or discard it in the API."
        ),
        "contentType": "application/octet-stream",
        "headers": _headers(
            {
                "dead_letter_id": {"type": "string", "pattern": "^[0-9]+$"},
                "reason": {
                    "type": "string",
                    "description": "Why, e.g. invalid_event, retries_exhausted.",
                },
                "source": {
                    "type": "string",
                    "description": "canonical, or delivery:<channel> (kafka, http, file).",
                },
                "event_id": {"type": "string", "description": f"The event's id; {optional}."},
                "message_id": {"type": "string", "description": f"The message id; {optional}."},
                "institution": {
                    "type": "string",
                    "enum": ["", *(i.value for i in Institution)],
                    "description": f"The institution; {optional}.",
                },
                "attempts": {"type": "string", "pattern": "^[0-9]+$"},
            }
        ),
        "payload": {
            "type": "string",
            "format": "binary",
            "description": (
                "The original record or message, sealed: a canonical record's original under "
                "a key of Jokko's keyring (associated data dead_letter), a message under its "
                "member's data key. Operators read it through the API."
            ),
        },
    }


def _channel(
    address: str, description: str, message: str, partitions: int | None
) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "address": address,
        "description": description,
        "messages": {message: {"$ref": _MESSAGES + message}},
    }
    if partitions is not None:
        channel["bindings"] = {"kafka": {"partitions": partitions, "bindingVersion": KAFKA_BINDING}}
    return channel


def _operation(
    action: str, channel: str, message: str, summary: str, group: str | None = None
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
    }
    if group is not None:
        operation["bindings"] = {
            "kafka": {
                "groupId": {"type": "string", "enum": [group]},
                "bindingVersion": KAFKA_BINDING,
            }
        }
    return operation


def asyncapi_document() -> dict[str, Any]:
    """The Kafka topics as an AsyncAPI 3.0.0 document; operations are Jokko's own (``send``:
    Jokko publishes, ``receive``: Jokko consumes). Names are the default ``Topics()``."""
    topics = Topics()
    group: str = _default("router_group")
    channels: dict[str, Any] = {
        "canonical": _channel(
            topics.canonical,
            "Canonical events, keyed by member_id (per-member order).",
            "CanonicalEvent",
            topics.partitions,
        ),
    }
    operations: dict[str, Any] = {
        "submitEvents": _operation(
            "send",
            "canonical",
            "CanonicalEvent",
            "The API and the MSNAS imports publish accepted events (acks=all); CMU's "
            "claim decisions come back here as claim.adjudicated.",
        ),
        "routeEvents": _operation(
            "receive",
            "canonical",
            "CanonicalEvent",
            "The router applies each event once (inbox), writing one outbox row per message "
            "and institution in the same transaction.",
            group,
        ),
    }
    messages: dict[str, Any] = {"CanonicalEvent": _canonical_message()}
    for inst in Institution:
        name = inst.value.capitalize()
        out, ack = f"out{name}", f"acks{name}"
        out_message, ack_message = f"{name}Message", f"{name}Ack"
        channels[out] = _channel(
            topics.outbound(inst),
            f"Messages for {inst.value.upper()} in its own format, keyed by member_id.",
            out_message,
            topics.partitions,
        )
        channels[ack] = _channel(
            topics.acks(inst),
            f"{inst.value.upper()}'s acknowledgements, in its own format.",
            ack_message,
            topics.partitions,
        )
        operations[f"deliverTo{name}"] = _operation(
            "send",
            out,
            out_message,
            f"The relay publishes the outbox for {inst.value.upper()} (acks=all, idempotent).",
        )
        operations[f"collectAcksFrom{name}"] = _operation(
            "receive",
            ack,
            ack_message,
            "Acks settle deliveries; unknown or contradicting ones are kept as anomalies.",
            f"{group}-acks-{inst.value}",
        )
        messages[out_message] = _outbound_message(inst)
        messages[ack_message] = _ack_message(inst)
    channels["deadLetters"] = _channel(
        topics.dead_letters,
        "A copy of every new dead letter, for whoever watches the stream.",
        "DeadLetter",
        topics.partitions,
    )
    operations["publishDeadLetters"] = _operation(
        "send", "deadLetters", "DeadLetter", "The relay copies new dead letters here."
    )
    messages["DeadLetter"] = _dead_letter_message()
    schemas = canonical_event_schemas(_SCHEMAS)
    # AsyncAPI's discriminator is a property name for allOf inheritance, not OpenAPI's
    # mapping: the oneOf stays unambiguous through each member's event_type const.
    schemas[CANONICAL_EVENT].pop("discriminator", None)

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Jokko streams",
            "version": API_VERSION,
            "description": (
                "Kafka topics of Jokko, the interoperability middleware of Senegal's RSPC: "
                "canonical events from the mutual (MSNAS), messages to CMU, CSS and IPRES in "
                "their own formats, their acknowledgements, and dead letters. Topic names "
                "take an optional prefix (JOKKO_TOPIC_PREFIX)."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": _default("kafka_bootstrap"),
                "protocol": "kafka",
                "description": "Example broker (JOKKO_KAFKA_BOOTSTRAP).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": schemas,
        },
    }


# --- files ------------------------------------------------------------------------------------


def render_openapi(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_asyncapi(doc: dict[str, Any]) -> str:
    text: str = yaml.safe_dump(
        doc, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
    )
    return text


def export_contracts(target: Path) -> list[Path]:
    """Write ``openapi.json`` and ``asyncapi.yaml`` into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        (OPENAPI_FILE, render_openapi(openapi_document())),
        (ASYNCAPI_FILE, render_asyncapi(asyncapi_document())),
    ):
        path = target / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
