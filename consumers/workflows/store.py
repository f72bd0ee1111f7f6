"""The run-state topic: a compacted topic keyed by run id, one partition per trigger partition.

Partition p holds the runs started by records of partition p of the trigger topic, so the group
member that owns trigger partition p owns those runs: it reads state partition p to its end
(until its own probe record comes back: a broker's high watermark cannot be trusted, see
``kafka.read_compacted``), then keeps reading it for commands (``<run>!cancel``,
``<run>!retry``) that ``dcnios runs`` writes next to the run, and answers each with a tombstone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from dcnios.consumers.workflows.state import Run, run_from_json, run_to_json
from dcnios.errors import KafkaError
from dcnios.kafka import LatchedProducer, admin_client, cluster_metadata, consumer_config, producer_config
from dcnios.spec import KafkaSpec

__all__ = ["COMMANDS", "Command", "RunStore", "read_runs", "send_command"]

COMMANDS: Final = ("cancel", "retry")
_COMMAND_SEPARATOR: Final = "!"
_PROBE_PREFIX: Final = b"\x00probe:"
_READ_TIMEOUT: Final = 30.0


@dataclass(frozen=True, slots=True)
class Command:
    run: str
    action: str  # cancel | retry
    key: bytes


def command_key(run: str, action: str) -> bytes:
    return f"{run}{_COMMAND_SEPARATOR}{action}".encode()


def parse_record(key: bytes | None, value: bytes | None) -> Run | Command | None:
    """A run, a command, or None (a probe, a tombstone, a record that is neither: logged by the caller)."""
    if key is None or key.startswith(_PROBE_PREFIX) or value is None:
        return None
    text = key.decode("utf-8", "replace")
    if _COMMAND_SEPARATOR in text:
        run, _, action = text.partition(_COMMAND_SEPARATOR)
        return Command(run, action, key) if action in COMMANDS else None
    return run_from_json(value)


class RunStore:
    """Writes runs (on the event loop, each write awaited until acknowledged) and follows the
    owned partitions of the runs topic."""

    def __init__(self, kafka: KafkaSpec, topic: str) -> None:
        self.kafka = kafka
        self.topic = topic
        self.producer = LatchedProducer(producer_config(kafka))
        self.member = uuid.uuid4().hex[:12]
        self._reader = Consumer(consumer_config(kafka, f"dcnios-runs-{self.member}"))
        self._waiting = 0

    async def write(self, run: Run) -> None:
        """Until the broker has it: later calls depend on it (an item's job name, a failure)."""
        await self.produce(self.topic, run.id.encode(), run_to_json(run), partition=run.partition)

    async def clear_command(self, partition: int, key: bytes) -> None:
        await self.produce(self.topic, key, None, partition=partition)

    async def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        """Produce and wait for the acknowledgement (``pump`` serves the reports on this loop)."""
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[None] = loop.create_future()

        def delivered(_token: Any, _msg: Message) -> None:
            if not acked.done():
                acked.set_result(None)

        self.producer.produce(
            topic, value, key=key, partition=partition, headers=headers, on_delivery=delivered
        )
        self._waiting += 1
        try:
            await acked
        finally:
            self._waiting -= 1

    async def pump(self, stop: Callable[[], bool]) -> None:
        """Serve delivery reports on this loop: often while writes wait, rarely otherwise."""
        while not stop() or self._waiting:
            self.producer.poll(0)
            await asyncio.sleep(0.002 if self._waiting else 0.02)

    def probe(self, partition: int) -> bytes:
        """Write a probe to ``partition``; reading it back means every earlier record was read."""
        probe = _PROBE_PREFIX + f"{self.member}:{partition}".encode()
        token = uuid.uuid4().hex.encode()
        self.producer.produce(self.topic, token, key=probe, partition=partition)
        self.producer.flush(30)
        return token

    # -- the reader (blocking: called from the orchestrator's Kafka worker) --------------------
    def follow(self, partitions: list[int]) -> None:
        self._reader.incremental_assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])

    def unfollow(self, partitions: list[int]) -> None:
        with contextlib.suppress(Exception):  # not assigned (a revoke before the follow)
            self._reader.incremental_unassign([TopicPartition(self.topic, p) for p in partitions])

    def read(self, timeout: float) -> list[Message]:
        msgs = self._reader.consume(1000, timeout)
        for msg in msgs:
            if (err := msg.error()) is not None and err.fatal():
                raise KafkaError(f"reading {self.topic}: {err.str()}")
        return [m for m in msgs if m.error() is None]

    @staticmethod
    def is_probe(msg: Message, member: str) -> bool:
        key = msg.key() or b""
        return key.startswith(_PROBE_PREFIX + member.encode())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.producer.flush(10)
        self._reader.close()


# -- for `dcnios runs` ------------------------------------------------------------------------
def partitions_of(kafka: KafkaSpec, topic: str) -> int:
    topics = cluster_metadata(kafka, admin_client(kafka), 10).topics
    if topic not in topics:
        raise KafkaError(f"topic {topic} does not exist: has the workflow ever run?")
    return len(topics[topic].partitions)


def read_runs(
    kafka: KafkaSpec, topic: str, *, on_progress: Callable[[int], None] | None = None
) -> dict[str, Run]:
    """Every run in the topic (the latest record of each), read to the end of every partition."""
    count = partitions_of(kafka, topic)
    producer = LatchedProducer(producer_config(kafka))
    reader = f"reader-{uuid.uuid4().hex[:8]}"
    probes = {}
    for p in range(count):
        token = uuid.uuid4().hex.encode()
        producer.produce(topic, token, key=_PROBE_PREFIX + f"{reader}:{p}".encode(), partition=p)
        probes[p] = token
    producer.flush(30)
    consumer = Consumer(consumer_config(kafka, f"dcnios-{reader}"))
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(count)])
    runs: dict[str, Run] = {}
    open_partitions = set(range(count))
    deadline = time.monotonic() + _READ_TIMEOUT
    try:
        while open_partitions:
            if time.monotonic() > deadline:
                raise KafkaError(f"reading {topic}: the probe records did not come back")
            for msg in consumer.consume(1000, 0.1):
                if msg.error() is not None:
                    continue
                deadline = time.monotonic() + _READ_TIMEOUT
                key, value, p = msg.key(), msg.value(), msg.partition() or 0
                if key == _PROBE_PREFIX + f"{reader}:{p}".encode() and value == probes[p]:
                    open_partitions.discard(p)
                    continue
                try:
                    found = parse_record(key, value)
                except ValueError:
                    continue
                if isinstance(found, Run):
                    runs[found.id] = found
            if on_progress is not None:
                on_progress(len(runs))
    finally:
        consumer.close()
    return runs


def send_command(kafka: KafkaSpec, topic: str, run: Run, action: str) -> None:
    """Ask the run's owner (whoever owns its partition, now or later) to ``action`` it."""
    if action not in COMMANDS:
        raise ValueError(action)
    producer = LatchedProducer(producer_config(kafka))
    value = json.dumps({"action": action, "at": time.time()}).encode()
    producer.produce(topic, value, key=command_key(run.id, action), partition=run.partition)
    producer.flush(30)
