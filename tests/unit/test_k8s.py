"""`dcnios k8s`: every rendered object validates offline against its published schema, kustomize
builds the directory, the pods' specs load, and the ACLs grant exactly what each component uses."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dcnios.cli import main
from dcnios.deploy.k8s import Bundle, RenderOptions, render, write
from dcnios.deploy.strimzi import KafkaPrincipal
from dcnios.errors import ConfigError
from dcnios.spec import PipelineSpec, load_spec, parse_spec
from dcnios.topics import topic_plan

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "k8s.yaml"
CRDS = REPO / "tests" / "data" / "crds"
SECRETS = {
    "KAFKA_PASSWORD": "kafka-pw-Zq81",
    "DCACHE_PASSWORD": "dcache-pw-Hh27",
    "OSCAR_TOKEN": "oscar-token-Pp93",
    "OSCAR_PASSWORD": "oscar-pw-Ww55",
}
BUILT_IN = {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}


@cache
def example() -> PipelineSpec:
    return load_spec(EXAMPLE, env=SECRETS)


@cache
def bundle() -> Bundle:
    return render(example(), RenderOptions(namespace="desy", kafka_cluster="lake", service_monitor=True))


def manifests(kind: str) -> list[dict[str, Any]]:
    return [d for d in bundle().documents() if d["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in manifests(kind) if d["metadata"]["name"] == name]
    return doc


# -- schemas ------------------------------------------------------------------------------------
def _closed(schema: Any) -> Any:
    """The schema as the API server's strict field validation reads it: an object that lists its
    properties takes no others (a typo such as ``operation`` for ``operations`` is an error, not a
    silently pruned field)."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the openAPIV3Schema of the stored CRDs (tests/data/crds/README.md)."""
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                out[(f"{group}/{version['name']}", kind)] = _closed(version["schema"]["openAPIV3Schema"])
    return out


def crd_problems(doc: dict[str, Any]) -> list[str]:
    schema = crd_schemas().get((doc["apiVersion"], doc["kind"]))
    if schema is None:
        return [f"no stored CRD serves {doc['apiVersion']} {doc['kind']}"]
    validator = jsonschema.Draft7Validator(schema)
    problems = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    return problems + cel_problems(doc)


def cel_problems(doc: dict[str, Any]) -> list[str]:
    """The CEL rules (x-kubernetes-validations) of the stored CRDs that apply to what dcnios
    renders, by hand: jsonschema does not evaluate CEL."""
    spec = doc.get("spec", {})
    if doc["kind"] == "ScaledObject" and spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        return ["spec: minReplicaCount must be less than or equal to maxReplicaCount"]
    auth = spec.get("authentication", {})
    if (
        doc["kind"] == "KafkaUser"
        and auth.get("type") != "tls"
        and {"validityDays", "renewalDays"} & set(auth)
    ):
        return [
            "spec.authentication: 'validityDays' and 'renewalDays' can be configured only with 'type: tls'"
        ]
    return []


