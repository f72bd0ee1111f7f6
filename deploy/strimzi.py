"""Strimzi ``kafka.strimzi.io/v1``: a KafkaTopic per topic the spec implies, a KafkaUser per component.

Every component authenticates as its own KafkaUser and holds only the ACLs it uses:

* a producer writes its source's topics (the default topic, each route's topic, ``<topic>.invalid``)
  and ``<prefix>.gaps``, and reads and writes ``<prefix>.checkpoints`` and its published-files
  index (it reads them back through assigned partitions under ``dcnios-reader-*`` group ids);
* a consumer reads its topic and its groups (``<group>``, ``<group>-replay``, ``<group>-dlq-replay``
  share the prefix), writes its DLQ, and reads ``<prefix>.control`` (under ``dcnios-control-*``);
* the KEDA scaler only describes the consumers' topics and groups (to read their lag).

Per-path authorisation: a topic some ``readers`` list restricts is readable only by the principals
named there; ``dcnios validate`` refuses a consumer outside that list, and :func:`consumer_acls`
refuses it again, so no rendered ACL grants a restricted topic to anyone else.

Kafka >= 3.0 lets an idempotent producer in with Write on any topic (KIP-679), so no cluster
``IdempotentWrite`` ACL is granted. Topics are created by the Topic Operator from the KafkaTopics,
so no component may Create.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from dcnios.deploy.manifest import Manifest, component_labels, dns_name
from dcnios.errors import ConfigError
from dcnios.spec import (
    AnySourceSpec,
    ConsumerSpec,
    KafkaSpec,
    PipelineSpec,
    S3NotificationsSourceSpec,
    SourceSpec,
)
from dcnios.topics import (
    checkpoint_topic,
    control_topic,
    gaps_topic,
    invalid_topic,
    published_topic,
    topic_plan,
)

__all__ = [
    "STRIMZI_API",
    "Acl",
    "KafkaPrincipal",
    "credential_overrides",
    "kafka_auth",
    "kafka_topics",
    "kafka_user",
    "principals",
]

STRIMZI_API: Final = "kafka.strimzi.io/v1"
ResourceType = Literal["topic", "group", "cluster"]
Operation = Literal["Read", "Write", "Describe", "DescribeConfigs"]
KafkaAuth = Literal["scram-sha-512", "tls"]

#: Group ids that read a compacted topic through assigned partitions (``kafka.read_compacted``)
#: and follow the control topic (``control.ControlFollower``).
READER_GROUP_PREFIX: Final = "dcnios-reader-"
CONTROL_GROUP_PREFIX: Final = "dcnios-control-"


@dataclass(frozen=True, slots=True)
class Acl:
    resource_type: ResourceType
    name: str
    pattern: Literal["literal", "prefix"]
    operations: tuple[Operation, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "resource": {"type": self.resource_type, "name": self.name, "patternType": self.pattern},
            "operations": list(self.operations),
        }


@dataclass(frozen=True, slots=True)
class KafkaPrincipal:
    """A KafkaUser: ``name`` is the user name (SCRAM) or the certificate's CN (TLS)."""

    name: str
    component: Literal["producer", "consumer", "scaler"]
    instance: str
    acls: tuple[Acl, ...]

    def can(self, operation: Operation, resource_type: ResourceType, name: str) -> bool:
        """Whether one of the ACLs allows ``operation`` on the resource ``name``."""
        for acl in self.acls:
            if acl.resource_type != resource_type or operation not in acl.operations:
                continue
            if acl.name == name or (acl.pattern == "prefix" and name.startswith(acl.name)):
                return True
        return False


def kafka_auth(kafka: KafkaSpec) -> KafkaAuth | None:
    """How Strimzi can issue each component's credentials; None: the spec's own credentials serve.

    Strimzi issues SCRAM-SHA-512 passwords and TLS client certificates. Other mechanisms (PLAIN,
    SCRAM-SHA-256, OAUTHBEARER) authenticate elsewhere: the KafkaUsers then carry the ACLs only.
    """
    if kafka.sasl is not None and kafka.sasl.mechanism == "SCRAM-SHA-512":
        return "scram-sha-512"
    if kafka.security_protocol == "SSL" and kafka.ssl is not None and kafka.ssl.certificate_location:
        return "tls"
    return None


def credential_overrides(kafka: KafkaSpec, user: str, cluster: str) -> dict[str, tuple[str, str]]:
    """Spec keys whose file comes from Strimzi's Secrets: the user's, and the cluster CA's."""
    out: dict[str, tuple[str, str]] = {}
    auth = kafka_auth(kafka)
    if auth == "scram-sha-512":
        out["kafka.sasl.password"] = (user, "password")
    elif auth == "tls":
        out["kafka.ssl.certificate_location"] = (user, "user.crt")
        out["kafka.ssl.key_location"] = (user, "user.key")
    if kafka.ssl is not None and kafka.ssl.ca_location is not None:
        out["kafka.ssl.ca_location"] = (f"{cluster}-cluster-ca-cert", "ca.crt")
    return out


def _topics(names: Iterable[str], *operations: Operation) -> list[Acl]:
    return [Acl("topic", name, "literal", operations) for name in dict.fromkeys(names)]


