"""Alert rules, scrape config and dashboard: every metric they name exists in dcnios.metrics, the
rules pass Debian's promtool, and promtool's unit tests fire each alert on synthetic series."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from dcnios.deploy.monitoring import (
    ALERTS,
    PANELS,
    dashboard,
    dashboard_queries,
    rules_file,
    saturation_query,
    scrape_configs,
)
from dcnios.metrics import ConsumerMetrics, ProducerMetrics, serve_metrics
from dcnios.spec import parse_spec

METRIC = re.compile(r"\b(dcnios_[a-z0-9_]+)\b")
CONSUMER = parse_spec(
    "consumers:\n  - name: fft\n    topic: t\n    rate: 5/s\n"
    "    oscar: {endpoint: 'https://o', service: s, token: x, input_path: /in}\n"
).consumers[0]


def all_queries() -> list[str]:
    return [*dashboard_queries(), *(a.expr for a in ALERTS), saturation_query(CONSUMER)]


def exposed_names(registry: CollectorRegistry) -> set[str]:
    """The series names prometheus_client exposes for each metric family, with or without children."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {f.name + s for f in registry.collect() for s in suffixes[f.type]}


def test_every_metric_the_queries_name_is_exposed_by_the_code() -> None:
    known = exposed_names(ProducerMetrics().registry) | exposed_names(ConsumerMetrics().registry)
    named = {name for q in all_queries() for name in METRIC.findall(q)}
    assert named - known == set()
    # The dashboard covers what the issue lists, per source and per consumer.
    assert {n for n in named if n.startswith("dcnios_producer")} >= {
        "dcnios_producer_records_total",
        "dcnios_producer_gaps_total",
        "dcnios_producer_checkpoint_timestamp_seconds",
    }
    assert {n for n in named if n.startswith("dcnios_consumer")} >= {
        "dcnios_consumer_invocations_total",
        "dcnios_consumer_lag",
        "dcnios_consumer_group_rate_limit",
        "dcnios_consumer_achieved_rate",
        "dcnios_consumer_in_flight",
        "dcnios_consumer_retries_total",
        "dcnios_consumer_dead_letters_total",
        "dcnios_consumer_jobs_total",
        "dcnios_consumer_invocation_seconds_bucket",
    }


def test_the_name_check_catches_a_rename() -> None:
    known = exposed_names(ConsumerMetrics().registry)
    assert "dcnios_consumer_dead_letters_total" in known
    assert "dcnios_consumer_dead_letters" not in known  # a counter is exposed with _total only


