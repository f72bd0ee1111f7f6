"""YAML → plain values plus a map from key path to source line, and ${ENV} interpolation."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

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


#: A spec is a few hundred nodes. Aliases may repeat a block a few times; beyond this budget they
#: are a "billion laughs" document, which would take minutes, then memory, to expand.
MAX_ALIASED_NODES: Final = 10_000
#: A spec is about 6 levels deep; the composer and the walk recurse once per level.
MAX_DEPTH: Final = 64
#: Read no more than this of a spec: /dev/zero or a runaway generator must not fill memory.
MAX_SPEC_CHARS: Final = 1024 * 1024


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting deeper than :data:`MAX_DEPTH`.

    PyYAML composes recursively: a few hundred ``[`` would end in a RecursionError without a line.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]  # untyped in the stubs
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Abort(Exception):
    def __init__(self, problem: ConfigProblem) -> None:
        self.problem = problem


class _Walker:
    """Turns the composed node graph into plain values, recording the line of every key path.

    The composer hands back an alias as the very node it names, so the graph can share nodes
    (aliases) and even contain cycles (``a: &a [*a]``); both are bounded here.
    """

    def __init__(self) -> None:
        self.lines: dict[str, int] = {}
        self.problems: list[ConfigProblem] = []
        self._seen: set[int] = set()
        self._ancestors: set[int] = set()
        self._aliased = 0
        self._constructor = yaml.constructor.SafeConstructor()

    def walk(self, node: yaml.Node, path: str, site: int, depth: int = 0, expanding: bool = False) -> Any:
        """The plain value of ``node``. ``site`` is the line where the value is written; inside an
        alias expansion that is where the alias is, not where its anchor is."""
        line = self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in self._ancestors:
            raise _Abort(ConfigProblem(path, "recursive alias: the node contains itself", site))
        expanding = expanding or id(node) in self._seen
        if expanding:
            self._aliased += 1
            if self._aliased > MAX_ALIASED_NODES:
                message = f"aliases expand to more than {MAX_ALIASED_NODES} nodes"
                raise _Abort(ConfigProblem(path, message, site))
        else:
            site = node.start_mark.line + 1
            self._seen.add(id(node))
        if depth > MAX_DEPTH:
            raise _Abort(ConfigProblem(path, f"aliases nest deeper than {MAX_DEPTH} levels", site))
        if isinstance(node, yaml.MappingNode):
            self._ancestors.add(id(node))
            try:
                return self._mapping(node, path, site, depth, expanding)
            finally:
                self._ancestors.discard(id(node))
        if isinstance(node, yaml.SequenceNode):
            self._ancestors.add(id(node))
            try:
                return [
                    self.walk(item, _join(path, i), site, depth + 1, expanding)
                    for i, item in enumerate(node.value)
                ]
            finally:
                self._ancestors.discard(id(node))
        return self._scalar(node, path, line)

    def _mapping(
        self, node: yaml.MappingNode, path: str, site: int, depth: int, expanding: bool
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key_node.tag != "tag:yaml.org,2002:str":
                self.problems.append(ConfigProblem(path, f"keys must be strings, got {key!r}", key_line))
                continue
            child = _join(path, key)
            if key in out:
                self.problems.append(ConfigProblem(child, "duplicate key", key_line))
                continue
            self.lines[child] = key_line
            out[key] = self.walk(value_node, child, site if expanding else key_line, depth + 1, expanding)
        return out

    def _scalar(self, node: yaml.Node, path: str, line: int) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self.problems.append(ConfigProblem(path, f"invalid value: {exc.problem}", line))
        except Exception:  # PyYAML's constructors raise KeyError, ValueError, AttributeError, ...
            # ... whose messages may quote the value, which may be a secret: name only the tag.
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self.problems.append(ConfigProblem(path, f"not a valid {tag} value", line))
        return None


def parse_located(text: str, *, source: str = "<spec>") -> Located:
    """Parse YAML text; malformed YAML raises ConfigError with the line of the problem."""
    if len(text) > MAX_SPEC_CHARS:
        raise ConfigError(
            [ConfigProblem("", f"the spec is larger than {MAX_SPEC_CHARS // 1024} KiB")], source=source
        )
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigProblem("", f"malformed YAML: {reason}", line)], source=source) from exc
    finally:
        loader.dispose()
    if root is None:
        raise ConfigError([ConfigProblem("", "the spec is empty")], source=source)
    walker = _Walker()
    try:
        value = walker.walk(root, "", root.start_mark.line + 1)
    except _Abort as abort:
        raise ConfigError([*walker.problems, abort.problem], source=source) from None
    if walker.problems:
        raise ConfigError(walker.problems, source=source)
    return Located(value, walker.lines)


def load_located(path: str | os.PathLike[str]) -> Located:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(MAX_SPEC_CHARS + 1)
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
