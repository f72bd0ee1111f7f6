"""Helpers for producer tests: a spec against the emulator, a runner thread, a topic reader."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from dcnios.codec import StorageEventCodec
from dcnios.kafka import ensure_topics
from dcnios.producers.run import SourceRunner
from dcnios.spec import PipelineSpec, load_spec
from dcnios.storage_event import StorageEvent
from dcnios.topics import topic_plan


def make_spec(tmp_path: Path, bootstrap: str, endpoint: str, prefix: str, extra: str = "") -> PipelineSpec:
    text = f"""\
kafka:
  bootstrap_servers: "{bootstrap}"
  internal_prefix: {prefix}
  topic_defaults: {{partitions: 3}}
sources:
  - name: src
    endpoint: "{endpoint}"
    auth: {{username: alice, password: secret}}
    paths: [/data/in]
    topic: {prefix}.events
    reconnect_backoff: 50ms
    reconnect_backoff_max: 200ms
{extra}"""
    path = tmp_path / f"{prefix}.yaml"
    path.write_text(text)
    spec = load_spec(path)
    ensure_topics(spec.kafka, topic_plan(spec))
    return spec


R = TypeVar("R", bound=Any)


@dataclass
class Running(Generic[R]):
    """A runner on a daemon thread; ``halt()`` stops it and checks that it really stopped."""

    runner: R
    stop: threading.Event
    thread: threading.Thread
    errors: list[BaseException]

    @property
    def error(self) -> list[BaseException]:
        return self.errors

    def halt(self, timeout: float = 60) -> None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "runner did not stop"


def run_in_thread(runner: R, stop: threading.Event) -> Running[R]:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            runner.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return Running(runner, stop, thread, errors)


def start(spec: PipelineSpec) -> Running[SourceRunner]:
    stop = threading.Event()
    return run_in_thread(SourceRunner(spec, spec.sources[0], stop=stop), stop)


@contextmanager
def ready_source(spec: PipelineSpec) -> Iterator[SourceRunner]:
    """The spec's first source, running and ready; halted (and checked) on the way out.

    Ready includes the first start's baseline: a file written while it lists would be published
    by the listing, not by its live event, and tests that upload next expect the live one.
    """
    running = start(spec)
    try:
        wait_for(running.runner.ready.is_set)
        wait_for(lambda: all(g.reason != "BASELINE" for g in running.runner.reconciler.gaps))
        yield running.runner
    finally:
        running.halt()


def read_topic(
    bootstrap: str, topic: str, until: Callable[[list[Any]], bool], timeout: float = 30
) -> list[Any]:
    """Every record of ``topic`` (StorageEvent, JSON dict, or (raw, headers)) once ``until`` holds."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
    )
    codec = StorageEventCodec()
    md = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                headers = msg.headers() or []
                if any(k == "dcnios-schema" for k, _ in headers):
                    out.append(codec.decode(msg.value(), headers, topic))
                elif topic.endswith(".invalid"):
                    out.append((msg.value(), dict(headers)))
                else:
                    out.append(json.loads(msg.value()))
            if msg is None and until(out):
                return out
        return out
    finally:
        consumer.close()


def files(records: list[Any]) -> list[str]:
    return [r.path for r in records if isinstance(r, StorageEvent)]


def wait_for(predicate: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")
