"""JSON Schema of the spec, rendered from the same dataclass fields the loader validates."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from dcnios.secrets import Secret
from dcnios.spec._build import Duration, Rate, _is_spec, _spec_union, _unwrap_optional

__all__ = ["json_schema"]


def _type_schema(tp: Any) -> dict[str, Any]:
    inner, _optional = _unwrap_optional(tp)
    if _is_spec(inner):
        return _object_schema(inner)
    members = _spec_union(inner)
    if members is not None:
        # Each member's `type` is a one-value enum (or defaults), so exactly one branch matches.
        return {"oneOf": [_object_schema(m) for m in members]}
    origin = typing.get_origin(inner)
    if origin is tuple:
        return {"type": "array", "items": _type_schema(typing.get_args(inner)[0])}
    if origin is Literal:
        return {"enum": list(typing.get_args(inner))}
    if inner is Duration:
        return {"type": ["number", "string"], "pattern": Duration.PATTERN.pattern}
    if inner is Rate:
        return {"type": "string", "pattern": Rate.PATTERN.pattern}
    if inner is Secret or inner is str:
        return {"type": "string"}
    if inner is bool:
        return {"type": "boolean"}
    if inner is int:
        return {"type": "integer"}
    if inner is float:
        return {"type": "number"}
    if origin in (dict, typing.Mapping) or inner is typing.Mapping:
        return {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
    origin_name = getattr(origin, "__name__", "")
    if origin_name == "Mapping":
        return {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _object_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        schema = _type_schema(hints[f.name])
        schema["description"] = f.metadata.get("doc", "")
        default = f.default
        if default is not dataclasses.MISSING and default is not None and not _is_spec(type(default)):
            if isinstance(default, tuple):
                schema["default"] = list(default)
            elif isinstance(default, int | float | str | bool):
                schema["default"] = default
        if f.metadata.get("examples"):
            schema["examples"] = list(f.metadata["examples"])
        properties[f.name] = schema
        inner, _ = _unwrap_optional(hints[f.name])
        if inner is Secret and f.metadata.get("secret_file", True):
            properties[f"{f.name}_file"] = {"type": "string", "description": f"file holding {f.name}"}
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        out["required"] = required
    return out


def json_schema(root: type) -> dict[str, Any]:
    schema = _object_schema(root)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "dcnios pipeline spec",
        **schema,
    }
