"""The producer's resume point, kept in Kafka (compacted topic, key = source name).

Stored in Kafka rather than on local disk so that a producer restarted on another machine
resumes where the last one stopped.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from dcnios.errors import KafkaError
from dcnios.kafka import LatchedProducer, consumer_config
from dcnios.spec import KafkaSpec
from dcnios.topics import checkpoint_topic

__all__ = ["Checkpoint", "CheckpointStore"]

logger = logging.getLogger(__name__)
_PROBE_SUFFIX: Final = "\x00probe"
_LOAD_TIMEOUT: Final = 30.0


@dataclass(frozen=True, slots=True)
class Checkpoint:
    source: str
    channel: str
    last_event_id: int | None
    watches: dict[str, str] = field(default_factory=dict)  # subscription URL -> directory
    last_observed_ms: int = 0  # when the newest acknowledged event was read
    updated_ms: int = 0

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
        """The newest checkpoint of ``source``, or None.

        Reads until a probe record written just now comes back (read-your-write), because a
        broker's high watermark cannot be trusted to mark the end (Tansu under-reports it).
        """
        probe = uuid.uuid4().hex.encode()
        self.producer.produce(self.topic, probe, key=(source + _PROBE_SUFFIX).encode())
        self.producer.flush()
        consumer = Consumer(consumer_config(self.kafka, f"dcnios-checkpoint-reader-{uuid.uuid4().hex[:8]}"))
        found: Checkpoint | None = None
        try:
            consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
            deadline = time.monotonic() + _LOAD_TIMEOUT
            while time.monotonic() < deadline:
                msg = consumer.poll(0.05)
                if msg is None:
                    continue
                if (err := msg.error()) is not None:
                    raise KafkaError(f"reading {self.topic}: {err.str()}")
                key = msg.key()
                value = msg.value()
                if key == source.encode() and value:
                    try:
                        found = Checkpoint.from_json(value if isinstance(value, bytes) else value.encode())
                    except (ValueError, TypeError) as exc:
                        logger.warning("ignoring unreadable checkpoint at offset %s: %s", msg.offset(), exc)
                elif key == (source + _PROBE_SUFFIX).encode() and value == probe:
                    return found
            raise KafkaError(
                f"reading {self.topic}: probe record did not come back within {_LOAD_TIMEOUT:.0f}s"
            )
        finally:
            consumer.close()
