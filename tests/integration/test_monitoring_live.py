"""Debian's real Prometheus scrapes a running dcnios-producer and dcnios-consumer; every PromQL
query of the dashboard, the alert rules and the KEDA saturation trigger is asked of it.

A query that names a metric no process exposes fails here, so a renamed metric breaks this test
instead of a dashboard. The pipeline is driven through the paths that create the labelled series:
calls (one retried after a 503), followed jobs, a dead letter, a gap, an invalid frame, reconnects.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from producer_harness import wait_for

from dcnios.broker import free_port
from dcnios.deploy.monitoring import (
    ALERTS,
    CONSUMER_JOB,
    PRODUCER_JOB,
    dashboard_queries,
    rules_file,
    saturation_query,
)
from dcnios.kafka import ensure_topics
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.sandbox.oscar import Call, OscarEmulator
from dcnios.spec import load_spec
from dcnios.topics import topic_plan

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
METRIC = re.compile(r"\b(dcnios_[a-z0-9_]+|up)\b(?!\s*\()")
#: Series this run cannot produce, and why; a query naming only these may come back empty.
_NO_WORKFLOW = "this pipeline runs no workflow orchestrator (test_workflows.py checks these metrics)"
NOT_PRODUCED = {
    "dcnios_producer_delivery_errors_total": "needs a broker that refuses acknowledged writes",
    "dcnios_producer_upstream_messages_total": (
        "this pipeline's source is dCache, not a relayed one (test_rucio_source.py and "
        "test_s3_sources.py check this metric)"
    ),
    **dict.fromkeys(
        (
            "dcnios_workflow_runs",
            "dcnios_workflow_runs_ended_total",
            "dcnios_workflow_runs_started_total",
            "dcnios_workflow_step_seconds_bucket",
            "dcnios_workflow_step_overhead_seconds_bucket",
            "dcnios_workflow_step_jobs_total",
        ),
        _NO_WORKFLOW,
    ),
}


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def names(self) -> set[str]:
        return set(self.get("/api/v1/label/__name__/values"))


@contextmanager
def prometheus(tmp_path: Path, targets: dict[str, int]) -> Iterator[Prometheus]:
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules_file()))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yaml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"pod": job}}]}
            for job, port in targets.items()
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            exe,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        server = Prometheus(f"http://127.0.0.1:{port}")

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_for(ready, timeout=60)
        yield server
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def _spec(tmp_path: Path, bootstrap: str, prefix: str, dcache: str, oscar: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"""\
kafka: {{bootstrap_servers: "{bootstrap}", internal_prefix: {prefix}, topic_defaults: {{partitions: 2}}}}
sources:
  - name: src
    endpoint: "{dcache}"
    auth: {{username: alice, password: secret}}
    paths: [/in]
    recursive: true
    topic: {prefix}.events
    reconnect_backoff: 50ms
    reconnect_backoff_max: 200ms
consumers:
  - name: svc
    group: {prefix}-svc
    topic: {prefix}.events
    rate: 1000/s
    oscar:
      endpoint: "{oscar}"
      service: svc
      username: oscar
      password: oscar123
      job_id: deterministic
      input_path: /in
      pending_poll_interval: 200ms
    retry: {{max_attempts: 3, initial_backoff: 20ms, max_backoff: 100ms}}
    librdkafka: {{session.timeout.ms: "6000", heartbeat.interval.ms: "500", fetch.wait.max.ms: "10"}}
