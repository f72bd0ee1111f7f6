"""Sources beyond dCache without sockets: the S3 translation, the source spec, the consumer's body."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dcnios.cli.tail import record_json as tail_json
from dcnios.codec import StorageEventCodec
from dcnios.consumers.record import DeadLetter, Prepared, RecordPolicy
from dcnios.deploy.recipe import render
from dcnios.errors import ConfigError
from dcnios.producers.s3_notifications import translate
from dcnios.producers.upstream import Delivery, Events, Rejected, Skipped
from dcnios.spec import S3NotificationsSourceSpec, load_spec, parse_spec, spec_json_schema
from dcnios.storage_event import V1_FIELDS, StorageEvent, dedup_key

CODEC = StorageEventCodec()

AWS_TEST_EVENT = (
    b'{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2026-12-06T10:00:00.000Z",'
    b'"Bucket":"b","RequestId":"5582815E1AEA5ADF","HostId":"8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"}'
)


def record(
    source: str = "aws:s3", name: str = "ObjectCreated:Put", key: str = "in/img+1.tif", **obj: Any
) -> dict[str, Any]:
    return {
        "eventVersion": "2.1",
        "eventSource": source,
        "eventName": name,
        "eventTime": "2026-12-06T10:00:00.000Z",
        "s3": {
            "bucket": {"name": "b", "arn": "arn:aws:s3:::b"},
            "object": {"key": key, "size": 7, "eTag": "e", **obj},
        },
    }


def delivery(doc: Any) -> Delivery:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return Delivery(body, "test", received_ms=1_700_000_000_000)


def one(doc: Any, fmt: str = "aws", **kw: Any) -> StorageEvent:
    out = translate(delivery(doc), source="s", fmt=fmt, **kw)
    assert isinstance(out, Events) and len(out.events) == 1, out
    return out.events[0]


def test_aws_key_is_decoded_for_the_path_and_kept_in_the_original() -> None:
    doc = {"Records": [record(key="in/img+1%2B2%C3%BC.tif", sequencer="0A1B", versionId="v3")]}
    event = one(doc)
    assert event.path == "b/in/img 1+2ü.tif" and event.object_key == "in/img 1+2ü.tif"
    assert event.name == "img 1+2ü.tif" and event.bucket == "b" and event.size == 7
    assert event.event_name == "s3:ObjectCreated:Put"  # AWS sends it without s3:
    assert event.sequencer == "0A1B" and event.version_id == "v3" and event.etag == "e"
    assert event.original == delivery(doc).body and event.observed_at == 1_700_000_000_000
    assert event.key == "b/in/img 1+2ü.tif".encode()


def test_test_event_and_other_event_names_are_skipped() -> None:
    assert translate(delivery(AWS_TEST_EVENT), source="s", fmt="aws") == Skipped("s3:TestEvent")
    removed = {"Records": [record(name="ObjectRemoved:Delete")]}
    skipped = translate(delivery(removed), source="s", fmt="aws")
    assert isinstance(skipped, Skipped) and "s3:ObjectRemoved:Delete" in skipped.reason
    taken = translate(delivery(removed), source="s", fmt="aws", events=("s3:ObjectRemoved:*",))
    assert isinstance(taken, Events)


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not a JSON object but list"),
        ({"Records": []}, "no Records[]"),
        ({"Records": ["x"]}, "Records[0]: expected an object, got str"),
        (
            {"Records": [record(source="minio:s3")]},
            "Records[0].eventSource: expected 'aws:s3' (format aws), got 'minio:s3'",
        ),
        ({"Records": [{**record(), "eventName": 3}]}, "Records[0].eventName: expected a string, got int"),
        (
            {"Records": [{**record(), "s3": {"object": {}}}]},
            "Records[0].s3.bucket: expected an object, got nothing",
        ),
        ({"Records": [record(key="")]}, "Records[0].s3.object.key: empty"),
        (
            {"Records": [record(size=-1)]},
            "Records[0].s3.object.size: expected a non-negative integer, got -1",
        ),
    ],
)
def test_bad_notifications_are_rejected_naming_the_field(doc: Any, reason: str) -> None:
    out = translate(delivery(doc), source="s", fmt="aws")
    assert isinstance(out, Rejected) and out.reason.startswith(reason), out


def test_a_notification_of_several_records_is_split_so_each_is_records_0() -> None:
    doc = {"Records": [record(key="a", sequencer="1"), record(key="b", sequencer="2")]}
    out = translate(delivery(doc), source="s", fmt="aws")
    assert isinstance(out, Events)
    for event, key in zip(out.events, ("a", "b"), strict=True):
        assert json.loads(event.original or b"")["Records"] == [record(key=key, sequencer=event.sequencer)]
    assert dedup_key(out.events[0]) != dedup_key(out.events[1])


def test_ceph_is_translated_for_the_supervisor() -> None:
    rgw = record(source="ceph:s3", key="in/a+b%20c d.dat", size="1024")  # older RGW: size as a string
    event = one({"Records": [rgw]}, fmt="ceph")
    assert event.object_key == "in/a+b%20c d.dat"  # RGW sends the key as it is: not decoded
    assert event.size == 1024 and event.event_name == "s3:ObjectCreated:Put"
    sent = json.loads(event.original or b"")
    translated = sent["Records"][0]
    assert translated["eventSource"] == "minio:s3" and translated["eventName"] == "s3:ObjectCreated:Put"
    assert translated["s3"]["object"]["key"] == "in/a%2Bb%2520c+d.dat"  # unquote_plus gives the key back
    wrapped = json.loads(one({"Records": [rgw]}, fmt="ceph", storage_provider="rgw").original or b"")
    assert wrapped == {"storage_provider": "rgw", "event": sent}


def test_minio_body_passes_through_unchanged() -> None:
    doc = {
        "EventName": "s3:ObjectCreated:Put",
        "Key": "b/in/x y",
        "Records": [record("minio:s3", "s3:ObjectCreated:Put", "in%2Fx+y")],
    }
    body = json.dumps(doc, separators=(",", ":")).encode()
    event = one(body, fmt="minio")
    assert event.original == body and event.object_key == "in/x y"


def spec_text(source: str) -> str:
    return f"""\
