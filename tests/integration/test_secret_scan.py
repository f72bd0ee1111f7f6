"""Known secrets go through a running pipeline and must show up nowhere an operator can read.

Scanned: the logs at DEBUG, every process's argv, the Prometheus metrics, `dcnios status --json`,
`dcnios validate`, and the generated NiFi flow (where secrets may only be sensitive parameters).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests
from producer_harness import wait_for

from dcnios.broker import free_port
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.sandbox.oscar import OscarEmulator

BIN = Path(sys.executable).parent


def test_no_secret_leaks(tmp_path: Path, bootstrap: str, unique: Callable[[str], str]) -> None:
    dcache_password = "dc-" + secrets.token_urlsafe(12)
    token = secrets.token_hex(32)
    kafka_password = "kf-" + secrets.token_urlsafe(12)
    nifi_password = "nf-" + secrets.token_urlsafe(16)
    known = [dcache_password, token, kafka_password, nifi_password]
    prefix = unique("leak")
    env = {
        **os.environ,
        "DCACHE_PW": dcache_password,
        "OSCAR_TOKEN": token,
        "KAFKA_PW": kafka_password,
        "NIFI_PW": nifi_password,
    }
    metrics_port = free_port()
    with DCacheEmulator({"alice": dcache_password}) as dcache, OscarEmulator() as oscar:
        dcache.mkdir("/in")
        oscar.add_service("svc", input_path="/in")
        oscar.services["svc"].token = token
        spec = tmp_path / "spec.yaml"
        spec.write_text(
            f"""\
kafka: {{bootstrap_servers: "{bootstrap}", internal_prefix: {prefix}, topic_defaults: {{partitions: 2}}}}
sources:
  - name: src
    endpoint: "{dcache.endpoint}"
    auth: {{username: alice, password: "${{DCACHE_PW}}"}}
    paths: [/in]
    topic: {prefix}.events
consumers:
  - name: svc
    group: {prefix}-svc  # unique per test: the session broker outlives it
    topic: {prefix}.events
    oscar: {{endpoint: "{oscar.endpoint}", service: svc, token: "${{OSCAR_TOKEN}}", input_path: /in}}
    librdkafka: {{session.timeout.ms: "6000"}}
"""
        )
        log = tmp_path / "up.log"
        with log.open("wb") as sink:
            up = subprocess.Popen(
                [
                    *(str(BIN / "dcnios"), "up", "-c", str(spec), "--plain", "--interval", "1"),
                    *("--metrics-port", str(metrics_port), "--log-level", "DEBUG"),
                ],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_for(lambda: b"pipeline up" in log.read_bytes(), timeout=60)
                for i in range(10):
                    dcache.upload(f"/in/f{i}.dat")
                wait_for(lambda: len(oscar.job_calls("svc")) >= 10, timeout=60)
                assert all(c.headers["Authorization"] == f"Bearer {token}" for c in oscar.job_calls("svc"))
                argv = subprocess.run(
                    ["ps", "-eo", "args"], capture_output=True, text=True, check=True
                ).stdout
                metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
                assert "dcnios_consumer_invocations_total" in metrics
                for _ in range(10):  # the producer writes its checkpoint every few seconds
                    status = subprocess.run(
                        [str(BIN / "dcnios"), "status", "-c", str(spec), "--json"],
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=60,
                        check=True,
                    )
                    if json.loads(status.stdout)["sources"][0]["checkpoint_event_id"] is not None:
                        break
                    time.sleep(1)
                validate = subprocess.run(
                    [str(BIN / "dcnios"), "validate", "-c", str(spec)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                )
            finally:
                up.send_signal(signal.SIGTERM)
                up.wait(60)
        time.sleep(0.1)
        nifi_spec = tmp_path / "nifi.yaml"
        nifi_spec.write_text(
            f"""\
kafka:
  bootstrap_servers: "{bootstrap}"
  security_protocol: SASL_SSL
  sasl: {{mechanism: SCRAM-SHA-512, username: u, password: "${{KAFKA_PW}}"}}
consumers:
  - name: svc
    group: {prefix}-svc  # unique per test: the session broker outlives it
    topic: {prefix}.events
    oscar: {{endpoint: "{oscar.endpoint}", service: svc, token: "${{OSCAR_TOKEN}}", input_path: /in}}
nifi:
  endpoint: https://nifi.invalid:8443/nifi-api
  auth: {{username: admin, password: "${{NIFI_PW}}"}}
  consumers: [svc]
  kafka_truststore: {{path: /opt/ts.p12, password: "${{KAFKA_PW}}"}}
"""
        )
        flow = subprocess.run(
            [str(BIN / "dcnios"), "deploy-nifi", "-c", str(nifi_spec), "--print-flow", "svc"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    places = {
        "logs": log.read_text(errors="replace"),
        "argv": argv,
        "metrics": metrics,
        "status --json": status.stdout + status.stderr,
        "validate": validate.stdout + validate.stderr,
        "NiFi flow": flow.stdout + flow.stderr,
    }
    (source,) = json.loads(status.stdout)["sources"]
    assert source["checkpoint_event_id"] is not None  # the scan read a real, working deployment
    assert "#{oscar_authorization}" in places["NiFi flow"] and "#{kafka_sasl_password}" in places["NiFi flow"]
    leaks = [(where, secret[:6]) for where, text in places.items() for secret in known if secret in text]
    assert leaks == []
