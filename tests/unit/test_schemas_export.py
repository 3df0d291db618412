"""The committed JSON Schemas in schemas/json/ are exactly what the models produce."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import schemas
from schemas import EVENT_TYPES
from schemas.export import export_json_schemas, json_schemas, render

pytestmark = pytest.mark.unit

COMMITTED = Path(schemas.__file__).parent / "json"
REGENERATE = "regenerate with `jokko schema export` (or `make schema`) and commit"


def test_committed_file_set_matches_the_models() -> None:
    committed = sorted(p.name for p in COMMITTED.glob("*.json"))
    assert committed == sorted(json_schemas()), REGENERATE


@pytest.mark.parametrize("name", sorted(json_schemas()))
def test_committed_schema_matches_the_models(name: str) -> None:
    path = COMMITTED / name
    assert path.is_file(), REGENERATE
    assert json.loads(path.read_text(encoding="utf-8")) == json_schemas()[name], REGENERATE
    assert path.read_text(encoding="utf-8") == render(json_schemas()[name]), REGENERATE


def test_one_schema_per_event_type_plus_the_union() -> None:
    assert set(json_schemas()) == {f"{t}.v1.json" for t in EVENT_TYPES} | {
        "canonical-event.v1.json"
    }


def test_export_is_deterministic_and_removes_stale_files(tmp_path: Path) -> None:
    (tmp_path / "member.renamed.v1.json").write_text("{}\n")
    (tmp_path / "README.md").write_text("kept\n")
    first = {p.name: p.read_bytes() for p in export_json_schemas(tmp_path)}
    second = {p.name: p.read_bytes() for p in export_json_schemas(tmp_path)}
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*first, "README.md"])
    assert all(content.endswith(b"}\n") for content in first.values())
