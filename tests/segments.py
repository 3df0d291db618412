"""Reading a test broker's segment files on disk, as anyone with access to its disks could:
which personal values lie there in clear."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.infra import KafkaBroker


def personal_values(events: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """Every NIN and every phone number in ``events`` (JSON), the phones as their 9 national
    digits, which every institution's format keeps, with or without +221."""
    nins: set[str] = set()
    phones: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "nin" and item:
                    nins.add(item)
                elif key.endswith("phone") and item:
                    phones.add(item.removeprefix("+221"))
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(events)
    return nins, phones


def segment_files(broker: KafkaBroker, prefix: str) -> dict[str, bytes]:
    """The bytes of every segment file (``*.log``) of the topics whose name starts with
    ``prefix``, by ``<topic>-<partition>/<file>`` (the broker's ``log.dirs``, scripts/kafka.sh)."""
    data: Path = broker.directory / "data"
    return {
        str(f.relative_to(data)): f.read_bytes()
        for d in data.iterdir()
        if d.is_dir() and d.name.startswith(prefix)
        for f in d.glob("*.log")
    }


def topics_of(segments: dict[str, bytes]) -> set[str]:
    return {name.split("/")[0].rsplit("-", 1)[0] for name in segments}


def found_in(segments: dict[str, bytes], values: set[str]) -> dict[str, list[str]]:
    """Each value found in clear, with the segment files it is in."""
    return {
        value: hits
        for value in sorted(values)
        if (hits := [name for name, raw in segments.items() if value.encode() in raw])
    }
