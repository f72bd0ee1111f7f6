"""NiFi recipes offline: every variant validates, the validator catches what NiFi would not, and
the body InvokeHTTP sends equals dcnios-consumer's for the same record.

The NiFi record processors are emulated here from their documented behaviour (AvroReader with a
schema text or the Confluent wire format; Jolt shift, which skips nulls; JsonRecordSetWriter,
which writes the writer schema's field order, compact, one object per line, escaping like
Jackson). The settings the emulation reads come from the generated flow itself, so a wrong
schema, spec or writer option in the recipe fails the comparison.
"""

from __future__ import annotations

import copy
import datetime
import io
import json
from dataclasses import replace
from importlib import resources
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcnios.codec import StorageEventCodec
from dcnios.consumers.record import body_for
from dcnios.deploy.recipe import Recipe, rate_parameters, render
from dcnios.deploy.validate import unknown_keys, validate_flow
from dcnios.errors import ConfigError
from dcnios.inotify import MASK_ORDER
from dcnios.spec import PipelineSpec, Rate, parse_spec
from dcnios.storage_event import StorageEvent

BASE = """\
kafka: {bootstrap_servers: "k:9092"%(kafka)s}
consumers:
  - name: grayify
    topic: dcache.events
    oscar: {endpoint: "https://oscar.example.org", service: grayify, token: "%(token)s", input_path: /data}
    payload: %(payload)s
    rate: 20/s
nifi:
  endpoint: https://nifi.example.org:8443/nifi-api
  auth: {username: admin, password: admin-password-12}
  version: %(version)s
  consumers: [grayify]
%(nifi)s"""
TOKEN = "cd" * 32
SECURITY = {
    "plain": ("", ""),
    "sasl_ssl": (
        ", security_protocol: SASL_SSL,"
        ' sasl: {mechanism: SCRAM-SHA-512, username: u, password: "kafka-secret"}',
        "  kafka_truststore: {path: /opt/nifi/ts.p12, password: ts-secret}\n",
    ),
    "registry": (', schema_registry: {url: "https://registry:8081"}', ""),
}


def spec_for(version: int, payload: str = "dcache", security: str = "plain") -> PipelineSpec:
    kafka, nifi = SECURITY[security]
    text = BASE % {"kafka": kafka, "token": TOKEN, "payload": payload, "version": version, "nifi": nifi}
    return parse_spec(text)


def recipe_for(version: int, payload: str = "dcache", security: str = "plain") -> Recipe:
    spec = spec_for(version, payload, security)
    return render(spec, spec.consumers[0], version=version, partitions=6, authorization=f"Bearer {TOKEN}")


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("payload", ["dcache", "record"])
@pytest.mark.parametrize("security", sorted(SECURITY))
def test_every_variant_validates(version: int, payload: str, security: str) -> None:
    recipe = recipe_for(version, payload, security)
    assert validate_flow(recipe.flow, recipe.parameters, version) == []
    flow = json.dumps(recipe.flow)
    for secret in (TOKEN, "kafka-secret", "ts-secret"):
        assert secret not in flow  # secrets only ever travel as sensitive parameters
    sensitive = {p.name for p in recipe.parameters if p.sensitive}
    assert "oscar_authorization" in sensitive
    if security == "sasl_ssl":
        assert {"kafka_sasl_password", "kafka_truststore_password"} <= sensitive


def test_nothing_that_could_lose_an_event_is_auto_terminated() -> None:
    for version in (1, 2):
        procs = {p["identifier"]: p for p in recipe_for(version).flow["flowContents"]["processors"]}
        assert set(procs["invoke"]["autoTerminatedRelationships"]) == {"Original", "Response"}
        assert procs["invoke"]["retriedRelationships"] == ["Retry", "Failure"]
        assert procs["invoke"]["retryCount"] == 7  # max_attempts 8
        assert procs["dead-letter"]["autoTerminatedRelationships"] == ["success"]
        assert procs["rate"]["autoTerminatedRelationships"] == []
        assert procs["consume"]["concurrentlySchedulableTaskCount"] == 6
        assert procs["consume"]["properties"].get("auto.offset.reset") == "earliest"


def test_property_names_follow_the_major_version() -> None:
    v1 = recipe_for(1).flow["flowContents"]["processors"]
    v2 = recipe_for(2).flow["flowContents"]["processors"]
    invoke1 = next(p for p in v1 if p["identifier"] == "invoke")["properties"]
    invoke2 = next(p for p in v2 if p["identifier"] == "invoke")["properties"]
    assert "Remote URL" in invoke1 and "HTTP URL" not in invoke1
    assert "HTTP URL" in invoke2 and "Remote URL" not in invoke2
    assert "Rate Exceeded Strategy" not in next(p for p in v1 if p["identifier"] == "rate")["properties"]


