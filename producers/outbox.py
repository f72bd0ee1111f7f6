"""Everything one source writes to Kafka, each record tied to the progress slot that waits for it."""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from confluent_kafka import Message

from dcnios.codec import StorageEventCodec
from dcnios.kafka import LatchedProducer, OutHeaders, truncated
from dcnios.metrics import ProducerMetrics
from dcnios.producers.checkpoint import Slot
from dcnios.producers.dcache_api import Child
from dcnios.producers.index import IndexRecord, IndexWriter, PublishedIndex
from dcnios.spec import SourceSpec
from dcnios.storage_event import StorageEvent, now_millis

__all__ = ["INVALID_BYTES", "Outbox"]

logger = logging.getLogger(__name__)
_REASON_HEADER: Final = "dcnios-reason"
#: What ``<topic>.invalid`` keeps of one bad input.
INVALID_BYTES: Final = 64 << 10


class Outbox:
    """Produces records and counts their acks down on their slots.

    With an index, a published file also gets its index record, written after the file's own
    record is acknowledged (see ``IndexWriter``); the slot waits for both.
    """

    def __init__(
        self,
        source: SourceSpec,
        producer: LatchedProducer,
        codec: StorageEventCodec,
        metrics: ProducerMetrics,
        *,
        index: PublishedIndex | None,
        gaps_topic: str,
        invalid_topic: str,
    ) -> None:
        self.source = source
        self.producer = producer
        self.codec = codec
        self.metrics = metrics
        self.index = index
        self.gaps_topic = gaps_topic
        self.invalid_topic = invalid_topic
        self.writer = IndexWriter(producer, index.topic, self._index_acked) if index is not None else None
        self._ack_latency = metrics.ack_latency.labels(source.name)
        self._children: dict[tuple[int, str], Any] = {}

    def publish(
        self, event: StorageEvent, slot: Slot, observed_ms: int, *, child: Child | None = None, at_ms: int = 0
    ) -> None:
        """One event record; ``child`` is the listing entry a synthetic event came from."""
        topic = self.source.topic_for(event.path)
        value, headers = self.codec.encode(event, topic)
        write = None
        if self.writer is not None and self.index is not None and not event.is_dir:
            record = self.index.published(event.path, at_ms or observed_ms, child)
            write = self.writer.after_ack(record, slot)
            slot.pending += 1
        slot.pending += 1
        self.producer.produce(
            topic,
            value,
            key=event.key,
            headers=headers,
            on_delivery=self._acked,
            token=(slot, topic, observed_ms, write),
        )

    def invalid(
        self, raw: bytes, reason: str, slot: Slot, channel_url: str | None, *, size: int | None = None
    ) -> None:
        """The raw input (its first ``INVALID_BYTES``), why, and how large it was (``size``, when
        ``raw`` is already only the head of it)."""
        name = self.source.name
        self.metrics.invalid.labels(name).inc()
        size = len(raw) if size is None else size
        logger.warning("%s: invalid input of %d bytes (%s) -> %s", name, size, reason, self.invalid_topic)
        value, _ = truncated(raw, INVALID_BYTES)
        headers: OutHeaders = [
            (_REASON_HEADER, reason.encode()),
            ("dcnios-source", name.encode()),
            ("dcnios-channel", (channel_url or "").encode()),
            ("dcnios-size", str(size).encode()),
        ]
        if size > len(value or b""):
            headers.append(("dcnios-truncated", b"true"))
        slot.pending += 1
        self.producer.produce(
            self.invalid_topic,
            value,
            headers=headers,
            on_delivery=self._acked,
            token=(slot, self.invalid_topic, now_millis(), None),
        )

    def gap(self, record: dict[str, Any], slot: Slot) -> None:
        slot.pending += 1
        now = now_millis()
        self.producer.produce(
            self.gaps_topic,
            json.dumps(record).encode(),
            key=self.source.name.encode(),
            on_delivery=self._acked,
            token=(slot, self.gaps_topic, now, None),
        )

    def index_now(self, records: list[IndexRecord], slot: Slot) -> None:
        """Index records that need no ack first (tombstones, fingerprints)."""
        if self.writer is None:
            return
        for record in records:
            slot.pending += 1
            self.writer.now(record, slot)

    def poll(self) -> None:
        self.producer.poll(0)
        if self.writer is not None:
            self.writer.drain()

    def _acked(self, token: Any, msg: Message) -> None:
        slot, topic, observed, write = token
        slot.pending -= 1
        if write is not None:
            write.ready = True  # produced by the next poll(): not from inside librdkafka's callback
        self._counter(topic).inc()
        self._ack_latency.observe(max(0, now_millis() - observed) / 1000)

    def _index_acked(self, slot: Slot, msg: Message) -> None:
        slot.pending -= 1

    def _counter(self, topic: str) -> Any:
        # .labels() builds a key and takes a lock on every call; the hot path reuses children.
        key = (id(self.metrics.records), topic)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.metrics.records.labels(self.source.name, topic)
        return child
