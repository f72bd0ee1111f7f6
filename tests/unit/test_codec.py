from __future__ import annotations

import copy
import dataclasses
import io
import json
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcnios.avro_writer import compile_writer
from dcnios.codec import SCHEMA_HEADER, StorageEventCodec, evolution_problems, load_schema, schema_fingerprint
from dcnios.errors import CodecError, SchemaError
from dcnios.inotify import MASK_ORDER
from dcnios.spec import RegistrySpec
from dcnios.storage_event import KINDS, V1_FIELDS, StorageEvent, dcache_envelope, dedup_key, record_json

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
_maybe_text = st.one_of(st.none(), st.text(max_size=200))
#: Events of every kind: the v2 fields set or not, independently (a dCache event leaves them unset).
any_events = st.builds(
    event,
    path=st.text(min_size=1, max_size=300),
    name=st.one_of(st.none(), st.text(max_size=300)),
    mask=st.lists(st.sampled_from(MASK_ORDER), unique=True).map(tuple),
    event_id=st.one_of(st.none(), st.integers(min_value=0, max_value=2**63 - 1)),
    kind=st.sampled_from(KINDS),
    event_name=_maybe_text,
    bucket=_maybe_text,
    object_key=_maybe_text,
    size=st.one_of(st.none(), st.integers(min_value=0, max_value=2**63 - 1)),
    etag=_maybe_text,
    version_id=_maybe_text,
    sequencer=_maybe_text,
    scope=_maybe_text,
    did_name=_maybe_text,
    rse=_maybe_text,
    original=st.one_of(st.none(), st.binary(max_size=2000)),
)
V1 = load_schema("storage_event.v1.avsc")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(events, any_events))
def test_plain_round_trip(ev: StorageEvent) -> None:
    codec = StorageEventCodec()
    value, headers = codec.encode(ev, "t")
    written_with = codec.fingerprint if ev.extended else schema_fingerprint(V1)
    assert headers == [(SCHEMA_HEADER, written_with.encode())]
    assert codec.decode(value, headers, "t") == ev


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_a_dcache_event_is_written_as_v1_did_it(ev: StorageEvent) -> None:
    # Byte for byte and header for header as before v2: a reader deployed before it reads on.
    assert not ev.extended
    old = StorageEventCodec(schema=V1)
    assert StorageEventCodec().encode(ev, "t") == old.encode(ev, "t")
    value, headers = StorageEventCodec().encode(ev, "t")
    assert old.decode(value, headers, "t") == ev


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(any_events)
def test_v1_and_v2_read_each_other(ev: StorageEvent) -> None:
    assert evolution_problems(V1, load_schema()) == []
    new, old = StorageEventCodec(), StorageEventCodec(schema=V1)
    # Old data, new reader: the v2 fields take their defaults (the v1 schema ships as a known writer).
    v1_part = dataclasses.replace(
        ev,
        kind="dcache",
        event_name=None,
        bucket=None,
        object_key=None,
        size=None,
        etag=None,
        version_id=None,
        sequencer=None,
        scope=None,
        did_name=None,
        rse=None,
        original=None,
    )
    value, headers = old.encode(v1_part, "t")
    assert new.decode(value, headers, "t") == v1_part
    # New data, an old reader that learnt the v2 writer: it reads the v1 fields and skips the rest.
    old.register_writer(load_schema())
    value, headers = new.encode(ev, "t")
    assert {f: getattr(old.decode(value, headers, "t"), f) for f in V1_FIELDS} == {
        f: getattr(ev, f) for f in V1_FIELDS
    }


def test_the_shipped_v1_schema_is_the_schema_of_old_records() -> None:
    # Frozen: storage_event.v1.avsc is the first twelve fields of the current schema, unchanged.
    assert V1["fields"] == load_schema()["fields"][: len(V1_FIELDS)]
    assert [f["name"] for f in V1["fields"]] == list(V1_FIELDS)
    assert schema_fingerprint(V1) == "dcnios.StorageEvent@4e187c5b9c5f3b7d"