def test_dashboard_has_every_panel_once_with_its_queries() -> None:
    board = dashboard()
    panels = [p for p in board["panels"] if p["type"] == "timeseries"]
    assert [p["title"] for p in panels] == [p.title for p in PANELS]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel, spec in zip(panels, PANELS, strict=True):
        assert [t["expr"] for t in panel["targets"]] == [q.expr for q in spec.queries]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "source", "consumer"]
    assert not any("$" in q for q in dashboard_queries())  # every variable substituted


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return path


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rules_file()))
    done = subprocess.run(
        [promtool(), "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "A", "expr": "sum by (("}]}]})
    )
    assert (
        subprocess.run(
            [promtool(), "check", "rules", str(broken)], capture_output=True, check=False
        ).returncode
        != 0
    )


def test_promtool_checks_a_config_with_the_scrape_job(tmp_path: Path) -> None:
    """Debian builds Prometheus without Kubernetes discovery: there, the relabelling is checked
    with the pod discovery swapped for a static target, and the whole job is not."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules_file()))

    def check(jobs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "scrape_configs": jobs}))
        return subprocess.run(
            [promtool(), "check", "config", str(config)], capture_output=True, text=True, check=False
        )

    jobs = scrape_configs("desy")
    done = check(jobs)
    if "kubernetes_sd_configs not found" not in done.stdout + done.stderr:
        assert done.returncode == 0, done.stdout + done.stderr
    static = [
        {
            **{k: v for k, v in j.items() if k != "kubernetes_sd_configs"},
            "static_configs": [{"targets": ["127.0.0.1:9400"]}],
        }
        for j in jobs
    ]
    done = check(static)
    assert done.returncode == 0, done.stdout + done.stderr
    assert jobs[0]["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["desy"]}}]


# -- promtool test rules: each alert fires on synthetic series, and not on its near miss ---------
def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _case(alert: str, at: str, series: list[dict[str, str]], fired: list[dict[str, str]]) -> dict[str, Any]:
    """A promtool test group: ``fired`` lists the labels of the alerts expected at ``at``."""
    (rule,) = [a for a in ALERTS if a.name == alert]

    def annotate(text: str, labels: dict[str, str]) -> str:
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)

    expected = [
        {
            "exp_labels": {**labels, "severity": rule.severity},
            "exp_annotations": {
                "summary": annotate(rule.summary, labels),
                "description": annotate(rule.description, labels),
            },
        }
        for labels in fired
    ]
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}],
    }


def _cases() -> list[dict[str, Any]]:
    a, b = {"consumer": "a"}, {"consumer": "b"}
    part = {"topic": "t", "partition": "0"}
    up_consumer = {"job": "dcnios-consumer", "instance": "10.0.0.1:9400", "pod": "c-1"}
    up_producer = {"job": "dcnios-producer", "instance": "10.0.0.2:9400", "pod": "p-1"}
    return [
        # a: lag up 60 a minute, no rate; b: the same lag, but held at its rate of 10/s.
        _case(
            "DcniosConsumerLagGrowing",
            "30m",
            [
                _series("dcnios_consumer_lag", {**a, **part}, "0+60x40"),
                _series("dcnios_consumer_group_rate_limit", a, "-1x40"),
                _series("dcnios_consumer_achieved_rate", a, "0x40"),
                _series("dcnios_consumer_lag", {**b, **part}, "0+60x40"),
                _series("dcnios_consumer_group_rate_limit", b, "10x40"),
                _series("dcnios_consumer_achieved_rate", b, "10x40"),
            ],
            [a],
        ),
        _case(
            "DcniosDeadLettersGrowing",
            "5m",
            [
                _series("dcnios_consumer_dead_letters_total", {**a, "reason": "exhausted"}, "0 0 0 3 3 3"),
                _series("dcnios_consumer_dead_letters_total", {**b, "reason": "exhausted"}, "2 2 2 2 2 2"),
            ],
            [{**a, "reason": "exhausted"}],
        ),
        _case(
            "DcniosProducerGap",
            "3m",
            [
                _series("dcnios_producer_gaps_total", {"source": "s", "reason": "EVENT_LOSS"}, "0 0 1 1"),
                _series("dcnios_producer_gaps_total", {"source": "t", "reason": "EVENT_LOSS"}, "4 4 4 4"),
            ],
            [{"source": "s", "reason": "EVENT_LOSS"}],
        ),
        # s: a batch released to its upstream (Kafka did not acknowledge it); t: only published ones.
        _case(
            "DcniosUpstreamReleased",
            "3m",
            [
                _series(
                    "dcnios_producer_upstream_messages_total",
                    {"source": "s", "outcome": "released"},
                    "0 0 2 2",
                ),
                _series(
                    "dcnios_producer_upstream_messages_total",
                    {"source": "t", "outcome": "released"},
                    "1 1 1 1",
                ),
                _series(
                    "dcnios_producer_upstream_messages_total",
                    {"source": "t", "outcome": "published"},
                    "0 5 9 20",
                ),
            ],
            [{"source": "s"}],
        ),
        # s: events read past a checkpoint written at time 0; t: the same age, nothing unread.
        _case(
            "DcniosCheckpointStale",
            "25m",
            [
                _series("dcnios_producer_checkpoint_timestamp_seconds", {"source": "s"}, "0x30"),
                _series("dcnios_producer_last_event_id", {"source": "s"}, "100+1x30"),
                _series("dcnios_producer_checkpoint_event_id", {"source": "s"}, "100x30"),
                _series("dcnios_producer_checkpoint_timestamp_seconds", {"source": "t"}, "0x30"),
                _series("dcnios_producer_last_event_id", {"source": "t"}, "100x30"),
                _series("dcnios_producer_checkpoint_event_id", {"source": "t"}, "100x30"),
            ],
            [{"source": "s"}],
        ),
        _case(
            "DcniosJobsFailing",
            "4m",
            [
                _series("dcnios_consumer_jobs_total", {**a, "state": "Failed"}, "0 0 2 2 2"),
                _series("dcnios_consumer_jobs_total", {**b, "state": "Succeeded"}, "0 5 10 15 20"),
            ],
            [a],
        ),
        _case(
            "DcniosConsumerDown",
            "9m",
            [
                _series("up", up_consumer, "1 1 0 0 0 0 0 0 0 0"),
                _series("up", {**up_consumer, "instance": "10.0.0.3:9400", "pod": "c-2"}, "1x10"),
            ],
            [up_consumer],
        ),
        _case(
            "DcniosProducerDown",
            "9m",
            [_series("up", up_producer, "1 1 0 0 0 0 0 0 0 0")],
            [up_producer],
        ),
    ]


def test_every_alert_has_a_promtool_case() -> None:
    tested = {t["alertname"] for case in _cases() for t in case["alert_rule_test"]}
    assert tested == {a.name for a in ALERTS}


def test_promtool_fires_each_alert_on_synthetic_series(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules_file()))
    tests = tmp_path / "alerts_test.yaml"
    tests.write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": _cases()})
    )
    done = subprocess.run(
        [promtool(), "test", "rules", str(tests)], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_would_notice_an_alert_that_does_not_fire(tmp_path: Path) -> None:
    """The cases above are not vacuous: expecting an alert where the series say otherwise fails."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules_file()))
    case = _case(
        "DcniosProducerGap",
        "3m",
        [_series("dcnios_producer_gaps_total", {"source": "t", "reason": "X"}, "4 4 4 4")],
        [{"source": "t", "reason": "X"}],
    )
    tests = tmp_path / "alerts_test.yaml"
    tests.write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [case]})
    )
    done = subprocess.run(
        [promtool(), "test", "rules", str(tests)], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert done.returncode != 0


# -- where the metrics server listens -----------------------------------------------------------
def _free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def test_metrics_server_binds_loopback_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DCNIOS_METRICS_ADDR", raising=False)
    server = serve_metrics(ProducerMetrics().registry, _free_port("127.0.0.1"))
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setenv("DCNIOS_METRICS_ADDR", "127.0.0.2")  # what a pod sets to its own IP
    port = _free_port("127.0.0.2")
    server = serve_metrics(ProducerMetrics().registry, port)
    try:
        assert server.server_address[0] == "127.0.0.2"
        with urllib.request.urlopen(f"http://127.0.0.2:{port}/healthz", timeout=5) as response:
            assert response.status == 200
    finally:
        server.shutdown()
        server.server_close()
