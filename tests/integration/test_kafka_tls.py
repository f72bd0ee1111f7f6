"""Kafka over real TLS: stunnel terminates TLS in front of Tansu (whose own TLS does not work).

The broker advertises the stunnel port, so every client connection (bootstrap and broker) goes
through TLS. Checks: an unknown CA is refused, the right CA works end to end (producer and
consumer), and mTLS works when the terminator requires a client certificate.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from dcnios.broker import EmbeddedBroker, free_port
from dcnios.consumers.run import ConsumerRunner
from dcnios.kafka import client_config, ensure_topics
from dcnios.producers.run import SourceRunner
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.sandbox.oscar import OscarEmulator
from dcnios.sandbox.tls import Pki, make_pki
from dcnios.spec import PipelineSpec, load_spec
from dcnios.topics import topic_plan

STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")
pytestmark = pytest.mark.skipif(
    STUNNEL is None,
    reason="stunnel4 is not installed (.ci/run installs it): Tansu cannot terminate TLS itself",
)


def _wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@contextmanager
def tls_broker(tmp: Path, pki: Pki, *, client_cert: bool = False) -> Iterator[str]:
    tls_port = free_port()
    with EmbeddedBroker(advertised_port=tls_port, log_path=str(tmp / "tansu.log")) as broker:
        conf = tmp / "stunnel.conf"
        lines = [
            "foreground = yes",
            "pid =",
            f"output = {tmp / 'stunnel.log'}",
            "[kafka]",
            f"accept = 127.0.0.1:{tls_port}",
            f"connect = 127.0.0.1:{broker.port}",
            f"cert = {pki.cert}",
            f"key = {pki.key}",
        ]
        if client_cert:
            lines += [f"CAfile = {pki.ca}", "verifyChain = yes", "requireCert = yes"]
        conf.write_text("\n".join(lines) + "\n")
        assert STUNNEL is not None
        proc = subprocess.Popen([STUNNEL, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(tls_port)
            yield f"127.0.0.1:{tls_port}"
        finally:
            proc.terminate()
            proc.wait(10)


def _spec(tmp: Path, bootstrap: str, ssl: str, dcache: str, oscar: str, token: str) -> PipelineSpec:
    path = tmp / "tls.yaml"
    path.write_text(
        f"""\
kafka:
  bootstrap_servers: "{bootstrap}"
  security_protocol: SSL
  ssl: {{{ssl}}}
  topic_defaults: {{partitions: 2}}
sources:
  - name: src
    endpoint: "{dcache}"
    auth: {{username: alice, password: secret}}
    paths: [/in]
    topic: tls.events
consumers:
  - name: svc
    topic: tls.events
    oscar: {{endpoint: "{oscar}", service: svc, token: "{token}", input_path: /in}}
    librdkafka: {{session.timeout.ms: "6000"}}
"""
    )
    return load_spec(path)


def _metadata_error(spec: PipelineSpec) -> str:
    """What librdkafka says when it cannot get metadata; its log lines are captured too."""
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    log = logging.getLogger(f"rdkafka-tls-{time.monotonic_ns()}")
    log.addHandler(Capture())
    log.propagate = False
    admin = AdminClient({**client_config(spec.kafka), "logger": log})
    with pytest.raises(KafkaException) as failure:
        admin.list_topics(timeout=5)
    admin.poll(0.5)
    return str(failure.value) + "\n" + "\n".join(records)


def _run_pipeline(spec: PipelineSpec, dcache: DCacheEmulator, oscar: OscarEmulator) -> None:
    ensure_topics(spec.kafka, topic_plan(spec))
    stop = threading.Event()
    runners = [
        ConsumerRunner(spec, spec.consumers[0], stop=stop),
        SourceRunner(spec, spec.sources[0], stop=stop),
    ]
    threads = [threading.Thread(target=r.run, daemon=True) for r in runners]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while not all(r.ready.is_set() for r in runners) and time.monotonic() < deadline:
            time.sleep(0.05)
        for i in range(5):
            dcache.upload(f"/in/f{i}.dat")
        while len(oscar.job_calls("svc")) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert len(oscar.job_calls("svc")) == 5


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("kafka-pki"))


def test_tls_refuses_an_unknown_ca_and_works_with_the_right_one(tmp_path: Path, pki: Pki) -> None:
    stranger = make_pki(tmp_path / "stranger", ca_name="not the broker's CA")
    with tls_broker(tmp_path, pki) as bootstrap, DCacheEmulator() as dcache, OscarEmulator() as oscar:
        dcache.mkdir("/in")
        token = oscar.add_service("svc")
        wrong = _spec(
            tmp_path, bootstrap, f"ca_location: {stranger.ca}", dcache.endpoint, oscar.endpoint, token
        )
        assert "certificate verify failed" in _metadata_error(wrong)
        right = _spec(tmp_path, bootstrap, f"ca_location: {pki.ca}", dcache.endpoint, oscar.endpoint, token)
        _run_pipeline(right, dcache, oscar)


def test_mtls_needs_the_client_certificate(tmp_path: Path, pki: Pki) -> None:
    with (
        tls_broker(tmp_path, pki, client_cert=True) as bootstrap,
        DCacheEmulator() as dcache,
        OscarEmulator() as oscar,
    ):
        dcache.mkdir("/in")
        token = oscar.add_service("svc")
        anonymous = _spec(
            tmp_path, bootstrap, f"ca_location: {pki.ca}", dcache.endpoint, oscar.endpoint, token
        )
        _metadata_error(anonymous)  # the terminator drops the handshake without a client certificate
        mutual = _spec(
            tmp_path,
            bootstrap,
            f"ca_location: {pki.ca}, certificate_location: {pki.cert}, key_location: {pki.key}",
            dcache.endpoint,
            oscar.endpoint,
            token,
        )
        _run_pipeline(mutual, dcache, oscar)