def _problems(mutate: Any, version: int = 2) -> list[str]:
    recipe = recipe_for(version)
    flow = copy.deepcopy(recipe.flow)
    params = list(recipe.parameters)
    params = mutate(flow, params) or params
    return validate_flow(flow, params, version)


def _proc(flow: dict[str, Any], ident: str) -> dict[str, Any]:
    return next(p for p in flow["flowContents"]["processors"] if p["identifier"] == ident)


def test_the_validator_catches_what_nifi_would_drop_or_refuse() -> None:
    def typo(flow: dict[str, Any], _: Any) -> None:
        _proc(flow, "rate")["propertys"] = {}

    assert any("propertys: unknown key for VersionedProcessor" in p for p in _problems(typo))

    def old_name(flow: dict[str, Any], _: Any) -> None:
        _proc(flow, "invoke")["properties"]["Remote URL"] = "#{oscar_url}"

    assert any("property 'Remote URL' does not exist in NiFi 2.x" in p for p in _problems(old_name))

    def bad_enum(flow: dict[str, Any], _: Any) -> None:
        _proc(flow, "rate")["scheduledState"] = "STARTED"

    assert any("nipyapi RegisteredFlowSnapshot model" in p for p in _problems(bad_enum))

    def unrouted(flow: dict[str, Any], _: Any) -> None:
        conns = flow["flowContents"]["connections"]
        flow["flowContents"]["connections"] = [c for c in conns if c["identifier"] != "invoke-dlq"]

    problems = _problems(unrouted)
    assert any("relationship 'No Retry' is neither connected nor auto-terminated" in p for p in problems)

    def missing_param(flow: dict[str, Any], params: list[Any]) -> list[Any]:
        return [p for p in params if p.name != "max_rate"]

    assert any("#{max_rate}, which is not created" in p for p in _problems(missing_param))

    def insensitive(flow: dict[str, Any], params: list[Any]) -> list[Any]:
        return [replace(p, sensitive=False) if p.name == "oscar_authorization" else p for p in params]

    assert any("#{oscar_authorization} is not sensitive" in p for p in _problems(insensitive))

    def literal_secret(flow: dict[str, Any], _: Any) -> None:
        _proc(flow, "invoke")["properties"]["Authorization"] = "Bearer #{oscar_authorization}"

    assert any("must be exactly one #{parameter}" in p for p in _problems(literal_secret))

    def dangling_service(flow: dict[str, Any], _: Any) -> None:
        _proc(flow, "consume")["properties"]["Kafka Connection Service"] = "nope"

    assert any("names no controller service in this flow ('nope')" in p for p in _problems(dangling_service))

    def no_tasks(flow: dict[str, Any], _: Any) -> None:
        _proc(flow, "consume")["concurrentlySchedulableTaskCount"] = 0

    assert any("at least 1" in p for p in _problems(no_tasks))

    def no_yield(flow: dict[str, Any], _: Any) -> None:
        del _proc(flow, "consume")["yieldDuration"]

    assert any("missing yieldDuration" in p for p in _problems(no_yield))

    def event_driven(flow: dict[str, Any], _: Any) -> None:
        _proc(flow, "rate")["schedulingStrategy"] = "EVENT_DRIVEN"

    assert any("EVENT_DRIVEN" in p for p in _problems(event_driven))

    def unbound(flow: dict[str, Any], _: Any) -> None:
        flow["parameterContexts"] = {}

    assert any("is not a key of parameterContexts" in p for p in _problems(unbound))


def test_unknown_keys_walks_nested_models() -> None:
    flow = recipe_for(2).flow
    flow["flowContents"]["connections"][0]["source"]["kind"] = "x"
    assert unknown_keys(flow) == [
        "$.flowContents.connections[0].source.kind: unknown key for ConnectableComponent (NiFi would drop it)"
    ]


def test_ssl_needs_a_nifi_trust_store() -> None:
    kafka = ', security_protocol: SSL, ssl: {ca_location: "/etc/ca.pem"}'
    text = BASE % {"kafka": kafka, "token": TOKEN, "payload": "dcache", "version": 2, "nifi": ""}
    spec = parse_spec(text.replace('ca_location: "/etc/ca.pem"', 'ca_location: "' + __file__ + '"'))
    with pytest.raises(
        ConfigError, match=r"nifi\.kafka_truststore: required when kafka\.security_protocol is SSL"
    ):
        render(spec, spec.consumers[0], version=2, partitions=1, authorization="Bearer x")


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ("20/s", ("20", "1 sec")),
        ("0.5/s", ("30", "1 min")),
        ("90/m", ("90", "1 min")),
        ("1/h", ("1", "1 hour")),
    ],
)
def test_rates_become_whole_counts(rate: str, expected: tuple[str, str]) -> None:
    assert rate_parameters(Rate.parse(rate)) == expected
    assert rate_parameters(None) == ("1000000", "1 sec")


