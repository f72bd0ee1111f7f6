"""Helpers for consumer tests: a spec against the OSCAR emulator, record production, runners."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from confluent_kafka import Consumer, Producer, TopicPartition
from producer_harness import Running, run_in_thread

from dcnios.codec import StorageEventCodec
from dcnios.consumers.run import ConsumerRunner
from dcnios.kafka import ensure_topics
from dcnios.sandbox.records import sample_event
from dcnios.spec import PipelineSpec, load_spec
from dcnios.storage_event import StorageEvent
from dcnios.topics import topic_plan


def consumer_spec(
    tmp_path: Path,
    bootstrap: str,
    oscar: str,
    prefix: str,
    *,
    token: str | None = None,
    extra: str = "",
    oscar_extra: str = "",
    partitions: int = 6,
) -> PipelineSpec:
    """``extra`` lines (consumer keys) and ``oscar_extra`` (", key: value") override the defaults."""
    auth = f"token: '{token}'" if token else "username: oscar, password: oscar123"
    oscar_fields = {"service": "grayify", "timeout": "2s", "connect_timeout": "2s", "input_path": "/data/in"}
    for item in filter(None, (part.strip() for part in oscar_extra.split(","))):
        key, _, value = item.partition(":")
        oscar_fields[key.strip()] = value.strip()
    oscar_fields = {k: v for k, v in oscar_fields.items() if v != "~"}  # "key: ~" drops a default
    fields = {
        "group": f"{prefix}-svc",
        "retry": "{max_attempts: 4, initial_backoff: 20ms, max_backoff: 100ms}",
        "concurrency": "8",
        # A group's first join takes about half the session timeout on Tansu: keep it short.
        "librdkafka": "{session.timeout.ms: '6000', heartbeat.interval.ms: '500'}",
    }
    for line in filter(None, (ln.strip() for ln in extra.splitlines())):
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    oscar_text = ", ".join(f"{k}: {v}" for k, v in oscar_fields.items())
    consumer_text = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    text = f"""\
kafka:
  bootstrap_servers: "{bootstrap}"
  internal_prefix: {prefix}
  topic_defaults: {{partitions: {partitions}}}
consumers:
  - name: svc
    topic: {prefix}.events
    oscar: {{endpoint: "{oscar}", {auth}, {oscar_text}}}
{consumer_text}"""
    path = tmp_path / f"{prefix}.yaml"
    path.write_text(text)
    spec = load_spec(path)
    ensure_topics(spec.kafka, topic_plan(spec))
    return spec


def event(i: int, path: str | None = None, channel: str = "ch") -> StorageEvent:
    return sample_event(path or f"/data/in/f{i:05d}.png", i, channel)


def produce(bootstrap: str, topic: str, events: list[StorageEvent]) -> None:
    codec = StorageEventCodec()
    producer = Producer({"bootstrap.servers": bootstrap})
    for ev in events:
        value, headers = codec.encode(ev, topic)
        producer.produce(topic, value, ev.key, headers=headers)
    assert producer.flush(30) == 0


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in tps}  # never committed: -1001
    finally:
        consumer.close()


def invoked_names(calls: list) -> list[str]:  # type: ignore[type-arg]
    return [json.loads(c.body)["event"]["name"] for c in calls]


def start(spec: PipelineSpec) -> Running[ConsumerRunner]:
    stop = threading.Event()
    return run_in_thread(ConsumerRunner(spec, spec.consumers[0], stop=stop), stop)


def dlq_raw(
    bootstrap: str, topic: str, count: int, timeout: float = 30
) -> list[tuple[bytes, dict[str, bytes]]]:
    """The first ``count`` records of ``topic`` as (value, headers), undecoded."""
    from confluent_kafka import OFFSET_BEGINNING

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "dlq-reader", "enable.auto.commit": False}
    )
    md = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
    out: list[tuple[bytes, dict[str, bytes]]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                out.append((msg.value() or b"", dict(msg.headers() or [])))  # type: ignore[arg-type]
    finally:
        consumer.close()
    return out


def spawn_consumer(config: str, log: IO[bytes], *extra: str) -> subprocess.Popen[bytes]:
    """A real ``dcnios-consumer`` process for the spec's consumer ``svc``, its stderr in ``log``."""
    exe = str(Path(sys.executable).parent / "dcnios-consumer")
    return subprocess.Popen([exe, "-c", config, "--consumer", "svc", *extra], stderr=log, env={**os.environ})
