"""deploy-nifi against the NiFi emulator (HTTPS, single-user login), with the real broker for partitions."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dcnios.cli import main
from dcnios.deploy.deployer import NifiDeployer
from dcnios.deploy.nifi_api import NifiClient
from dcnios.errors import ConfigError, NiFiError
from dcnios.kafka import ensure_topics
from dcnios.sandbox.nifi import NifiEmulator
from dcnios.sandbox.tls import Pki, make_pki
from dcnios.spec import PipelineSpec, load_spec
from dcnios.topics import topic_plan

TOKEN = "ab" * 32


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def nifi(pki: Pki) -> Iterator[NifiEmulator]:
    with NifiEmulator(tls=(str(pki.cert), str(pki.key))) as emulator:
        yield emulator


def _write_spec(
    tmp_path: Path,
    bootstrap: str,
    prefix: str,
    nifi: NifiEmulator,
    ca: Path,
    *,
    rate: str = "20/s",
    password: str = "admin-password-12",
) -> Path:
    path = tmp_path / "nifi.yaml"
    path.write_text(
        f"""\
kafka: {{bootstrap_servers: "{bootstrap}", internal_prefix: {prefix}, topic_defaults: {{partitions: 2}}}}
consumers:
  - name: grayify
    topic: {prefix}.events
    oscar: {{endpoint: "https://oscar.example.org", service: grayify, token: "{TOKEN}", input_path: /data}}
    rate: {rate}
    concurrency: 4
nifi:
  endpoint: "{nifi.endpoint}"
  ca_bundle: "{ca}"
  auth: {{username: admin, password: "{password}"}}
  consumers: [grayify]
  poll_timeout: 10s
