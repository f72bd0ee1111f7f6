"""Storage-event records written straight to Kafka, as dcnios-producer would write them.

For driving consumers without a dCache in front (benchmarks, fault-injection scenarios).
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Producer

from dcnios.codec import StorageEventCodec
from dcnios.errors import KafkaError
from dcnios.storage_event import StorageEvent, now_millis

__all__ = ["produce_sample_events", "sample_event"]


def sample_event(path: str, event_id: int, channel: str = "ch") -> StorageEvent:
    """An IN_CLOSE_WRITE of ``path`` read as event ``event_id`` of ``channel``, observed now."""
    return StorageEvent(
        "src",
        path,
        path.rsplit("/", 1)[1],
        ("IN_CLOSE_WRITE",),
        None,
        False,
        channel,
        event_id,
        f"http://d/api/v1/events/channels/{channel}/subscriptions/inotify/AAB",
        now_millis(),
    )


def produce_sample_events(bootstrap: str, topic: str, names: Iterable[str], channel: str = "ch") -> int:
    """One IN_CLOSE_WRITE record per name, for ``/in/<name>`` with event ids in order; returns
    how many were written (all acknowledged)."""
    codec = StorageEventCodec()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    count = 0
    for i, name in enumerate(names):
        event = sample_event(f"/in/{name}", i, channel)
        value, headers = codec.encode(event, topic)
        while True:
            try:
                producer.produce(topic, value, event.key, headers=headers)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
        count += 1
    left = producer.flush(60)
    if left:
        raise KafkaError(f"{topic}: {left} sample records not acknowledged within 60s")
    return count
