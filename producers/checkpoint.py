"""The producer's resume point, kept in Kafka (compacted topic, key = source name), and the
progress slots that decide how far it may advance.

Stored in Kafka rather than on local disk so that a producer restarted on another machine
resumes where the last one stopped.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from dcnios.kafka import LatchedProducer, read_compacted
from dcnios.spec import KafkaSpec
from dcnios.topics import checkpoint_topic

__all__ = ["Checkpoint", "CheckpointStore", "Progress", "Slot"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Slot:
    """What one frame (or one gap) still waits for: records in flight, or a reconcile running.

    The checkpoint passes a slot only when ``pending`` is 0, so nothing a frame caused can be
    lost by resuming after it.
    """

    event_id: int | None
    pending: int
    observed_ms: int
    channel: int  # the channel generation the event id belongs to


@dataclass(slots=True)
class Progress:
    """Slots in stream order; ``safe_id`` is the newest event id with everything before it done."""

    slots: deque[Slot] = field(default_factory=deque)
    safe_id: int | None = None
    safe_observed_ms: int = 0
    channel: int = 0

    def add(self, event_id: int | None, pending: int, observed_ms: int) -> Slot:
        slot = self.slot(event_id, observed_ms, pending)
        self.slots.append(slot)
        return slot

    def slot(self, event_id: int | None, observed_ms: int, pending: int = 0) -> Slot:
        """A slot not queued yet: a frame queues its own after the gaps it opens, so that the
        checkpoint cannot pass the frame before those gaps are repaired."""
        return Slot(event_id, pending, observed_ms, self.channel)

    def append(self, slot: Slot) -> None:
        self.slots.append(slot)

    def new_channel(self) -> None:
        """Event ids restart on a new channel: ids of the old one must never reach its checkpoint."""
        self.channel += 1
        self.safe_id = None

    def advance(self) -> bool:
        moved = False
        while self.slots and self.slots[0].pending == 0:
            slot = self.slots.popleft()
            if slot.event_id is not None and slot.channel == self.channel:
                self.safe_id = slot.event_id
            self.safe_observed_ms = max(self.safe_observed_ms, slot.observed_ms)
            moved = True
        return moved


@dataclass(frozen=True, slots=True)
class Checkpoint:
    source: str
    channel: str
    last_event_id: int | None
    watches: dict[str, str] = field(default_factory=dict)  # subscription URL -> directory
    last_observed_ms: int = 0  # when the newest acknowledged event was read
    updated_ms: int = 0
    #: Gap repairs not finished yet: {"reason", "directories", "since_ms", "previous"} each. The
    #: checkpoint cannot pass them, and a restart resumes them.
    gaps: list[dict[str, Any]] = field(default_factory=list)
    #: The published-files index holds this source's tree (a baseline was taken, or every file
    #: came through it). False in a checkpoint written before the index existed: the next start
    #: then takes the baseline, instead of reading an empty index as "nothing was ever published".
    indexed: bool = False

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Checkpoint:
        data: dict[str, Any] = json.loads(raw)
        return cls(**data)


class CheckpointStore:
    def __init__(self, kafka: KafkaSpec, producer: LatchedProducer) -> None:
        self.kafka = kafka
        self.topic = checkpoint_topic(kafka)
        self.producer = producer

    def save(self, checkpoint: Checkpoint) -> None:
        self.producer.produce(self.topic, checkpoint.to_json(), key=checkpoint.source.encode())

    def load(self, source: str) -> Checkpoint | None:
        """The newest checkpoint of ``source``, or None."""
        found: Checkpoint | None = None

        def take(key: bytes | None, value: bytes | None, offset: int) -> None:
            nonlocal found
            if key != source.encode() or not value:
                return
            try:
                found = Checkpoint.from_json(value)
            except (ValueError, TypeError) as exc:
                logger.warning("ignoring unreadable checkpoint at offset %s: %s", offset, exc)

        read_compacted(self.kafka, self.topic, self.producer, take, probe_key=source.encode() + b"\x00probe")
        return found
