"""S3 bucket-notification sources against the real broker: MinIO's Kafka topic, the webhook (MinIO
and Ceph bodies), AWS through moto's SQS with real bucket notifications; and a `payload: native`
consumer that hands OSCAR the notification byte for byte, once per event."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from confluent_kafka import Producer
from consumer_harness import committed, dlq_raw
from consumer_harness import start as start_consumer
from producer_harness import Running, read_topic, run_in_thread, wait_for
from s3_harness import ceph_body, minio_body

from dcnios.codec import StorageEventCodec
from dcnios.consumers.replay import replay_window
from dcnios.doctor import diagnose
from dcnios.kafka import ensure_topics
from dcnios.metrics import ProducerMetrics
from dcnios.producers.relay import RelayRunner
from dcnios.producers.s3_notifications import translate
from dcnios.producers.sources import runner_for
from dcnios.producers.upstream import Delivery, Events
from dcnios.producers.upstream_sqs import SqsUpstream
from dcnios.sandbox.oscar import OscarEmulator
from dcnios.spec import PipelineSpec, load_spec
from dcnios.status import pipeline_status
from dcnios.storage_event import StorageEvent
from dcnios.topics import topic_plan

pytestmark = pytest.mark.integration

#: Tansu takes about half the session timeout for a group's first join: keep it short.
FAST_JOIN = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def s3_spec(
    tmp_path: Path, bootstrap: str, prefix: str, source: str, consumer: str = "", *, create: bool = True
) -> PipelineSpec:
    text = f"""\
kafka:
  bootstrap_servers: "{bootstrap}"
  internal_prefix: {prefix}
  topic_defaults: {{partitions: 3}}
