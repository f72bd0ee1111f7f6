"""One runner per source, whatever its kind: what ``dcnios-producer`` and ``dcnios up`` start.

* ``type: dcache`` → ``run.SourceRunner`` (SSE, checkpoints, reconciliation);
* every relayed kind → ``relay.RelayRunner`` with the kind's upstream and translation.

A new kind adds its branch to ``runner_for`` (and its spec class to ``dcnios.spec.AnySourceSpec``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from dcnios.errors import ConfigError
from dcnios.metrics import ProducerMetrics
from dcnios.producers import rucio, s3_notifications
from dcnios.producers.relay import RelayRunner
from dcnios.producers.run import SourceRunner
from dcnios.producers.upstream import Upstream
from dcnios.producers.upstream_http import WebhookUpstream
from dcnios.producers.upstream_kafka import KafkaTopicUpstream
from dcnios.producers.upstream_sqs import SqsUpstream
from dcnios.producers.upstream_stomp import StompUpstream
from dcnios.spec import AnySourceSpec, PipelineSpec, RucioSourceSpec, S3NotificationsSourceSpec, SourceSpec

__all__ = ["runner_for", "s3_upstream"]


def runner_for(
    spec: PipelineSpec,
    source: AnySourceSpec,
    *,
    stop: threading.Event,
    metrics: ProducerMetrics,
    consumer_settings: Mapping[str, str] | None = None,
) -> SourceRunner | RelayRunner:
    """The runner of ``source``. ``consumer_settings``: extra librdkafka settings for an upstream
    that is a Kafka topic (``dcnios up`` passes the embedded broker's)."""
    if isinstance(source, SourceSpec):
        return SourceRunner(spec, source, stop=stop, metrics=metrics)
    if isinstance(source, S3NotificationsSourceSpec):
        upstream = s3_upstream(spec, source, consumer_settings)
        translate = s3_notifications.translator(source)
        return RelayRunner(spec, source, upstream, translate, stop=stop, metrics=metrics)
    if isinstance(source, RucioSourceSpec):
        stomp = StompUpstream(source.stomp, source.name, metrics)
        return RelayRunner(spec, source, stomp, rucio.translator(source), stop=stop, metrics=metrics)
    raise ConfigError(f"source {source.name}: no runner for type {source.type!r}")


def s3_upstream(
    spec: PipelineSpec, source: S3NotificationsSourceSpec, consumer_settings: Mapping[str, str] | None = None
) -> Upstream:
    if source.kafka is not None:
        assert source.kafka.group is not None
        return KafkaTopicUpstream(
            spec.kafka, source.kafka.topic, source.kafka.group, extra_config=consumer_settings
        )
    if source.webhook is not None:
        return WebhookUpstream(source.webhook, source.name)
    if source.sqs is not None:
        return SqsUpstream(source.sqs, source.name)
    raise ConfigError(f"source {source.name}: no upstream (kafka, webhook or sqs)")
