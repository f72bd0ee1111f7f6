"""`payload: raw`: a consumer of a topic other systems fill sends each value to OSCAR unchanged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer
from consumer_harness import committed, dlq_raw
from consumer_harness import start as start_consumer
from producer_harness import wait_for
from test_s3_sources import jobs

from dcnios.kafka import ensure_topics
from dcnios.sandbox.oscar import OscarEmulator
from dcnios.spec import load_spec
from dcnios.topics import topic_plan

pytestmark = pytest.mark.integration


def test_raw_values_reach_oscar_unchanged_and_a_tombstone_is_dead_lettered(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("raw")
    with OscarEmulator() as oscar:
        token = oscar.add_service("ingest")
        path = tmp_path / "spec.yaml"
        path.write_text(
            f"""\
kafka:
  bootstrap_servers: "{bootstrap}"
  topic_defaults: {{partitions: 2}}
consumers:
  - name: ingest
    topic: {prefix}.instrument
    payload: raw
    filter: {{paths: ["det-*/**"]}}
    oscar: {{endpoint: "{oscar.endpoint}", service: ingest, token: "{token}"}}
    retry: {{max_attempts: 2, initial_backoff: 20ms, max_backoff: 100ms}}
    librdkafka: {{session.timeout.ms: "6000"}}
"""
        )
        spec = load_spec(path)
        ensure_topics(spec.kafka, topic_plan(spec))
        values = [b'{"run": 7, "file": "a.h5"}', b"plain text, not JSON", "ünïcode 2".encode()]
        producer = Producer({"bootstrap.servers": bootstrap})
        for i, value in enumerate(values):
            producer.produce(f"{prefix}.instrument", value, f"det-{i}/frame".encode())
        producer.produce(f"{prefix}.instrument", b"filtered out", b"other/frame")
        producer.produce(f"{prefix}.instrument", None, b"det-9/frame")  # a tombstone: nothing to send
        assert producer.flush(10) == 0
        member = start_consumer(spec)
        try:
            wait_for(lambda: len(jobs(oscar)) >= 3 or bool(member.errors), timeout=40)
            (dead,) = dlq_raw(bootstrap, f"{prefix}.instrument.dlq", 1)
            wait_for(
                lambda: sum(committed(bootstrap, "dcnios-ingest", f"{prefix}.instrument", 2).values()) == 5
            )
        finally:
            member.halt()
        assert not member.errors
        assert sorted(c.body for c in jobs(oscar)) == sorted(values)
        assert dead[1]["dcnios-reason"] == b"poison" and b"tombstone" in dead[1]["dcnios-error"]
