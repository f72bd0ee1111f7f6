"""Gap repair at scale: a real dcnios-producer reconciles a 1,000,000-file directory against its index.

The published-files index holds every file but 1 % (the files that arrived during the gap), and
1 % of what it holds has left; the channel is gone, so the producer lists the whole directory
(CHANNEL_LOST). Timed from the process start (the index is read from Kafka first) to the gap
record; memory is the process's peak RSS (VmHWM). The emulator runs in this process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import Result, rss_mb
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from dcnios.kafka import ensure_topics
from dcnios.producers.checkpoint import Checkpoint
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.spec import load_spec
from dcnios.topics import checkpoint_topic, gaps_topic, published_topic, topic_plan


def _gap(bootstrap: str, topic: str, timeout: float) -> dict[str, object] | None:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"b-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                gap = json.loads(msg.value())
                if gap.get("reason") == "CHANNEL_LOST":
                    return dict(gap)
        return None
    finally:
        consumer.close()


def reconcile(bootstrap: str, n: int) -> list[Result]:
    new, gone = n // 100, n // 100
    exe = str(Path(sys.executable).parent / "dcnios-producer")
    with tempfile.TemporaryDirectory() as tmp, DCacheEmulator() as emu:
        emu.mkdir("/data/in")
        names = [f"run{i:07d}.h5" for i in range(n)]
        emu.put_many("/data/in", names, size=4096)
        prefix = f"bench-{uuid.uuid4().hex[:6]}"
        path = Path(tmp) / "spec.yaml"
        path.write_text(
            f"kafka: {{bootstrap_servers: '{bootstrap}', internal_prefix: {prefix}}}\n"
            f"sources:\n  - {{name: src, endpoint: '{emu.endpoint}',\n"
            "     auth: {username: alice, password: secret},\n"
            f"     paths: [/data/in], topic: {prefix}.events, heartbeat: 0}}\n"
        )
        spec = load_spec(path)
        ensure_topics(spec.kafka, topic_plan(spec))
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 50,
                "batch.size": 1_000_000,
                "queue.buffering.max.messages": 2_000_000,
            }
        )
        index = published_topic(spec.kafka, "src")
        now = int(time.time() * 1000)
        with emu.lock:
            entries = [emu.entries[f"/data/in/{name}"] for name in names[new:]]
        for entry in entries:
            value = {"t": now, "l": 1, "p": entry.pnfsid, "s": entry.size, "m": entry.mtime}
            while True:
                try:
                    producer.produce(index, json.dumps(value).encode(), entry.path.encode())
                    break
                except BufferError:
                    producer.poll(0.05)
        for i in range(gone):  # published, and deleted during the gap
            producer.poll(0)
            producer.produce(index, json.dumps({"t": now}).encode(), f"/data/in/left{i:07d}.h5".encode())
        gone_channel = f"{emu.endpoint}/events/channels/{'x' * 22}"
        producer.produce(
            checkpoint_topic(spec.kafka),
            Checkpoint(
                "src", gone_channel, 41, {f"{gone_channel}/subscriptions/inotify/A": "/data/in"}
            ).to_json(),
            b"src",
        )
        assert producer.flush(120) == 0
        start = time.perf_counter()
        proc = subprocess.Popen([exe, "-c", str(path), "--log-level", "WARNING"], stderr=subprocess.DEVNULL)
        try:
            gap = _gap(bootstrap, gaps_topic(spec.kafka), 600)
            elapsed = time.perf_counter() - start
            _, peak = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    if gap is None:
        raise RuntimeError("the producer wrote no CHANNEL_LOST gap within 600 s")
    if gap["reconciled"] != new:
        raise RuntimeError(f"the repair published {gap['reconciled']} files; {new} were new")
    params = {
        "files listed": n,
        "new": new,
        "left": gone,
        "published": gap["reconciled"],
        "page": 10_000,
        "process": "dcnios-producer",
    }
    return [
        Result("reconcile", f"{n:,}-file gap repair", elapsed, "s", 60, "goal", "<= 60 s", params),
        Result("reconcile", "peak RSS", peak, "MB", 150, "goal", "<= 150 MB", params),
    ]


def run(bootstrap: str, quick: bool) -> list[Result]:
    return reconcile(bootstrap, 100_000 if quick else 1_000_000)
