"""Build frozen spec dataclasses from located YAML values, collecting every problem.

Field types drive validation: str, int, float, bool, Secret, Duration, Rate, Literal[...],
tuple[X, ...], dict[str, str], nested spec dataclasses and ``X | None``. Field metadata
(see :func:`spec_field`) adds a doc string, a check and examples; the same metadata renders the
JSON Schema, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from dcnios.errors import ConfigProblem
from dcnios.secrets import CONTROL_CHARACTER, Secret, has_control_character, read_secret_file
from dcnios.spec._yaml import Located, interpolate

__all__ = [
    "Builder",
    "Duration",
    "Rate",
    "SpecNode",
    "spec_field",
    "union_tag",
]

T = TypeVar("T")
Check = Callable[[Any], str | None]


class Duration(float):
    """Seconds, written in the spec as ``250ms``, ``10s``, ``5m``, ``1h`` or a bare number."""

    UNITS: ClassVar[dict[str, float]] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    PATTERN: ClassVar[re.Pattern[str]] = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
    #: No timeout, backoff or window of dcnios means anything beyond a year; an infinite or huge
    #: one overflows time.monotonic() + d, threading waits and librdkafka's int milliseconds.
    MAX: ClassVar[float] = 365 * 86400.0

    @classmethod
    def parse(cls, raw: object) -> Duration:
        if isinstance(raw, bool):
            raise ValueError(f"expected a duration like '10s' or '5m', got {raw!r}")
        if isinstance(raw, int | float):
            # NaN fails both comparisons; an int too large for a float is compared, not converted.
            if not 0 <= raw <= cls.MAX:
                raise ValueError(f"expected a duration from 0 to 365d, got {raw!r}")
            return cls(raw)
        match = cls.PATTERN.match(str(raw))
        if not match:
            raise ValueError(f"expected a duration like '10s' or '5m', got {raw!r}")
        seconds = float(match.group(1)) * cls.UNITS[match.group(2) or "s"]  # inf past 1e308
        if not seconds <= cls.MAX:
            raise ValueError(f"expected a duration of at most 365d, got {raw!r}")
        return cls(seconds)


@dataclass(frozen=True, slots=True)
class Rate:
    """Events per second, written as ``<number>/s``, ``/m`` or ``/h``."""

    per_second: float
    text: str

    PATTERN: ClassVar[re.Pattern[str]] = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")

    @classmethod
    def parse(cls, raw: object) -> Rate:
        if not isinstance(raw, str) or not (match := cls.PATTERN.match(raw)):
            raise ValueError(f"expected '<number>/s|/m|/h', got {raw!r}")
        value = float(match.group(1))
        if not 0 < value < math.inf:  # a 400-digit number is float("inf")
            raise ValueError(f"rate must be positive and finite, got {raw!r}")
        per = {"s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
        return cls(value / per, raw.strip())

    def __str__(self) -> str:
        return self.text


class SpecNode(Protocol):
    """What a spec dataclass may define beyond its fields."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


def spec_field(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    check: Check | None = None,
    examples: tuple[Any, ...] = (),
    secret_file: bool = True,
    secret_entries: Callable[[str, str], bool] | None = None,
) -> Any:
    """A spec field with documentation (for the JSON Schema) and an optional value check.

    ``secret_entries(key, value)`` marks the entries of a mapping field that hold secrets: they
    become :class:`Secret` values.
    """
    meta = {
        "doc": doc,
        "check": check,
        "examples": examples,
        "secret_file": secret_file,
        "secret_entries": secret_entries,
    }
    if isinstance(default, list | dict):
        raise TypeError("mutable defaults are not allowed in spec fields; use a tuple")
    if default is not dataclasses.MISSING and getattr(type(default), "__hash__", None) is None:
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _is_spec(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp) and tp is not Rate


def _spec_union(tp: Any) -> tuple[type, ...] | None:
    """The members of a union of spec dataclasses told apart by their ``type`` field, else None."""
    if not (isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union):
        return None
    members = typing.get_args(tp)
    if len(members) < 2 or not all(_is_spec(m) for m in members):
        return None
    return members


def union_tag(cls: type) -> str:
    """The ``type`` value that selects ``cls`` in a union: its Literal's one value."""
    hint = typing.get_type_hints(cls)["type"]
    (tag,) = typing.get_args(hint)
    return str(tag)


def _union_default(members: tuple[type, ...]) -> str | None:
    for cls in members:
        f = next(f for f in dataclasses.fields(cls) if f.name == "type")
        if f.default is not dataclasses.MISSING:
            return str(f.default)
    return None


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if tp in names:
        return names[tp]
    if tp is Secret:
        return "a string (or <key>_file)"
    if typing.get_origin(tp) is tuple:
        return "a list"
    if typing.get_origin(tp) is dict or _is_spec(tp):
        return "a mapping"
    return str(tp)


