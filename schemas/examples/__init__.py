"""Realistic MSNAS events of every v1 type, shipped as package data for demos and tests.

The people, numbers and references are invented; the shapes, places and amounts are plausible.
Phones and NINs are written the ways agents type them; parsing puts them in canonical form.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from schemas.events import CanonicalEvent, parse_event


def raw_examples() -> list[dict[str, Any]]:
    """The example events as written in the files (JSON objects), file by file."""
    raws: list[dict[str, Any]] = []
    for resource in sorted(files(__name__).iterdir(), key=lambda r: r.name):
        if resource.name.endswith(".json"):
            raws.extend(json.loads(resource.read_text(encoding="utf-8")))
    return raws


def load_examples() -> list[CanonicalEvent]:
    """Every example event, in the order the mutual recorded them (per-member order holds)."""
    events = [parse_event(raw) for raw in raw_examples()]
    return sorted(events, key=lambda e: (e.recorded_at, str(e.event_id)))
