"""MSNAS inbound adapter: the mutual's agent records (webhook, CSV exports) -> canonical events.

Format v1 is documented field by field in ``FORMAT.md`` beside this file. Pure: bytes in,
``ImportReport`` out; nothing is read, written or looked up.
"""

from adapters.msnas.csv_export import CSV_KINDS, UnknownCsvKind, parse_csv
from adapters.msnas.records import (
    EVENT_NAMESPACE,
    FORMAT_VERSION,
    RECORD_TYPES,
    SOURCE,
    event_id_of,
)
from adapters.msnas.report import ImportReport, RowError
from adapters.msnas.webhook import parse_webhook

__all__ = [
    "CSV_KINDS",
    "EVENT_NAMESPACE",
    "FORMAT_VERSION",
    "RECORD_TYPES",
    "SOURCE",
    "ImportReport",
    "RowError",
    "UnknownCsvKind",
    "event_id_of",
    "parse_csv",
    "parse_webhook",
]
