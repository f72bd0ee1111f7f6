"""The StorageEvent codec: one module, both wire formats, both directions.

* Plain (no registry): the value is the Avro binary datum; header ``dcnios-schema`` carries
  ``dcnios.StorageEvent@<CRC-64-AVRO fingerprint hex>`` so a reader can pick the writer schema.
* Confluent (``kafka.schema_registry`` set): magic byte + schema id + datum, through
  confluent_kafka.schema_registry, subject ``<topic>-value``.

Schema versions: ``storage_event.avsc`` is the current schema (v2, with the fields every source
kind needs, appended with defaults); ``storage_event.v1.avsc`` is the dCache-only v1, frozen. In
plain mode an event that leaves every v2 field at its default (every dCache event) is written
with v1, byte for byte and header for header as before: a reader deployed before v2 keeps
reading dCache records, and the producer's hot path keeps its cost. Every shipped version is a
known writer, so a new reader reads records written before the upgrade.
"""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from collections.abc import Sequence
from importlib import resources
from typing import Any, Final

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from dcnios.avro_writer import compile_writer
from dcnios.errors import CodecError, SchemaError
from dcnios.spec import RegistrySpec
from dcnios.storage_event import StorageEvent

__all__ = [
    "SCHEMA_HEADER",
    "Headers",
    "StorageEventCodec",
    "evolution_problems",
    "load_schema",
    "schema_fingerprint",
]

SCHEMA_HEADER: Final = "dcnios-schema"
_EVENT_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(StorageEvent))
Headers = Sequence[tuple[str, bytes | str | None]] | dict[str, str | bytes | None]
_CONFLUENT_MAGIC: Final = 0
#: Earlier schema versions shipped in dcnios.schemas, oldest first.
HISTORIC_SCHEMAS: Final = ("storage_event.v1.avsc",)


def load_schema(name: str = "storage_event.avsc") -> dict[str, Any]:
    """Read an .avsc shipped in dcnios.schemas."""
    text = resources.files("dcnios.schemas").joinpath(name).read_text(encoding="utf-8")
    try:
        loaded: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{name}: not JSON: {exc}") from exc
    return loaded


def _parse(schema: dict[str, Any]) -> Any:
    try:
        return parse_schema(schema, _force=True)
    except Exception as exc:  # fastavro raises several unrelated types for a bad schema
        raise SchemaError(f"invalid Avro schema: {exc}") from exc


def schema_fingerprint(schema: dict[str, Any]) -> str:
    """``<full name>@<CRC-64-AVRO of the parsing canonical form, hex>``."""
    parsed = _parse(schema)
    full_name = parsed["name"]
    return f"{full_name}@{fingerprint(to_parsing_canonical_form(parsed), 'CRC-64-AVRO')}"


def _header(headers: Headers | None, name: str) -> bytes | None:
    items = headers.items() if isinstance(headers, dict) else headers or ()
    for key, value in items:
        if key == name:
            return value.encode() if isinstance(value, str) else value
    return None