"""
    )
    return path


@pytest.fixture
def spec_path(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str], nifi: NifiEmulator, pki: Pki
) -> Path:
    path = _write_spec(tmp_path, bootstrap, unique("nifi"), nifi, pki.ca)
    spec = load_spec(path)
    # Five partitions, not the default two: ConsumeKafka's tasks must follow the real topic.
    plans = [replace(p, partitions=5) if p.name == spec.consumers[0].topic else p for p in topic_plan(spec)]
    ensure_topics(spec.kafka, plans)
    return path


def _deployer(path: Path) -> NifiDeployer:
    from dcnios.cli.nifi import _partitions

    spec: PipelineSpec = load_spec(path)
    assert spec.nifi is not None
    return NifiDeployer(spec, NifiClient(spec.nifi), partitions=_partitions(spec))


def test_full_sequence_against_the_emulator(
    spec_path: Path, nifi: NifiEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["deploy-nifi", "-c", str(spec_path)]) == 0
    assert "dcnios-grayify: create: done" in capsys.readouterr().out
    calls = [f"{m} {re.sub(r'[0-9a-f-]{36}', '{id}', p.removeprefix('/nifi-api'))}" for m, p in nifi.calls]
    order = [
        "POST /access/token",
        "GET /flow/about",
        "GET /flow/process-groups/root",
        "POST /parameter-contexts",
        "POST /process-groups/root/process-groups/upload",
        "PUT /process-groups/{id}",  # the dcnios marker
        "GET /process-groups/{id}/processors",  # extensionMissing
        "PUT /flow/process-groups/{id}/controller-services",  # enable
        "PUT /flow/process-groups/{id}",  # start
    ]
    positions = [calls.index(c) for c in order]
    assert positions == sorted(positions), calls
    (upload,) = nifi.uploads
    assert upload["groupName"] == "dcnios-grayify" and upload["clientId"]
    assert float(upload["positionX"]) >= 0 and float(upload["positionY"]) >= 0

    group = nifi.group_named("dcnios-grayify")
    assert group is not None and "managed by dcnios; consumer=grayify; flow=" in group.comments
    procs = {p.versioned_id: p for p in nifi.processors.values() if p.group == group.id}
    assert {p.state for p in procs.values()} == {"RUNNING"}
    assert {s.state for s in nifi.services.values() if s.group == group.id} == {"ENABLED"}
    values = nifi.context_values("dcnios-grayify")
    assert values["oscar_authorization"] == f"Bearer {TOKEN}"
    assert values["max_rate"] == "20" and values["rate_duration"] == "1 sec"
    assert values["oscar_url"] == "https://oscar.example.org/job/grayify"
    # The Authorization header travels only as a parameter reference.
    assert procs["invoke"].properties["Authorization"] == "#{oscar_authorization}"

    assert main(["nifi", "status", "-c", str(spec_path), "--json"]) == 0
    (status,) = json.loads(capsys.readouterr().out)
    assert status["exists"] and status["run_state"] == {"RUNNING": 7} and status["invalid"] == []
    assert status["parameters"]["max_rate"] == "20"
    assert len(status["connections"]) == 10 and not any(c["back_pressure"] for c in status["connections"])


def test_consume_tasks_follow_the_topic_partitions(spec_path: Path, nifi: NifiEmulator) -> None:
    deployer = _deployer(spec_path)
    deployer.apply()
    recipe = deployer.recipe(deployer.spec.consumers[0])
    consume = next(p for p in recipe.flow["flowContents"]["processors"] if p["identifier"] == "consume")
    assert consume["concurrentlySchedulableTaskCount"] == 5


def test_redeploy_is_a_no_op_and_a_rate_change_is_a_parameter_update(
    spec_path: Path, nifi: NifiEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["deploy-nifi", "-c", str(spec_path)]) == 0
    before = len(nifi.calls)
    assert main(["deploy-nifi", "-c", str(spec_path)]) == 0
    assert "dcnios-grayify: unchanged, nothing to do" in capsys.readouterr().out
    assert [c for c in nifi.calls[before:] if c[0] != "GET"] == [("POST", "/nifi-api/access/token")]

    assert main(["deploy-nifi", "--dry-run", "-c", str(spec_path)]) == 0
    assert "dcnios-grayify: unchanged" in capsys.readouterr().out

    assert main(["nifi", "rate", "grayify", "30/m", "-c", str(spec_path)]) == 0
    assert "ControlRate now 30 per 1 min" in capsys.readouterr().out
    values = nifi.context_values("dcnios-grayify")
    assert (values["max_rate"], values["rate_duration"]) == ("30", "1 min")
    restarted = {p.versioned_id for p in nifi.processors.values() if p.restarts}
    assert restarted == {"rate"}  # NiFi restarted only what uses the parameter
    assert any("/update-requests" in p for m, p in nifi.calls if m == "POST")
    assert any("/update-requests/" in p for m, p in nifi.calls if m == "DELETE")

    # The spec is the truth: a deploy plans the rate back, and does it as a parameter update.
    assert main(["deploy-nifi", "--dry-run", "-c", str(spec_path)]) == 0
    assert "update parameters (max_rate, rate_duration)" in capsys.readouterr().out
    assert main(["deploy-nifi", "-c", str(spec_path)]) == 0
    assert nifi.context_values("dcnios-grayify")["max_rate"] == "20"


def test_changed_flow_drains_then_replaces(spec_path: Path, nifi: NifiEmulator, tmp_path: Path) -> None:
    deployer = _deployer(spec_path)
    deployer.apply()
    first = nifi.group_named("dcnios-grayify")
    assert first is not None
    nifi.enqueue("dcnios-grayify", 7)
    text = spec_path.read_text().replace("concurrency: 4", "concurrency: 9")
    spec_path.write_text(text)
    deployer = _deployer(spec_path)
    (item,) = deployer.plan()
    assert item.action == "replace flow"
    deployer.apply()
    second = nifi.group_named("dcnios-grayify")
    assert second is not None and second.id != first.id
    invoke = next(p for p in nifi.processors.values() if p.group == second.id and p.versioned_id == "invoke")
    assert invoke.state == "RUNNING"
    assert not nifi.drop_requests and not any(
        c[1].endswith("empty-all-connections-requests") for c in nifi.calls
    )


def test_delete_cleans_up_and_a_missing_group_is_not_an_error(
    spec_path: Path, nifi: NifiEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["deploy-nifi", "-c", str(spec_path)]) == 0
    assert main(["nifi", "stop", "grayify", "-c", str(spec_path)]) == 0
    nifi.enqueue("dcnios-grayify", 3)  # held in NiFi while stopped: delete must drop it to proceed
    assert main(["nifi", "delete", "grayify", "-c", str(spec_path)]) == 0
    assert "dcnios-grayify: delete done" in capsys.readouterr().out
    assert not nifi.groups and not nifi.processors and not nifi.services and not nifi.contexts
    drops = [p for m, p in nifi.calls if "empty-all-connections-requests" in p]
    assert drops and any(m == "DELETE" and "empty-all-connections-requests/" in p for m, p in nifi.calls)
    assert main(["nifi", "delete", "grayify", "-c", str(spec_path)]) == 0
    assert "not deployed; nothing to delete" in capsys.readouterr().out
    assert main(["nifi", "status", "-c", str(spec_path)]) == 0
    assert "dcnios-grayify: not deployed" in capsys.readouterr().out


def test_stop_and_start(spec_path: Path, nifi: NifiEmulator) -> None:
    assert main(["deploy-nifi", "-c", str(spec_path)]) == 0
    assert main(["nifi", "stop", "grayify", "-c", str(spec_path)]) == 0
    assert {p.state for p in nifi.processors.values()} == {"STOPPED"}
    assert main(["nifi", "start", "grayify", "-c", str(spec_path)]) == 0
    assert {p.state for p in nifi.processors.values()} == {"RUNNING"}


# -- failure paths ---------------------------------------------------------------------------------
def test_bad_credentials_name_the_call(
    tmp_path: Path,
    bootstrap: str,
    unique: Callable[[str], str],
    nifi: NifiEmulator,
    pki: Pki,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _write_spec(tmp_path, bootstrap, unique("nifi"), nifi, pki.ca, password="wrong-password!")
    assert main(["deploy-nifi", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert "NiFiError: POST /access/token: HTTP 400: The supplied username and password are not valid." in err
    assert "wrong-password" not in err


def test_unknown_ca_is_refused(
    tmp_path: Path,
    bootstrap: str,
    unique: Callable[[str], str],
    nifi: NifiEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = make_pki(tmp_path / "other", ca_name="someone else")
    path = _write_spec(tmp_path, bootstrap, unique("nifi"), nifi, other.ca)
    assert main(["deploy-nifi", "-c", str(path)]) == 1
    assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err


def test_unreachable_nifi(spec_path: Path, nifi: NifiEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    nifi.stop()
    assert main(["deploy-nifi", "-c", str(spec_path)]) == 1
    assert "NiFiError: POST /access/token: NiFi unreachable at https://localhost" in capsys.readouterr().err
    assert main(["deploy-nifi", "--dry-run", "-c", str(spec_path)]) == 0
    assert "dcnios-grayify: create (NiFi not consulted)" in capsys.readouterr().out


def test_a_409_race_is_retried_once_after_a_re_read(spec_path: Path, nifi: NifiEmulator) -> None:
    failed: list[str] = []

    def once(method: str, path: str) -> tuple[int, str] | None:
        if method == "PUT" and re.fullmatch(r"/nifi-api/process-groups/[0-9a-f-]{36}", path) and not failed:
            failed.append(path)
            return 409, "Another request is modifying this group"
        return None

    nifi.fault = once
    _deployer(spec_path).apply()
    assert failed and nifi.group_named("dcnios-grayify") is not None
    marker_puts = [p for m, p in nifi.calls if m == "PUT" and p == failed[0]]
    assert len(marker_puts) == 2  # the failed one and its retry

    nifi.fault = lambda method, path: (
        (409, "still busy") if method == "PUT" and "process-groups/" in path else None
    )
    spec_path.write_text(spec_path.read_text().replace("rate: 20/s", "rate: 21/s"))
    with pytest.raises(NiFiError, match="HTTP 409: still busy"):
        _deployer(spec_path).apply()


def test_an_invalid_component_after_upload_fails_with_its_reason(spec_path: Path, nifi: NifiEmulator) -> None:
    nifi.invalid["Invoke OSCAR"] = "'HTTP URL' is invalid because it is not a valid URL"
    with pytest.raises(NiFiError, match=r"processor 'Invoke OSCAR': 'HTTP URL' is invalid because"):
        _deployer(spec_path).apply()
    group = nifi.group_named("dcnios-grayify")
    assert group is not None
    assert {p.state for p in nifi.processors.values()} == {"STOPPED"}  # never started


def test_a_missing_extension_fails_with_the_processor_name(spec_path: Path, nifi: NifiEmulator) -> None:
    nifi.missing_types.add("org.apache.nifi.processors.jolt.JoltTransformRecord")
    with pytest.raises(
        NiFiError, match=r"processor 'Record to dCache event': type .*JoltTransformRecord is not installed"
    ):
        _deployer(spec_path).apply()


def test_version_mismatch_is_a_config_error(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str], pki: Pki
) -> None:
    with NifiEmulator(version="1.28.1", tls=(str(pki.cert), str(pki.key))) as old:
        path = _write_spec(tmp_path, bootstrap, unique("nifi"), old, pki.ca)
        with pytest.raises(ConfigError, match=r"nifi.version: 2, but the NiFi at .* is 1.28.1"):
            _deployer(path).apply()


def test_nifi_1x_deploys_its_own_recipe(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str], pki: Pki
) -> None:
    with NifiEmulator(version="1.28.1", tls=(str(pki.cert), str(pki.key))) as old:
        path = _write_spec(tmp_path, bootstrap, unique("nifi"), old, pki.ca)
        path.write_text(
            path.read_text().replace("  consumers: [grayify]\n", "  version: 1\n  consumers: [grayify]\n")
        )
        _deployer(path).apply()
        procs = {p.versioned_id: p for p in old.processors.values()}
        assert procs["consume"].type.endswith("ConsumeKafka_2_6")
        # 1.x ships JoltTransformRecord in nifi-jolt-record-nar, package ...jolt.record
        assert procs["to-envelope"].type == "org.apache.nifi.processors.jolt.record.JoltTransformRecord"
        assert "Remote URL" in procs["invoke"].properties and "HTTP URL" not in procs["invoke"].properties
        assert {p.state for p in procs.values()} == {"RUNNING"}


# -- NiFi 2.x property descriptors -----------------------------------------------------------------
def _group_components(nifi: NifiEmulator, group_name: str) -> list[Any]:
    group = nifi.group_named(group_name)
    assert group is not None
    return [*nifi.group_services(group.id), *nifi.group_processors(group.id)]


@pytest.mark.parametrize(
    ("payload", "kafka_extra"),
    [
        ("dcache", ""),
        ("record", ""),
        ("dcache", ', schema_registry: {url: "https://registry.example.org:8081"}'),
    ],
)
def test_every_recipe_variant_deploys_valid_on_nifi_2_11(
    spec_path: Path, nifi: NifiEmulator, payload: str, kafka_extra: str
) -> None:
    text = spec_path.read_text().replace("    rate: 20/s\n", f"    rate: 20/s\n    payload: {payload}\n")
    spec_path.write_text(
        text.replace(
            "topic_defaults: {partitions: 2}}", "topic_defaults: {partitions: 2}" + kafka_extra + "}"
        )
    )
    _deployer(spec_path).apply()
    components = _group_components(nifi, "dcnios-grayify")
    assert {c.name: nifi.validation(c) for c in components} == {c.name: [] for c in components}
    assert {c.state for c in components} <= {"RUNNING", "ENABLED"}
    types = {c.type.rsplit(".", 1)[1] for c in components}
    if kafka_extra:
        assert {"ConfluentSchemaRegistry", "ConfluentEncodedSchemaReferenceReader"} <= types


#: What the 2.x recipe wrote before it used NiFi 2.x's names (consumer-v2.json up to 78a31f2).
_OLD_NAMES = {
    "JoltTransformRecord": {
        "Record Reader": "jolt-record-record-reader",
        "Record Writer": "jolt-record-record-writer",
        "Jolt Transform": "jolt-record-transform",
        "Jolt Specification": "jolt-record-spec",
    },
    "ConvertRecord": {"Record Reader": "record-reader", "Record Writer": "record-writer"},
    "AvroReader": {
        "Schema Access Strategy": "schema-access-strategy",
        "Schema Text": "schema-text",
        "Schema Registry": "schema-registry",
    },
    "JsonRecordSetWriter": {
        "Schema Access Strategy": "schema-access-strategy",
        "Schema Text": "schema-text",
        "Suppress Null Values": "suppress-nulls",
        "Output Grouping": "output-grouping",
        "Compression Format": "compression-format",
    },
    "ConfluentSchemaRegistry": {"Schema Registry URLs": "url"},
}


def _with_old_names(recipe: Any) -> Any:
    contents = recipe.flow["flowContents"]
    for comp in [*contents["controllerServices"], *contents["processors"]]:
        renames = _OLD_NAMES.get(comp["type"].rsplit(".", 1)[1], {})
        props = comp["properties"]
        if props.pop("Schema Reference Reader", None) is not None:
            props["Schema Access Strategy"] = "confluent-encoded"
        props.pop("Allow Scientific Notation", None)
        comp["properties"] = {renames.get(k, k): v for k, v in props.items()}
    return recipe


@pytest.fixture
def old_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deploy flows with the old names, past the offline validator that now refuses them."""
    from dcnios.deploy import deployer

    render = deployer.render
    monkeypatch.setattr(deployer, "render", lambda *a, **kw: _with_old_names(render(*a, **kw)))
    monkeypatch.setattr(deployer, "validate_flow", lambda *a, **kw: [])


