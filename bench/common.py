"""Shared benchmark plumbing: a broker, timing, percentiles, RSS, result records."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from dcnios.broker import EmbeddedBroker
from dcnios.codec import StorageEventCodec
from dcnios.spec import PipelineSpec
from dcnios.storage_event import StorageEvent, now_millis

#: Raw samples for the plots (bench/plots.py), filled by the benchmarks of one run.
SERIES: dict[str, Any] = {}


@dataclass
class Result:
    benchmark: str
    metric: str
    value: float
    unit: str
    ceiling: float | None = None
    ceiling_name: str | None = None
    goal: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    date: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def ratio(self) -> float | None:
        return None if not self.ceiling else self.value / self.ceiling

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@contextlib.contextmanager
def broker() -> Iterator[str]:
    external = os.environ.get("DCNIOS_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    with EmbeddedBroker() as b:
        yield b.bootstrap


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(current RSS, peak RSS) in MB from /proc."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(rest.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def wait(predicate: Any, timeout: float, step: float = 0.005) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(step)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def produce_names(spec: PipelineSpec, names: list[str]) -> None:
    """Records for /in/<name> on the first consumer's topic, as the producer would write them."""
    from confluent_kafka import Producer

    topic = spec.consumers[0].topic
    codec = StorageEventCodec()
    producer = Producer({"bootstrap.servers": spec.kafka.bootstrap_servers, "linger.ms": 5})
    for i, name in enumerate(names):
        event = StorageEvent(
            "src",
            f"/in/{name}",
            name,
            ("IN_CLOSE_WRITE",),
            None,
            False,
            "ch",
            i,
            "http://d/api/v1/events/channels/ch/subscriptions/inotify/AAB",
            now_millis(),
        )
        value, headers = codec.encode(event, topic)
        while True:
            try:
                producer.produce(topic, value, event.key, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