sources:
  - name: s3in
    type: s3-notifications
    topic: {prefix}.events
{source}
{consumer}"""
    path = tmp_path / f"{prefix}.yaml"
    path.write_text(text)
    spec = load_spec(path, env={"HOOK_TOKEN": "s3cr3t-token"})
    if create:
        ensure_topics(spec.kafka, topic_plan(spec))
    return spec


def relay(spec: PipelineSpec, metrics: ProducerMetrics | None = None) -> Running[RelayRunner]:
    stop = threading.Event()
    runner = runner_for(
        spec, spec.sources[0], stop=stop, metrics=metrics or ProducerMetrics(), consumer_settings=FAST_JOIN
    )
    assert isinstance(runner, RelayRunner)
    running = run_in_thread(runner, stop)
    wait_for(runner.ready.is_set)
    return running


def outcomes(metrics: ProducerMetrics) -> dict[str, float]:
    return {
        s.labels["outcome"]: s.value
        for m in metrics.upstream_messages.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }


def jobs(oscar: OscarEmulator) -> list[Any]:
    return [c for c in oscar.calls if c.method == "POST" and c.path.startswith("/job/")]


def events_of(records: list[Any]) -> list[StorageEvent]:
    return [r for r in records if isinstance(r, StorageEvent)]


def test_minio_kafka_topic_is_relayed_and_committed_after_the_ack(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("minio")
    spec = s3_spec(tmp_path, bootstrap, prefix, f"    format: minio\n    kafka: {{topic: {prefix}.minio}}")
    bodies = [minio_body("oscar", f"in/run 7/img {i}.tif", sequencer=f"18{i:014X}") for i in range(3)]
    removed = minio_body("oscar", "in/gone.tif", event="s3:ObjectRemoved:Delete")
    upstream = [*bodies, b"{not json", removed]
    producer = Producer({"bootstrap.servers": bootstrap})
    for i, body in enumerate(upstream):
        # MinIO's record key: <bucket>/<object key, unescaped> (kafka.go).
        producer.produce(f"{prefix}.minio", body, f"oscar/in/run 7/img {i}.tif".encode())
    assert producer.flush(10) == 0
    metrics = ProducerMetrics()
    running = relay(spec, metrics)
    try:
        wait_for(lambda: sum(outcomes(metrics).values()) == len(upstream), timeout=30)
        # Every upstream message was settled, so the source's group committed past all of them.
        wait_for(lambda: sum(committed(bootstrap, "dcnios-source-s3in", f"{prefix}.minio", 3).values()) == 5)
    finally:
        running.halt()
    assert not running.errors
    assert outcomes(metrics) == {"published": 3, "skipped": 1, "invalid": 1, "released": 0}
    records = events_of(read_topic(bootstrap, f"{prefix}.events", lambda r: len(r) >= 3))
    by_path = {e.path: e for e in records}
    assert sorted(by_path) == [f"oscar/in/run 7/img {i}.tif" for i in range(3)]
    for i, body in enumerate(bodies):
        event = by_path[f"oscar/in/run 7/img {i}.tif"]
        assert event.kind == "s3" and event.bucket == "oscar" and event.object_key == f"in/run 7/img {i}.tif"
        assert event.event_name == "s3:ObjectCreated:Put" and event.sequencer == f"18{i:014X}"
        assert event.original == body  # byte for byte: the body OSCAR's webhook would have had
    (invalid,) = read_topic(bootstrap, f"{prefix}.events.invalid", lambda r: len(r) >= 1)
    value, headers = invalid
    assert value == b"{not json" and headers["dcnios-reason"].startswith(b"not JSON")
    assert headers["dcnios-origin"].startswith(f"{prefix}.minio[".encode())
    (status,) = pipeline_status(spec)["sources"]
    assert status["type"] == "s3-notifications" and status["upstream"] == f"kafka topic {prefix}.minio"
    assert status["upstream_waiting"] == 0 and status["invalid"] == 1


@pytest.mark.parametrize("fmt", ["minio", "ceph"])
def test_webhook_answers_only_after_kafka_acknowledged(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str], fmt: str
) -> None:
    prefix = unique(f"hook-{fmt}")
    port = free_port()
    source = (
        f"    format: {fmt}\n"
        f"    webhook: {{port: {port}, path: /minio/events, token: '${{HOOK_TOKEN}}', max_body: 4096}}"
    )
    spec = s3_spec(tmp_path, bootstrap, prefix, source)
    url = f"http://127.0.0.1:{port}/minio/events"
    body = minio_body("oscar", "in/x 1.dat") if fmt == "minio" else ceph_body("oscar", "in/x 1.dat")
    auth = {"Authorization": "Bearer s3cr3t-token"}
    running = relay(spec)
    try:
        assert requests.head(url, timeout=5).status_code == 200  # MinIO's liveness probe
        assert requests.post(url, data=body, timeout=5).status_code == 401
        assert (
            requests.post(url, data=body, headers={"Authorization": "Bearer nope"}, timeout=5).status_code
            == 401
        )
        answer = requests.post(url, data=body, headers=auth, timeout=10)
        assert answer.status_code == 200
        # The 200 came after Kafka's acknowledgement: the record is there already.
        (event,) = events_of(read_topic(bootstrap, f"{prefix}.events", lambda r: len(r) >= 1, timeout=5))
        assert requests.post(url, data=b"x" * 5000, headers=auth, timeout=10).status_code == 200
        assert requests.post(url, data=b"[1, 2]", headers=auth, timeout=10).status_code == 200
    finally:
        running.halt()
    assert not running.errors
    assert event.path == "oscar/in/x 1.dat" and event.object_key == "in/x 1.dat"
    assert event.event_name == "s3:ObjectCreated:Put"
    assert event.original is not None
    if fmt == "minio":
        assert event.original == body
    else:  # translated for the supervisor: MinIO's eventSource, the s3: prefix, the key encoded
        record = json.loads(event.original)["Records"][0]
        assert record["eventSource"] == "minio:s3" and record["eventName"] == "s3:ObjectCreated:Put"
        assert record["s3"]["object"]["key"] == "in/x+1.dat"
    reports = read_topic(bootstrap, f"{prefix}.events.invalid", lambda r: len(r) >= 2)
    reasons = sorted(headers["dcnios-reason"].decode() for _, headers in reports)
    assert reasons[0].startswith("body of 5000 bytes is over webhook.max_body")
    assert reasons[1].startswith("no Records[]") or reasons[1].startswith("not a JSON object")


def test_a_notification_too_large_for_a_kafka_record_goes_to_invalid(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    # librdkafka refuses a record over message.max.bytes (1,000,000) at produce(), at once; that
    # used to escape the relay unreleased and stop the source, on every redelivery.
    prefix = unique("hook-big")
    port = free_port()
    source = f"    format: minio\n    webhook: {{port: {port}, max_body: 2097152}}"
    spec = s3_spec(tmp_path, bootstrap, prefix, source)
    doc = json.loads(minio_body("oscar", "in/big.dat"))
    doc["Records"][0]["s3"]["object"]["userMetadata"] = {"x-amz-meta-pad": "p" * 1_100_000}
    big = json.dumps(doc).encode()
    running = relay(spec)
    try:
        answer = requests.post(f"http://127.0.0.1:{port}/", data=big, timeout=30)
        assert answer.status_code == 200
        small = requests.post(f"http://127.0.0.1:{port}/", data=minio_body("oscar", "in/ok.dat"), timeout=30)
        assert small.status_code == 200  # the source is still relaying
    finally:
        running.halt()
    assert not running.errors
    (report,) = read_topic(bootstrap, f"{prefix}.events.invalid", lambda r: len(r) >= 1)
    assert "message.max.bytes" in report[1]["dcnios-reason"].decode()
    (event,) = events_of(read_topic(bootstrap, f"{prefix}.events", lambda r: len(r) >= 1, timeout=5))
    assert event.object_key == "in/ok.dat"


def test_webhook_answers_503_when_kafka_does_not_acknowledge(
    tmp_path: Path, unique: Callable[[str], str]
) -> None:
    """No broker: the POST is not answered 2xx (the store keeps the event and retries)."""
    prefix = unique("hook-down")
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"
    text = f"""\
