"""Everything one source writes to Kafka, each record tied to the progress slot that waits for it.

Records are counted per slot, not per record: the run loop gives one slot to a whole network
chunk of frames (a gap repair has one for all its pages), and every record of a slot shares one
delivery report. When all of a slot's records so far are acknowledged, the slot is released
once, its index records may go out, and its metrics are counted in one step. A closure, a
counter increment and a histogram observation per record were a third of the producer's
per-event CPU (bench/NOTES.md).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from confluent_kafka import Message

from dcnios.codec import StorageEventCodec
from dcnios.kafka import DeliveryReport, LatchedProducer, OutHeaders, truncated
from dcnios.metrics import ProducerMetrics
from dcnios.producers.checkpoint import Slot
from dcnios.producers.dcache_api import Child
from dcnios.producers.index import IndexRecord, IndexWrite, IndexWriter, PublishedIndex
from dcnios.spec import SourceSpec
from dcnios.storage_event import StorageEvent, now_millis

__all__ = ["INVALID_BYTES", "Outbox", "SlotAcks"]

logger = logging.getLogger(__name__)
_REASON_HEADER: Final = "dcnios-reason"
#: What ``<topic>.invalid`` keeps of one bad input.
INVALID_BYTES: Final = 64 << 10


class SlotAcks:
    """The records of one slot in flight: the slot holds one pending count for all of them.

    ``files`` are event records, whose acknowledgement lets the index records made for them go
    out (``writes``); ``pending`` counts every record, index records included.
    """

    __slots__ = (
        "file_acked",
        "files",
        "files_since",
        "observed_ms",
        "other_acked",
        "pending",
        "slot",
        "topics",
        "writes",
    )

    def __init__(self, slot: Slot, observed_ms: int) -> None:
        self.slot = slot
        self.observed_ms = observed_ms
        self.files = 0
        #: Event records produced since ``files`` was last 0: acknowledged together when it is.
        self.files_since = 0
        self.pending = 0
        self.writes: list[IndexWrite] = []
        self.topics: dict[str, int] = {}
        self.file_acked: DeliveryReport | None = None
        self.other_acked: DeliveryReport | None = None


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
        self.writer = IndexWriter(producer, index.topic) if index is not None else None
        self._ack_latency = metrics.ack_latency.labels(source.name)
        self._children: dict[tuple[int, str], Any] = {}
        #: Slots with records in flight, by identity (a Slot is mutable, so not hashable).
        self._open: dict[int, SlotAcks] = {}

    def publish(
        self, event: StorageEvent, slot: Slot, observed_ms: int, *, child: Child | None = None, at_ms: int = 0
    ) -> None:
        """One event record; ``child`` is the listing entry a synthetic event came from."""
        topic = self.source.topic_for(event.path)
        value, headers = self.codec.encode(event, topic)
        acks = self._acks(slot, observed_ms)
        if self.writer is not None and self.index is not None and not event.is_dir:
            record = self.index.published(event.path, at_ms or observed_ms, child)
            acks.writes.append(self.writer.after_ack(record, acks.other_acked))
            acks.pending += 1
        acks.files += 1
        acks.files_since += 1
        self._count(acks, topic)
        self.producer.produce(topic, value, key=event.key, headers=headers, delivered=acks.file_acked)

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
        acks = self._acks(slot, now_millis())
        self._count(acks, self.invalid_topic)
        self.producer.produce(self.invalid_topic, value, headers=headers, delivered=acks.other_acked)

    def gap(self, record: dict[str, Any], slot: Slot) -> None:
        acks = self._acks(slot, now_millis())
        self._count(acks, self.gaps_topic)
        value = json.dumps(record).encode()
        key = self.source.name.encode()
        self.producer.produce(self.gaps_topic, value, key=key, delivered=acks.other_acked)

    def index_now(self, records: list[IndexRecord], slot: Slot) -> None:
        """Index records that need no ack first (tombstones, fingerprints)."""
        if self.writer is None or not records:
            return
        acks = self._acks(slot, now_millis())
        for record in records:
            acks.pending += 1
            self.writer.now(record, acks.other_acked)

    def poll(self) -> None:
        self.producer.poll(0)
        if self.index is not None:
            self.index.flush()
        if self.writer is not None:
            self.writer.drain()

    # -- acknowledgements ------------------------------------------------------------------
    def _acks(self, slot: Slot, observed_ms: int) -> SlotAcks:
        acks = self._open.get(id(slot))
        if acks is None:
            acks = self._open[id(slot)] = SlotAcks(slot, observed_ms)
            acks.file_acked = self.producer.delivery(self._file_acked, acks)
            acks.other_acked = self.producer.delivery(self._other_acked, acks)
            slot.pending += 1
        else:
            acks.observed_ms = max(acks.observed_ms, observed_ms)
        return acks

    @staticmethod
    def _count(acks: SlotAcks, topic: str) -> None:
        acks.pending += 1
        acks.topics[topic] = acks.topics.get(topic, 0) + 1

    def _file_acked(self, acks: SlotAcks, msg: Message) -> None:
        acks.files -= 1
        if acks.files == 0:
            # Every event record of the slot so far is acknowledged: their index records may go
            # out, from the next poll(), not from inside librdkafka's callback.
            for write in acks.writes:
                write.ready = True
            acks.writes.clear()
            self._events_acked(acks.files_since, acks.observed_ms)
            acks.files_since = 0
        self._other_acked(acks, msg)

    def _events_acked(self, count: int, observed_ms: int) -> None:
        """``count`` event records read at ``observed_ms`` are acknowledged: what the consumers
        can see. (Their slot settles later, after their index records.)"""
        self._ack_latency.observe(max(0, now_millis() - observed_ms) / 1000)

    def _other_acked(self, acks: SlotAcks, msg: Message) -> None:
        acks.pending -= 1
        if acks.pending == 0:
            self._settled(acks)

    def _settled(self, acks: SlotAcks) -> None:
        """Everything the slot wrote so far is acknowledged (more may follow, under a new SlotAcks)."""
        del self._open[id(acks.slot)]
        acks.slot.pending -= 1
        for topic, count in acks.topics.items():
            self._counter(topic).inc(count)

    def _counter(self, topic: str) -> Any:
        # .labels() builds a key and takes a lock on every call; the hot path reuses children.
        key = (id(self.metrics.records), topic)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.metrics.records.labels(self.source.name, topic)
        return child
