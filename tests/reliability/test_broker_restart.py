"""The broker restarts under a running pipeline (`dcnios up`'s supervisor keeps the runners going).

Tansu keeps everything in memory, so a restart loses the topics, the checkpoints and the group
offsets. The guarantee that holds, and is asserted: what was acknowledged before the restart was
delivered before it, both sides reconnect, and every event after the restart (once the topics exist
again, as `dcnios topics` makes them) is delivered. A persistent Kafka also keeps the records and
offsets across the restart, so nothing is replayed from the listing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Tally, invoked, wait_for

from dcnios.broker import EmbeddedBroker, free_port
from dcnios.kafka import ensure_topics
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.sandbox.oscar import OscarEmulator
from dcnios.spec import load_spec
from dcnios.stack import Stack
from dcnios.topics import topic_plan


@pytest.mark.reliability
def test_broker_restart_under_a_running_pipeline(
    tmp_path: Path, unique: Callable[[str], str], tally: list[Tally]
) -> None:
    port = free_port()
    before, after = 300, 300
    with DCacheEmulator() as dcache, OscarEmulator() as oscar:
        dcache.mkdir("/in")
        oscar.add_service("svc", input_path="/in")
        path = tmp_path / "spec.yaml"
        path.write_text(
            f"""\
kafka:
  bootstrap_servers: "127.0.0.1:{port}"
  topic_defaults: {{partitions: 3}}
  librdkafka: {{message.timeout.ms: "10000"}}  # 60 s by default: shorter here to keep the test short
sources:
  - name: src
    endpoint: "{dcache.endpoint}"
    auth: {{username: alice, password: secret}}
    paths: [/in]
    topic: restart.events
    reconnect_backoff: 50ms
consumers:
  - name: svc
    topic: restart.events
    oscar: {{endpoint: "{oscar.endpoint}", service: svc, username: oscar, password: oscar123}}
    librdkafka: {{session.timeout.ms: "6000"}}
"""
        )
        spec = load_spec(path)
        broker = EmbeddedBroker(port=port, log_path=str(tmp_path / "tansu.log")).start()
        stack = Stack(spec)
        try:
            stack.start()
            assert stack.wait_ready(60)
            for i in range(before):
                dcache.upload(f"/in/a{i:04d}.dat", 10)
            first = {f"a{i:04d}.dat" for i in range(before)}
            wait_for(lambda: first <= set(invoked(oscar.job_calls("svc"))), 120, "pre-restart events invoked")
            broker.stop()
            time.sleep(1)
            broker = EmbeddedBroker(port=port, log_path=str(tmp_path / "tansu.log")).start()
            ensure_topics(spec.kafka, topic_plan(spec))  # what `dcnios topics` does after losing them
            for i in range(after):
                dcache.upload(f"/in/b{i:04d}.dat", 10)
            second = {f"b{i:04d}.dat" for i in range(after)}
            wait_for(
                lambda: second <= set(invoked(oscar.job_calls("svc"))), 240, "post-restart events invoked"
            )
            restarts = sum(c.restarts for c in stack.components)
        finally:
            stack.stop()
            broker.stop()
        calls = invoked(oscar.job_calls("svc"))
    expected = first | second
    tally.append(
        Tally(
            "broker restart (in-memory Tansu)",
            before + after,
            len(expected - set(calls)),
            len(calls) - len(set(calls)),
            notes=f"{restarts} runner restarts; topics recreated; replays come from the listing",
        )
    )
    assert expected <= set(calls)