def _yaml_type(value: Any, *, show: bool = True) -> str:
    """What YAML made of ``value``; with ``show=False`` (a secret field) never the value itself."""
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(value), f"{type(value).__name__} {value!r}" if show else type(value).__name__
    )


def _check_secret(value: str) -> str:
    if has_control_character(value):
        raise ValueError(CONTROL_CHARACTER)
    return value


class Builder:
    """Turns a :class:`Located` document into spec objects; problems accumulate in ``problems``."""

    def __init__(self, doc: Located, env: Mapping[str, str] | None = None, base_dir: str = ".") -> None:
        self.doc = doc
        self.env = os.environ if env is None else env
        self.base_dir = base_dir
        self.problems: list[ConfigProblem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(path, message, self.doc.line(path)))

    # -- scalars ---------------------------------------------------------------------------
    def _interpolate(self, raw: Any, path: str) -> tuple[Any, bool]:
        if not isinstance(raw, str) or "$" not in raw:
            return raw, False
        text, missing = interpolate(raw, self.env)
        for name in missing:
            self.problem(path, f"environment variable {name} is not set")
        if missing:
            raise _AlreadyReported
        return text, True

    def _scalar(self, tp: Any, raw: Any, path: str) -> Any:
        raw, interpolated = self._interpolate(raw, path)
        if interpolated and tp in (int, float, bool):
            loaded = _scalar_from_text(raw)
            raw = loaded if loaded is not None else raw
        if tp is Secret:
            if not isinstance(raw, str):
                raise ValueError(f"expected a string, got {_yaml_type(raw, show=False)}")
            return Secret(_check_secret(raw))
        if tp is Duration:
            return Duration.parse(raw)
        if tp is Rate:
            return Rate.parse(raw)
        if tp is bool:
            if not isinstance(raw, bool):
                raise ValueError(f"expected true or false, got {_yaml_type(raw)}")
            return raw
        if tp is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ValueError(f"expected an integer, got {_yaml_type(raw)}")
            return raw
        if tp is float:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ValueError(f"expected a number, got {_yaml_type(raw)}")
            try:
                number = float(raw)
            except OverflowError:  # an int beyond 1e308
                number = math.inf
            if not math.isfinite(number):
                raise ValueError(f"expected a finite number, got {raw!r}")
            return number
        if tp is str:
            if isinstance(raw, bool) or not isinstance(raw, str | int | float):
                raise ValueError(f"expected a string, got {_yaml_type(raw)}")
            return str(raw)
        if typing.get_origin(tp) is Literal:
            allowed = typing.get_args(tp)
            value = raw if not isinstance(raw, str) else raw.strip()
            for option in allowed:
                if value == option or (isinstance(value, str) and str(option).lower() == value.lower()):
                    return option
            hint = _did_you_mean(str(raw), [str(a) for a in allowed])
            raise ValueError(f"expected one of {', '.join(map(str, allowed))}, got {raw!r}{hint}")
        raise TypeError(f"unsupported spec type {tp!r}")

    # -- values ----------------------------------------------------------------------------
    def value(self, tp: Any, raw: Any, path: str) -> Any:
        """Build a value of type ``tp``; on a problem, record it and return ``_INVALID``."""
        inner, optional = _unwrap_optional(tp)
        if raw is None:
            if optional:
                return None
            self.problem(path, f"expected {_type_name(inner)}, got null")
            return _INVALID
        if _is_spec(inner):
            if not isinstance(raw, dict):
                self.problem(path, f"expected a mapping, got {_yaml_type(raw)}")
                return _INVALID
            return self.build(inner, raw, path)
        members = _spec_union(inner)
        if members is not None:
            return self._tagged(members, raw, path)
        origin = typing.get_origin(inner)
        if origin is tuple:
            (item_tp, _ellipsis) = typing.get_args(inner)
            if isinstance(raw, str | int | float) and not _is_spec(item_tp):
                raw = [raw]  # a lone scalar where a list is expected is the one-item list
            if not isinstance(raw, list):
                self.problem(path, f"expected a list, got {_yaml_type(raw)}")
                return _INVALID
            items = [self.value(item_tp, item, f"{path}[{i}]") for i, item in enumerate(raw)]
            return _INVALID if any(i is _INVALID for i in items) else tuple(items)
        if origin in (dict, Mapping):
            if not isinstance(raw, dict):
                self.problem(path, f"expected a mapping, got {_yaml_type(raw)}")
                return _INVALID
            out: dict[str, str] = {}
            for key, raw_item in raw.items():
                try:
                    item, _ = self._interpolate(raw_item, f"{path}.{key}")
                except _AlreadyReported:
                    continue
                if isinstance(item, dict | list) or item is None:
                    self.problem(f"{path}.{key}", f"expected a scalar, got {_yaml_type(item)}")
                    continue
                out[key] = str(item).lower() if isinstance(item, bool) else str(item)
            return out
        try:
            return self._scalar(inner, raw, path)
        except ValueError as exc:
            self.problem(path, str(exc))
            return _INVALID
        except _AlreadyReported:
            return _INVALID

    def _tagged(self, members: tuple[type, ...], raw: Any, path: str) -> Any:
        """One of ``members``, picked by the mapping's ``type`` key (absent: the member whose
        ``type`` has a default)."""
        if not isinstance(raw, dict):
            self.problem(path, f"expected a mapping, got {_yaml_type(raw)}")
            return _INVALID
        tags = {union_tag(cls): cls for cls in members}
        tag = raw.get("type", _union_default(members))
        cls = tags.get(tag.strip().lower()) if isinstance(tag, str) else None
        if cls is None:
            hint = _did_you_mean(str(tag), list(tags))
            self.problem(f"{path}.type", f"expected one of {', '.join(tags)}, got {tag!r}{hint}")
            return _INVALID
        if isinstance(tag, str) and tag != union_tag(cls):
            raw = {**raw, "type": union_tag(cls)}
        return self.build(cls, raw, path)

    def _secret_from_file(self, raw: Any, path: str) -> Any:
        try:
            raw, _ = self._interpolate(raw, path)
        except _AlreadyReported:
            return _INVALID
        if not isinstance(raw, str):
            self.problem(path, f"expected a file path, got {_yaml_type(raw)}")
            return _INVALID
        file_path = os.path.join(self.base_dir, os.path.expanduser(raw))
        try:
            text = read_secret_file(file_path)
        except ValueError as exc:
            self.problem(path, f"cannot read secret file {raw!r}: {exc}")
            return _INVALID
        try:
            return Secret(_check_secret(text))
        except ValueError as exc:
            self.problem(path, f"secret file {raw!r} {exc}")
            return _INVALID

    def _field(self, f: dataclasses.Field[Any], value: Any, path: str) -> Any:
        """Apply the field's metadata to a built value: its check, and its secret entries."""
        if value is _INVALID or value is None:
            return value
        check = f.metadata.get("check")
        if check is not None and (message := check(value)):
            self.problem(path, message)
            return _INVALID
        secret_entries = f.metadata.get("secret_entries")
        if secret_entries is not None and isinstance(value, dict):
            value = {k: Secret(v) if secret_entries(k, v) else v for k, v in value.items()}
        return value

    def build(self, cls: type[T], raw: Mapping[str, Any], path: str) -> T:
        hints = typing.get_type_hints(cls)
        known: dict[str, str] = {}
        values: dict[str, Any] = {}
        broken = False
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            tp = hints[f.name]
            key_path = f"{path}.{f.name}" if path else f.name
            known[f.name] = f.name
            inner, _ = _unwrap_optional(tp)
            file_key = f"{f.name}_file"
            if inner is Secret and f.metadata.get("secret_file", True):
                known[file_key] = f.name
                if f.name in raw and file_key in raw:
                    self.problem(key_path, f"give either {f.name} or {file_key}, not both")
                    broken = True
                    continue
                if file_key in raw:
                    secret = self._secret_from_file(raw[file_key], f"{path}.{file_key}" if path else file_key)
                    broken |= secret is _INVALID
                    values[f.name] = secret
                    continue
            if f.name not in raw:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    self.problem(key_path, "is required")
                    broken = True
                continue
            value = self._field(f, self.value(tp, raw[f.name], key_path), key_path)
            if value is _INVALID:
                broken = True
                continue
            values[f.name] = value
        for key in raw:
            if key not in known:
                hint = _did_you_mean(key, list(known))
                self.problem(f"{path}.{key}" if path else key, f"unknown key{hint}")
                broken = True
        if broken:
            return _INVALID  # type: ignore[no-any-return]  # sentinel travels up; problems are recorded
        derive = getattr(cls, "derive_defaults", None)
        if derive is not None:
            values = derive(values)
        obj = cls(**values)
        validate = getattr(obj, "validate", None)
        if validate is not None:
            for rel, message in validate():
                self.problem(f"{path}.{rel}" if path and rel else (rel or path), message)
        return obj


class _AlreadyReported(Exception):
    """A problem was recorded already; unwind to the field without adding another."""


class _Invalid:
    def __repr__(self) -> str:
        return "<invalid>"


_INVALID: Any = _Invalid()


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _scalar_from_text(text: str) -> Any:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return value if isinstance(value, int | float | bool) else None
