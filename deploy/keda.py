"""KEDA: a ScaledObject per consumer Deployment, and the TriggerAuthentication its Kafka trigger uses.

Lag-based scaling (the ``kafka`` trigger) fits a group without a ``rate``: more members drain a
backlog faster, up to one member per partition. A group with a ``rate`` builds lag by design (the
rate holds records back), and more members share the same rate, so lag-based scaling would only
burn pods; such a group scales on a ``prometheus`` trigger that asks how many members the group
needs to reach its rate at the throughput each member achieves (:func:`saturation_query`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from dcnios.deploy.manifest import Manifest, component_labels
from dcnios.deploy.monitoring import saturation_query
from dcnios.deploy.strimzi import SCALER_PRINCIPAL, credential_overrides, kafka_auth
from dcnios.spec import ConsumerSpec, KafkaSpec

__all__ = ["KEDA_API", "ScalerOptions", "scaled_object", "trigger_authentication"]

KEDA_API: Final = "keda.sh/v1alpha1"
TRIGGER_AUTH: Final = "dcnios-kafka"
SCALER_CONFIG: Final = "dcnios-keda"
_SASL: Final = {
    "PLAIN": "plaintext",
    "SCRAM-SHA-256": "scram_sha256",
    "SCRAM-SHA-512": "scram_sha512",
    "OAUTHBEARER": "oauthbearer",
}


@dataclass(frozen=True, slots=True)
class ScalerOptions:
    prometheus_url: str
    cluster: str
    secret: str
    #: Records of lag per member before KEDA adds one; default: 4 rounds of ``concurrency`` calls.
    lag_per_member: int | None = None


def needs_auth(kafka: KafkaSpec) -> bool:
    return kafka.sasl is not None or kafka.ssl is not None


def lag_threshold(consumer: ConsumerSpec, options: ScalerOptions) -> int:
    return options.lag_per_member or max(10, 4 * consumer.concurrency)


def scaled_object(
    consumer: ConsumerSpec, kafka: KafkaSpec, deployment: str, partitions: int, options: ScalerOptions
) -> Manifest:
    """``maxReplicaCount`` is the topic's partition count: a member past it would sit idle."""
    assert kafka.bootstrap_servers is not None and consumer.group is not None
    if consumer.rate is None:
        trigger: dict[str, object] = {
            "type": "kafka",
            "metadata": {
                "bootstrapServers": kafka.bootstrap_servers,
                "consumerGroup": consumer.group,
                "topic": consumer.topic,
                "lagThreshold": str(lag_threshold(consumer, options)),
                "activationLagThreshold": "0",
                "offsetResetPolicy": "earliest",  # dcnios's groups start from the earliest offset
                "limitToPartitionsWithLag": "true",
                "sasl": _SASL[kafka.sasl.mechanism] if kafka.sasl is not None else "none",
                "tls": "enable" if kafka.security_protocol.endswith("SSL") else "disable",
            },
        }
        if needs_auth(kafka):
            trigger["authenticationRef"] = {"name": TRIGGER_AUTH}
        why = "kafka trigger: lag per member; the group has no rate, so more members drain faster"
    else:
        trigger = {
            "type": "prometheus",
            "metadata": {
                "serverAddress": options.prometheus_url,
                "query": saturation_query(consumer),
                # The query gives the members needed; AverageValue 1 makes that the replica count.
                "threshold": "1",
                "activationThreshold": "0",
                "ignoreNullValues": "true",
            },
        }
        why = (
            f"prometheus trigger, not kafka: the group's rate ({consumer.rate}) builds lag by design and "
            "more members share the same rate, so lag would only burn pods; this asks how many members "
            "reach the rate at the throughput each achieves, while there is lag and OSCAR is up"
        )
    return Manifest(
        KEDA_API,
        "ScaledObject",
        deployment,
        {
            "spec": {
                "scaleTargetRef": {"name": deployment},
                "minReplicaCount": 1,
                "maxReplicaCount": max(1, partitions),
                "pollingInterval": 30,
                "cooldownPeriod": 300,
                "triggers": [trigger],
            }
        },
        labels=component_labels("consumer", consumer.name),
        annotations={"dcnios/scaling": why},
        file="keda.yaml",
    )


def trigger_authentication(kafka: KafkaSpec, options: ScalerOptions) -> list[Manifest]:
    """The credentials of the scaler's KafkaUser (Strimzi's Secret), or the spec's own when Strimzi
    does not issue them; the user name comes from a ConfigMap, since it is no secret."""
    if not needs_auth(kafka):
        return []
    auth = kafka_auth(kafka)
    strimzi = credential_overrides(kafka, SCALER_PRINCIPAL, options.cluster)
    secret_refs: list[dict[str, str]] = []
    config_refs: list[dict[str, str]] = []
    config: dict[str, str] = {}

    def secret(parameter: str, spec_key: str) -> None:
        name, key = strimzi.get(spec_key, (options.secret, spec_key))
        secret_refs.append({"parameter": parameter, "name": name, "key": key})

    if kafka.sasl is not None:
        user = SCALER_PRINCIPAL if auth == "scram-sha-512" else kafka.sasl.username
        if user is not None:
            config["username"] = user
            config_refs.append({"parameter": "username", "name": SCALER_CONFIG, "key": "username"})
        if kafka.sasl.password is not None:
            secret("password", "kafka.sasl.password")
    if kafka.ssl is not None:
        if kafka.ssl.ca_location is not None:
            secret("ca", "kafka.ssl.ca_location")
        if kafka.ssl.certificate_location is not None:
            secret("cert", "kafka.ssl.certificate_location")
            secret("key", "kafka.ssl.key_location")
        if kafka.ssl.key_password is not None:
            secret("keyPassword", "kafka.ssl.key_password")
    spec: dict[str, object] = {}
    if secret_refs:
        spec["secretTargetRef"] = secret_refs
    if config_refs:
        spec["configMapTargetRef"] = config_refs
    out = [
        Manifest(
            KEDA_API,
            "TriggerAuthentication",
            TRIGGER_AUTH,
            {"spec": spec},
            labels=component_labels("scaler", "keda"),
            file="keda.yaml",
        )
    ]
    if config:
        out.append(
            Manifest(
                "v1",
                "ConfigMap",
                SCALER_CONFIG,
                {"data": config},
                component_labels("scaler", "keda"),
                file="keda.yaml",
            )
        )
    return out
