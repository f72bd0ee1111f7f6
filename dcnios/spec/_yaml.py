"""YAML → plain values plus a map from key path to source line, and ${ENV} interpolation."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from dcnios.errors import ConfigError, ConfigProblem

__all__ = ["Located", "interpolate", "load_located", "parse_located"]

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(slots=True)
class Located:
    """A YAML document as plain Python values, with the 1-based line of every key path."""

    value: Any
    lines: dict[str, int] = field(default_factory=dict)

    def line(self, path: str) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _walk(node: yaml.Node, path: str, lines: dict[str, int], problems: list[ConfigProblem]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key_node.tag != "tag:yaml.org,2002:str":
                problems.append(
                    ConfigProblem(path, f"keys must be strings, got {key!r}", key_node.start_mark.line + 1)
                )
                continue
            child = _join(path, key)
            if key in out:
                problems.append(ConfigProblem(child, "duplicate key", key_node.start_mark.line + 1))
                continue
            lines[child] = key_node.start_mark.line + 1
            out[key] = _walk(value_node, child, lines, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, _join(path, i), lines, problems) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def parse_located(text: str, *, source: str = "<spec>") -> Located:
    """Parse YAML text; malformed YAML raises ConfigError with the line of the problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigProblem("", f"malformed YAML: {reason}", line)], source=source) from exc
    if root is None:
        raise ConfigError([ConfigProblem("", "the spec is empty")], source=source)
    lines: dict[str, int] = {}
    problems: list[ConfigProblem] = []
    value = _walk(root, "", lines, problems)
    if problems:
        raise ConfigError(problems, source=source)
    return Located(value, lines)


def load_located(path: str | os.PathLike[str]) -> Located:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read spec: {exc.strerror}", source=os.fspath(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"spec is not UTF-8 text: {exc.reason}", source=os.fspath(path)) from exc
    return parse_located(text, source=os.fspath(path))


def interpolate(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace ``${VAR}`` and ``${VAR:-default}``; ``$$`` is a literal ``$``.

    Returns the text and the names of variables that were unset and had no default.
    """
    missing: list[str] = []

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    return _ENV_REF.sub(sub, text), missing
