"""The Rucio source against a real STOMP broker (Debian's RabbitMQ) and the real Kafka broker.

Messages are published the way Hermes publishes them (rucio lib/rucio/daemons/hermes/hermes.py:
json.dumps body, headers ``persistent: true`` and ``event_type``) to a RabbitMQ queue in a vhost,
as interTwin's Rucio does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from consumer_harness import start as start_consumer
from producer_harness import Running, read_topic, run_in_thread, wait_for
from rabbitmq_node import RabbitNode

from dcnios.broker import EmbeddedBroker, free_port
from dcnios.doctor import diagnose
from dcnios.errors import RemoteError
from dcnios.kafka import ensure_topics
from dcnios.metrics import ProducerMetrics
from dcnios.producers.relay import RelayRunner
from dcnios.producers.sources import runner_for
from dcnios.producers.upstream_stomp import StompUpstream
from dcnios.sandbox.oscar import OscarEmulator
from dcnios.secrets import Secret
from dcnios.spec import PipelineSpec, StompSpec, load_spec
from dcnios.stack import Stack
from dcnios.status import pipeline_status
from dcnios.storage_event import StorageEvent
from dcnios.topics import topic_plan

pytestmark = pytest.mark.integration


def hermes(event_type: str, scope: str, name: str, created_at: str = "2026-12-06 22:19:48.000001") -> bytes:
    payload = {"scope": scope, "name": name, "bytes": 10, "length": 1, "events": 0}
    if event_type.startswith("transfer"):
        payload = {"scope": scope, "name": name, "dst-rse": "DESY-DCACHE", "file-size": 10, "bytes": 10}
    return json.dumps({"event_type": event_type, "payload": payload, "created_at": created_at}).encode()


def write_spec(
    tmp_path: Path,
    rabbitmq: RabbitNode,
    bootstrap: str,
    queue: str,
    *,
    oscar: str | None = None,
    extra: str = "",
) -> Path:
    consumer = (
        f"""\
consumers:
  - name: svc
    topic: {queue}.events
    oscar: {{endpoint: "{oscar}", service: rucio-svc, username: oscar, password: oscar123, timeout: 2s}}
    librdkafka: {{session.timeout.ms: '6000', heartbeat.interval.ms: '500'}}
"""
        if oscar
        else ""
    )
    path = tmp_path / f"{queue}.yaml"
    path.write_text(
        f"""\
kafka:
  bootstrap_servers: "{bootstrap}"
  topic_defaults: {{partitions: 3}}
  librdkafka: {{reconnect.backoff.max.ms: "500"{extra}}}