@pytest.mark.usefixtures("old_names")
def test_the_old_jolt_names_make_the_processor_invalid(spec_path: Path, nifi: NifiEmulator) -> None:
    with pytest.raises(NiFiError, match="processor 'Record to dCache event'") as caught:
        _deployer(spec_path).apply()
    message = str(caught.value)
    for name in ("jolt-record-spec", "jolt-record-transform"):
        assert f"'{name}' is not a supported property or has no Validator associated with it" in message
    # Migrated to 'Record Reader', but after the service ids were translated: it names no service.
    assert (
        "'Record Reader' is invalid because Controller Service with ID avro-reader does not exist" in message
    )
    assert "'Jolt Specification' must be set" in message


@pytest.mark.usefixtures("old_names")
def test_the_old_record_names_keep_a_dangling_service_id(spec_path: Path, nifi: NifiEmulator) -> None:
    spec_path.write_text(
        spec_path.read_text().replace("    rate: 20/s\n", "    rate: 20/s\n    payload: record\n")
    )
    with pytest.raises(NiFiError, match="processor 'Record to JSON'") as caught:
        _deployer(spec_path).apply()
    assert (
        "'Record Writer' is invalid because Controller Service with ID record-writer does not exist"
        in str(caught.value)
    )


@pytest.mark.usefixtures("old_names")
def test_confluent_encoded_is_not_a_2_x_schema_access_strategy(spec_path: Path, nifi: NifiEmulator) -> None:
    text = spec_path.read_text()
    spec_path.write_text(
        text.replace(
            "topic_defaults: {partitions: 2}}",
            'topic_defaults: {partitions: 2}, schema_registry: {url: "https://r:8081"}}',
        )
    )
    with pytest.raises(NiFiError, match="controller service 'StorageEvent reader'") as caught:
        _deployer(spec_path).apply()
    assert (
        "'Schema Access Strategy' validated against 'confluent-encoded' is invalid because Given value not "
        "found in allowed set 'schema-name, schema-text-property, schema-reference-reader, "
        "embedded-avro-schema'"
    ) in str(caught.value)


