"""An Avro binary writer compiled from a schema at start-up: Python source generated per schema.

fastavro's ``schemaless_writer`` walks the parsed schema for every datum: about 7 µs per
StorageEvent on this machine, a fixed cost even when every union is null, and the largest single
item in the producer's per-event budget. The schema does not change while the producer runs, so
this module turns it once into straight-line Python (one statement per field, no schema walk, no
per-field call) and ``exec``s it. Only what the Avro specification says about the binary encoding
is used (zig-zag varints for int and long, length-prefixed UTF-8 strings and bytes, one byte for a
boolean, IEEE 754 little-endian floats, blocks for arrays and maps, the branch index for a union).

A schema with a type this compiler does not handle (enum, fixed, recursive records, unions of
more than null and one type) gives ``None``: the codec keeps fastavro for it. The property tests
prove the output byte-identical to fastavro's for every datum the hypothesis strategies make.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

__all__ = ["compile_writer"]

#: Lengths, counts and branch indexes below this come from a table.
_SMALL: Final = 1 << 14


def _varint_of(n: int) -> bytes:
    """The zig-zag varint of ``n`` (Avro int and long)."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z & ~0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _length_of(n: int) -> bytes:
    """The varint of a non-negative length or count (zig-zag of n is 2n)."""
    return _LENGTHS[n] if n < _SMALL else _varint_of(n)


_LENGTHS: Final = tuple(_varint_of(n) for n in range(_SMALL))
_PRIMITIVE_LONG: Final = frozenset({"int", "long"})


class _Unsupported(Exception):
    pass


class _Compiler:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.counter = 0

    def name(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def value(self, schema: Any, expr: str, depth: int) -> None:
        """Statements that append ``expr`` encoded as ``schema`` to ``out``."""
        if isinstance(schema, list):
            self.union(schema, expr, depth)
            return
        kind = schema if isinstance(schema, str) else schema.get("type")
        if isinstance(kind, dict | list):
            self.value(kind, expr, depth)
            return
        if kind == "null":
            return
        if kind == "boolean":
            self.emit(depth, f"out += b'\\x01' if {expr} else b'\\x00'")
        elif kind in _PRIMITIVE_LONG:
            if isinstance(schema, dict) and schema.get("logicalType") not in (None, "timestamp-millis"):
                raise _Unsupported(f"logical type {schema.get('logicalType')}")
            self.emit(depth, f"out += varint({expr})")
        elif kind == "string":
            v = self.name("s")
            self.emit(depth, f"{v} = {expr}.encode()")
            self.emit(depth, f"out += length(len({v}))")
            self.emit(depth, f"out += {v}")
        elif kind == "bytes":
            v = self.name("b")
            self.emit(depth, f"{v} = {expr}")
            self.emit(depth, f"out += length(len({v}))")
            self.emit(depth, f"out += {v}")
        elif kind == "float":
            self.emit(depth, f"out += pack_float({expr})")
        elif kind == "double":
            self.emit(depth, f"out += pack_double({expr})")
        elif kind == "array":
            items, item = self.name("items"), self.name("item")
            self.emit(depth, f"{items} = {expr}")
            self.emit(depth, f"if {items}:")
            self.emit(depth + 1, f"out += length(len({items}))")
            self.emit(depth + 1, f"for {item} in {items}:")
            self.value(schema["items"], item, depth + 2)
            self.emit(depth, "out += b'\\x00'")
        elif kind == "map":
            entries, key, val = self.name("entries"), self.name("k"), self.name("v")
            self.emit(depth, f"{entries} = {expr}")
            self.emit(depth, f"if {entries}:")
            self.emit(depth + 1, f"out += length(len({entries}))")
            self.emit(depth + 1, f"for {key}, {val} in {entries}.items():")
            self.value("string", key, depth + 2)
            self.value(schema["values"], val, depth + 2)
            self.emit(depth, "out += b'\\x00'")
        elif kind == "record":
            record = self.name("r")
            self.emit(depth, f"{record} = {expr}")
            self.record(schema, record, depth)
        else:
            raise _Unsupported(f"type {kind!r}")

    def union(self, branches: list[Any], expr: str, depth: int) -> None:
        kinds = [b if isinstance(b, str) else b.get("type") for b in branches]
        if len(branches) != 2 or "null" not in kinds:
            raise _Unsupported("a union other than null and one type")
        null_at = kinds.index("null")
        other = branches[1 - null_at]
        v = self.name("u")
        self.emit(depth, f"{v} = {expr}")
        self.emit(depth, f"if {v} is None:")
        self.emit(depth + 1, f"out += {_LENGTHS[null_at]!r}")  # the branch index, as a long
        self.emit(depth, "else:")
        self.emit(depth + 1, f"out += {_LENGTHS[1 - null_at]!r}")
        self.value(other, v, depth + 1)

    def record(self, schema: dict[str, Any], record: str, depth: int) -> None:
        for field in schema["fields"]:
            self.value(field["type"], f"{record}[{field['name']!r}]", depth)


def compile_writer(schema: dict[str, Any], *, attributes: bool = False) -> Callable[[Any], bytes] | None:
    """A function from a datum to its Avro binary encoding, or None when the schema uses a type
    this compiler does not handle.

    The datum is a dict, as fastavro takes it; with ``attributes``, an object whose attributes
    are the top-level fields (a ``StorageEvent`` as it is, without building the dict first).
    ``schema`` is a parsed schema (``fastavro.parse_schema``): named types already expanded, so a
    name that still stands for a type means recursion, which is left to fastavro.
    """
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    compiler = _Compiler()
    try:
        if attributes:
            for field in schema["fields"]:
                if not str(field["name"]).isidentifier():
                    return None
                compiler.value(field["type"], f"datum.{field['name']}", 1)
        else:
            compiler.record(schema, "datum", 1)
    except (_Unsupported, KeyError, TypeError):
        return None
    source = "\n".join(
        ["def write(datum):", "    out = bytearray()", *compiler.lines, "    return bytes(out)"]
    )
    namespace: dict[str, Any] = {
        "varint": _varint_of,
        "length": _length_of,
        "pack_float": struct.Struct("<f").pack,
        "pack_double": struct.Struct("<d").pack,
    }
    exec(compile(source, f"<avro writer for {schema.get('name')}>", "exec"), namespace)  # noqa: S102
    writer: Callable[[Any], bytes] = namespace["write"]
    return writer
