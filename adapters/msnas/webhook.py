"""The agents' app webhook: a JSON body holding one record or a list of records."""

from __future__ import annotations

import json
from typing import Any

from adapters.msnas.records import map_record
from adapters.msnas.report import Collector, ImportReport


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def parse_webhook(body: bytes) -> ImportReport:
    """Map a webhook body to canonical events; never raises on bad content.

    A body that is not UTF-8 JSON, or not an object or a list, is one error at row 0 and no
    events. Otherwise record ``n`` (1-based; a lone object is record 1) yields an event or its
    errors, independently of the others.
    """
    out = Collector()
    try:
        document = json.loads(bytes(body).decode("utf-8-sig"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        # UnicodeDecodeError and JSONDecodeError are ValueErrors.
        out.error(0, "", "is not a UTF-8 JSON document", "json_invalid")
        return out.report()
    if isinstance(document, dict):
        records: list[Any] = [document]
    elif isinstance(document, list):
        records = document
    else:
        out.error(0, "", "must be a record (object) or a list of records", "body_type")
        return out.report()
    for row, record in enumerate(records, start=1):
        out.add(row, *map_record(record))
    return out.report()