def test_nifi_older_than_2_7_is_refused(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str], pki: Pki
) -> None:
    with NifiEmulator(version="2.6.0", tls=(str(pki.cert), str(pki.key))) as old:
        path = _write_spec(tmp_path, bootstrap, unique("nifi"), old, pki.ca)
        with pytest.raises(ConfigError, match=r"is 2\.6\.0; dcnios's 2\.x recipe needs 2\.7\.0 or later"):
            _deployer(path).apply()


def _upload_one(nifi: NifiEmulator, kind: str, type_: str, properties: dict[str, str]) -> list[str]:
    """Upload a one-component flow and return the component's validation errors."""
    component = {"identifier": "c", "name": "c", "type": type_, "properties": properties}
    key = "controllerServices" if kind == "service" else "processors"
    fields = {"groupName": f"g-{len(nifi.groups)}", "positionX": "0", "positionY": "0", "clientId": "t"}
    entity = nifi.upload(fields, {"flowContents": {key: [component]}})
    (comp,) = _group_components(nifi, entity["component"]["name"])
    return nifi.validation(comp)


def _unsupported(name: str, value: str = "x") -> list[str]:
    return [
        f"'{name}' validated against '{value}' is invalid because '{name}' is not a supported property "
        "or has no Validator associated with it"
    ]


