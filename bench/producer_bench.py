"""Producer benchmarks: dCache emulator -> dcnios-producer -> Kafka (acked), against raw produce."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from common import SERIES, Result, cpu_seconds, percentile, rss_mb, wait
from confluent_kafka import Producer, TopicPartition

from dcnios.codec import StorageEventCodec
from dcnios.kafka import ensure_topics, producer_config
from dcnios.producers.run import SourceRunner
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.spec import PipelineSpec, load_spec
from dcnios.storage_event import StorageEvent, now_millis
from dcnios.topics import topic_plan


def _spec(workdir: Path, bootstrap: str, endpoint: str) -> tuple[PipelineSpec, Path]:
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    path = workdir / f"{prefix}.yaml"
    path.write_text(
        f"kafka: {{bootstrap_servers: '{bootstrap}', internal_prefix: {prefix},\n"
        "  topic_defaults: {partitions: 12}}\n"
        f"sources:\n  - {{name: src, endpoint: '{endpoint}', auth: {{username: alice, password: secret}},\n"
        f"     paths: [/data/in], topic: {prefix}.events}}\n"
    )
    spec = load_spec(path)
    ensure_topics(spec.kafka, topic_plan(spec))
    return spec, path


class _TimedRunner(SourceRunner):
    """Records frame-read -> acknowledged latency of every event record."""

    latencies: list[float]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        acked = self.outbox._events_acked  # noqa: SLF001  # timing the ack is the point of this runner

        def timed(count: int, observed_ms: int) -> None:
            acked(count, observed_ms)
            # The event records of one chunk share their frames' read time and their ack.
            self.latencies.extend([(now_millis() - observed_ms) / 1000] * count)

        self.outbox._events_acked = timed  # type: ignore[method-assign]  # noqa: SLF001


def _run(runner: SourceRunner) -> threading.Thread:
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return thread


def ceiling_raw_produce(spec: PipelineSpec, n: int) -> float:
    """Raw confluent-kafka produce of the same encoded records: events/s."""
    codec = StorageEventCodec()
    topic = spec.sources[0].topic
    records = []
    for i in range(n):
        ev = StorageEvent(
            "src",
            f"/data/in/f{i:07d}",
            f"f{i:07d}",
            ("IN_MOVED_TO",),
            "c" * 22,
            False,
            "channel",
            i,
            "http://x/sub",
            now_millis(),
        )
        value, headers = codec.encode(ev, topic)
        records.append((value, ev.key, headers))
    producer = Producer(producer_config(spec.kafka))
    start = time.perf_counter()
    for value, key, headers in records:
        while True:
            try:
                producer.produce(topic, value, key, headers=headers)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    assert producer.flush(60) == 0
    return n / (time.perf_counter() - start)


def _records_metric(port: int) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    lines = [line for line in text.splitlines() if line.startswith("dcnios_producer_records_total{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def throughput(bootstrap: str, n: int) -> list[Result]:
    """Steady-state rate of a real dcnios-producer process replaying a full channel backlog.

    The emulator runs in this process and the producer in its own, so they do not share a GIL;
    the clock runs from the first acknowledged record to the last (start-up excluded).
    """
    from dcnios.broker import free_port

    exe = str(Path(sys.executable).parent / "dcnios-producer")
    with tempfile.TemporaryDirectory() as tmp, DCacheEmulator(backlog=n + 100) as emu:
        emu.mkdir("/data/in")
        spec, path = _spec(Path(tmp), bootstrap, emu.endpoint)
        ceiling = ceiling_raw_produce(spec, n)
        port = free_port()
        args = [exe, "-c", str(path), "--log-level", "WARNING", "--metrics-port", str(port)]
        proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
        wait(lambda: any(c.subs and c.conn for c in emu.channels.values()), 30)
        emu.srm_upload("/data/in/seed")  # an acknowledged id to resume from
        wait(lambda: _records_metric(port) >= 1, 30, 0.02)
        time.sleep(1.5)  # let the checkpoint interval (1 s) pass so the seed is checkpointed
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        # Fill the channel's backlog while the producer is away, then time the catch-up.
        for i in range(n):
            emu.srm_upload(f"/data/in/f{i:07d}")
        proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
        try:
            wait(lambda: _safe_metric(port) > 0, 60, 0.002)
            start, cpu_start = time.perf_counter(), cpu_seconds(proc.pid)
            # Scraped every 50 ms: /metrics costs the producer CPU, and 100 scrapes/s showed in its profile.
            wait(lambda: _records_metric(port) >= n, 300, 0.05)
            elapsed, cpu = time.perf_counter() - start, cpu_seconds(proc.pid) - cpu_start
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    rate = n / elapsed
    params = {"events": n, "partitions": 12, "wire": "plain Avro + fingerprint header"}
    return [
        Result(
            "producer",
            "throughput",
            rate,
            "events/s",
            ceiling,
            "raw confluent-kafka produce",
            ">= 0.6x ceiling and >= 30000 events/s",
            params,
        ),
        # Every thread of the process (SSE reader, run loop, librdkafka) over the same window.
        Result("producer", "CPU per event", cpu / n * 1e6, "µs", goal="<= 12 µs", parameters=params),
    ]


def latency(bootstrap: str, rate: int, seconds: float) -> list[Result]:
    with tempfile.TemporaryDirectory() as tmp, DCacheEmulator() as emu:
        emu.mkdir("/data/in")
        spec, _ = _spec(Path(tmp), bootstrap, emu.endpoint)
        stop = threading.Event()
        runner = _TimedRunner(spec, spec.sources[0], stop=stop)
        runner.latencies = []
        thread = _run(runner)
        wait(runner.ready.is_set, 30)
        runner.latencies.clear()
        total = int(rate * seconds)
        start = time.perf_counter()
        for i in range(total):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            emu.srm_upload(f"/data/in/l{i:07d}")
        wait(lambda: len(runner.latencies) >= total, 60)
        stop.set()
        thread.join(30)
    lat = [x * 1000 for x in runner.latencies]
    SERIES["producer_ack_ms"] = lat
    params = {"rate": rate, "seconds": seconds, "from": "SSE frame read", "to": "record acknowledged"}
    return [
        Result("producer", "event-to-ack p50", percentile(lat, 0.50), "ms", parameters=params),
        Result("producer", "event-to-ack p99", percentile(lat, 0.99), "ms", parameters=params),
    ]


def memory(bootstrap: str, n: int) -> list[Result]:
    """Steady-state RSS of a real dcnios-producer process after n events."""
    exe = str(Path(sys.executable).parent / "dcnios-producer")
    with tempfile.TemporaryDirectory() as tmp, DCacheEmulator() as emu:
        emu.mkdir("/data/in")
        spec, path = _spec(Path(tmp), bootstrap, emu.endpoint)
        proc = subprocess.Popen([exe, "-c", str(path), "--log-level", "WARNING"], stderr=subprocess.DEVNULL)
        try:
            wait(lambda: any(c.subs and c.conn for c in emu.channels.values()), 30)
            for i in range(n):
                emu.srm_upload(f"/data/in/m{i:07d}")
                if i % 1000 == 999:
                    time.sleep(0.05)
            consumer_done = _wait_topic_count(bootstrap, spec.sources[0].topic, n)
            current, peak = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    params = {"events": n, "process": "dcnios-producer", "acked": consumer_done}
    return [
        Result("producer", "RSS steady state", current, "MB", 80, "goal", "<= 80 MB", params),
        Result("producer", "RSS peak", peak, "MB", parameters=params),
    ]


def _safe_metric(port: int) -> float:
    try:
        return _records_metric(port)
    except OSError:
        return 0.0


def _wait_topic_count(bootstrap: str, topic: str, n: int) -> int:
    from confluent_kafka import OFFSET_BEGINNING, Consumer

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"b-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False}
    )
    md = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
    seen = 0
    deadline = time.monotonic() + 120
    while seen < n and time.monotonic() < deadline:
        msgs = consumer.consume(1000, 0.5)
        seen += sum(1 for m in msgs if m.error() is None)
    consumer.close()
    return seen


def run(bootstrap: str, quick: bool) -> list[Result]:
    results = throughput(bootstrap, 20_000 if quick else 100_000)
    results += latency(bootstrap, 1000, 5 if quick else 20)
    results += memory(bootstrap, 5_000 if quick else 30_000)
    os.environ.pop("_", None)
    return results