def builtin_problems(doc: dict[str, Any], version: str) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(copy.deepcopy(doc), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


def all_problems(docs: list[dict[str, Any]]) -> list[str]:
    import kubernetes_validate

    problems = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in BUILT_IN:
            for version in ("1.30.0", kubernetes_validate.latest_version()):
                problems += [f"{where} (k8s {version}): {p}" for p in builtin_problems(doc, version)]
        else:
            problems += [f"{where}: {p}" for p in crd_problems(doc)]
    return problems


def test_every_rendered_object_validates_against_its_schema() -> None:
    docs = bundle().documents()
    assert {d["kind"] for d in docs} == BUILT_IN | {
        "KafkaTopic",
        "KafkaUser",
        "ScaledObject",
        "TriggerAuthentication",
        "PrometheusRule",
        "ServiceMonitor",
    }
    assert all_problems(docs) == []


def test_the_schema_checks_can_fail() -> None:
    """The validators catch what a wrong renderer would write: Strimzi v1's `operations` list, a
    misspelt trigger key, a Deployment field of the wrong type."""
    user = copy.deepcopy(manifests("KafkaUser")[0])
    acl = user["spec"]["authorization"]["acls"][0]
    acl["operation"] = acl.pop("operations")[0]  # the v1beta2 form Strimzi 1.0 removed
    assert any("operation" in p for p in crd_problems(user))
    scaled = copy.deepcopy(manifests("ScaledObject")[0])
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    assert crd_problems(scaled) != []
    deployment = copy.deepcopy(manifests("Deployment")[0])
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "ninety"
    assert builtin_problems(deployment, "1.30.0") != []
    scaled = copy.deepcopy(manifests("ScaledObject")[0])
    scaled["spec"]["minReplicaCount"] = scaled["spec"]["maxReplicaCount"] + 1
    assert crd_problems(scaled) == ["spec: minReplicaCount must be less than or equal to maxReplicaCount"]
    topic = copy.deepcopy(manifests("KafkaTopic")[0])
    topic["apiVersion"] = "kafka.strimzi.io/v1beta2"
    assert crd_problems(topic) == ["no stored CRD serves kafka.strimzi.io/v1beta2 KafkaTopic"]


def test_kubectl_kustomize_builds_the_directory(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian: apt-get install kubernetes-client)")
    write(bundle(), tmp_path)
    built = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    docs = list(yaml.safe_load_all(built.stdout))
    assert {d["metadata"].get("namespace") for d in docs} == {"desy"}
    dashboard = [d for d in docs if d["metadata"]["name"] == "dcnios-grafana-dashboard"]
    assert dashboard[0]["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert json.loads(dashboard[0]["data"]["grafana-dashboard.json"])["uid"] == "dcnios"
    assert all_problems(docs) == []
    assert len(docs) == len(bundle().manifests) + 1  # the dashboard ConfigMap


def test_without_service_monitor_the_kustomization_leaves_the_operator_kinds_out() -> None:
    plain = render(example(), RenderOptions())
    resources = yaml.safe_load(plain.files["kustomization.yaml"])["resources"]
    assert "monitoring.yaml" not in resources
    assert set(resources) == {"producers.yaml", "consumers.yaml", "strimzi.yaml", "keda.yaml"}


# -- pods ---------------------------------------------------------------------------------------
def test_producer_deployment_is_one_replica_recreated_and_probed() -> None:
    d = named("Deployment", "dcnios-producer-petra")
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = d["spec"]["template"]["spec"]["containers"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["command"] == ["dcnios-producer"]
    assert container["args"] == [
        "-c",
        "/etc/dcnios/spec/spec.yaml",
        "--source",
        "petra",
        "--metrics-port",
        "9400",
    ]
    assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in container["ports"]
    addr = [e for e in container["env"] if e["name"] == "DCNIOS_METRICS_ADDR"]
    assert addr == [{"name": "DCNIOS_METRICS_ADDR", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_consumer_grace_period_covers_drain_and_session_timeout() -> None:
    spec = parse_spec(
        EXAMPLE.read_text().replace("    concurrency: 32\n", "    concurrency: 32\n    drain_timeout: 2m\n")
        + "    librdkafka: {session.timeout.ms: '20000'}\n",
        env=SECRETS,
    )
    out = render(spec, RenderOptions())
    docs = {d["metadata"]["name"]: d for d in out.documents("consumers.yaml") if d["kind"] == "Deployment"}
    grayify = docs["dcnios-consumer-grayify"]["spec"]["template"]["spec"]
    fft = docs["dcnios-consumer-fft"]["spec"]["template"]["spec"]
    assert grayify["terminationGracePeriodSeconds"] > 120 + 45  # librdkafka's default session timeout
    assert fft["terminationGracePeriodSeconds"] > 30 + 20
    assert fft["terminationGracePeriodSeconds"] < grayify["terminationGracePeriodSeconds"]
    assert "replicas" not in docs["dcnios-consumer-fft"]["spec"]  # KEDA owns it
    (container,) = fft["containers"]
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_every_consumer_has_a_disruption_budget_selecting_its_pods() -> None:
    for consumer in example().consumers:
        name = f"dcnios-consumer-{consumer.name}"
        pdb = named("PodDisruptionBudget", name)
        selector = named("Deployment", name)["spec"]["selector"]["matchLabels"]
        assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}


def test_resources_follow_the_benchmarks() -> None:
    producer = named("Deployment", "dcnios-producer-petra")
    assert producer["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "250m", "memory": "128Mi"},
        "limits": {"cpu": "1000m", "memory": "256Mi"},
    }
    assert "BENCHMARKS.md" in producer["metadata"]["annotations"]["dcnios/resources"]
    fft = named("Deployment", "dcnios-consumer-fft")["spec"]["template"]["spec"]["containers"][0]
    grayify = named("Deployment", "dcnios-consumer-grayify")["spec"]["template"]["spec"]["containers"][0]
    # 20/s x 0.233 CPU-ms per call is 5m: the 100m floor; unlimited: half of the ~3,830 calls/s
    # one process makes, at 0.233 ms each: 447m.
    assert fft["resources"]["requests"]["cpu"] == "100m"
    assert grayify["resources"]["requests"]["cpu"] == "447m"


# -- secrets ------------------------------------------------------------------------------------
def test_no_secret_is_written_anywhere() -> None:
    text = "".join(bundle().files.values())
    leaks = [name for name, value in SECRETS.items() if value in text]
    assert leaks == []
    assert [d for d in bundle().documents() if d["kind"] == "Secret"] == []


def test_each_pod_loads_its_spec_from_the_mounted_secret_keys(tmp_path: Path) -> None:
    """Mount every key the pod names (under tmp_path instead of /etc/dcnios), load the spec as the
    pod would: it is the original component, credentials replaced by Strimzi's."""
    for deployment in manifests("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        name = deployment["metadata"]["name"]
        config_map = named("ConfigMap", pod["volumes"][0]["configMap"]["name"])
        text = config_map["data"]["spec.yaml"].replace("/etc/dcnios", str(tmp_path / name))
        for volume in pod["volumes"]:
            for source in volume.get("projected", {}).get("sources", []):
                for item in source["secret"]["items"]:
                    path = tmp_path / name / "secrets" / item["path"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(f"value-of-{item['key']}\n")
        env = {e["name"]: "from-env" for e in pod["containers"][0]["env"] if "secretKeyRef" in e["valueFrom"]}
        spec = parse_spec(text, env=env)
        assert spec.kafka.sasl is not None and spec.kafka.sasl.password is not None
        if name == "dcnios-producer-petra":
            (source,) = spec.sources
            assert source == example().source("petra").__class__(
                **{**_fields(example().source("petra")), "auth": source.auth}
            )
            assert source.auth is not None and source.auth.password is not None
            assert source.auth.password.reveal() == "value-of-sources.petra.auth.password"
            assert spec.kafka.sasl.username == "dcnios-source-petra"
            assert spec.kafka.sasl.password.reveal() == "value-of-password"
        else:
            (consumer,) = spec.consumers
            original = example().consumer(consumer.name)
            assert _fields(consumer) == {**_fields(original), "oscar": consumer.oscar}
            assert _fields(consumer.oscar).keys() == _fields(original.oscar).keys()
            assert spec.kafka.sasl.username == original.principal
        assert spec.kafka.ssl is not None and spec.kafka.ssl.ca_location is not None
        assert spec.kafka.ssl.ca_location.endswith("/lake-cluster-ca-cert/ca.crt")


def _fields(obj: Any) -> dict[str, Any]:
    return {f: getattr(obj, f) for f in obj.__dataclass_fields__}


def test_a_secret_without_a_file_form_comes_from_the_environment() -> None:
    spec = parse_spec(
        EXAMPLE.read_text()
        .replace(
            'auth: {username: petra, password: "${DCACHE_PASSWORD:-change-me}"}', "auth: {token: tkn-Qx7}"
        )
        .replace(
            "    concurrency: 32\n",
            "    concurrency: 32\n    librdkafka: {sasl.oauthbearer.client.secret: kp-Qx8}\n",
        ),
        env=SECRETS,
    )
    out = render(spec, RenderOptions())
    text = "".join(out.files.values())
    assert "tkn-Qx7" not in text and "kp-Qx8" not in text
    env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for d in out.documents()
        if d["kind"] == "Deployment"
        for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
        if "secretKeyRef" in e["valueFrom"]
    }
    assert env == {
        "DCNIOS_SECRET_SOURCES_PETRA_AUTH_TOKEN": {
            "name": "dcnios-secrets",
            "key": "sources.petra.auth.token",
        },
        "DCNIOS_SECRET_CONSUMERS_GRAYIFY_LIBRDKAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": {
            "name": "dcnios-secrets",
            "key": "consumers.grayify.librdkafka.sasl.oauthbearer.client.secret",
        },
    }
    assert "sources.petra.auth.token" in out.files["secrets.txt"]


def test_a_dollar_in_a_value_survives_the_round_trip() -> None:
    spec = parse_spec(
        EXAMPLE.read_text()
        .replace("service: grayify,", "service: grayify, input_path: /d/$$x,")
        .replace(", input_path: /data/beamtime/1234}", "}"),
        env=SECRETS,
    )
    assert spec.consumer("grayify").oscar.input_path == "/d/$x"
    out = render(spec, RenderOptions())
    text = next(d for d in out.documents() if d["metadata"]["name"] == "dcnios-consumer-grayify-spec")
    assert "input_path: /d/$$x" in text["data"]["spec.yaml"]


# -- KEDA ---------------------------------------------------------------------------------------
def test_a_group_without_rate_scales_on_kafka_lag_up_to_its_partitions() -> None:
    scaled = named("ScaledObject", "dcnios-consumer-grayify")["spec"]
    assert scaled["scaleTargetRef"] == {"name": "dcnios-consumer-grayify"}
    assert scaled["maxReplicaCount"] == 6  # topic_defaults.partitions
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"] == {
        "bootstrapServers": "lake-kafka-bootstrap.kafka.svc:9093",
        "consumerGroup": "dcnios-grayify",
        "topic": "petra.bt-1234",
        "lagThreshold": "128",  # 4 x concurrency 32
        "activationLagThreshold": "0",
        "offsetResetPolicy": "earliest",
        "limitToPartitionsWithLag": "true",
        "sasl": "scram_sha512",
        "tls": "enable",
    }
    assert trigger["authenticationRef"] == {"name": "dcnios-kafka"}
    auth = named("TriggerAuthentication", "dcnios-kafka")["spec"]
    assert auth["secretTargetRef"] == [
        {"parameter": "password", "name": "dcnios-keda", "key": "password"},
        {"parameter": "ca", "name": "lake-cluster-ca-cert", "key": "ca.crt"},
    ]
    assert auth["configMapTargetRef"] == [{"parameter": "username", "name": "dcnios-keda", "key": "username"}]
    assert named("ConfigMap", "dcnios-keda")["data"] == {"username": "dcnios-keda"}


def test_a_group_with_a_rate_scales_on_saturation_and_says_why() -> None:
    scaled = named("ScaledObject", "dcnios-consumer-fft")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["serverAddress"] == "http://prometheus-operated.monitoring.svc:9090"
    assert 'dcnios_consumer_group_rate_limit{consumer="fft"}' in trigger["metadata"]["query"]
    assert "lag" in scaled["metadata"]["annotations"]["dcnios/scaling"]
    assert "20/s" in scaled["metadata"]["annotations"]["dcnios/scaling"]


def test_plaintext_needs_no_trigger_authentication() -> None:
    spec = parse_spec(
        "kafka: {bootstrap_servers: 'k:9092'}\nconsumers:\n  - name: a\n    topic: t\n"
        "    oscar: {endpoint: 'https://o', service: s, token: x, input_path: /in}\n"
    )
    out = render(spec, RenderOptions())
    assert [d["kind"] for d in out.documents("keda.yaml")] == ["ScaledObject"]
    (trigger,) = out.documents("keda.yaml")[0]["spec"]["triggers"]
    assert "authenticationRef" not in trigger and trigger["metadata"]["sasl"] == "none"
    assert all(
        "authentication" not in d["spec"] for d in out.documents("strimzi.yaml") if d["kind"] == "KafkaUser"
    )
    assert all_problems(out.documents()) == []


# -- Strimzi ------------------------------------------------------------------------------------
def test_a_kafka_topic_for_every_planned_topic_with_compaction_where_planned() -> None:
    topics = {d["spec"]["topicName"]: d for d in manifests("KafkaTopic")}
    plans = {p.name: p for p in topic_plan(example())}
    assert topics.keys() == plans.keys()
    for name, plan in plans.items():
        spec = topics[name]["spec"]
        assert (spec["partitions"], spec["replicas"]) == (plan.partitions, 3)
        assert spec.get("config", {}).get("cleanup.policy") == plan.config.get("cleanup.policy")
        assert topics[name]["metadata"]["labels"] == {"strimzi.io/cluster": "lake"}
    for compacted in ("dcnios.checkpoints", "dcnios.control", "dcnios.published.petra"):
        assert topics[compacted]["spec"]["config"] == {"cleanup.policy": "compact"}
    assert "config" not in topics["petra.bt-1234"]["spec"]


def test_kafka_topic_names_are_valid_object_names() -> None:
    spec = parse_spec(
        "kafka: {bootstrap_servers: 'k:9092'}\nconsumers:\n  - name: a\n    topic: Raw_Events\n"
        "    oscar: {endpoint: 'https://o', service: s, token: x, input_path: /in}\n"
    )
    names = {
        d["spec"]["topicName"]: d["metadata"]["name"]
        for d in render(spec).documents()
        if d["kind"] == "KafkaTopic"
    }
    assert names["Raw_Events"].startswith("raw-events-") and names["Raw_Events"] != names["Raw_Events.dlq"]
    assert names["dcnios.control"] == "dcnios.control"


def principal(name: str) -> KafkaPrincipal:
    (p,) = [p for p in bundle().principals if p.name == name]
    return p


def acls(name: str) -> list[tuple[str, str, str, tuple[str, ...]]]:
    doc = named("KafkaUser", name)
    return [
        (a["resource"]["type"], a["resource"]["name"], a["resource"]["patternType"], tuple(a["operations"]))
        for a in doc["spec"]["authorization"]["acls"]
    ]


def test_producer_acls_are_its_topics_and_its_checkpoints() -> None:
    assert named("KafkaUser", "dcnios-source-petra")["spec"]["authentication"] == {"type": "scram-sha-512"}
    assert acls("dcnios-source-petra") == [
        ("topic", "petra.events", "literal", ("Write", "Describe")),
        ("topic", "petra.bt-1234", "literal", ("Write", "Describe")),
        ("topic", "petra.bt-5678", "literal", ("Write", "Describe")),
        ("topic", "petra.events.invalid", "literal", ("Write", "Describe")),
        ("topic", "dcnios.gaps", "literal", ("Write", "Describe")),
        ("topic", "dcnios.checkpoints", "literal", ("Read", "Write", "Describe", "DescribeConfigs")),
        ("topic", "dcnios.published.petra", "literal", ("Read", "Write", "Describe", "DescribeConfigs")),
        ("group", "dcnios-reader-", "prefix", ("Read",)),
    ]


def test_consumer_acls_are_its_topic_group_dlq_and_control() -> None:
    assert acls("dcnios-grayify") == [
        ("topic", "petra.bt-1234", "literal", ("Read", "Describe")),
        ("group", "dcnios-grayify", "prefix", ("Read",)),
        ("topic", "petra.bt-1234.dlq", "literal", ("Write", "Describe")),
        ("topic", "dcnios.control", "literal", ("Read", "Describe", "DescribeConfigs")),
        ("group", "dcnios-control-", "prefix", ("Read",)),
    ]
    assert acls("dcnios-keda") == [
        ("topic", "petra.bt-1234", "literal", ("Describe",)),
        ("topic", "petra.bt-5678", "literal", ("Describe",)),
        ("group", "dcnios-grayify", "literal", ("Describe",)),
        ("group", "dcnios-fft", "literal", ("Describe",)),
    ]


def test_restricted_subtrees_are_readable_only_by_their_readers() -> None:
    restricted = example().topic_readers()
    assert {t: sorted(r.principals) for t, r in restricted.items()} == {
        "petra.events": [],
        "petra.bt-1234": ["dcnios-grayify"],
        "petra.bt-5678": ["dcnios-fft"],
    }
    for p in bundle().principals:
        readable = {t for t in restricted if p.can("Read", "topic", t)}
        assert readable == {t for t, r in restricted.items() if p.name in r.principals}, p.name
    assert principal("dcnios-grayify").can("Read", "topic", "petra.bt-1234")
    assert not principal("dcnios-grayify").can("Read", "topic", "petra.bt-5678")
    assert not principal("dcnios-fft").can("Read", "topic", "petra.events")


def test_a_spec_built_around_the_loader_gets_no_grant() -> None:
    from dataclasses import replace

    spec = example()
    intruder = replace(spec.consumer("grayify"), name="intruder", principal="dcnios-intruder", group="g")
    with pytest.raises(ConfigError, match=r"'dcnios-intruder' may not read 'petra\.bt-1234'"):
        render(replace(spec, consumers=(*spec.consumers, intruder)))


def test_two_components_on_one_principal_are_refused() -> None:
    text = EXAMPLE.read_text().replace("  - name: fft\n", "  - name: fft\n    principal: dcnios-grayify\n")
    text = text.replace("readers: [dcnios-fft]", "readers: [dcnios-grayify]")
    with pytest.raises(ConfigError, match="both authenticate as 'dcnios-grayify'"):
        render(parse_spec(text, env=SECRETS))


def test_render_needs_bootstrap_servers() -> None:
    spec = parse_spec(
        "consumers:\n  - name: a\n    topic: t\n"
        "    oscar: {endpoint: 'https://o', service: s, token: x, input_path: /in}\n"
    )
    with pytest.raises(ConfigError, match=r"kafka.bootstrap_servers: is required for `dcnios k8s`"):
        render(spec)


def test_nifi_consumers_get_no_pods() -> None:
    text = (
        EXAMPLE.read_text()
        + "nifi: {endpoint: 'https://nifi:8443/nifi-api', consumers: [fft], auth: {token: t}}\n"
    )
    out = render(parse_spec(text, env=SECRETS))
    deployments = [d["metadata"]["name"] for d in out.documents() if d["kind"] == "Deployment"]
    assert deployments == ["dcnios-producer-petra", "dcnios-consumer-grayify"]
    assert "dcnios-fft" not in {p.name for p in out.principals}


# -- the command --------------------------------------------------------------------------------
def test_dcnios_k8s_writes_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    code = main(
        ["k8s", "-c", str(EXAMPLE), "--out", str(out), "--namespace", "desy", "--kafka-cluster", "lake"]
    )
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(bundle().files)
    assert yaml.safe_load((out / "kustomization.yaml").read_text())["namespace"] == "desy"
    assert "kubectl apply -k" in capsys.readouterr().out


def test_dcnios_k8s_reports_a_spec_error_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("readers: [dcnios-fft]", "readers: [dcnios-grayify]"))
    assert main(["k8s", "-c", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "consumers[1].topic" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_long_names_still_make_valid_objects() -> None:
    name = "c" * 63
    spec = parse_spec(
        "kafka: {bootstrap_servers: 'k:9092'}\nsources:\n"
        f"  - {{name: {'s' * 63}, endpoint: 'https://d:3880/api/v1', paths: [/in], topic: t}}\n"
        f"consumers:\n  - name: {name}\n    topic: t\n"
        "    oscar: {endpoint: 'https://o', service: s, token: x, input_path: /in}\n"
    )
    out = render(spec)
    assert all_problems(out.documents()) == []
    deployments = [d["metadata"]["name"] for d in out.documents() if d["kind"] == "Deployment"]
    assert all(len(n) <= 63 for n in deployments) and len(set(deployments)) == 2


def test_a_webhook_source_listens_on_its_pod_address_behind_its_service(tmp_path: Path) -> None:
    token = tmp_path / "hook"
    token.write_text("hook-secret\n")
    spec = load_spec(REPO / "examples" / "s3-minio-webhook.yaml", env={"MINIO_WEBHOOK_TOKEN": "t"})
    out = render(spec, RenderOptions())
    docs = {(d["kind"], d["metadata"]["name"]): d for d in out.documents()}
    container = docs["Deployment", "dcnios-producer-minio-hook"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "webhook", "containerPort": 8470, "protocol": "TCP"} in container["ports"]
    service = docs["Service", "dcnios-producer-minio-hook"]["spec"]
    assert {"name": "webhook", "port": 8470, "targetPort": "webhook"} in service["ports"]
    text = docs["ConfigMap", "dcnios-producer-minio-hook-spec"]["data"]["spec.yaml"]
    text = text.replace("/etc/dcnios/secrets/dcnios-secrets/sources.minio-hook.webhook.token", str(token))
    (source,) = parse_spec(text, env={"DCNIOS_METRICS_ADDR": "10.1.2.3"}).sources
    assert source.webhook is not None and source.webhook.host == "10.1.2.3"  # type: ignore[union-attr]
    assert source.webhook.token is not None and source.webhook.token.reveal() == "hook-secret"  # type: ignore[union-attr]