kafka: {{bootstrap_servers: "127.0.0.1:9092"}}
sources:
  - name: s3in
    type: s3-notifications
    topic: s3.events
{source}
consumers:
  - name: svc
    topic: s3.events
    oscar: {{endpoint: "https://oscar.example.org", service: svc, token: t}}
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_spec(text, env=env or {})
    return [str(p) for p in info.value.problems]


def test_s3_source_defaults_and_secrets(tmp_path: Any) -> None:
    token = tmp_path / "token"
    token.write_text("hook-secret\n")
    spec = parse_spec(
        spec_text(f"    format: minio\n    webhook: {{token_file: {token}}}"), env={}, base_dir=str(tmp_path)
    )
    source = spec.sources[0]
    assert isinstance(source, S3NotificationsSourceSpec)
    assert source.webhook is not None and source.webhook.host == "127.0.0.1" and source.webhook.port == 8470
    assert source.webhook.token is not None and source.webhook.token.reveal() == "hook-secret"
    assert "hook-secret" not in repr(spec)
    assert source.events == ("s3:ObjectCreated:*",)
    kafka = parse_spec(spec_text("    format: ceph\n    kafka: {topic: rgw.events}"), env={}).sources[0]
    assert isinstance(kafka, S3NotificationsSourceSpec) and kafka.kafka is not None
    assert kafka.kafka.group == "dcnios-source-s3in"
    # The consumer of an S3 topic needs no input path, even with a service token.
    assert spec.consumers[0].payload == "native"