def producer_acls(spec: PipelineSpec, source: AnySourceSpec) -> tuple[Acl, ...]:
    k = spec.kafka
    written = [source.topic, *(r.topic for r in source.routes), invalid_topic(source.topic)]
    if not isinstance(source, SourceSpec):
        upstream: list[Acl] = []
        if isinstance(source, S3NotificationsSourceSpec) and source.kafka is not None:
            assert source.kafka.group is not None
            upstream = [
                *_topics([source.kafka.topic], "Read", "Describe"),
                Acl("group", source.kafka.group, "literal", ("Read",)),
            ]
        return (*_topics(written, "Write", "Describe"), *upstream)
    written.append(gaps_topic(k))
    read_back = [checkpoint_topic(k)] + ([published_topic(k, source.name)] if source.reconcile else [])
    return (
        *_topics(written, "Write", "Describe"),
        *_topics(read_back, "Read", "Write", "Describe", "DescribeConfigs"),
        Acl("group", READER_GROUP_PREFIX, "prefix", ("Read",)),
    )


def consumer_acls(spec: PipelineSpec, consumer: ConsumerSpec) -> tuple[Acl, ...]:
    grant = spec.topic_readers().get(consumer.topic)
    if grant is not None and consumer.principal not in grant.principals:
        # load_spec refuses this already; a spec built another way must not get the grant either.
        raise ConfigError(f"consumers: {consumer.principal!r} may not read {consumer.topic!r}")
    assert consumer.group is not None and consumer.dead_letter_topic is not None
    return (
        *_topics([consumer.topic], "Read", "Describe"),
        Acl("group", consumer.group, "prefix", ("Read",)),
        *_topics([consumer.dead_letter_topic], "Write", "Describe"),
        *_topics([control_topic(spec.kafka)], "Read", "Describe", "DescribeConfigs"),
        Acl("group", CONTROL_GROUP_PREFIX, "prefix", ("Read",)),
    )


def scaler_acls(consumers: Iterable[ConsumerSpec]) -> tuple[Acl, ...]:
    consumers = list(consumers)
    return (
        *_topics([c.topic for c in consumers], "Describe"),
        *(Acl("group", c.group, "literal", ("Describe",)) for c in consumers if c.group is not None),
    )


def producer_principal(source: AnySourceSpec) -> str:
    return f"dcnios-source-{source.name}"


SCALER_PRINCIPAL: Final = "dcnios-keda"


def principals(spec: PipelineSpec, consumers: Iterable[ConsumerSpec]) -> list[KafkaPrincipal]:
    """Every KafkaUser: one per source, one per (deployed) consumer, one for the KEDA scaler."""
    consumers = list(consumers)
    out = [
        KafkaPrincipal(producer_principal(s), "producer", s.name, producer_acls(spec, s))
        for s in spec.sources
    ]
    for c in consumers:
        assert c.principal is not None
        out.append(KafkaPrincipal(c.principal, "consumer", c.name, consumer_acls(spec, c)))
    if consumers:
        out.append(KafkaPrincipal(SCALER_PRINCIPAL, "scaler", "keda", scaler_acls(consumers)))
    seen: dict[str, KafkaPrincipal] = {}
    for p in out:
        if (other := seen.setdefault(p.name, p)) is not p:
            raise ConfigError(
                f"the {p.component} {p.instance!r} and the {other.component} {other.instance!r} would both "
                f"authenticate as {p.name!r}; set consumers[].principal to tell them apart"
            )
    return out


def kafka_user(principal: KafkaPrincipal, kafka: KafkaSpec, cluster: str) -> Manifest:
    spec: dict[str, object] = {
        "authorization": {"type": "simple", "acls": [acl.to_dict() for acl in principal.acls]},
    }
    if (auth := kafka_auth(kafka)) is not None:
        spec = {"authentication": {"type": auth}, **spec}
    return Manifest(
        STRIMZI_API,
        "KafkaUser",
        principal.name,
        {"spec": spec},
        labels={"strimzi.io/cluster": cluster, **component_labels(principal.component, principal.instance)},
        file="strimzi.yaml",
    )


def kafka_topics(spec: PipelineSpec, cluster: str) -> list[Manifest]:
    """A KafkaTopic per planned topic; the compacted ones (checkpoints, control, published-files
    indexes) keep ``cleanup.policy: compact``."""
    out = []
    for plan in topic_plan(spec):
        body: dict[str, object] = {
            "topicName": plan.name,
            "partitions": plan.partitions,
            "replicas": plan.replication_factor,
        }
        if plan.config:
            body["config"] = dict(plan.config)
        out.append(
            Manifest(
                STRIMZI_API,
                "KafkaTopic",
                dns_name(plan.name, 253, subdomain=True),
                {"spec": body},
                labels={"strimzi.io/cluster": cluster},
                annotations={"dcnios/purpose": plan.purpose},
                file="strimzi.yaml",
            )
        )
    return out


def partitions_of(spec: PipelineSpec) -> Mapping[str, int]:
    return {plan.name: plan.partitions for plan in topic_plan(spec)}
