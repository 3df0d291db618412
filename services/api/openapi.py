"""The OpenAPI document the app serves: FastAPI's, completed with what it cannot infer.

* The canonical event's JSON Schema (``schemas/json/canonical-event.v1.json``) becomes
  ``#/components/schemas/CanonicalEvent``, its ``$defs`` lifted beside it, and the routes'
  reference to it (``CANONICAL_EVENT_URI``) is made local: the document is self-contained, so
  clients and tools need nothing but it.
* Error responses declared as ``application/problem+json`` carry the ``Problem`` schema under
  that media type (FastAPI files a response's model under ``application/json`` only).
* Answers that come from the app's middleware and dependencies rather than from a route are
  declared where they can happen: 413 (body limit) on every operation with a body, 429 (the
  per-client rate limit) on every operation that needs a token, 400 (a body that is not UTF-8
  JSON) on every operation whose body FastAPI parses into a model.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI, routing

from schemas.export import UNION_NAME, json_schemas
from services.api.problems import PROBLEM_JSON, TITLES

CANONICAL_EVENT_URI = "https://jokko.sn/schemas/v1/event.json"
"""How routes refer to the canonical event in ``openapi_extra`` request bodies."""
CANONICAL_EVENT = "CanonicalEvent"
_JSON = "application/json"


def rewrite_refs(node: Any, old_prefix: str, new_prefix: str) -> Any:
    """A copy of ``node`` whose ``$ref`` values and discriminator mappings starting with
    ``old_prefix`` start with ``new_prefix`` instead."""
    if isinstance(node, list):
        return [rewrite_refs(v, old_prefix, new_prefix) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str) and value.startswith(old_prefix):
            out[key] = new_prefix + value[len(old_prefix) :]
        elif key == "mapping" and isinstance(value, dict):
            out[key] = {
                k: new_prefix + v[len(old_prefix) :]
                if isinstance(v, str) and v.startswith(old_prefix)
                else v
                for k, v in value.items()
            }
        else:
            out[key] = rewrite_refs(value, old_prefix, new_prefix)
    return out


def canonical_event_schemas(ref_prefix: str) -> dict[str, dict[str, Any]]:
    """The canonical event union and its definitions, by name, referring to each other as
    ``<ref_prefix><Name>`` (``#/components/schemas/`` in OpenAPI and AsyncAPI)."""
    union = copy.deepcopy(json_schemas()[UNION_NAME])
    union.pop("$schema", None)
    defs: dict[str, Any] = union.pop("$defs")
    lifted = {CANONICAL_EVENT: union, **defs}
    return {name: rewrite_refs(schema, "#/$defs/", ref_prefix) for name, schema in lifted.items()}


def _add_schemas(doc: dict[str, Any], schemas: dict[str, dict[str, Any]]) -> None:
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in schemas.items():
        if name in components and components[name] != schema:
            raise ValueError(f"two different OpenAPI component schemas are named {name}")
        components[name] = schema


def _problem_media_types(doc: dict[str, Any]) -> None:
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if PROBLEM_JSON in content and not content[PROBLEM_JSON].get("schema"):
                    plain = content.pop(_JSON, {})
                    content[PROBLEM_JSON] = {"schema": plain.get("schema", {})}


def _problem(status: int) -> dict[str, Any]:
    return {
        "description": TITLES[status],
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _app_wide_problems(doc: dict[str, Any]) -> None:
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                responses.setdefault("413", _problem(413))
            if operation.get("security"):
                responses.setdefault("429", _problem(429))


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` completed (see the module's docstring)."""
    doc = rewrite_refs(doc, CANONICAL_EVENT_URI, f"#/components/schemas/{CANONICAL_EVENT}")
    _add_schemas(doc, canonical_event_schemas("#/components/schemas/"))
    _problem_media_types(doc)
    _app_wide_problems(doc)
    return doc


def _parsed_bodies(app: FastAPI) -> set[tuple[str, str]]:
    """(path, method) of the operations whose body FastAPI parses into a model: one that is
    not UTF-8 JSON is answered 400 before the route runs."""
    found: set[tuple[str, str]] = set()
    for context in routing.iter_route_contexts(app.routes):
        if not isinstance(context.original_route, routing.APIRoute):
            continue
        route: Any = context  # proxies the route as included (prefixed path)
        if route.body_field is not None:
            found.update((route.path_format, m.lower()) for m in route.methods or ())
    return found


def install(app: FastAPI) -> None:
    """Serve (and cache) the completed document at ``/openapi.json``."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = complete(generate())
            for path, method in _parsed_bodies(app):
                operation = doc["paths"].get(path, {}).get(method)
                if operation is not None:
                    operation["responses"].setdefault("400", _problem(400))
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
