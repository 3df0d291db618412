"""Checking JSON objects against fhir.resources R4B, reporting field-level errors.

fhir.resources is imported on first use, never at import time.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from schemas.errors import FieldError


def join(*parts: str | int) -> str:
    return ".".join(str(p) for p in parts if p != "")


def resource_class(name: object) -> Any | None:
    """The R4B model class of a resource type name, or None if there is no such resource."""
    from fhir.resources.R4B import get_fhir_model_class

    if not isinstance(name, str) or not name.isalpha():
        return None
    try:
        cls = get_fhir_model_class(name)
    except ValueError:
        return None
    return cls if cls.has_resource_base() else None


def check(resource: Any, loc: str) -> list[FieldError]:
    """Validate one resource (a JSON object with ``resourceType``) with its R4B model."""
    if not isinstance(resource, dict):
        return [FieldError(loc, "must be a JSON object", "object_type")]
    cls = resource_class(resource.get("resourceType"))
    if cls is None:
        return [FieldError(join(loc, "resourceType"), "is not an R4B resource type", "fhir_type")]
    # Nested resources of unknown type make fhir.resources raise KeyError: find them first.
    errors = _unknown_nested_types(resource, loc)
    if errors:
        return errors
    try:
        cls.model_validate(resource)
    except ValidationError as exc:
        return [
            FieldError(join(loc, *err["loc"]), err["msg"].split("\n")[0].strip(), err["type"])
            for err in exc.errors(include_input=False, include_url=False)
        ]
    except (KeyError, TypeError, ValueError) as exc:  # fhir.resources' own failures
        return [FieldError(loc, f"is not a valid FHIR resource ({type(exc).__name__})", "fhir")]
    return []


def _unknown_nested_types(value: Any, loc: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if isinstance(value, dict):
        for key, item in value.items():
            unknown = isinstance(item, dict) and "resourceType" in item
            if unknown and resource_class(item["resourceType"]) is None:
                errors.append(
                    FieldError(
                        join(loc, key, "resourceType"), "is not an R4B resource type", "fhir_type"
                    )
                )
                continue
            errors += _unknown_nested_types(item, join(loc, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            errors += _unknown_nested_types(item, join(loc, i))
    return errors