def test_s3_source_errors_name_the_key_and_line() -> None:
    assert problems(spec_text("    format: aws\n    kafka: {topic: x}")) == [
        "sources[0].kafka: format aws reads an SQS queue (sqs:): S3 sends notifications to SQS, "
        "not here (line 7)"
    ]
    assert problems(spec_text("    format: minio")) == [
        "sources[0]: give exactly one of kafka, webhook, sqs; got none (line 3)"
    ]
    assert problems(spec_text("    format: minio\n    webhook: {port: 0}\n    paths: [/x]")) == [
        "sources[0].webhook.port: expected a TCP port (1-65535), got 0 (line 7)",
        "sources[0].paths: unknown key (line 8)",
    ]
    assert problems(
        spec_text("    format: aws\n    sqs: {queue_url: 'https://q/1', secret_access_key: '${NOPE}'}")
    ) == ["sources[0].sqs.secret_access_key: environment variable NOPE is not set (line 7)"]
    assert problems(spec_text("    format: minio\n    kafka: {topic: s3.events}")) == [
        "sources[0].kafka.topic: must differ from the topics this source writes (line 7)"
    ]
    assert problems(spec_text("    format: minio\n    kafka: {topic: x}\n    events: [ObjectCreated:*]")) == [
        "sources[0].events: S3 event names start with 's3:' (Ceph's too; dcnios adds it), "
        "got 'ObjectCreated:*' (line 8)"
    ]
    text = spec_text("    format: minio\n    kafka: {topic: x}").replace(
        "type: s3-notifications", "type: s3-notification"
    )
    assert problems(text) == [
        "sources[0].type: expected one of dcache, s3-notifications, rucio, got 's3-notification' "
        "(did you mean 's3-notifications'?) (line 4)"
    ]


def test_json_schema_tells_the_source_kinds_apart() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    schema = spec_json_schema()
    jsonschema.validate(yaml.safe_load(spec_text("    format: minio\n    kafka: {topic: x}")), schema)
    bad = yaml.safe_load(spec_text("    format: minio\n    kafka: {topic: x}\n    recursive: true"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def _policy(payload: str, input_path: str | None = "/data/in") -> RecordPolicy:
    spec = parse_spec(
        "consumers:\n  - {name: c, topic: t, payload: "
        + payload
        + ", oscar: {endpoint: 'https://o', service: s, username: u, password: p}}\n",
        env={},
    )
    return RecordPolicy(spec.consumers[0], input_path=input_path, tracking=False)


DCACHE = StorageEvent("in", "/data/in/f", "f", ("IN_CLOSE_WRITE",), None, False, "ch", 1, "https://d/s", 0)
S3 = StorageEvent("s", "b/k", "k", (), None, False, "aws", None, "", 0, kind="s3", original=b'{"Records":[]}')


def test_native_body_per_kind() -> None:
    native = _policy("native")
    prepared = native.prepare(S3)
    assert isinstance(prepared, Prepared) and prepared.body == S3.original
    prepared = native.prepare(DCACHE)
    assert isinstance(prepared, Prepared) and json.loads(prepared.body)["event"]["name"] == "f"
    # native without a webdav.dcache input: S3 records go, a dCache record is dead-lettered, saying why.
    without = _policy("native", input_path=None)
    assert isinstance(without.prepare(S3), Prepared)
    refused = without.prepare(DCACHE)
    assert isinstance(refused, DeadLetter) and refused.reason == "config" and "input path" in refused.error


def test_payload_modes_refuse_what_they_cannot_send() -> None:
    assert isinstance(_policy("dcache").prepare(S3), DeadLetter)
    assert isinstance(_policy("raw", None).prepare(DCACHE), DeadLetter)
    raw = StorageEvent(
        "t", "t[0]@3", None, (), None, False, "t[0]", 3, "", 0, kind="raw", original=b"\x00any"
    )
    prepared = _policy("raw", None).prepare(raw)
    assert isinstance(prepared, Prepared) and prepared.body == b"\x00any"
    record = _policy("record", None).prepare(S3)
    assert isinstance(record, Prepared) and json.loads(record.body)["kind"] == "s3"


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("s3-minio-kafka", "minio"), ("s3-minio-webhook", "minio"), ("s3-ceph", "ceph"), ("s3-aws-sqs", "aws")],
)
def test_example_specs_of_every_source_are_valid(name: str, fmt: str) -> None:
    spec = load_spec(EXAMPLES / f"{name}.yaml", env={})
    (source,) = spec.sources
    assert isinstance(source, S3NotificationsSourceSpec) and source.format == fmt
    assert spec.consumers[0].payload == "native"


