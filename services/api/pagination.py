"""Cursor pagination: a cursor is the opaque position after the last item seen, so pages stay
stable while new rows arrive (offsets would skip or repeat them)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Generic, TypeVar

from fastapi import HTTPException, Query
from pydantic import BaseModel, Field

T = TypeVar("T")

MAX_ID = 2**63 - 1
"""The largest row id (PostgreSQL ``bigint``): a larger one in a path or cursor is refused as
bad input, never sent to the database (which would fail the query)."""

NO_NUL = r"^[^\x00]*$"
"""For text that reaches the database: PostgreSQL text cannot hold NUL, and a query with one
fails; such input is refused with a 422 instead."""

Limit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]
Cursor = Annotated[
    str | None,
    Query(max_length=64, description="`next_cursor` of the previous page; absent for the first."),
]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


def encode(position: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{position}".encode()).decode().rstrip("=")


def decode(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, position = text.split(":", 1)
        if version != "v1":
            raise ValueError(version)
        value = int(position)
        if not 0 <= value <= MAX_ID:
            raise ValueError(position)
        return value
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise HTTPException(400, "invalid cursor") from None
