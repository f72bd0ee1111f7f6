"""An upstream that is a Kafka topic someone else writes (MinIO ``notify_kafka``, RGW's kafka://).

Offsets are committed only for deliveries the relay acknowledged, i.e. after Kafka acknowledged
every record written for them; a restart resumes after the last such offset, so what was read and
not yet relayed is read again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Final

from confluent_kafka import Consumer, KafkaException, TopicPartition

from dcnios.errors import KafkaError
from dcnios.kafka import consumer_config
from dcnios.producers.upstream import Delivery
from dcnios.spec import KafkaSpec
from dcnios.storage_event import now_millis

__all__ = ["KafkaTopicUpstream"]

logger = logging.getLogger(__name__)

#: Messages taken per receive: a batch is flushed to Kafka before the next is read.
BATCH: Final = 500


class KafkaTopicUpstream:
    def __init__(
        self, kafka: KafkaSpec, topic: str, group: str, *, extra_config: Mapping[str, str] | None = None
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.group = group
        self.description = f"kafka topic {topic} (group {group})"
        self._extra = dict(extra_config or {})
        self._consumer: Consumer | None = None

    def open(self) -> None:
        self._consumer = Consumer(dict(consumer_config(self.kafka, self.group, **self._extra)))
        self._consumer.subscribe([self.topic])

    def receive(self, timeout: float) -> Sequence[Delivery]:
        assert self._consumer is not None, "open() first"
        out = []
        for msg in self._consumer.consume(BATCH, timeout):
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaError(f"reading {self.topic}: {err.str()}")
                logger.warning("reading %s: %s", self.topic, err.str())
                continue
            partition, offset = msg.partition() or 0, msg.offset() or 0
            out.append(
                Delivery(
                    body=msg.value() or b"",
                    origin=f"{self.topic}[{partition}]@{offset}",
                    key=msg.key(),
                    handle=(partition, offset),
                    received_ms=now_millis(),
                )
            )
        return out

    def acknowledge(self, deliveries: Sequence[Delivery]) -> None:
        assert self._consumer is not None
        nexts: dict[int, int] = {}
        for d in deliveries:
            partition, offset = d.handle
            nexts[partition] = max(nexts.get(partition, 0), offset + 1)
        try:
            self._consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in nexts.items()], asynchronous=False
            )
        except KafkaException as exc:
            # Not committed: these are read again after a restart or rebalance (a duplicate, never a loss).
            logger.warning("committing %s offsets failed: %s", self.topic, exc.args[0].str())

    def release(self, deliveries: Sequence[Delivery], reason: str) -> None:
        assert self._consumer is not None
        firsts: dict[int, int] = {}
        for d in deliveries:
            partition, offset = d.handle
            firsts[partition] = min(firsts.get(partition, offset), offset)
        logger.warning(
            "%s: %d messages not relayed (%s); they are read again", self.topic, len(deliveries), reason
        )
        for partition, offset in firsts.items():
            # No longer assigned: the next owner starts at the committed offset anyway.
            with contextlib.suppress(KafkaException):
                self._consumer.seek(TopicPartition(self.topic, partition, offset))

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