# No deadline: each example builds a registry client, whose first call can take longer than
# hypothesis's 200 ms on a loaded 2-core machine; this test is about bytes, not time.
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(events, any_events))
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
    new = V1
    old = _without(new, "gap")
    assert evolution_problems(old, new) == []
    # Old writer, new reader: the new field takes its default.
    old_codec = StorageEventCodec(schema=old)
    new_codec = StorageEventCodec(schema=V1)
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
    broken["fields"].append({"name": "checksum", "type": "long"})
    assert evolution_problems(new, broken) == [
        "field 'checksum' was added without a default: new readers cannot read old data"
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


def _s3(**overrides: Any) -> StorageEvent:
    fields: dict[str, Any] = {
        "kind": "s3",
        "path": "b/k 1",
        "bucket": "b",
        "object_key": "k 1",
        "event_name": "s3:ObjectCreated:Put",
        "etag": "e1",
        "sequencer": "0055AED6DCD90281E5",
        "event_id": None,
        "original": b"{}",
    }
    return event(**{**fields, **overrides})


def test_s3_dedup_key_is_the_object_and_the_event() -> None:
    one = _s3()
    # The same notification delivered twice (SQS redelivery, a webhook retry) is one event, even
    # when it came another way (observed at another time, through another source's record).
    assert dedup_key(one) == dedup_key(_s3(observed_at=5, original=b'{"other": "bytes"}'))
    # A new write of the same key has a later sequencer: another event.
    assert dedup_key(one) != dedup_key(_s3(sequencer="0055AED6DCD90281F0"))
    assert dedup_key(one) != dedup_key(_s3(event_name="s3:ObjectRemoved:Delete"))
    assert dedup_key(one) != dedup_key(_s3(object_key="k 2", path="b/k 2"))
    # Without a sequencer: the version, else the ETag (same content, same event).
    assert dedup_key(_s3(sequencer=None, version_id="v1")) != dedup_key(_s3(sequencer=None, version_id="v2"))
    assert dedup_key(_s3(sequencer=None)) != dedup_key(_s3(sequencer=None, etag="e2"))


def test_raw_and_rucio_dedup_keys() -> None:
    raw = event(kind="raw", channel="t[0]", event_id=5, original=b"x")
    assert (
        dedup_key(raw)
        == "raw#t[0]#5"
        != dedup_key(event(kind="raw", channel="t[0]", event_id=6, original=b"x"))
    )
    rucio = event(kind="rucio", original=b'{"event_type":"close"}')
    assert dedup_key(rucio) == dedup_key(
        event(kind="rucio", original=b'{"event_type":"close"}', observed_at=9)
    )
    assert dedup_key(rucio) != dedup_key(event(kind="rucio", original=b'{"event_type":"open"}'))


def test_record_json_of_a_dcache_event_is_the_v1_record() -> None:
    # What NiFi's JsonRecordSetWriter writes for the v1 record the producer wrote: unchanged by v2.
    assert list(json.loads(record_json(event()))) == list(V1_FIELDS)
    s3 = json.loads(record_json(_s3()))
    assert s3["kind"] == "s3" and s3["object_key"] == "k 1" and "original" not in s3


def test_datum_matches_avsc_exactly() -> None:
    # Every StorageEvent field is in the schema and vice versa: no silent drift.
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(load_schema()), event().to_avro())
    assert set(event().to_avro()) == {f["name"] for f in load_schema()["fields"]}


def _fastavro_bytes(schema: dict[str, Any], datum: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema, _force=True), datum)
    return buf.getvalue()


#: Every version of the StorageEvent schema: today's (v2), v1, and the ones before gap and synthetic.
SCHEMA_VERSIONS = [
    load_schema(),
    V1,
    _without(V1, "gap"),
    _without(_without(V1, "gap"), "synthetic"),
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(events, any_events))
def test_the_compiled_writer_is_byte_identical_to_fastavro(ev: StorageEvent) -> None:
    for schema in SCHEMA_VERSIONS:
        parsed = fastavro.parse_schema(schema, _force=True)
        names = {f["name"] for f in schema["fields"]}
        datum = {k: v for k, v in ev.to_avro().items() if k in names}
        by_attribute, by_key = compile_writer(parsed, attributes=True), compile_writer(parsed)
        assert by_attribute is not None and by_key is not None
        assert by_attribute(ev) == by_key(datum) == _fastavro_bytes(schema, datum)
    value, _ = StorageEventCodec().encode(ev, "t")
    written_with = load_schema() if ev.extended else V1
    names = {f["name"] for f in written_with["fields"]}
    assert value == _fastavro_bytes(written_with, {k: v for k, v in ev.to_avro().items() if k in names})


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
