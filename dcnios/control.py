"""The control topic: runtime rate and pause state per consumer, compacted, read by every member.

Keys: ``<consumer>/rate`` (value ``{"rate": "20/s"}``, ``"unlimited"``, or ``"spec"`` for the spec's rate)
and ``<consumer>/paused`` (``{"paused": true}``). The latest value per key wins, and survives
restarts because members read the topic from the beginning.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from dcnios.kafka import LatchedProducer, consumer_config, producer_config
from dcnios.spec import KafkaSpec, Rate
from dcnios.topics import control_topic

__all__ = ["ControlFollower", "ControlState", "write_control"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ControlState:
    rate: Rate | None = None  # with rate_set: None means unlimited
    rate_set: bool = False  # False: the spec's rate applies
    paused: bool = False


def write_control(
    kafka: KafkaSpec, consumer: str, *, rate: str | None = None, paused: bool | None = None
) -> None:
    """Publish a change; every member of ``consumer``'s group applies it within a second.

    ``rate`` is ``'<number>/s|/m|/h'``, ``'unlimited'`` or ``'spec'`` (back to the spec's rate).
    """
    producer = LatchedProducer(producer_config(kafka))
    topic = control_topic(kafka)
    if rate is not None:
        if rate not in ("unlimited", "spec"):
            Rate.parse(rate)  # raises ValueError before anything is written
        producer.produce(topic, json.dumps({"rate": rate}).encode(), key=f"{consumer}/rate".encode())
    if paused is not None:
        producer.produce(topic, json.dumps({"paused": paused}).encode(), key=f"{consumer}/paused".encode())
    producer.flush(30)


class ControlFollower:
    """Follows the control topic in a thread and calls ``on_change`` with the consumer's state."""

    def __init__(self, kafka: KafkaSpec, consumer: str, on_change: Callable[[ControlState], None]) -> None:
        self.kafka = kafka
        self.consumer = consumer
        self.on_change = on_change
        self.state = ControlState()
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._probe = uuid.uuid4().hex
        self._thread = threading.Thread(target=self._run, name=f"control-{consumer}", daemon=True)

    def start(self) -> ControlFollower:
        # A probe record marks "now": once it is read back, every earlier setting has been applied.
        producer = LatchedProducer(producer_config(self.kafka))
        producer.produce(
            control_topic(self.kafka), self._probe.encode(), key=f"{self.consumer}/probe".encode()
        )
        producer.flush(30)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        topic = control_topic(self.kafka)
        conf = consumer_config(self.kafka, f"dcnios-control-{uuid.uuid4().hex[:8]}")
        consumer = Consumer(conf)
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        try:
            while not self._stop.is_set():
                msg = consumer.poll(0.2)
                if msg is None or msg.error() is not None:
                    continue
                self._apply(msg.key() or b"", msg.value() or b"")
        finally:
            consumer.close()

    def _apply(self, key: bytes, value: bytes) -> None:
        name, _, field = key.decode("utf-8", "replace").rpartition("/")
        if name != self.consumer:
            return
        if field == "probe":
            if value.decode("utf-8", "replace") == self._probe and not self.caught_up.is_set():
                self.caught_up.set()
                self.on_change(self.state)
            return
        try:
            data: dict[str, Any] = json.loads(value)
            if field == "rate":
                raw = data.get("rate")
                if raw in (None, "spec"):
                    state = ControlState(None, False, self.state.paused)
                elif raw == "unlimited":
                    state = ControlState(None, True, self.state.paused)
                else:
                    state = ControlState(Rate.parse(raw), True, self.state.paused)
            elif field == "paused":
                state = ControlState(self.state.rate, self.state.rate_set, bool(data.get("paused")))
            else:
                return
        except (ValueError, TypeError, AttributeError) as exc:
            logger.warning("ignoring bad control record %s: %s", key, exc)
            return
        self.state = state
        if self.caught_up.is_set():
            self.on_change(state)
