"""`dcnios k8s`: the spec in, a kustomize-ready directory of manifests out (pure until ``write``).

Files of the rendered directory:

* ``kustomization.yaml``: the resources below and the Grafana dashboard as a ConfigMap;
* ``producers.yaml``, ``consumers.yaml``: Deployments, their spec ConfigMaps, Services, PDBs;
* ``strimzi.yaml``: KafkaTopics and KafkaUsers (``kafka.strimzi.io/v1``);
* ``keda.yaml``: ScaledObjects and the TriggerAuthentication;
* ``monitoring.yaml`` (Prometheus Operator: PrometheusRule, ServiceMonitor), in the kustomization
  only with ``service_monitor``;
* ``prometheus-rules.yaml``, ``prometheus-scrape-config.yaml``: the same rules and a scrape job for a
  Prometheus without the operator; ``grafana-dashboard.json``;
* ``secrets.txt``: the keys the existing Secret must hold, and the spec field each one serves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import yaml

from dcnios.deploy.k8s_spec import SPEC_PATH, PodSpecFile, pod_spec_file
from dcnios.deploy.keda import ScalerOptions, scaled_object, trigger_authentication
from dcnios.deploy.manifest import Manifest, dns_name, dump_yaml
from dcnios.deploy.monitoring import (
    METRICS_PORT,
    dashboard,
    prometheus_rule,
    rules_file,
    scrape_configs,
    service_monitor,
)
from dcnios.deploy.sizing import consumer_resources, producer_resources
from dcnios.deploy.strimzi import (
    KafkaPrincipal,
    credential_overrides,
    kafka_auth,
    kafka_topics,
    kafka_user,
    partitions_of,
    principals,
    producer_principal,
)
from dcnios.deploy.workloads import PRODUCER_GRACE_S, Workload, consumer_grace_seconds, workload_manifests
from dcnios.errors import ConfigError
from dcnios.spec import ConsumerSpec, PipelineSpec, S3NotificationsSourceSpec

__all__ = ["Bundle", "RenderOptions", "render", "write"]

DASHBOARD_FILE: Final = "grafana-dashboard.json"


@dataclass(frozen=True, slots=True)
class RenderOptions:
    namespace: str = "dcnios"
    image: str = "ghcr.io/dcnios/dcnios:0.1.0"
    #: The Strimzi Kafka cluster (``strimzi.io/cluster``); its CA Secret is ``<cluster>-cluster-ca-cert``.
    kafka_cluster: str = "kafka"
    #: The existing Secret holding the spec's secrets and files, one key per spec field.
    secret_name: str = "dcnios-secrets"  # noqa: S105  # a Secret's name, not a secret
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    service_monitor: bool = False
    lag_per_member: int | None = None


@dataclass(frozen=True, slots=True)
class Bundle:
    """Every rendered object (grouped by file) and the other files, by file name."""

    manifests: tuple[Manifest, ...]
    files: dict[str, str]
    principals: tuple[KafkaPrincipal, ...]
    namespace: str

    def documents(self, file: str | None = None) -> list[dict[str, Any]]:
        return [m.to_dict() for m in self.manifests if file is None or m.file == file]


def _pod_spec(spec: PipelineSpec, user: str, options: RenderOptions) -> PodSpecFile:
    kafka = spec.kafka
    if kafka_auth(kafka) == "scram-sha-512" and kafka.sasl is not None:
        kafka = replace(kafka, sasl=replace(kafka.sasl, username=user))
    cut = replace(spec, kafka=kafka, nifi=None, sandbox=None)
    return pod_spec_file(
        cut, secret=options.secret_name, overrides=credential_overrides(kafka, user, options.kafka_cluster)
    )


def _deployed_consumers(spec: PipelineSpec) -> list[ConsumerSpec]:
    """Consumers listed under ``nifi.consumers`` run in NiFi, not as pods."""
    in_nifi = set(spec.nifi.consumers) if spec.nifi is not None else set()
    return [c for c in spec.consumers if c.name not in in_nifi]


def _workloads(
    spec: PipelineSpec, consumers: Iterable[ConsumerSpec], options: RenderOptions
) -> list[Workload]:
    port = str(METRICS_PORT)
    out = []
    for s in spec.sources:
        pod = _pod_spec(replace(spec, sources=(s,), consumers=()), producer_principal(s), options)
        args = ("-c", SPEC_PATH, "--source", s.name, "--metrics-port", port)
        name = dns_name(f"dcnios-producer-{s.name}")
        webhook = s.webhook if isinstance(s, S3NotificationsSourceSpec) else None
        out.append(
            Workload(
                "producer",
                s.name,
                name,
                "dcnios-producer",
                args,
                pod,
                producer_resources(),
                PRODUCER_GRACE_S,
                options.image,
                ports=(("webhook", webhook.port),) if webhook is not None else (),
            )
        )
    for c in consumers:
        assert c.principal is not None
        pod = _pod_spec(replace(spec, sources=(), consumers=(c,)), c.principal, options)
        args = ("-c", SPEC_PATH, "--consumer", c.name, "--metrics-port", port)
        name = dns_name(f"dcnios-consumer-{c.name}")
        grace = consumer_grace_seconds(c, spec.kafka)
        out.append(
            Workload(
                "consumer",
                c.name,
                name,
                "dcnios-consumer",
                args,
                pod,
                consumer_resources(c),
                grace,
                options.image,
            )
        )
    return out


def _secret_notes(workloads: list[Workload], options: RenderOptions) -> str:
    lines = [
        f"# Keys the Secret {options.secret_name!r} must hold (one file each), and who mounts them.",
        "# Keys of other Secrets (Strimzi's user and cluster CA Secrets) are created by Strimzi.",
    ]
    keys: dict[str, set[str]] = {}
    for w in workloads:
        for f in w.spec_file.files:
            if f.secret == options.secret_name:
                keys.setdefault(f.key, set()).add(w.name)
        for e in w.spec_file.env:
            keys.setdefault(e.key, set()).add(w.name)
    for key in sorted(keys):
        lines.append(f"{key}\t(used by {', '.join(sorted(keys[key]))})")
    if keys:
        files = " ".join(f"--from-file={k}=PATH" for k in sorted(keys))
        lines += ["", f"kubectl -n {options.namespace} create secret generic {options.secret_name} {files}"]
    else:
        lines.append("(none: the spec has no secrets or files)")
    return "\n".join(lines) + "\n"


def render(spec: PipelineSpec, options: RenderOptions | None = None) -> Bundle:
    """Every object for ``spec``. Raises ConfigError for what Kubernetes cannot run as given."""
    options = options or RenderOptions()
    if spec.kafka.bootstrap_servers is None:
        raise ConfigError(
            "kafka.bootstrap_servers: is required for `dcnios k8s` (a pod cannot use the embedded broker)"
        )
    consumers = _deployed_consumers(spec)
    users = principals(spec, consumers)
    workloads = _workloads(spec, consumers, options)
    partitions = partitions_of(spec)
    scaler = ScalerOptions(
        options.prometheus_url, options.kafka_cluster, options.secret_name, options.lag_per_member
    )
    manifests: list[Manifest] = []
    for w in workloads:
        manifests += workload_manifests(w)
    manifests += kafka_topics(spec, options.kafka_cluster)
    manifests += [kafka_user(p, spec.kafka, options.kafka_cluster) for p in users]
    for c, w in zip(consumers, (w for w in workloads if w.component == "consumer"), strict=True):
        manifests.append(scaled_object(c, spec.kafka, w.name, partitions[c.topic], scaler))
    if consumers:
        manifests += trigger_authentication(spec.kafka, scaler)
    manifests += [prometheus_rule(), service_monitor()]
    files: dict[str, str] = {}
    for file in dict.fromkeys(m.file for m in manifests):
        docs = [m.to_dict() for m in manifests if m.file == file]
        files[file] = dump_yaml(docs)
    resources = [f for f in files if f != "monitoring.yaml" or options.service_monitor]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": options.namespace,
        "resources": resources,
        "configMapGenerator": [
            {
                "name": "dcnios-grafana-dashboard",
                "files": [DASHBOARD_FILE],
                "options": {"disableNameSuffixHash": True, "labels": {"grafana_dashboard": "1"}},
            }
        ],
    }
    files["kustomization.yaml"] = yaml.safe_dump(kustomization, sort_keys=False)
    files[DASHBOARD_FILE] = json.dumps(dashboard(), indent=2) + "\n"
    files["prometheus-rules.yaml"] = yaml.safe_dump(rules_file(), sort_keys=False)
    files["prometheus-scrape-config.yaml"] = yaml.safe_dump(
        scrape_configs(options.namespace), sort_keys=False
    )
    files["secrets.txt"] = _secret_notes(workloads, options)
    return Bundle(tuple(manifests), files, tuple(users), options.namespace)


def write(bundle: Bundle, out: str | os.PathLike[str]) -> list[Path]:
    """Write every file into ``out`` (created if missing); returns the paths written."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in bundle.files.items():
        path = root / name
        path.write_text(text)
        written.append(path)
    return written