sources:
  - name: rucio
    type: rucio
    topic: {queue}.events
    stomp:
      brokers: ["127.0.0.1:{rabbitmq.stomp_port}"]
      destination: /queue/{queue}
      vhost: {rabbitmq.vhost}
      username: {rabbitmq.user}
      password: "${{STOMP_PASSWORD}}"
      tls: false
      reconnect_backoff: 100ms
      max_message: 4096
    events: [close, transfer-done]
    scopes: ["user.*"]
{consumer}"""
    )
    return path


def load(path: Path, rabbitmq: RabbitNode) -> PipelineSpec:
    spec = load_spec(path, env={"STOMP_PASSWORD": rabbitmq.password})
    ensure_topics(spec.kafka, topic_plan(spec))
    return spec


def start_source(spec: PipelineSpec, metrics: ProducerMetrics | None = None) -> Running[RelayRunner]:
    stop = threading.Event()
    runner = runner_for(spec, spec.sources[0], stop=stop, metrics=metrics or ProducerMetrics())
    assert isinstance(runner, RelayRunner)
    running = run_in_thread(runner, stop)
    wait_for(lambda: runner.ready.is_set() or bool(running.errors))
    assert not running.errors, running.errors
    return running


def stomp_spec(rabbitmq: RabbitNode, queue: str, **settings: Any) -> StompSpec:
    fields: dict[str, Any] = {
        "brokers": (f"127.0.0.1:{rabbitmq.stomp_port}",),
        "destination": f"/queue/{queue}",
        "vhost": rabbitmq.vhost,
        "username": rabbitmq.user,
        "password": Secret(rabbitmq.password),
        "tls": False,
    }
    return StompSpec(**{**fields, **settings})


def leftover(rabbitmq: RabbitNode, queue: str) -> list[bytes]:
    """What is still in the queue: a fresh subscriber takes it (and hands it back)."""
    upstream = StompUpstream(stomp_spec(rabbitmq, queue), "probe")
    upstream.open()
    try:
        return [d.body for d in upstream.receive(1.0)]
    finally:
        upstream.close()


def test_tls_is_verified_by_default_and_a_refused_login_names_the_reason(
    rabbitmq: RabbitNode, unique: Callable[[str], str]
) -> None:
    queue = unique("tls")
    tls = {"brokers": (f"127.0.0.1:{rabbitmq.stomp_tls_port}",), "tls": True}
    # The broker's certificate comes from a throwaway CA that is not among the system's.
    with pytest.raises(
        RemoteError, match=r"STOMP connect to 127\.0\.0\.1:\d+ failed: .*CERTIFICATE_VERIFY_FAILED"
    ):
        StompUpstream(stomp_spec(rabbitmq, queue, **tls), "tls").open()
    with pytest.raises(RemoteError, match="Access refused for user 'hermes'"):
        StompUpstream(stomp_spec(rabbitmq, queue, password=Secret("wrong")), "tls").open()
    upstream = StompUpstream(stomp_spec(rabbitmq, queue, **tls, ca_bundle=str(rabbitmq.pki.ca)), "tls")
    upstream.open()
    try:
        rabbitmq.publish_as_hermes(f"/queue/{queue}", b"over tls", "close")
        [delivery] = upstream.receive(5.0)
        upstream.acknowledge([delivery])
    finally:
        upstream.close()
    assert delivery.body == b"over tls" and delivery.attributes["event_type"] == "close"
    assert delivery.attributes["persistent"] == "true"


def test_a_dropped_connection_is_reconnected_and_its_unacknowledged_message_redelivered(
    rabbitmq: RabbitNode, unique: Callable[[str], str]
) -> None:
    queue = unique("drop")
    metrics = ProducerMetrics()
    upstream = StompUpstream(stomp_spec(rabbitmq, queue, reconnect_backoff=0.1), "drop", metrics)
    upstream.open()
    try:
        rabbitmq.publish_as_hermes(f"/queue/{queue}", b"m1", "close")
        [first] = upstream.receive(5.0)
        rabbitmq.close_connections()
        wait_for(lambda: upstream.connects == 2, timeout=20)
        [again] = upstream.receive(5.0)
        upstream.acknowledge([first])  # its connection is gone: not sent, no error
        upstream.acknowledge([again])
        wait_for(lambda: rabbitmq.queue_counts(queue) == (0, 0))
    finally:
        upstream.close()
    assert again.body == b"m1" and again.attributes["redelivered"] == "true"
    assert metrics.registry.get_sample_value("dcnios_producer_reconnects_total", {"source": "drop"}) == 1


def test_the_readme_permissions_let_dcnios_subscribe_and_nothing_more(
    rabbitmq: RabbitNode, unique: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    queue = unique("perm")
    user, password = unique("dcnios"), unique("pw")
    rabbitmq.ctl("add_user", user, password)
    rabbitmq.ctl("set_permissions", "-p", rabbitmq.vhost, user, f"^{queue}$", "", f"^{queue}$")
    rabbitmq.publish_as_hermes(f"/queue/{queue}", b"m", "close")
    upstream = StompUpstream(stomp_spec(rabbitmq, queue, username=user, password=Secret(password)), "perm")
    upstream.open()
    try:
        [delivery] = upstream.receive(5.0)
        upstream.acknowledge([delivery])
    finally:
        upstream.close()
    assert delivery.body == b"m"
    # Another queue is refused. RabbitMQ may send the SUBSCRIBE's receipt before the channel error
    # that closes the connection, so the refusal fails the start or ends the connection just after.
    other = StompUpstream(
        stomp_spec(rabbitmq, unique("other"), username=user, password=Secret(password)), "x"
    )
    try:
        other.open()
    except RemoteError as exc:
        assert "access_refused" in str(exc)
    else:
        try:
            wait_for(lambda: "access_refused" in caplog.text)
        finally:
            other.close()


def test_doctor_checks_the_stomp_login(tmp_path: Path, rabbitmq: RabbitNode, bootstrap: str) -> None:
    path = write_spec(tmp_path, rabbitmq, bootstrap, "doctor")
    findings = {}
    for password in (rabbitmq.password, "wrong"):
        spec = load_spec(path, env={"STOMP_PASSWORD": password})
        [finding] = list(diagnose(spec))
        findings[password] = finding
    good, bad = findings[rabbitmq.password], findings["wrong"]
    assert (good.level, good.subject) == ("ok", "source rucio") and "accepts the login" in good.message
    assert bad.level == "fail" and "Access refused for user 'hermes'" in bad.message, bad


@pytest.fixture
def oscar() -> Iterator[OscarEmulator]:
    with OscarEmulator() as emu:
        # The supervisor downloads a Rucio event's DID through the input with provider id `rucio`.
        emu.add_service("rucio-svc", input=[{"storage_provider": "rucio.rucio", "path": "rucio/input"}])
        yield emu


def test_hermes_messages_reach_oscar_once_and_bad_ones_reach_invalid(
    tmp_path: Path, rabbitmq: RabbitNode, bootstrap: str, oscar: OscarEmulator, unique: Callable[[str], str]
) -> None:
    queue = unique("rucio")
    spec = load(write_spec(tmp_path, rabbitmq, bootstrap, queue, oscar=oscar.endpoint), rabbitmq)
    close, transfer = (
        hermes("close", "user.alice", "run1.ds"),
        hermes("transfer-done", "user.alice", "run1/f.h5"),
    )
    sent = [
        ("close", close),
        ("transfer-done", transfer),
        ("close", close),  # Hermes sends a message again when it could not delete it: a duplicate
        ("rule_progress", hermes("rule_progress", "user.alice", "x")),  # not selected
        ("close", hermes("close", "data26", "y")),  # scope not selected
        ("close", b"close user.alice:z"),  # poison: not JSON
        ("close", b'{"event_type": "close", "payload": {"name": "no-scope"}}'),  # poison: no scope
        ("close", hermes("close", "user.alice", "x" * 5000)),  # over max_message
    ]
    for event_type, body in sent:
        rabbitmq.publish_as_hermes(f"/queue/{queue}", body, event_type)
    metrics = ProducerMetrics()
    source = start_source(spec, metrics)
    consumer = start_consumer(spec)
    try:
        wait_for(lambda: len(oscar.job_calls("rucio-svc")) >= 2, timeout=30)
        invalid = read_topic(bootstrap, f"{queue}.events.invalid", lambda got: len(got) >= 3)
        records = read_topic(bootstrap, f"{queue}.events", lambda got: len(got) >= 3)

        def outcome(name: str) -> float | None:
            return metrics.registry.get_sample_value(
                "dcnios_producer_upstream_messages_total", {"source": "rucio", "outcome": name}
            )

        wait_for(lambda: outcome("invalid") == 3)
        time.sleep(1.0)  # room for a wrong third call
    finally:
        consumer.halt()
        source.halt()
    assert not source.errors and not consumer.errors
    # The body OSCAR gets is the Hermes message, byte for byte; the resent one was dropped by dedup.
    assert sorted(c.body for c in oscar.job_calls("rucio-svc")) == sorted([close, transfer])
    assert all(isinstance(r, StorageEvent) for r in records)
    assert sorted(r.path for r in records) == [
        "user.alice:run1.ds",
        "user.alice:run1.ds",
        "user.alice:run1/f.h5",
    ]
    assert [(body, h["dcnios-reason"]) for body, h in invalid] == [
        (b"close user.alice:z", b"body is not JSON: Expecting value: line 1 column 1 (char 0)"),
        (
            b'{"event_type": "close", "payload": {"name": "no-scope"}}',
            b"close: payload.scope is missing or not a non-empty string",
        ),
        (sent[-1][1], f"message of {len(sent[-1][1])} bytes is over stomp.max_message (4096)".encode()),
    ]
    assert (outcome("published"), outcome("skipped"), outcome("released")) == (3, 2, 0)
    [status] = pipeline_status(spec)["sources"]
    assert (status["type"], status["upstream"], status["invalid"]) == (
        "rucio",
        f"stomp /queue/{queue} on 127.0.0.1:{rabbitmq.stomp_port}",
        3,
    )
    # Everything was acknowledged: the selected, the skipped and the poison messages alike.
    assert leftover(rabbitmq, queue) == []


def test_a_message_not_in_kafka_yet_is_redelivered_after_a_crash(
    tmp_path: Path, rabbitmq: RabbitNode, bootstrap: str, unique: Callable[[str], str]
) -> None:
    queue = unique("crash")
    # Nothing listens on this port: the record is produced but never acknowledged by Kafka.
    (tmp_path / "dead").mkdir()
    dead = write_spec(tmp_path / "dead", rabbitmq, f"127.0.0.1:{free_port()}", queue)
    message = hermes("close", "user.alice", "crash.ds")
    log = tmp_path / "producer.log"
    exe = str(Path(sys.executable).parent / "dcnios-producer")
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [exe, "-c", str(dead), "--source", "rucio"],
            stderr=err,
            env={**os.environ, "STOMP_PASSWORD": rabbitmq.password},
        )
    try:
        wait_for(lambda: b"relaying" in log.read_bytes(), timeout=30)
        rabbitmq.publish_as_hermes(f"/queue/{queue}", message, "close")
        # The broker itself says the source holds it, unacknowledged.
        wait_for(lambda: rabbitmq.queue_counts(queue) == (0, 1), timeout=30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rabbitmq.queue_counts(queue) == (1, 0)  # back in the queue
    spec = load(write_spec(tmp_path, rabbitmq, bootstrap, queue), rabbitmq)
    source = start_source(spec)
    try:
        [record] = read_topic(bootstrap, f"{queue}.events", lambda got: len(got) >= 1)
        wait_for(lambda: rabbitmq.queue_counts(queue) == (0, 0), timeout=30)
    finally:
        source.halt()
    assert isinstance(record, StorageEvent) and record.original == message


@pytest.mark.reliability  # about 18 s: a broker restart plus a delivery timeout
def test_a_kafka_broker_restart_under_dcnios_up_loses_nothing(
    tmp_path: Path, rabbitmq: RabbitNode, unique: Callable[[str], str]
) -> None:
    """`dcnios up` (Stack) runs the source while the broker restarts.

    What was acknowledged before the restart was in Kafka before it. Messages that arrive while the
    broker is down are held unacknowledged; Tansu comes back empty (topics made again, as `dcnios
    topics` makes them) and without the idempotent producer's id, so librdkafka cannot deliver the
    held records and times them out (message.timeout.ms, 60 s by default, 3 s here): the relay hands
    them back (NACK) and stops, `up` restarts it, the broker redelivers them, and they reach Kafka.
    """
    queue = unique("restart")
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = EmbeddedBroker(port=port, log_path=str(tmp_path / "tansu.log")).start()
    spec = load(
        write_spec(tmp_path, rabbitmq, bootstrap, queue, extra=', message.timeout.ms: "3000"'), rabbitmq
    )
    stack = Stack(spec)
    stack.start()
    try:
        assert stack.wait_ready(30)
        before = [hermes("close", "user.alice", f"before{i}.ds") for i in range(3)]
        for body in before:
            rabbitmq.publish_as_hermes(f"/queue/{queue}", body, "close")
        got = read_topic(bootstrap, f"{queue}.events", lambda got: len(got) >= 3)
        assert sorted(r.original for r in got) == sorted(before)
        broker.stop()
        during = [hermes("close", "user.alice", f"during{i}.ds") for i in range(3)]
        for body in during:
            rabbitmq.publish_as_hermes(f"/queue/{queue}", body, "close")
        wait_for(lambda: rabbitmq.queue_counts(queue) == (0, 3), timeout=30)  # held, not acknowledged
        broker = EmbeddedBroker(port=port, log_path=str(tmp_path / "tansu2.log")).start()
        ensure_topics(spec.kafka, topic_plan(spec))
        got = read_topic(bootstrap, f"{queue}.events", lambda got: len(got) >= 3, timeout=40)
        wait_for(lambda: rabbitmq.queue_counts(queue) == (0, 0), timeout=30)
        released = stack.metric("dcnios_producer_upstream_messages_total", source="rucio", outcome="released")
    finally:
        stack.stop()
        broker.stop()
    assert sorted(r.original for r in got) == sorted(during)
    # The batch under way when the broker went was handed back; later ones were never taken.
    assert released >= 1
