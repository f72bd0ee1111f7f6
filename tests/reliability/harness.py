"""Helpers for fault-injection scenarios: specs, child processes, kill -9, reading topics to their end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from dcnios.codec import StorageEventCodec
from dcnios.errors import CodecError
from dcnios.kafka import ensure_topics
from dcnios.sandbox.records import produce_sample_events
from dcnios.spec import PipelineSpec, load_spec
from dcnios.status import partition_extents
from dcnios.storage_event import StorageEvent
from dcnios.topics import topic_plan

BIN = Path(sys.executable).parent
RESULTS: list[Tally] = []


@dataclass
class Tally:
    scenario: str
    events: int
    lost: int
    duplicates: int
    dead_letters: int = 0
    notes: str = ""

    def row(self) -> tuple[str, ...]:
        return (
            self.scenario,
            str(self.events),
            str(self.lost),
            str(self.duplicates),
            str(self.dead_letters),
            self.notes,
        )


def write_spec(tmp: Path, text: str) -> tuple[PipelineSpec, Path]:
    path = tmp / f"spec-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(text)
    spec = load_spec(path)
    ensure_topics(spec.kafka, topic_plan(spec))
    return spec, path


@dataclass
class Child:
    """A dcnios CLI process that can be killed -9 and started again."""

    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> Child:
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        self.starts += 1
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def producer(path: Path) -> Child:
    return Child(
        [str(BIN / "dcnios-producer"), "-c", str(path), "--log-level", "WARNING"],
        path.with_suffix(".producer.log"),
    )


def consumer(path: Path, name: str = "svc", tag: str = "", log_level: str = "WARNING") -> Child:
    return Child(
        [str(BIN / "dcnios-consumer"), "-c", str(path), "--consumer", name, "--log-level", log_level],
        path.with_suffix(f".consumer{tag}.log"),
    )


def assigned(child: Child) -> bool:
    """Whether ``child`` (run at INFO) has finished a join: the consumer logs every assignment."""
    return child.log.exists() and ": assigned [" in child.log.read_text(errors="replace")


def read_all(bootstrap_spec: PipelineSpec, topic: str) -> list[tuple[bytes | None, list[tuple[str, Any]]]]:
    """Every record of ``topic`` up to its true end (read past the broker's watermark)."""
    extents = partition_extents(bootstrap_spec.kafka, topic)
    out: list[tuple[bytes | None, list[tuple[str, Any]]]] = []
    todo = {p for p, (low, end) in extents.items() if end > low}
    if not todo:
        return out
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_spec.kafka.bootstrap_servers,
            "group.id": f"read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, extents[p][0]) for p in todo])
    deadline = time.monotonic() + 120
    try:
        while todo and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            value = msg.value()
            out.append((value if isinstance(value, bytes) else None, list(msg.headers() or [])))
            offset, partition = msg.offset(), msg.partition()
            assert offset is not None and partition is not None
            if offset + 1 >= extents[partition][1]:
                todo.discard(partition)
    finally:
        consumer.close()
    assert not todo, f"{topic}: partitions {sorted(todo)} not read to their end"
    return out


def paths_in(spec: PipelineSpec, topic: str) -> list[str]:
    codec = StorageEventCodec()
    paths = []
    for value, headers in read_all(spec, topic):
        try:
            paths.append(codec.decode(value, headers, topic).path)
        except CodecError:
            continue
    return paths


def events_in(spec: PipelineSpec, topic: str) -> list[StorageEvent]:
    codec = StorageEventCodec()
    events = []
    for value, headers in read_all(spec, topic):
        try:
            events.append(codec.decode(value, headers, topic))
        except CodecError:
            continue
    return events


@dataclass(frozen=True)
class Duplicates:
    """Extra records for expected files, split by what the at-least-once contract allows."""

    lost: int
    replays: int  # the same (channel, event id) again: an unacknowledged event replayed
    republished: int  # a file already published, published again (by a listing, or a new event)

    @property
    def total(self) -> int:
        return self.replays + self.republished


def duplicates(events: Iterable[StorageEvent], expected: set[str]) -> Duplicates:
    seen_paths: set[str] = set()
    seen_ids: set[tuple[str, int]] = set()
    replays = republished = 0
    for event in events:
        if event.path not in expected:
            continue
        ident = (event.channel, event.event_id) if event.event_id is not None else None
        if event.path in seen_paths:
            if ident is not None and ident in seen_ids:
                replays += 1
            else:
                republished += 1
        seen_paths.add(event.path)
        if ident is not None:
            seen_ids.add(ident)
    return Duplicates(len(expected - seen_paths), replays, republished)


def count(paths: Iterable[str], expected: set[str]) -> tuple[int, int]:
    """(lost, duplicates) of ``paths`` against the ``expected`` set."""
    seen: dict[str, int] = {}
    for p in paths:
        seen[p] = seen.get(p, 0) + 1
    lost = len(expected - set(seen))
    duplicates = sum(n - 1 for p, n in seen.items() if p in expected)
    return lost, duplicates


def wait_for(predicate: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not reached within {timeout:.0f}s")


@dataclass
class Pacer:
    """Runs ``action(i)`` for i in range(n) at ``rate`` per second on a thread."""

    n: int
    rate: float
    action: Callable[[int], None]
    done: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)

    def start(self) -> Pacer:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        try:
            for i in range(self.n):
                delay = started + i / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.action(i)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.done.set()


def env_size(full: int, reduced: int, full_mode: bool) -> int:
    return full if full_mode or os.environ.get("DCNIOS_RELIABILITY_FULL") else reduced


def produce_events(bootstrap: str, topic: str, names: Iterable[str], channel: str = "ch") -> int:
    """Records for /in/<name> (ids in order), as the producer would write them."""
    return produce_sample_events(bootstrap, topic, names, channel)


def invoked(calls: Iterable[Any]) -> list[str]:
    import json

    return [json.loads(c.body)["event"]["name"] for c in calls]
