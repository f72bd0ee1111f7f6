from __future__ import annotations

import copy
import io
import json
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcnios.avro_writer import compile_writer
from dcnios.codec import SCHEMA_HEADER, StorageEventCodec, evolution_problems, load_schema
from dcnios.errors import CodecError, SchemaError
from dcnios.inotify import MASK_ORDER
from dcnios.spec import RegistrySpec
from dcnios.storage_event import StorageEvent, dcache_envelope, dedup_key

SUB = (
    "https://dcache.example.org:3880/api/v1/events/channels/q3Xv0cZkS9mW1bT7yR2uPg"
    "/subscriptions/inotify/AAChssPU5fYHGCk6S1xtfo-Q"
)


def event(**overrides: Any) -> StorageEvent:
    base: dict[str, Any] = {
        "source": "in",
        "path": "/data/in/file1.dat",
        "name": "file1.dat",
        "mask": ("IN_CLOSE_WRITE",),
        "cookie": None,
        "is_dir": False,
        "channel": "q3Xv0cZkS9mW1bT7yR2uPg",
        "event_id": 7,
        "subscription": SUB,
        "observed_at": 1_700_000_000_123,
    }
    base.update(overrides)
    return StorageEvent(**base)


events = st.builds(
    event,
    path=st.text(min_size=1, max_size=300).map(lambda s: "/" + s),
    name=st.one_of(st.none(), st.text(max_size=5000)),
    mask=st.lists(st.sampled_from(MASK_ORDER), unique=True).map(tuple),
    cookie=st.one_of(st.none(), st.text(max_size=30)),
    is_dir=st.booleans(),
    event_id=st.one_of(st.none(), st.integers(min_value=0, max_value=2**63 - 1)),
    observed_at=st.integers(min_value=0, max_value=2**42),
    synthetic=st.booleans(),
    gap=st.one_of(st.none(), st.sampled_from(["EVENT_LOSS", "CHANNEL_LOST"])),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_plain_round_trip(ev: StorageEvent) -> None:
    codec = StorageEventCodec()
    value, headers = codec.encode(ev, "t")
    assert headers == [(SCHEMA_HEADER, codec.fingerprint.encode())]
    assert codec.decode(value, headers, "t") == ev


# No deadline: each example builds a registry client, whose first call can take longer than
# hypothesis's 200 ms on a loaded 2-core machine; this test is about bytes, not time.
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_confluent_round_trip(ev: StorageEvent) -> None:
    codec = StorageEventCodec(RegistrySpec(url="mock://dcnios-test"))
    value, headers = codec.encode(ev, "topic-a")
    assert headers == [] and value[0] == 0
    assert codec.decode(value, headers, "topic-a") == ev


def test_fingerprint_header_names_the_schema() -> None:
    codec = StorageEventCodec()
    name, _, fp = codec.fingerprint.partition("@")
    assert name == "dcnios.StorageEvent" and len(fp) == 16 and int(fp, 16) >= 0


def test_poison_values_raise_codec_error() -> None:
    codec = StorageEventCodec()
    value, headers = codec.encode(event(), "t")
    with pytest.raises(CodecError, match="empty value"):
        codec.decode(b"", headers, "t")
    with pytest.raises(CodecError, match="cannot decode"):
        codec.decode(value[:5], headers, "t")
    with pytest.raises(CodecError, match="trailing bytes"):
        codec.decode(value + b"\x00", headers, "t")
    with pytest.raises(CodecError, match="unknown writer schema"):
        codec.decode(value, [(SCHEMA_HEADER, b"dcnios.StorageEvent@0000000000000000")], "t")
    with pytest.raises(CodecError, match="no dcnios-schema header"):
        codec.decode(b"{}", [], "t")
    with pytest.raises(CodecError, match="schema_registry is not set"):
        codec.decode(b"\x00\x00\x00\x00\x01abc", [], "t")


def _without(schema: dict[str, Any], field: str) -> dict[str, Any]:
    old = copy.deepcopy(schema)
    old["fields"] = [f for f in old["fields"] if f["name"] != field]
    return old


def test_adding_an_optional_field_keeps_old_readers_working() -> None:
    new = load_schema()
    old = _without(new, "gap")
    assert evolution_problems(old, new) == []
    # Old writer, new reader: the new field takes its default.
    old_codec = StorageEventCodec(schema=old)
    new_codec = StorageEventCodec()
    new_codec.register_writer(old)
    ev = event(gap=None)
    value, headers = old_codec.encode(ev, "t")
    assert new_codec.decode(value, headers, "t") == ev
    # New writer, old reader: the reader skips the field it does not know.
    old_codec.register_writer(new)
    value, headers = new_codec.encode(event(gap="EVENT_LOSS", synthetic=True), "t")
    assert old_codec.decode(value, headers, "t").synthetic is True


def test_broken_evolution_is_detected() -> None:
    new = load_schema()
    broken = copy.deepcopy(new)
    broken["fields"].append({"name": "size", "type": "long"})
    assert evolution_problems(new, broken) == [
        "field 'size' was added without a default: new readers cannot read old data"
    ]
    retyped = copy.deepcopy(new)
    retyped["fields"][0]["type"] = "int"
    assert evolution_problems(new, retyped) == ["field 'source' changed type: string -> int"]
    removed = _without(new, "channel")
    assert "removed but has no default" in evolution_problems(new, removed)[0]
    # And a reader really fails on such data, as a typed error.
    reader = StorageEventCodec(schema=broken)
    reader.register_writer(new)
    value, headers = StorageEventCodec().encode(event(), "t")
    with pytest.raises(CodecError):
        reader.decode(value, headers, "t")


def test_invalid_schema_is_schema_error() -> None:
    with pytest.raises(SchemaError):
        StorageEventCodec(schema={"type": "record", "name": "x", "fields": [{"name": "a", "type": "nope"}]})


def test_envelope_is_byte_exact() -> None:
    # The frame of dcache-events.md section 4.2, data line.
    expected = (
        b'{"event":{"name":"file1.dat","mask":["IN_CLOSE_WRITE"]},"subscription":"https://dcache.example.org:3880'
        b'/api/v1/events/channels/q3Xv0cZkS9mW1bT7yR2uPg/subscriptions/inotify/AAChssPU5fYHGCk6S1xtfo-Q"}'
    )
    assert dcache_envelope(event()) == expected
    moved = event(name="f.dat", cookie="0r6/JbKH+oZ0D2ETnzGMQA", mask=("IN_MOVED_TO",))
    assert dcache_envelope(moved).startswith(
        b'{"event":{"name":"f.dat","cookie":"0r6/JbKH+oZ0D2ETnzGMQA","mask":["IN_MOVED_TO"]}'
    )
    self_event = event(name=None, mask=("IN_DELETE_SELF", "IN_ISDIR"))
    assert dcache_envelope(self_event).startswith(b'{"event":{"mask":["IN_DELETE_SELF","IN_ISDIR"]},')


@given(st.text(max_size=200))
def test_envelope_parses_back(name: str) -> None:
    data = json.loads(dcache_envelope(event(name=name)))
    assert data["event"]["name"] == name


def test_envelope_escapes_like_jackson() -> None:
    assert b'"name":"a\\u001Fb\\n\xc3\xa4/"' in dcache_envelope(event(name="a\x1fb\nä/"))


def test_dedup_key() -> None:
    assert dedup_key(event()) == "q3Xv0cZkS9mW1bT7yR2uPg#7"
    synthetic = event(event_id=None, synthetic=True)
    assert dedup_key(synthetic) == dedup_key(event(event_id=None, synthetic=True, observed_at=1))
    assert dedup_key(synthetic) != dedup_key(event(event_id=None, path="/other"))


def test_datum_matches_avsc_exactly() -> None:
    # Every StorageEvent field is in the schema and vice versa: no silent drift.
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(load_schema()), event().to_avro())
    assert set(event().to_avro()) == {f["name"] for f in load_schema()["fields"]}


