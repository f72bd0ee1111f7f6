"""Each S3 source's native body, through OSCAR's real FaaS supervisor, stages the right object.

The bodies are what dcnios sends with ``payload: native``: MinIO's and AWS's notification as the
store wrote it, Ceph RGW's as dcnios translates it (the supervisor knows no ``ceph:s3``). The
supervisor runs as an OSCAR job runs it (``echo $EVENT | supervisor``, FUNCTION_CONFIG naming the
store as ``minio.<id>`` or ``s3.<id>``) against moto's S3 over HTTP, and must download exactly the
object the notification names, keys with spaces, '+', '%' and UTF-8 included.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest
from s3_harness import ceph_body, minio_body

from dcnios.consumers.record import RecordPolicy
from dcnios.producers.s3_notifications import translate
from dcnios.producers.upstream import Delivery, Events
from dcnios.sandbox.oscar import Job
from dcnios.sandbox.supervisor import JobRunner, ObjectStore, ScriptService, supervisor_available
from dcnios.spec import parse_spec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not supervisor_available(),
        reason="faas-supervisor is not installed (make install installs it with pip 24.0 --no-deps)",
    ),
]

# Copies the staged input to the output under its own basename, so the test sees what was staged.
SCRIPT = 'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/$(basename "$INPUT_FILE_PATH").staged"\n'
KEYS = ["in/run7/img 1.tif", "in/a+b%20c.dat", "in/ünï/ço de.bin"]


def stage(tmp_path: Path, store: ObjectStore, body: bytes) -> tuple[Job, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "stage.sh"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    runner = JobRunner(
        {"svc": ScriptService("svc", str(script))}, str(out), object_stores=(store,), workers=1, timeout=60
    )
    job = Job(f"svc-{time.monotonic_ns()}", "svc", body, time.time())
    runner(job)
    runner.shutdown(wait=True)
    return job, out / "svc"


def native_body(fmt: str, body: bytes, storage_provider: str | None = None) -> bytes:
    """What dcnios-consumer posts for this notification with payload: native."""
    translation = translate(
        Delivery(body, "test", received_ms=1), source="s3", fmt=fmt, storage_provider=storage_provider
    )
    assert isinstance(translation, Events) and len(translation.events) == 1
    consumer = parse_spec(
        "consumers:\n  - {name: c, topic: t, oscar: {endpoint: 'https://o', service: svc, token: x}}\n",
        env={},
    ).consumers[0]
    prepared = RecordPolicy(consumer, input_path=None, tracking=False).prepare(translation.events[0])
    assert not hasattr(prepared, "reason"), prepared
    return prepared.body  # type: ignore[union-attr]


@pytest.fixture
def s3(moto_endpoint: str, aws_env: None) -> Any:
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


def _bucket(s3: Any, unique: Any) -> str:
    name = unique("oscar-in")
    s3.create_bucket(Bucket=name)
    return name


@pytest.mark.parametrize("key", KEYS)
def test_minio_body_is_staged_as_is(
    tmp_path: Path, s3: Any, moto_endpoint: str, unique: Any, key: str
) -> None:

    bucket = _bucket(s3, unique)
    data = f"content of {key}".encode()
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    body = minio_body(bucket, key, quote_plus(key), len(data))  # Go's url.QueryEscape
    sent = native_body("minio", body)
    assert sent == body  # byte for byte: a drop-in for MinIO's webhook to OSCAR
    store = ObjectStore("minio", "default", moto_endpoint, "testing", "testing", bucket)
    job, out = stage(tmp_path, store, sent)
    assert job.status == "Succeeded", job.log
    assert "MINIO event created" in job.log
    assert (out / f"{key.rpartition('/')[2]}.staged").read_bytes() == data


@pytest.mark.parametrize("provider_id", [None, "rgw"])
def test_ceph_body_translated_is_staged(
    tmp_path: Path, s3: Any, moto_endpoint: str, unique: Any, provider_id: str | None
) -> None:
    bucket = _bucket(s3, unique)
    key = "in/a+b%20c ü.dat"  # RGW sends the key as it is: '+' and '%' must survive the supervisor
    data = b"rgw object"
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    body = ceph_body(bucket, key, len(data))
    # Untranslated, the supervisor does not recognise it: nothing is staged.
    store = ObjectStore("minio", provider_id or "default", moto_endpoint, "testing", "testing", bucket)
    job, out = stage(tmp_path / "raw", store, body)
    assert "MINIO event created" not in job.log and not (out / "a+b%20c ü.dat.staged").exists()
    sent = native_body("ceph", body, provider_id)
    if provider_id is not None:
        assert json.loads(sent)["storage_provider"] == provider_id
    job, out = stage(tmp_path / "native", store, sent)
    assert job.status == "Succeeded", job.log
    assert "MINIO event created" in job.log
    assert (out / "a+b%20c ü.dat.staged").read_bytes() == data


def test_aws_notification_from_sqs_is_staged(
    tmp_path: Path, s3: Any, moto_endpoint: str, unique: Any
) -> None:
    """A real S3 → SQS notification (moto), its body as SQS hands it out, through the supervisor."""
    bucket = _bucket(s3, unique)
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")
    queue = sqs.create_queue(QueueName=unique("q"))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    key, data = "in/img 1+2.tif", b"aws object"
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    bodies = []
    while len(bodies) < 2:
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        )
        assert got, f"S3 sent {len(bodies)} notifications"
        bodies += [m["Body"].encode() for m in got]
    test_event, notification = bodies
    assert json.loads(test_event)["Event"] == "s3:TestEvent"
    sent = native_body("aws", notification)
    assert sent == notification
    store = ObjectStore("s3", "default", moto_endpoint, "testing", "testing", bucket)
    job, out = stage(tmp_path, store, sent)
    assert job.status == "Succeeded", job.log
    assert "S3 event created" in job.log
    assert (out / "img 1+2.tif.staged").read_bytes() == data
