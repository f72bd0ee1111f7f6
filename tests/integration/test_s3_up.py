"""`dcnios up` runs an S3 source next to its consumer; a relayed source rides out a broker restart."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from producer_harness import read_topic, wait_for
from s3_harness import minio_body
from test_s3_sources import free_port, jobs

from dcnios.broker import EmbeddedBroker
from dcnios.kafka import ensure_topics
from dcnios.sandbox.oscar import OscarEmulator
from dcnios.spec import load_spec
from dcnios.stack import Stack
from dcnios.storage_event import StorageEvent
from dcnios.topics import topic_plan

pytestmark = pytest.mark.integration


def test_up_starts_an_s3_source_and_its_consumer(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("up-s3")
    port = free_port()
    with OscarEmulator() as oscar:
        oscar.add_service("thumbs")
        path = tmp_path / "spec.yaml"
        path.write_text(
            f"""\
kafka:
  bootstrap_servers: "{bootstrap}"
  internal_prefix: {prefix}
  topic_defaults: {{partitions: 3}}
sources:
  - name: minio-in
    type: s3-notifications
    format: minio
    topic: {prefix}.events
    webhook: {{port: {port}}}
consumers:
  - name: thumbs
    topic: {prefix}.events
    oscar: {{endpoint: "{oscar.endpoint}", service: thumbs, username: oscar, password: oscar123}}
    librdkafka: {{session.timeout.ms: "6000"}}
"""
        )
        stack = Stack(load_spec(path))
        try:
            stack.start()
            assert stack.wait_ready(60)
            bodies = [minio_body("oscar", f"in/{i}.png", sequencer=f"{i:X}") for i in range(3)]
            for body in bodies:
                assert requests.post(f"http://127.0.0.1:{port}/", data=body, timeout=10).status_code == 200
            wait_for(lambda: len(jobs(oscar)) >= 3, timeout=40)
        finally:
            stack.stop()
        assert sorted(c.body for c in jobs(oscar)) == sorted(bodies)
        assert {c.name: c.restarts for c in stack.components} == {"thumbs": 0, "minio-in": 0}


@pytest.fixture
def restartable(tmp_path: Path) -> Any:
    """A broker of its own, on a port it can come back on."""
    port = free_port()
    state: dict[str, Any] = {
        "broker": EmbeddedBroker(port=port, log_path=str(tmp_path / "tansu.log")).start()
    }

    def start() -> None:
        state["broker"] = EmbeddedBroker(port=port, log_path=str(tmp_path / "tansu.log")).start()

    state["bootstrap"] = f"127.0.0.1:{port}"
    state["start"] = start
    yield state
    state["broker"].stop()


# The SQS variant (14 s) runs with the reliability suite, to keep `make test` inside its budget.
@pytest.mark.parametrize("upstream", ["webhook", pytest.param("sqs", marks=pytest.mark.reliability)])
def test_a_broker_restart_while_the_source_runs_loses_nothing(
    restartable: Any,
    tmp_path: Path,
    unique: Callable[[str], str],
    upstream: str,
    request: pytest.FixtureRequest,
) -> None:
    """Notifications that arrive while the broker is down are not acknowledged upstream (the
    webhook answers 503, SQS keeps the message) until the restarted broker has them.

    In-memory Tansu comes back as a new, empty cluster, which the idempotent producer's batches in
    flight cannot reach: they fail after message.timeout.ms, the relay releases them and stops, and
    `dcnios up`'s supervisor starts it again, as after any crash. The store retries what got a 503,
    as MinIO's webhook target does.
    """
    prefix = unique(f"restart-{upstream}")
    port = free_port()
    if upstream == "webhook":
        source = f"    format: minio\n    webhook: {{port: {port}, ack_timeout: 30s}}"
        aws = None
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        request.getfixturevalue("aws_env")
        sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
        queue = sqs.create_queue(QueueName=unique("q"))["QueueUrl"]
        source = (
            f"    format: aws\n    sqs: {{queue_url: '{queue}', endpoint: '{endpoint}', region: us-east-1, "
            "access_key_id: testing, secret_access_key: testing, wait_time: 1s, visibility_timeout: 60s}"
        )
        aws = (sqs, queue)
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"""\
kafka:
  bootstrap_servers: "{restartable["bootstrap"]}"
  internal_prefix: {prefix}
  topic_defaults: {{partitions: 1}}
  librdkafka: {{message.timeout.ms: "4000"}}  # 60 s by default: shorter to keep the test short
sources:
  - name: s3in
    type: s3-notifications
    topic: {prefix}.events
{source}
"""
    )
    spec = load_spec(path)
    answers: list[int] = []

    def send(key: str) -> None:
        if aws is not None:
            record = {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-12-06T10:00:00.000Z",
                "s3": {"bucket": {"name": "b"}, "object": {"key": key, "eTag": key}},
            }
            aws[0].send_message(QueueUrl=aws[1], MessageBody=json.dumps({"Records": [record]}))
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the store retries until it gets a 2xx
            try:
                answer = requests.post(
                    f"http://127.0.0.1:{port}/", data=minio_body("b", key, sequencer=key), timeout=40
                )
            except requests.ConnectionError:  # the source is being restarted
                time.sleep(0.2)
                continue
            answers.append(answer.status_code)
            if answer.status_code == 200:
                return
            time.sleep(0.2)

    stack = Stack(spec)
    try:
        stack.start()
        assert stack.wait_ready(30)
        send("before")
        read_topic(restartable["bootstrap"], f"{prefix}.events", lambda r: len(r) >= 1, timeout=20)
        restartable["broker"].stop()
        senders = [threading.Thread(target=send, args=(f"during-{i}",)) for i in range(3)]
        for sender in senders:
            sender.start()
        time.sleep(2)  # the broker stays away while notifications arrive
        restartable["start"]()
        ensure_topics(spec.kafka, topic_plan(spec))  # in-memory Tansu lost them (what `dcnios topics` does)
        for sender in senders:
            sender.join(90)
        records = read_topic(restartable["bootstrap"], f"{prefix}.events", lambda r: len(r) >= 3, timeout=60)
        if aws is not None:
            wait_for(lambda: _depth(aws) == 0, timeout=30)
    finally:
        stack.stop()
    got = {e.object_key for e in records if isinstance(e, StorageEvent)}
    assert got == {f"during-{i}" for i in range(3)}
    if aws is None:
        assert answers.count(200) == 4  # every notification answered 200 once, after its ack
    restarts = sum(c.restarts for c in stack.components)
    assert restarts <= 2


def _depth(aws: tuple[Any, str]) -> int:
    attrs = aws[0].get_queue_attributes(
        QueueUrl=aws[1],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])