def _fastavro_bytes(schema: dict[str, Any], datum: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema, _force=True), datum)
    return buf.getvalue()


#: Every version of the StorageEvent schema: today's, and the ones before gap and synthetic.
SCHEMA_VERSIONS = [
    load_schema(),
    _without(load_schema(), "gap"),
    _without(_without(load_schema(), "gap"), "synthetic"),
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_the_compiled_writer_is_byte_identical_to_fastavro(ev: StorageEvent) -> None:
    for schema in SCHEMA_VERSIONS:
        parsed = fastavro.parse_schema(schema, _force=True)
        names = {f["name"] for f in schema["fields"]}
        datum = {k: v for k, v in ev.to_avro().items() if k in names}
        by_attribute, by_key = compile_writer(parsed, attributes=True), compile_writer(parsed)
        assert by_attribute is not None and by_key is not None
        assert by_attribute(ev) == by_key(datum) == _fastavro_bytes(schema, datum)
    value, _ = StorageEventCodec().encode(ev, "t")
    assert value == _fastavro_bytes(load_schema(), ev.to_avro())


RICH = {
    "type": "record",
    "name": "Rich",
    "fields": [
        {"name": "i", "type": "int"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": ["null", "double"]},
        {"name": "raw", "type": "bytes"},
        {"name": "flags", "type": {"type": "array", "items": "boolean"}},
        {"name": "tags", "type": {"type": "map", "values": "long"}},
        {
            "name": "inner",
            "type": {"type": "record", "name": "Inner", "fields": [{"name": "s", "type": "string"}]},
        },
        {"name": "later", "type": ["string", "null"]},
    ],
}
_RICH_DATA = st.fixed_dictionaries(
    {
        "i": st.integers(min_value=-(2**31), max_value=2**31 - 1),
        "f": st.floats(width=32, allow_nan=False),
        "d": st.one_of(st.none(), st.floats(allow_nan=False)),
        "raw": st.binary(max_size=300),
        "flags": st.lists(st.booleans(), max_size=20),
        "tags": st.dictionaries(st.text(max_size=10), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        "inner": st.fixed_dictionaries({"s": st.text(max_size=100)}),
        "later": st.one_of(st.none(), st.text(max_size=20)),
    }
)


@given(_RICH_DATA)
def test_the_compiled_writer_covers_every_type_it_accepts(datum: dict[str, Any]) -> None:
    writer = compile_writer(fastavro.parse_schema(RICH, _force=True))
    assert writer is not None and writer(datum) == _fastavro_bytes(RICH, datum)


def test_a_schema_the_compiler_does_not_handle_is_left_to_fastavro() -> None:
    with_enum = copy.deepcopy(load_schema())
    with_enum["fields"].append(
        {
            "name": "kind",
            "type": ["null", {"type": "enum", "name": "Kind", "symbols": ["A"]}],
            "default": None,
        }
    )
    assert compile_writer(fastavro.parse_schema(with_enum, _force=True)) is None
    three_way = {"type": "record", "name": "U", "fields": [{"name": "u", "type": ["null", "int", "string"]}]}
    assert compile_writer(fastavro.parse_schema(three_way, _force=True)) is None