class StorageEventCodec:
    """Encodes and decodes StorageEvent values, in the plain or the Confluent wire format."""

    def __init__(self, registry: RegistrySpec | None = None, schema: dict[str, Any] | None = None) -> None:
        shipped = schema is None
        self.schema = schema if schema is not None else load_schema()
        self._parsed = _parse(self.schema)
        # fastavro stays the decoder, and the encoder for a schema the compiler does not handle.
        fields = {f["name"] for f in self._parsed.get("fields", ())}
        self._compiled = compile_writer(self._parsed, attributes=fields <= _EVENT_FIELDS)
        self._compiled_takes_event = fields <= _EVENT_FIELDS
        self.fingerprint = schema_fingerprint(self.schema)
        self._header: tuple[str, str | bytes | None] = (SCHEMA_HEADER, self.fingerprint.encode())
        self._writers: dict[str, Any] = {self.fingerprint: self._parsed}
        # The shipped schema writes a dCache-only event with v1 (see the module doc).
        self._v1: Any = None
        self._v1_header: tuple[str, str | bytes | None] = self._header
        if shipped:
            for name in HISTORIC_SCHEMAS:
                self.register_writer(load_schema(name))
            v1 = load_schema(HISTORIC_SCHEMAS[0])
            self._v1 = compile_writer(_parse(v1), attributes=True)
            self._v1_header = (SCHEMA_HEADER, schema_fingerprint(v1).encode())
        self._registry_spec = registry
        self._lock = threading.Lock()
        self._client: Any = None
        self._serializer: Any = None
        self._deserializer: Any = None

    @property
    def confluent(self) -> bool:
        return self._registry_spec is not None

    def register_writer(self, schema: dict[str, Any]) -> str:
        """Make an older (or newer) writer schema readable in plain mode; returns its fingerprint."""
        fp = schema_fingerprint(schema)
        self._writers[fp] = _parse(schema)
        return fp

    # -- encode ----------------------------------------------------------------------------
    def encode(self, event: StorageEvent, topic: str) -> tuple[bytes, list[tuple[str, str | bytes | None]]]:
        """Value bytes and headers for one record."""
        if self.confluent:
            from confluent_kafka.serialization import MessageField, SerializationContext

            value = self._confluent_serializer()(event, SerializationContext(topic, MessageField.VALUE))
            return value, []
        if self._v1 is not None and not event.extended:
            return self._v1(event), [self._v1_header]
        if self._compiled is not None:
            datum: Any = event if self._compiled_takes_event else event.to_avro()
            return self._compiled(datum), [self._header]
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self._parsed, event.to_avro())
        return buf.getvalue(), [self._header]

    # -- decode ----------------------------------------------------------------------------
    def decode(self, value: bytes | None, headers: Headers | None, topic: str) -> StorageEvent:
        """Decode one value in whichever format it was written.

        Raises:
            CodecError: the value is empty, truncated, or written with an unknown schema.
        """
        if not value:
            raise CodecError("empty value (tombstone or poison record)")
        fp = _header(headers, SCHEMA_HEADER)
        if fp is not None:
            return self._decode_plain(value, fp.decode("utf-8", "replace"))
        if value[0] == _CONFLUENT_MAGIC and len(value) > 5:
            return self._decode_confluent(value, topic)
        raise CodecError(f"no {SCHEMA_HEADER} header and not Confluent wire format")

    def _decode_plain(self, value: bytes, fp: str) -> StorageEvent:
        writer = self._writers.get(fp)
        if writer is None:
            raise CodecError(f"unknown writer schema {fp!r} (known: {', '.join(self._writers)})")
        try:
            buf = io.BytesIO(value)
            datum: Any = fastavro.schemaless_reader(buf, writer, self._parsed)
            if buf.tell() != len(value):
                raise CodecError(f"{len(value) - buf.tell()} trailing bytes after the Avro datum")
            return StorageEvent.from_avro(datum)
        except CodecError:
            raise
        except Exception as exc:  # fastavro raises EOFError, ValueError, SchemaResolutionError...
            raise CodecError(f"cannot decode Avro datum with {fp}: {type(exc).__name__}: {exc}") from exc

    def _decode_confluent(self, value: bytes, topic: str) -> StorageEvent:
        if self._registry_spec is None:
            raise CodecError("value is in Confluent wire format, but kafka.schema_registry is not set")
        from confluent_kafka.serialization import MessageField, SerializationContext

        try:
            event: StorageEvent = self._confluent_deserializer()(
                value, SerializationContext(topic, MessageField.VALUE)
            )
        except Exception as exc:  # the registry client wraps decode and lookup failures alike
            raise CodecError(f"cannot decode Confluent wire format: {type(exc).__name__}: {exc}") from exc
        return event

    # -- confluent plumbing ----------------------------------------------------------------
    def _registry_client(self) -> Any:
        # One client per codec: serializer and deserializer share its schema-id cache.
        if self._client is None:
            self._client = self._new_registry_client()
        return self._client

    def _new_registry_client(self) -> Any:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        spec = self._registry_spec
        assert spec is not None
        conf: dict[str, Any] = {"url": spec.url}
        if spec.username is not None and spec.password is not None:
            conf["basic.auth.user.info"] = f"{spec.username}:{spec.password.reveal()}"
        if spec.ca_location is not None:
            conf["ssl.ca.location"] = spec.ca_location
        # new_client() understands mock:// URLs (confluent-kafka's in-process registry).
        return SchemaRegistryClient.new_client(conf)

    def _confluent_serializer(self) -> Any:
        with self._lock:
            if self._serializer is None:
                from confluent_kafka.schema_registry.avro import AvroSerializer

                self._serializer = AvroSerializer(
                    self._registry_client(),
                    json.dumps(self.schema),
                    to_dict=lambda event, _ctx: event.to_avro(),
                    conf={"auto.register.schemas": True},
                )
            return self._serializer

    def _confluent_deserializer(self) -> Any:
        with self._lock:
            if self._deserializer is None:
                from confluent_kafka.schema_registry.avro import AvroDeserializer

                self._deserializer = AvroDeserializer(
                    self._registry_client(),
                    json.dumps(self.schema),
                    from_dict=lambda datum, _ctx: StorageEvent.from_avro(datum),
                )
            return self._deserializer


def evolution_problems(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why readers of ``old`` data using ``new`` (and vice versa) would break; empty if safe.

    Checks the rules that matter for a record of primitives: a field added in ``new`` needs a
    default (new readers, old data); a field removed from ``new`` needs a default in ``old``
    (old readers, new data); a kept field keeps its type.
    """
    _parse(old)
    _parse(new)
    old_fields = {f["name"]: f for f in old.get("fields", [])}
    new_fields = {f["name"]: f for f in new.get("fields", [])}
    problems = []
    for name, f in new_fields.items():
        if name not in old_fields and "default" not in f:
            problems.append(f"field {name!r} was added without a default: new readers cannot read old data")
        elif name in old_fields and json.dumps(old_fields[name]["type"], sort_keys=True) != json.dumps(
            f["type"], sort_keys=True
        ):
            problems.append(f"field {name!r} changed type: {old_fields[name]['type']} -> {f['type']}")
    for name, f in old_fields.items():
        if name not in new_fields and "default" not in f:
            problems.append(
                f"field {name!r} was removed but has no default: old readers cannot read new data"
            )
    return problems
