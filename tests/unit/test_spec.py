from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

from dcnios.errors import ConfigError
from dcnios.secrets import Secret
from dcnios.spec import Duration, load_spec, parse_spec, spec_json_schema

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MINIMAL = """\
kafka:
  bootstrap_servers: "127.0.0.1:9092"
sources:
  - name: in
    endpoint: https://dcache.example.org:3880/api/v1
    paths: [/data/in]
    topic: dcache.events
consumers:
  - name: grayify
    topic: dcache.events
    oscar: {endpoint: "https://oscar.example.org", service: grayify, token: "t", input_path: /data/in}
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_spec(text, env=env or {})
    return [str(p) for p in info.value.problems]


def test_example_spec_is_valid() -> None:
    spec = load_spec(EXAMPLES / "pipeline.yaml", env={})
    consumer = spec.consumer("grayify")
    assert consumer.rate is not None and consumer.rate.per_second == 50
    assert consumer.retry.max_backoff == 300
    assert spec.source("dcache-in").topic_for("/data/in/raw/x/y.dat") == "dcache.raw"
    assert spec.source("dcache-in").topic_for("/data/in/y.dat") == "dcache.events"


def test_defaults_are_derived() -> None:
    spec = parse_spec(MINIMAL, env={})
    source, consumer = spec.sources[0], spec.consumers[0]
    assert source.client_id == "dcnios-in"
    assert source.events == ("IN_CLOSE_WRITE", "IN_MOVED_TO")
    assert source.channel_timeout == 3600
    assert consumer.group == "dcnios-grayify"
    assert consumer.dead_letter_topic == "dcache.events.dlq"
    assert consumer.ordering == "key" and consumer.payload == "native" and consumer.dcache_bodies
    assert consumer.rate is None


def test_rate_error_names_path_and_line() -> None:
    text = MINIMAL + "    rate: fast\n"
    assert problems(text) == ["consumers[0].rate: expected '<number>/s|/m|/h', got 'fast' (line 12)"]


def test_all_problems_are_reported_at_once() -> None:
    text = (
        MINIMAL.replace("paths: [/data/in]", "paths: [data/in]").replace(
            'token: "t"', 'token: "t", sevice: x'
        )
        + "    concurrency: many\n    rate: 5/s\n"
    )
    found = problems(text)
    assert (
        "sources[0].paths: expected absolute dCache paths without a trailing '/', got 'data/in' (line 6)"
        in found
    )
    assert "consumers[0].oscar.sevice: unknown key (did you mean 'service'?) (line 11)" in found
    assert "consumers[0].concurrency: expected an integer, got str 'many' (line 12)" in found
    assert len(found) == 3


def test_unknown_top_level_key_has_hint() -> None:
    assert problems(MINIMAL + "consumer: []\n") == [
        "consumer: unknown key (did you mean 'consumers'?) (line 12)"
    ]


def test_wrong_types() -> None:
    text = MINIMAL.replace("paths: [/data/in]", "paths: {a: 1}").replace('"127.0.0.1:9092"', "[1, 2]")
    found = problems(text)
    assert "kafka.bootstrap_servers: expected a string, got a list (line 2)" in found
    assert "sources[0].paths: expected a list, got a mapping (line 6)" in found


def test_missing_required_key() -> None:
    text = MINIMAL.replace("    topic: dcache.events\nconsumers", "consumers")
    assert problems(text) == ["sources[0].topic: is required (line 4)"]


def test_malformed_yaml_names_line() -> None:
    found = problems("kafka:\n  bootstrap_servers: [\n")
    assert len(found) == 1 and found[0].startswith("malformed YAML") and "(line 3)" in found[0]


def test_duplicate_keys_are_errors() -> None:
    assert problems(MINIMAL + "kafka: {}\n") == ["kafka: duplicate key (line 12)"]


def test_env_interpolation_and_missing_variable() -> None:
    text = MINIMAL.replace('token: "t"', 'token: "${OSCAR_TOKEN}"').replace(
        '"127.0.0.1:9092"', '"${KAFKA_HOST:-localhost}:${KAFKA_PORT}"'
    )
    assert problems(text) == [
        "kafka.bootstrap_servers: environment variable KAFKA_PORT is not set (line 2)",
        "consumers[0].oscar.token: environment variable OSCAR_TOKEN is not set (line 11)",
    ]
    spec = parse_spec(text, env={"OSCAR_TOKEN": "s3cr3t", "KAFKA_PORT": "9093"})
    assert spec.kafka.bootstrap_servers == "localhost:9093"
    token = spec.consumers[0].oscar.token
    assert isinstance(token, Secret) and token.reveal() == "s3cr3t"


def test_interpolated_numbers_are_typed() -> None:
    text = MINIMAL + "    concurrency: ${CONC}\n"
    assert parse_spec(text, env={"CONC": "7"}).consumers[0].concurrency == 7


def test_secret_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    text = MINIMAL.replace('token: "t"', "token_file: token")
    spec = parse_spec(text, env={}, base_dir=str(tmp_path))
    assert spec.consumers[0].oscar.token == Secret("from-file")
    assert problems(text)[0].startswith("consumers[0].oscar.token_file: cannot read secret file 'token'")
    both = MINIMAL.replace('token: "t"', 'token: "t", token_file: token')
    assert problems(both) == ["consumers[0].oscar.token: give either token or token_file, not both (line 11)"]


def test_secrets_are_masked_in_repr() -> None:
    spec = parse_spec(MINIMAL.replace('token: "t"', 'token: "hunter2"'), env={})
    assert "hunter2" not in repr(spec)
    assert "hunter2" not in str(spec.consumers[0].oscar)
    assert repr(spec.consumers[0].oscar.token) == "Secret('***')"


def test_auth_kinds_are_exclusive() -> None:
    text = MINIMAL.replace(
        "    topic: dcache.events\nconsumers",
        "    topic: dcache.events\n    auth: {username: a, password: b, token: c}\nconsumers",
    )
    found = problems(text)
    assert found == [
        "sources[0].auth: give exactly one of username/password, token, token_file, cert; "
        "got ['username/password', 'token'] (line 8)"
    ]


def test_security_protocol_needs_sasl() -> None:
    text = MINIMAL.replace(
        '  bootstrap_servers: "127.0.0.1:9092"', '  bootstrap_servers: "h:1"\n  security_protocol: sasl_ssl'
    )
    assert problems(text) == ["kafka.sasl: is required with security_protocol SASL_SSL (line 1)"]


def test_cross_references() -> None:
    text = MINIMAL + "nifi: {endpoint: 'https://nifi:8443/nifi-api', consumers: [grayfy]}\n"
    assert problems(text) == [
        "nifi.consumers[0]: no consumer named 'grayfy'; consumers are grayify (line 12)"
    ]
    dup = MINIMAL + MINIMAL.split("consumers:\n")[1]
    assert "consumers[1].name: duplicate name 'grayify' (line 12)" in problems(dup)


@pytest.mark.parametrize(
    ("raw", "seconds"), [("250ms", 0.25), ("10s", 10), ("5m", 300), ("1h", 3600), (2, 2), ("1.5", 1.5)]
)
def test_durations(raw: object, seconds: float) -> None:
    assert Duration.parse(raw) == seconds


def test_json_schema_accepts_example_and_rejects_typo() -> None:
    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    doc = yaml.safe_load((EXAMPLES / "pipeline.yaml").read_text())
    jsonschema.validate(doc, schema)
    doc["kafka"]["bootstrap_server"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)
    assert schema["properties"]["consumers"]["items"]["properties"]["oscar"]["properties"]["token_file"]


def test_avro_schema_is_package_data() -> None:
    text = resources.files("dcnios.schemas").joinpath("storage_event.avsc").read_text()
    fields = {f["name"]: f for f in json.loads(text)["fields"]}
    for name in (
        "source",
        "path",
        "name",
        "mask",
        "cookie",
        "is_dir",
        "channel",
        "event_id",
        "subscription",
        "observed_at",
        "synthetic",
    ):
        assert fields[name].get("doc"), name