def test_catalog_names_are_nifi_2_11_descriptors() -> None:
    """The offline validator's 2.x table and the emulator's facts (read separately from NiFi's
    source) agree for the default target, 2.11.0: no invalid name passes, no real one is refused."""
    from dcnios.deploy.catalog import COMPONENTS as CATALOG
    from dcnios.deploy.recipe import _DEFAULT_NIFI_VERSION
    from dcnios.sandbox.nifi_components import COMPONENTS as FACTS
    from dcnios.sandbox.nifi_components import nifi_version

    release = nifi_version(_DEFAULT_NIFI_VERSION[2])
    for (type_, version), known in CATALOG.items():
        if version != 2:
            continue
        facts = FACTS[type_]
        real = {d.name for d in facts.descriptors if d.exists(release)}
        assert known.properties == real, type_
        services = {d.name for d in facts.descriptors if d.exists(release) and d.service}
        assert known.service_properties == services, type_
        for name in known.dynamic:
            assert facts.dynamic is not None and facts.dynamic(name, "x", release) is None, (type_, name)


def test_deploy_nifi_without_the_nifi_extra_says_what_to_install(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from dcnios.cli import main
    from dcnios.cli import nifi as nifi_cli

    path = tmp_path / "spec.yaml"
    path.write_text(BASE % {"kafka": "", "token": TOKEN, "payload": "dcache", "version": 2, "nifi": ""})
    monkeypatch.setattr(nifi_cli, "_partitions", lambda spec: lambda topic: 1)  # no Kafka probe
    monkeypatch.setitem(sys.modules, "nipyapi", None)  # what `import nipyapi` meets without the extra
    assert main(["deploy-nifi", "-c", str(path), "--print-flow", "grayify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ExtraMissingError: ") and "pip install 'dcnios[nifi]'" in err
    assert "Traceback" not in err


# -- the body InvokeHTTP sends ------------------------------------------------------------------------
def _service(recipe: Recipe, ident: str) -> dict[str, Any]:
    return next(s for s in recipe.flow["flowContents"]["controllerServices"] if s["identifier"] == ident)


def _nifi_json(value: Any) -> str:
    """Jackson's compact output, written out again here: quote, backslash and control characters
    escaped (short forms for \\b \\t \\n \\f \\r, else \\u00XX in upper case), the rest raw."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(_nifi_json(v) for v in value) + "]"
    short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    return '"' + "".join(short.get(c) or (f"\\u{ord(c):04X}" if ord(c) < 32 else c) for c in value) + '"'


def _write_record(record: dict[str, Any], schema: dict[str, Any], suppress_nulls: bool) -> str:
    fields = []
    for field in schema["fields"]:
        value = record.get(field["name"])
        if value is None and suppress_nulls:
            continue
        ftype = field["type"]
        if isinstance(ftype, dict) and ftype.get("type") == "record":
            fields.append(f'"{field["name"]}":{_write_record(value, ftype, suppress_nulls)}')
        else:
            fields.append(f'"{field["name"]}":{_nifi_json(value)}')
    return "{" + ",".join(fields) + "}"


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _prop(props: dict[str, Any], *names: str) -> Any:
    """The value under the first of ``names`` present: the 2.x name, then the 1.x one."""
    return props[next(n for n in names if n in props)]


def _nifi_body(recipe: Recipe, value: bytes, registry_schema: str | None = None) -> bytes:
    procs = {p["identifier"]: p for p in recipe.flow["flowContents"]["processors"]}
    chain = procs.get("to-envelope") or procs["to-json"]
    props = chain["properties"]
    reader = _service(recipe, _prop(props, "Record Reader", "jolt-record-record-reader", "record-reader"))
    rprops = reader["properties"]
    strategy = _prop(rprops, "Schema Access Strategy", "schema-access-strategy")
    if strategy in ("schema-reference-reader", "confluent-encoded"):
        if strategy == "schema-reference-reader":
            ref = _service(recipe, rprops["Schema Reference Reader"])
            assert ref["type"].endswith("ConfluentEncodedSchemaReferenceReader")
        assert value[0] == 0  # magic byte, then a 4-byte schema id
        schema_text, payload = registry_schema, value[5:]
    else:
        assert strategy == "schema-text-property"
        schema_text, payload = _prop(rprops, "Schema Text", "schema-text"), value
    assert schema_text is not None
    schema = json.loads(schema_text)
    record = fastavro.schemaless_reader(io.BytesIO(payload), fastavro.parse_schema(schema))
    assert isinstance(record, dict)
    for key, item in list(record.items()):
        if isinstance(item, datetime.datetime):  # timestamp-millis: the writer has no Timestamp Format
            record[key] = (item - _EPOCH) // datetime.timedelta(milliseconds=1)  # exact, no float
    writer = _service(recipe, _prop(props, "Record Writer", "jolt-record-record-writer", "record-writer"))
    wprops = writer["properties"]
    assert _prop(wprops, "Output Grouping", "output-grouping") == "output-oneline"
    assert wprops["Pretty Print JSON"] == "false"
    if "Jolt Specification" in props or "jolt-record-spec" in props:
        assert _prop(props, "Jolt Transform", "jolt-record-transform") == "jolt-transform-chain"
        (operation,) = json.loads(_prop(props, "Jolt Specification", "jolt-record-spec"))
        assert operation["operation"] == "shift"
        shifted: dict[str, Any] = {}
        for key, dest in operation["spec"].items():
            if record.get(key) is None:
                continue  # Shiftr skips null inputs
            *parents, leaf = dest.split(".")
            node = shifted
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = record[key]
        record = shifted
    if _prop(wprops, "Schema Access Strategy", "schema-access-strategy") == "inherit-record-schema":
        out_schema = schema
    else:
        out_schema = json.loads(_prop(wprops, "Schema Text", "schema-text"))
    suppress = _prop(wprops, "Suppress Null Values", "suppress-nulls") == "always-suppress"
    return _write_record(record, out_schema, suppress).encode()


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
events = st.builds(
    StorageEvent,
    source=st.just("src"),
    path=text.map(lambda s: "/data/" + s),
    name=st.one_of(st.none(), text),
    mask=st.lists(st.sampled_from(MASK_ORDER), min_size=1, max_size=3, unique=True).map(tuple),
    cookie=st.one_of(st.none(), text),
    is_dir=st.booleans(),
    channel=st.just("ch"),
    event_id=st.one_of(st.none(), st.integers(min_value=0, max_value=2**62)),
    subscription=text.map(
        lambda s: "https://dcache:3880/api/v1/events/channels/c/subscriptions/inotify/" + s
    ),
    observed_at=st.integers(min_value=0, max_value=2**42),
    synthetic=st.booleans(),
    gap=st.one_of(st.none(), st.just("EVENT_LOSS")),
)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("payload", ["dcache", "record"])
@settings(max_examples=40, deadline=None)
@given(event=events)
def test_nifi_sends_the_same_body_as_dcnios_consumer(version: int, payload: str, event: StorageEvent) -> None:
    recipe = recipe_for(version, payload)
    value, _ = StorageEventCodec().encode(event, "dcache.events")
    assert _nifi_body(recipe, value) == body_for(event, payload, "/data")


def test_same_body_with_the_confluent_wire_format() -> None:
    from dcnios.spec import RegistrySpec

    recipe = recipe_for(2, "dcache", "registry")
    codec = StorageEventCodec(RegistrySpec(url="mock://nifi-recipe-test"))
    # What the registry serves for the id in the header: the schema the codec registered.
    registered = resources.files("dcnios.schemas").joinpath("storage_event.avsc").read_text()
    for name, cookie in (("a.png", None), ('ünï "q"\u0001.dat', "c0")):
        event = StorageEvent(
            "src", f"/d/{name}", name, ("IN_MOVED_TO",), cookie, False, "ch", 3, "https://d/s/1", 5
        )
        value, _ = codec.encode(event, "dcache.events")
        assert value[0] == 0 and int.from_bytes(value[1:5], "big") > 0
        assert _nifi_body(recipe, value, registered) == body_for(event, "dcache", "/d")


def test_envelope_matches_a_recorded_dcache_frame() -> None:
    event = StorageEvent(
        "src",
        "/data/in/image2.jpg",
        "image2.jpg",
        ("IN_CLOSE_WRITE",),
        "AAEC",
        False,
        "ch",
        7,
        "https://prometheus.desy.de:3880/api/v1/events/channels/ch/subscriptions/inotify/AAB",
        0,
    )
    value, _ = StorageEventCodec().encode(event, "t")
    body = _nifi_body(recipe_for(2), value)
    assert body == (
        b'{"event":{"name":"image2.jpg","cookie":"AAEC","mask":["IN_CLOSE_WRITE"]},'
        b'"subscription":"https://prometheus.desy.de:3880/api/v1/events/channels/ch/subscriptions/inotify/AAB"}'
    )