kafka:
  bootstrap_servers: "{dead}"
  librdkafka: {{message.timeout.ms: "1500"}}
sources:
  - name: s3in
    type: s3-notifications
    topic: {prefix}.events
    format: minio
    webhook: {{port: {port}, ack_timeout: 20s}}
"""
    path = tmp_path / "down.yaml"
    path.write_text(text)
    spec = load_spec(path)
    stop = threading.Event()
    runner = runner_for(spec, spec.sources[0], stop=stop, metrics=ProducerMetrics())
    running = run_in_thread(runner, stop)
    wait_for(runner.ready.is_set)
    try:
        answer = requests.post(f"http://127.0.0.1:{port}/", data=minio_body("b", "k"), timeout=30)
        assert answer.status_code == 503 and "retry" in answer.text
        wait_for(lambda: not running.thread.is_alive(), timeout=30)
    finally:
        running.halt()
    (error,) = running.errors
    assert "delivery" in str(error).lower() or "acknowledged" in str(error)


@pytest.fixture
def aws(moto_endpoint: str, aws_env: None, unique: Callable[[str], str]) -> dict[str, Any]:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = unique("aws-in")
    s3.create_bucket(Bucket=bucket)
    queue = sqs.create_queue(QueueName=unique("oscar"), Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    return {"s3": s3, "sqs": sqs, "bucket": bucket, "queue": queue, "endpoint": moto_endpoint}


def queue_depth(aws: dict[str, Any]) -> int:
    attrs = aws["sqs"].get_queue_attributes(
        QueueUrl=aws["queue"],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_an_sqs_receive_that_fails_is_tried_again_instead_of_stopping_the_source(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str], aws: dict[str, Any]
) -> None:
    # A failing ReceiveMessage (here moto's real answer for a queue that is gone) used to escape
    # the relay as RemoteError, and dcnios-producer then stopped every source it ran.
    gone = aws["queue"].rsplit("/", 1)[0] + "/" + unique("gone")
    source = (
        "    format: aws\n"
        f"    sqs: {{queue_url: '{gone}', endpoint: '{aws['endpoint']}', region: us-east-1,"
        " access_key_id: testing, secret_access_key: testing, wait_time: 1s}"
    )
    spec = s3_spec(tmp_path, bootstrap, unique("aws-gone"), source)
    upstream = SqsUpstream(spec.sources[0].sqs, "s3in")  # type: ignore[union-attr]
    upstream.open()
    assert upstream.receive(1.0) == []
    assert upstream.receive(1.0) == []  # and again, after a longer wait


def test_sqs_source_relays_real_bucket_notifications(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str], aws: dict[str, Any]
) -> None:
    prefix = unique("aws")
    source = (
        "    format: aws\n"
        f"    sqs: {{queue_url: '{aws['queue']}', endpoint: '{aws['endpoint']}', region: us-east-1,"
        " access_key_id: testing, secret_access_key: testing, wait_time: 1s}"
    )
    spec = s3_spec(tmp_path, bootstrap, prefix, source)
    keys = ["in/img 1.tif", "in/a+b.tif"]
    for key in keys:
        aws["s3"].put_object(Bucket=aws["bucket"], Key=key, Body=key.encode())
    aws["sqs"].send_message(QueueUrl=aws["queue"], MessageBody="not a notification")
    metrics = ProducerMetrics()
    running = relay(spec, metrics)
    try:
        # The test event, two notifications and the poison message: each deleted once settled.
        wait_for(lambda: sum(outcomes(metrics).values()) == 4, timeout=30)
        wait_for(lambda: queue_depth(aws) == 0)
    finally:
        running.halt()
    assert not running.errors
    assert outcomes(metrics) == {"published": 2, "skipped": 1, "invalid": 1, "released": 0}
    records = events_of(read_topic(bootstrap, f"{prefix}.events", lambda r: len(r) >= 2))
    assert sorted(e.path for e in records) == sorted(f"{aws['bucket']}/{k}" for k in keys)
    for event in records:
        assert event.kind == "s3" and event.object_key in keys and event.etag
        sent = json.loads(event.original or b"")["Records"][0]["s3"]["object"]["key"]
        assert sent != event.object_key  # the original keeps S3's URL-encoded key
    (report,) = read_topic(bootstrap, f"{prefix}.events.invalid", lambda r: len(r) >= 1)
    assert report[0] == b"not a notification" and report[1]["dcnios-origin"].startswith(b"sqs ")
    (status,) = pipeline_status(spec)["sources"]
    assert status["upstream"] == f"sqs {aws['queue']}" and status["upstream_waiting"] == 0


def test_native_consumer_sends_the_notification_once(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    """A notification delivered twice (a webhook retry) reaches OSCAR once, as it was sent; a poison
    record goes to the DLQ."""
    prefix = unique("native")
    port = free_port()
    consumer = f"""\
