"""Jokko's one error hierarchy, and the field-level report of an invalid event.

Error messages never carry the offending *value*: an event holds names, NINs and phone numbers,
and error reports end up in logs, dead-letter tables and API responses.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

ROOT_LOC = ""
"""``FieldError.loc`` of an error about the event as a whole (not JSON, not an object)."""

_AT = "at"


class JokkoError(Exception):
    """Root of every error Jokko raises; subclasses say what the caller can do about it."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem at one place: ``loc`` is a dotted path such as ``payload.items.0.amount``."""

    loc: str
    message: str
    type: str

    def __str__(self) -> str:
        return f"{self.loc or '<event>'}: {self.message} [{self.type}]"


class InvalidEvent(JokkoError):
    """The input is not a valid canonical event. Retrying cannot help: reject or dead-letter it."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        super().__init__("invalid event: " + "; ".join(str(e) for e in self.errors))

    @classmethod
    def from_validation_error(
        cls, exc: ValidationError, *, union_tags: Collection[str] = ()
    ) -> InvalidEvent:
        """Translate pydantic's report, dropping inputs and the union tag from locations."""
        raw = exc.errors(include_input=False, include_url=False)
        item_failed = {
            err["loc"][:-1] for err in raw if err["loc"] and isinstance(err["loc"][-1], int)
        }
        errors = []
        for err in raw:
            if err["type"] == "too_short" and err["loc"] in item_failed:
                # pydantic also calls a tuple "too short" once a failed item is dropped: noise.
                continue
            parts: list[str | int] = list(err["loc"])
            if parts and parts[0] in union_tags:
                parts = parts[1:]
            ctx = err.get("ctx") or {}
            if isinstance(ctx.get(_AT), str):
                parts.extend(ctx[_AT].split("."))
            if not parts and err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                parts = ["event_type"]
            errors.append(FieldError(".".join(map(str, parts)), err["msg"], err["type"]))
        return cls(errors)


def field_error(error_type: str, message: str, *, at: str | None = None) -> PydanticCustomError:
    """An error to raise from a validator.

    A model validator can only fail at the model's own location; ``at`` (a dotted path below
    it) is appended by ``InvalidEvent.from_validation_error`` so cross-field rules are still
    reported at the field that breaks them. ``message`` must not contain input values.
    """
    return PydanticCustomError(error_type, message, {_AT: at} if at else None)
