"""Every topic name dcnios uses derives from the spec here, and only here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from dcnios.spec import KafkaSpec, PipelineSpec, S3NotificationsSourceSpec, SourceSpec

__all__ = [
    "TopicPlan",
    "checkpoint_topic",
    "control_topic",
    "gaps_topic",
    "invalid_topic",
    "plans_named",
    "published_topic",
    "topic_plan",
]

_COMPACTED: Mapping[str, str] = MappingProxyType({"cleanup.policy": "compact"})


@dataclass(frozen=True, slots=True)
class TopicPlan:
    name: str
    partitions: int
    replication_factor: int
    purpose: str
    config: Mapping[str, str] = field(default_factory=dict)
    #: The spec key the name derives from, for errors: ``consumers[0].topic``.
    origin: str = ""


def checkpoint_topic(kafka: KafkaSpec) -> str:
    """Compacted; key = source name; value = the producer's resume point (JSON)."""
    return f"{kafka.internal_prefix}.checkpoints"


def control_topic(kafka: KafkaSpec) -> str:
    """Compacted; key = consumer name; value = its runtime rate / paused state (JSON)."""
    return f"{kafka.internal_prefix}.control"


def gaps_topic(kafka: KafkaSpec) -> str:
    """One JSON record per gap in a source's event stream."""
    return f"{kafka.internal_prefix}.gaps"


def published_topic(kafka: KafkaSpec, source: str) -> str:
    """Compacted; key = a file's path; value = when it was published, and its fingerprint (JSON).

    One per source, so a producer reads only its own at start.
    """
    return f"{kafka.internal_prefix}.published.{source}"


def invalid_topic(topic: str) -> str:
    """Raw frames that could not become records, with a reason header."""
    return f"{topic}.invalid"


def topic_plan(spec: PipelineSpec) -> list[TopicPlan]:
    """Every topic the spec needs, once each, in a stable order."""
    k = spec.kafka
    parts, rf = k.topic_defaults.partitions, k.topic_defaults.replication_factor
    plans: dict[str, TopicPlan] = {}

    def add(
        name: str,
        origin: str,
        purpose: str,
        partitions: int = parts,
        config: Mapping[str, str] = _COMPACTED,
    ) -> None:
        plans.setdefault(name, TopicPlan(name, partitions, rf, purpose, dict(config), origin))

    plain: Mapping[str, str] = {}
    prefix = "kafka.internal_prefix"
    for i, source in enumerate(spec.sources):
        at = f"sources[{i}]"
        add(source.topic, f"{at}.topic", f"events of source {source.name}", config=plain)
        for j, route in enumerate(source.routes):
            purpose = f"events of source {source.name} matching {route.match}"
            add(route.topic, f"{at}.routes[{j}].topic", purpose, config=plain)
        add(invalid_topic(source.topic), f"{at}.topic", f"invalid input of source {source.name}", 1, plain)
        if isinstance(source, S3NotificationsSourceSpec) and source.kafka is not None:
            purpose = f"notifications the object store writes for source {source.name}"
            add(source.kafka.topic, f"{at}.kafka.topic", purpose, config=plain)
        if isinstance(source, SourceSpec) and source.reconcile:
            purpose = f"files published by source {source.name} (compacted)"
            add(published_topic(k, source.name), prefix, purpose, 1)
    for i, consumer in enumerate(spec.consumers):
        at = f"consumers[{i}]"
        add(consumer.topic, f"{at}.topic", f"input of consumer {consumer.name}", config=plain)
        assert consumer.dead_letter_topic is not None
        # A derived <topic>.dlq is fixed by shortening the topic; a given one was checked as given.
        dlq_origin = (
            f"{at}.topic"
            if consumer.dead_letter_topic == f"{consumer.topic}.dlq"
            else f"{at}.dead_letter_topic"
        )
        add(consumer.dead_letter_topic, dlq_origin, f"dead letters of consumer {consumer.name}", config=plain)
    add(checkpoint_topic(k), prefix, "producer checkpoints (compacted)", 1)
    add(control_topic(k), prefix, "runtime rate and pause control (compacted)", 1)
    add(gaps_topic(k), prefix, "gaps in source event streams", 1, plain)
    return list(plans.values())


def plans_named(spec: PipelineSpec, *names: str) -> list[TopicPlan]:
    """The plans of the topics ``names`` (a runner's own internal topics)."""
    return [p for p in topic_plan(spec) if p.name in names]