consumers:
  - name: svc
    topic: {prefix}.events
    oscar: {{endpoint: "OSCAR", username: oscar, password: oscar123, service: grayify, timeout: 2s}}
    filter: {{event_names: ["s3:ObjectCreated:*"], paths: ["oscar/in/**"]}}
    retry: {{max_attempts: 2, initial_backoff: 20ms, max_backoff: 100ms}}
    librdkafka: {{session.timeout.ms: '6000', heartbeat.interval.ms: '500'}}
"""
    with OscarEmulator() as oscar:
        oscar.add_service("grayify")  # a service whose input is MinIO: no webdav.dcache input
        spec = s3_spec(
            tmp_path,
            bootstrap,
            prefix,
            f"    format: minio\n    webhook: {{port: {port}}}",
            consumer.replace("OSCAR", oscar.endpoint),
        )
        running = relay(spec)
        first, second = minio_body("oscar", "in/a 1.tif"), minio_body("oscar", "in/b.tif", sequencer="19")
        try:
            for body in (first, first, second):
                assert requests.post(f"http://127.0.0.1:{port}/", data=body, timeout=10).status_code == 200
        finally:
            running.halt()
        poison = Producer({"bootstrap.servers": bootstrap})
        poison.produce(f"{prefix}.events", b"poison")
        assert poison.flush(10) == 0
        member = start_consumer(spec)
        try:
            wait_for(lambda: len(jobs(oscar)) >= 2 or bool(member.errors), timeout=40)
            assert not member.errors
            (dead,) = dlq_raw(bootstrap, f"{prefix}.events.dlq", 1)
            # All four records settled (the duplicate skipped): no call can come after this.
            wait_for(lambda: sum(committed(bootstrap, "dcnios-svc", f"{prefix}.events", 3).values()) == 4)
        finally:
            member.halt()
        assert not member.errors
        assert sorted(c.body for c in jobs(oscar)) == sorted([first, second])
        assert dead[0] == b"poison"


def test_replay_resends_the_native_bodies_of_a_window(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    """`dcnios replay` carries S3 records the way the consumer does: each notification once."""
    prefix = unique("replay-s3")
    bodies = [minio_body("oscar", f"in/{i}.tif", sequencer=f"{i:X}") for i in range(3)]
    with OscarEmulator() as oscar:
        token = oscar.add_service("grayify")
        consumer = f"""\
consumers:
  - name: svc
    topic: {prefix}.events
    oscar: {{endpoint: "{oscar.endpoint}", token: "{token}", service: grayify, timeout: 2s}}
"""
        spec = s3_spec(tmp_path, bootstrap, prefix, "    format: minio\n    webhook: {port: 8470}", consumer)
        codec = StorageEventCodec()
        producer = Producer({"bootstrap.servers": bootstrap})
        for body in [*bodies, bodies[0]]:  # the first notification twice (a retried webhook)
            (event,) = translate_minio(body)
            value, headers = codec.encode(event, f"{prefix}.events")
            producer.produce(f"{prefix}.events", value, event.key, headers=headers)
        assert producer.flush(10) == 0
        result = replay_window(spec, spec.consumers[0], 0, int(time.time() * 1000) + 1000)
        assert result.invoked == 3 and result.duplicates == 1 and not result.failed
        assert sorted(c.body for c in jobs(oscar)) == sorted(bodies)


def translate_minio(body: bytes) -> tuple[StorageEvent, ...]:
    out = translate(Delivery(body, "test", received_ms=1), source="s3in", fmt="minio")
    assert isinstance(out, Events)
    return out.events


def test_doctor_checks_the_sqs_queue(
    tmp_path: Path, unique: Callable[[str], str], aws: dict[str, Any]
) -> None:
    queue = (
        f"    format: aws\n    sqs: {{queue_url: 'QUEUE', endpoint: '{aws['endpoint']}', region: us-east-1}}"
    )
    good = s3_spec(tmp_path, "127.0.0.1:9", unique("doc"), queue.replace("QUEUE", aws["queue"]), create=False)
    (finding,) = diagnose(good)
    assert finding.level == "ok" and aws["queue"] in finding.message
    bad = s3_spec(
        tmp_path, "127.0.0.1:9", unique("doc"), queue.replace("QUEUE", aws["queue"] + "-gone"), create=False
    )
    (finding,) = diagnose(bad)
    assert finding.level == "fail" and "does not answer" in finding.message and "queue policy" in finding.fix