_KAFKA3 = "org.apache.nifi.kafka.service.Kafka3ConnectionService"
_REGISTRY = "org.apache.nifi.confluent.schemaregistry.ConfluentSchemaRegistry"
_INVOKE = "org.apache.nifi.processors.standard.InvokeHTTP"


def test_dynamic_properties_follow_each_component() -> None:
    with NifiEmulator(version="2.11.0") as nifi:
        base = {"bootstrap.servers": "k:9092"}
        # Kafka3ConnectionService from 2.4.0: Kafka client keys, partitions*, sasl_extension_* (2.7.0+)
        for name in ("fetch.max.bytes", "partitions.0", "sasl_extension_token"):
            assert _upload_one(nifi, "service", _KAFKA3, {**base, name: "1"}) == [], name
        assert _upload_one(nifi, "service", _KAFKA3, {**base, "Bootstrap Servers": "x"}) == [
            "'Bootstrap Servers' validated against 'x' is invalid because must be a known Kafka client "
            "configuration property or a SASL extension property"
        ]
        # ConfluentSchemaRegistry: only request.header.<name>
        url = {"Schema Registry URLs": "https://r:8081"}
        assert _upload_one(nifi, "service", _REGISTRY, {**url, "request.header.X-Key": "v"}) == []
        assert _upload_one(nifi, "service", _REGISTRY, {**url, "request.header.": "v"}) == [
            "'request.header.' validated against 'v' is invalid because Dynamic property names must be of "
            "format 'request.header.*'"
        ]
        # InvokeHTTP: any name is a request header, but post:form names must be post:form:<NAME>
        assert _upload_one(nifi, "processor", _INVOKE, {"X-Trace": "1", "post:form:file": "a"}) == []
        assert _upload_one(nifi, "processor", _INVOKE, {"post:formfile": "x"}) == _unsupported(
            "post:formfile"
        )
        # No dynamic properties at all
        assert _upload_one(
            nifi, "processor", "org.apache.nifi.processors.standard.ControlRate", {"Rate": "x"}
        ) == _unsupported("Rate")
    with NifiEmulator(version="2.3.0") as nifi:
        # before NIFI-14271 (2.4.0) Kafka3ConnectionService had no dynamic properties
        assert _upload_one(nifi, "service", _KAFKA3, {"fetch.max.bytes": "x"}) == _unsupported(
            "fetch.max.bytes"
        )


