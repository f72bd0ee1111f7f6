"""The pods: a Deployment per source (producer) and per consumer, their spec ConfigMaps, Services
(for the ServiceMonitor) and the consumers' PodDisruptionBudgets."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Final, Literal

from dcnios.deploy.k8s_spec import SECRETS_DIR, SPEC_DIR, PodSpecFile
from dcnios.deploy.manifest import APP_LABEL, Manifest, component_labels, dns_name
from dcnios.deploy.monitoring import JOB_LABEL, METRICS_PORT
from dcnios.deploy.sizing import Resources
from dcnios.spec import ConsumerSpec, KafkaSpec

__all__ = ["RUN_AS", "Workload", "consumer_grace_seconds", "workload_manifests"]

#: The image's non-root user (see the Dockerfile).
RUN_AS: Final = 10001
#: librdkafka's default session.timeout.ms, as consumers/run.py assumes it.
DEFAULT_SESSION_TIMEOUT_S: Final = 45.0
#: SIGTERM to exit, beyond the drain and the group leave: closing clients, flushing the DLQ.
SHUTDOWN_MARGIN_S: Final = 15
#: A producer flushes what it holds and writes its checkpoint; records wait at most
#: message.timeout.ms (60 s by default in dcnios.kafka.producer_config).
PRODUCER_GRACE_S: Final = 75


@dataclass(frozen=True, slots=True)
class Workload:
    """One Deployment: its name, what it runs, and the files it needs."""

    component: Literal["producer", "consumer"]
    instance: str
    name: str
    command: str
    args: tuple[str, ...]
    spec_file: PodSpecFile
    resources: Resources
    grace_seconds: int
    image: str
    #: Ports beyond metrics that others connect to (a webhook source's), as (name, port).
    ports: tuple[tuple[str, int], ...] = ()


def consumer_grace_seconds(consumer: ConsumerSpec, kafka: KafkaSpec) -> int:
    """Above ``drain_timeout`` plus the session timeout: the drain, then leaving the group."""
    settings = {**kafka.librdkafka, **consumer.librdkafka}
    raw = settings.get("session.timeout.ms")
    session = int(str(raw)) / 1000 if raw is not None else DEFAULT_SESSION_TIMEOUT_S
    return math.ceil(float(consumer.drain_timeout) + session) + SHUTDOWN_MARGIN_S


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "metrics"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _volumes(w: Workload, config_map: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": config_map}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},  # the published-files index (SQLite)
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108  # the pod's own emptyDir
    ]
    by_secret: dict[str, list[dict[str, str]]] = {}
    for f in w.spec_file.files:
        by_secret.setdefault(f.secret, []).append({"key": f.key, "path": f"{f.secret}/{f.key}"})
    if by_secret:
        volumes.append(
            {
                "name": "secrets",
                "projected": {
                    "defaultMode": 0o440,
                    "sources": [
                        {"secret": {"name": name, "items": items}} for name, items in by_secret.items()
                    ],
                },
            }
        )
        mounts.append({"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True})
    return volumes, mounts


def _deployment(w: Workload, config_map: str) -> Manifest:
    labels = component_labels(w.component, w.instance)
    selector = {
        k: labels[k] for k in (APP_LABEL, "app.kubernetes.io/component", "app.kubernetes.io/instance")
    }
    volumes, mounts = _volumes(w, config_map)
    env: list[dict[str, Any]] = [
        # The metrics server binds 127.0.0.1 unless told otherwise; in a pod, its own address is
        # where the kubelet probes and Prometheus scrapes.
        {"name": "DCNIOS_METRICS_ADDR", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    env += [
        {"name": e.name, "valueFrom": {"secretKeyRef": {"name": e.secret, "key": e.key}}}
        for e in w.spec_file.env
    ]
    container: dict[str, Any] = {
        "name": w.component,
        "image": w.image,
        "imagePullPolicy": "IfNotPresent",
        "command": [w.command],
        "args": list(w.args),
        "env": env,
        "ports": [
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
            *({"name": name, "containerPort": port, "protocol": "TCP"} for name, port in w.ports),
        ],
        "livenessProbe": _probe("/healthz", 10, 3),
        "readinessProbe": _probe("/healthz", 10, 2),
        "resources": w.resources.to_dict(),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if w.component == "consumer":
        # /healthz answers 503 until the member's first assignment, which takes up to a session
        # timeout on a group's first join: the startup probe allows 5 minutes for it.
        container["startupProbe"] = _probe("/healthz", 5, 60)
    digest = hashlib.sha256(w.spec_file.text.encode()).hexdigest()[:16]
    body: dict[str, Any] = {
        "spec": {
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels, "annotations": {"dcnios/spec-sha256": digest}},
                "spec": {
                    "terminationGracePeriodSeconds": w.grace_seconds,
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        }
    }
    if w.component == "producer":
        # Two producers on one dCache channel end in COMPETING_CLIENT: never overlap them.
        body["spec"]["strategy"] = {"type": "Recreate"}
        body["spec"]["replicas"] = 1
    else:
        # KEDA owns the replica count (none is set here, so a re-apply does not reset it); a
        # rollout adds one member before it removes one.
        body["spec"]["strategy"] = {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }
    annotations = {"dcnios/resources": w.resources.why}
    return Manifest("apps/v1", "Deployment", w.name, body, labels, annotations, file=f"{w.component}s.yaml")


def workload_manifests(w: Workload) -> list[Manifest]:
    """The Deployment, its spec ConfigMap, its Service; a PodDisruptionBudget for a consumer."""
    labels = component_labels(w.component, w.instance)
    config_map = dns_name(f"{w.name}-spec")
    out = [
        Manifest(
            "v1",
            "ConfigMap",
            config_map,
            {"data": {"spec.yaml": w.spec_file.text}},
            labels,
            file=f"{w.component}s.yaml",
        ),
        _deployment(w, config_map),
        Manifest(
            "v1",
            "Service",
            w.name,
            {
                "spec": {
                    "clusterIP": "None",
                    "selector": {
                        APP_LABEL: "dcnios",
                        "app.kubernetes.io/component": w.component,
                        "app.kubernetes.io/instance": w.instance,
                    },
                    "ports": [
                        {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"},
                        *({"name": name, "port": port, "targetPort": name} for name, port in w.ports),
                    ],
                }
            },
            {**labels, JOB_LABEL: f"dcnios-{w.component}"},
            file=f"{w.component}s.yaml",
        ),
    ]
    if w.component == "consumer":
        # One member at a time: each eviction costs the group one rebalance.
        out.append(
            Manifest(
                "policy/v1",
                "PodDisruptionBudget",
                w.name,
                {
                    "spec": {
                        "maxUnavailable": 1,
                        "selector": {"matchLabels": out[1].body["spec"]["selector"]["matchLabels"]},
                    }
                },
                labels,
                file="consumers.yaml",
            )
        )
    return out