"""
    )
    spec = load_spec(path)
    ensure_topics(spec.kafka, topic_plan(spec))
    return path


def _fail_once(name: bytes) -> Callable[[Call], int | None]:
    seen: list[Call] = []

    def fault(call: Call) -> int | None:
        if call.path.startswith("/job/") and name in call.body and not seen:
            seen.append(call)
            return 503
        return None

    return fault


def test_every_query_runs_on_series_a_live_pipeline_exposes(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str]
) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    prefix = unique("mon")
    ports = {PRODUCER_JOB: free_port(), CONSUMER_JOB: free_port()}
    with DCacheEmulator({"alice": "secret"}) as dcache, OscarEmulator() as oscar:
        dcache.mkdir("/in/sub")
        oscar.add_service("svc", input_path="/in")
        oscar.fault = _fail_once(b"retried.dat")
        config = str(_spec(tmp_path, bootstrap, prefix, dcache.endpoint, oscar.endpoint))
        logs = [(tmp_path / f"{job}.log").open("wb") for job in ports]
        processes = [
            subprocess.Popen(
                [str(BIN / "dcnios-producer"), "-c", config, "--metrics-port", str(ports[PRODUCER_JOB])],
                stderr=logs[0],
            ),
            subprocess.Popen(
                [
                    *(str(BIN / "dcnios-consumer"), "-c", config, "--consumer", "svc"),
                    *("--metrics-port", str(ports[CONSUMER_JOB])),
                ],
                stderr=logs[1],
            ),
        ]
        try:
            with prometheus(tmp_path, ports) as prom:
                wait_for(lambda: len(prom.query("up == 1")) == 2, timeout=60)
                wait_for(lambda: bool(prom.query('dcnios_consumer_lag{consumer="svc"}')), timeout=90)
                wait_for(lambda: bool(dcache.channels), timeout=60)
                time.sleep(1)
                for i in range(5):
                    dcache.upload(f"/in/f{i}.dat")
                dcache.upload("/in/retried.dat")
                dcache.upload("/in/sub/nested.dat")  # a nested name the supervisor cannot stage: DLQ
                dcache.inject(b"event: inotify\nid: {ID}\ndata: {not json\n\n")  # -> <topic>.invalid
                dcache.overflow("/in")  # IN_Q_OVERFLOW: a gap, repaired by listing
                wait_for(lambda: len(oscar.job_calls("svc")) >= 6, timeout=90)
                dcache.drop_connections()  # a reconnect
                produced = {
                    "dcnios_consumer_jobs_total",
                    "dcnios_consumer_dead_letters_total",
                    "dcnios_consumer_retries_total",
                    "dcnios_producer_gaps_total",
                    "dcnios_producer_invalid_total",
                    "dcnios_producer_reconnects_total",
                }
                wait_for(lambda: produced <= prom.names(), timeout=90)
                time.sleep(3)  # a few more scrapes for the rate() windows
                _check_queries(prom)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(60)
            for log in logs:
                log.close()


def _check_queries(prom: Prometheus) -> None:
    names = prom.names()
    consumer = load_spec_consumer()
    queries = {
        **{f"dashboard: {q}": q for q in dashboard_queries()},
        **{f"alert {a.name}": a.expr for a in ALERTS},
        "KEDA saturation": saturation_query(consumer),
    }
    missing = {
        where: sorted(set(METRIC.findall(expr)) - names - NOT_PRODUCED.keys())
        for where, expr in queries.items()
    }
    assert {k: v for k, v in missing.items() if v} == {}
    empty = []
    for where, expr in queries.items():
        result = prom.query(expr)  # evaluates, or the helper fails with Prometheus's error
        used = set(METRIC.findall(expr))
        if where.startswith("dashboard") and not result and not used & NOT_PRODUCED.keys():
            empty.append(where)
    assert empty == []
    # The rules loaded and evaluated without error against these series.
    groups = prom.get("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert sorted(r["name"] for r in rules) == sorted(a.name for a in ALERTS)
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    # Nothing fires on a healthy pipeline (the gap and the dead letter excepted: they happened).
    firing = {r["name"] for r in rules if r["state"] != "inactive"}
    assert firing <= {"DcniosProducerGap", "DcniosDeadLettersGrowing"}


def load_spec_consumer() -> Any:
    from dcnios.spec import parse_spec

    return parse_spec(
        "consumers:\n  - name: svc\n    topic: t\n    rate: 1000/s\n"
        "    oscar: {endpoint: 'https://o', service: s, token: x, input_path: /in}\n"
    ).consumers[0]