def test_migrations_and_releases() -> None:
    with NifiEmulator(version="2.11.0") as nifi:
        # ConfluentSchemaRegistry renamed url in 2.7.0 and migrates it
        assert _upload_one(nifi, "service", _REGISTRY, {"url": "https://r:8081"}) == []
        # 1.x InvokeHTTP names are migrated in every 2.x
        assert (
            _upload_one(nifi, "processor", _INVOKE, {"Remote URL": "https://o", "Content-Type": "a/b"}) == []
        )
        # A shift transform takes an object; the chain format is a list
        jolt = "org.apache.nifi.processors.jolt.JoltTransformRecord"
        assert _upload_one(
            nifi, "processor", jolt, {"Jolt Transform": "jolt-transform-shift", "Jolt Specification": "[]"}
        ) == [
            "'Jolt Specification' is invalid because Specification not valid: Shiftr expected a spec of Map "
            "type, got ArrayList"
        ]
    with NifiEmulator(version="2.6.0") as nifi:
        # before 2.7.0 the old names are the descriptors
        assert _upload_one(nifi, "service", _REGISTRY, {"url": "https://r:8081"}) == []
        assert _upload_one(nifi, "service", _REGISTRY, {"Schema Registry URLs": "x"}) == [
            "'Schema Registry URLs' validated against 'x' is invalid because Dynamic property names must be "
            "of format 'request.header.*'"
        ]
