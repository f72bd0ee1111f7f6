"""The run loop of a relayed source: upstream messages in, acknowledged Kafka records out.

For every kind that is not dCache's SSE (S3 bucket notifications, Rucio messages): receive a batch
from the ``Upstream``, translate each delivery (pure, see upstream.py), write its records (or its
``.invalid`` report), wait for Kafka's acknowledgement of all of them, and only then acknowledge
the batch upstream. So a crash, a kill or a broker outage at any point leaves the batch
unacknowledged, and the upstream hands it out again: at least once, never lost. Duplicates that
causes are dropped by the consumer's dedup window (``storage_event.dedup_key``).

A broker that goes away for less than ``message.timeout.ms`` (60 s by default) costs nothing: the
flush waits, librdkafka retries (idempotent, acks=all). Longer, and the delivery error is raised:
the batch is released upstream and the runner stops with the error (``dcnios up`` restarts it
with backoff; ``dcnios-producer`` exits non-zero).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Final, Protocol

from confluent_kafka import KafkaError, KafkaException

from dcnios.codec import StorageEventCodec
from dcnios.errors import DeliveryError
from dcnios.kafka import LatchedProducer, OutHeaders, producer_config, truncated
from dcnios.metrics import ProducerMetrics
from dcnios.producers.outbox import INVALID_BYTES
from dcnios.producers.upstream import Delivery, Rejected, Skipped, Translate, Translation, Upstream
from dcnios.spec import PipelineSpec
from dcnios.storage_event import now_millis
from dcnios.topics import invalid_topic

__all__ = ["RelayRunner", "RelayedSource"]

logger = logging.getLogger(__name__)

#: How long one ``receive`` waits before the loop looks at the stop flag again.
RECEIVE_WAIT: Final = 0.5
#: Beyond librdkafka's own message timeout, how long a flush may take before it counts as stuck.
_FLUSH_MARGIN: Final = 10.0


class RelayedSource(Protocol):
    """What the relay needs of a source's spec (every non-dCache source spec has it)."""

    @property
    def name(self) -> str: ...

    @property
    def topic(self) -> str: ...

    def topic_for(self, path: str) -> str: ...


class RelayRunner:
    """Runs one relayed source until ``stop`` is set (or a delivery error ends it)."""

    def __init__(
        self,
        spec: PipelineSpec,
        source: RelayedSource,
        upstream: Upstream,
        translate: Translate,
        *,
        stop: threading.Event,
        metrics: ProducerMetrics | None = None,
        producer: LatchedProducer | None = None,
    ) -> None:
        self.spec = spec
        self.source = source
        self.upstream = upstream
        self.translate = translate
        self.stop = stop
        self.metrics = metrics or ProducerMetrics()
        conf = producer_config(spec.kafka)
        self.producer = producer or LatchedProducer(conf)
        self.flush_timeout = int(str(conf.get("message.timeout.ms", "60000"))) / 1000 + _FLUSH_MARGIN
        self.codec = StorageEventCodec(spec.kafka.schema_registry)
        self.invalid_topic = invalid_topic(source.topic)
        #: Set once the upstream is open (tests and `dcnios up` wait on it).
        self.ready = threading.Event()
        name = source.name
        m = self.metrics
        self._outcomes = {
            o: m.upstream_messages.labels(name, o) for o in ("published", "skipped", "invalid", "released")
        }
        self._invalid = m.invalid.labels(name)
        self._ack_latency = m.ack_latency.labels(name)
        self._acked_at = m.upstream_ack_time.labels(name)
        self._delivery_errors = m.delivery_errors.labels(name)
        self._records: dict[str, Any] = {}

    def run(self) -> None:
        self.upstream.open()
        logger.info(
            "source %s: relaying %s -> %s", self.source.name, self.upstream.description, self.source.topic
        )
        self.ready.set()
        try:
            while not self.stop.is_set():
                batch = self.upstream.receive(RECEIVE_WAIT)
                if batch:
                    self.relay(batch)
                else:
                    self.producer.poll(0)
        finally:
            self.upstream.close()

    def relay(self, batch: Sequence[Delivery]) -> None:
        """Write every delivery of ``batch``, wait for Kafka, then acknowledge them upstream."""
        try:
            outcomes = [self._write(delivery) for delivery in batch]
            self.producer.flush(self.flush_timeout)
        except BaseException as exc:
            # Nothing of the batch is acknowledged upstream: it comes again (records already
            # written then come twice, which the consumer's dedup drops).
            if isinstance(exc, DeliveryError):
                self._delivery_errors.inc()
            self._outcomes["released"].inc(len(batch))
            self.upstream.release(batch, str(exc))
            raise
        self.upstream.acknowledge(batch)
        now = now_millis()
        self._acked_at.set(now / 1000)
        for delivery, outcome in zip(batch, outcomes, strict=True):
            self._outcomes[outcome].inc()
            if delivery.received_ms:
                self._ack_latency.observe(max(0, now - delivery.received_ms) / 1000)

    def _write(self, delivery: Delivery) -> str:
        translation = self._translated(delivery)
        if isinstance(translation, Skipped):
            logger.debug("source %s: %s skipped: %s", self.source.name, delivery.origin, translation.reason)
            return "skipped"
        if isinstance(translation, Rejected):
            self._report(delivery, translation.reason)
            return "invalid"
        for event in translation.events:
            topic = self.source.topic_for(event.path)
            value, headers = self.codec.encode(event, topic)
            try:
                self.producer.produce(topic, value, key=event.key, headers=headers)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                    raise
                # Refused at once, and it would be refused on every redelivery: a record over
                # the producer's message.max.bytes is bad input, not an outage.
                self._report(delivery, f"its record of {len(value)} bytes is over message.max.bytes")
                return "invalid"
            counter = self._records.get(topic)
            if counter is None:
                counter = self._records[topic] = self.metrics.records.labels(self.source.name, topic)
            counter.inc()
        return "published"

    def _translated(self, delivery: Delivery) -> Translation:
        if delivery.rejected is not None:
            return Rejected(delivery.rejected)
        try:
            return self.translate(delivery)
        except Exception as exc:  # a translator fault must not lose the message: it is reported
            logger.exception("source %s: translating %s failed", self.source.name, delivery.origin)
            return Rejected(f"translation failed: {type(exc).__name__}: {exc}")

    def _report(self, delivery: Delivery, reason: str) -> None:
        """The delivery's bytes (their first ``INVALID_BYTES``) to ``<topic>.invalid``, with why."""
        self._invalid.inc()
        size = len(delivery.body)
        logger.warning(
            "source %s: invalid message %s of %d bytes (%s) -> %s",
            self.source.name,
            delivery.origin,
            size,
            reason,
            self.invalid_topic,
        )
        value, _ = truncated(delivery.body, INVALID_BYTES)
        headers: OutHeaders = [
            ("dcnios-reason", reason.encode()),
            ("dcnios-source", self.source.name.encode()),
            ("dcnios-origin", delivery.origin.encode()),
            ("dcnios-size", str(size).encode()),
        ]
        if size > len(value or b""):
            headers.append(("dcnios-truncated", b"true"))
        self.producer.produce(self.invalid_topic, value, key=delivery.key, headers=headers)