def test_the_raw_example_is_valid() -> None:
    spec = load_spec(EXAMPLES / "kafka-raw.yaml", env={})
    assert spec.sources == () and spec.consumers[0].payload == "raw"


def test_the_nifi_recipe_refuses_what_it_cannot_carry() -> None:
    """The recipe's flow decodes dCache records only: an S3 topic or payload: raw is refused."""
    spec = parse_spec(spec_text("    format: minio\n    kafka: {topic: x}"), env={})
    with pytest.raises(ConfigError, match="records of s3-notifications sources"):
        render(spec, spec.consumers[0], version=2, partitions=1, authorization="Bearer x")
    raw = parse_spec(
        "consumers:\n  - {name: c, topic: t, payload: raw,\n"
        "     oscar: {endpoint: 'https://o', service: s, token: x}}\n",
        env={},
    )
    with pytest.raises(ConfigError, match="not payload: raw"):
        render(raw, raw.consumers[0], version=2, partitions=1, authorization="Bearer x")


def test_tail_shows_an_s3_record_with_its_notification_as_text() -> None:
    class Msg:
        def __init__(self, event: StorageEvent) -> None:
            self._value, self._headers = CODEC.encode(event, "t")

        def headers(self) -> Any:
            return self._headers

        def value(self) -> bytes:
            return self._value

        def topic(self) -> str:
            return "t"

        def partition(self) -> int:
            return 0

        def offset(self) -> int:
            return 1

        def timestamp(self) -> tuple[int, int]:
            return (1, 5)

        def key(self) -> bytes:
            return b"b/k"

    shown = json.loads(json.dumps(tail_json(Msg(S3), CODEC)))  # type: ignore[arg-type]
    assert shown["value"]["original"] == '{"Records":[]}' and shown["value"]["kind"] == "s3"
    dcache = tail_json(Msg(DCACHE), CODEC)  # type: ignore[arg-type]
    assert list(dcache["value"]) == list(V1_FIELDS)


def test_an_sns_envelope_is_opened() -> None:
    inner = json.dumps({"Records": [record(key="in/x+1")]})
    envelope = {
        "Type": "Notification",
        "MessageId": "m",
        "TopicArn": "arn:aws:sns:eu-west-1:1:t",
        "Message": inner,
    }
    event = one(envelope)
    assert event.object_key == "in/x 1" and event.original == inner.encode()
    test = {"Type": "Notification", "Message": AWS_TEST_EVENT.decode()}
    assert translate(delivery(test), source="s", fmt="aws") == Skipped("s3:TestEvent")


def test_a_native_consumer_of_a_dcache_topic_still_needs_the_input_path_with_a_token() -> None:
    text = """\
sources:
  - {name: in, endpoint: "https://d:3880/api/v1", paths: [/data/in], topic: dcache.events}
consumers:
  - {name: c, topic: dcache.events, oscar: {endpoint: "https://o", service: s, token: t}}
"""
    assert problems(text) == [
        "consumers[0].oscar.input_path: needed for payload: native on a topic a dcache source writes, "
        "with a service token (the service's webdav input path), or give username/password to read it "
        "from the service (line 4)"
    ]
    assert problems(text.replace("token: t}", "token: t}, payload: dcache")) == [
        "consumers[0].oscar.input_path: needed for payload: dcache with a service token (the service's "
        "webdav input path), or give username/password to read it from the service (line 4)"
    ]
