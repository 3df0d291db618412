"""JSON Schemas of the canonical events, as committed in ``schemas/json/``.

The committed files are the contract partners read; a unit test compares them with
``json_schemas()`` so a model change without a regenerated schema fails CI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.envelope import SCHEMA_VERSION
from schemas.events import EVENT_CLASSES, event_adapter

UNION_NAME = f"canonical-event.v{SCHEMA_VERSION}.json"


def schema_file_name(event_type: str) -> str:
    return f"{event_type}.v{SCHEMA_VERSION}.json"


def json_schemas() -> dict[str, dict[str, Any]]:
    """Schema by file name: one per event type, plus the union of them all."""
    schemas = {
        schema_file_name(event_type): cls.model_json_schema()
        for event_type, cls in EVENT_CLASSES.items()
    }
    union = event_adapter().json_schema()
    union["title"] = f"CanonicalEvent v{SCHEMA_VERSION}"
    union["description"] = "Any canonical event; event_type selects its schema."
    schemas[UNION_NAME] = union
    return {
        name: {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
        for name, schema in sorted(schemas.items())
    }


def render(schema: dict[str, Any]) -> str:
    """Deterministic text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export_json_schemas(target: Path) -> list[Path]:
    """Write every schema into ``target``; remove stale ``*.v<N>.json`` files left there."""
    target.mkdir(parents=True, exist_ok=True)
    schemas = json_schemas()
    for stale in target.glob("*.v[0-9]*.json"):
        if stale.name not in schemas:
            stale.unlink()
    written = []
    for name, schema in schemas.items():
        path = target / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written
