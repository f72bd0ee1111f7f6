"""Monitoring rendered from the metrics in ``dcnios.metrics``: scrape configuration, alert rules, a
Grafana dashboard, and the saturation query KEDA scales rate-limited groups on.

Every PromQL expression lives here, as data (:data:`ALERTS`, :data:`PANELS`), so the tests can run
each one against a Prometheus that scraped a real producer and consumer: a renamed metric breaks a
test, not a dashboard. prometheus_client appends ``_total`` to counters and ``_bucket``, ``_sum``,
``_count`` to histograms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from dcnios.deploy.manifest import Manifest, component_labels
from dcnios.spec import ConsumerSpec

__all__ = [
    "ALERTS",
    "JOB_LABEL",
    "METRICS_PORT",
    "PANELS",
    "Alert",
    "Panel",
    "Query",
    "dashboard",
    "prometheus_rule",
    "rules_file",
    "saturation_query",
    "scrape_configs",
    "service_monitor",
]

METRICS_PORT: Final = 9400
#: The Service label whose value becomes the ``job`` label (ServiceMonitor ``jobLabel``).
JOB_LABEL: Final = "dcnios.io/job"
PRODUCER_JOB: Final = "dcnios-producer"
CONSUMER_JOB: Final = "dcnios-consumer"
PROMETHEUS_OPERATOR_API: Final = "monitoring.coreos.com/v1"


@dataclass(frozen=True, slots=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    scope: Literal["source", "consumer"]
    unit: str
    queries: tuple[Query, ...]


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    expr: str
    duration: str
    severity: Literal["warning", "critical"]
    summary: str
    description: str

    def to_rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.duration,
            "labels": {"severity": self.severity},
            "annotations": {"summary": self.summary, "description": self.description},
        }


def _rate(metric: str, by: str, selector: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[$__rate_interval]))"


_S = 'source=~"$source"'
_C = 'consumer=~"$consumer"'

PANELS: Final[tuple[Panel, ...]] = (
    Panel(
        "Events published /s",
        "source",
        "ops",
        (
            Query(_rate("dcnios_producer_records_total", "source, topic", _S), "{{source}} -> {{topic}}"),
            Query(_rate("dcnios_producer_events_total", "source, mask", _S), "{{source}} {{mask}}"),
        ),
    ),
    Panel(
        "Gaps in the event stream (1h)",
        "source",
        "short",
        (
            Query(
                f"sum by (source, reason) (increase(dcnios_producer_gaps_total{{{_S}}}[1h]))",
                "{{source}} {{reason}}",
            ),
        ),
    ),
    Panel(
        "Checkpoint age",
        "source",
        "s",
        (
            Query(
                f"time() - max by (source) (dcnios_producer_checkpoint_timestamp_seconds{{{_S}}})",
                "{{source}}",
            ),
        ),
    ),
    Panel(
        "SSE frame read -> record acknowledged (p99)",
        "source",
        "s",
        (
            Query(
                "histogram_quantile(0.99, "
                + _rate("dcnios_producer_event_ack_seconds_bucket", "source, le", _S)
                + ")",
                "{{source}}",
            ),
        ),
    ),
    Panel(
        "Invalid frames, delivery errors, reconnects /s",
        "source",
        "ops",
        (
            Query(_rate("dcnios_producer_invalid_total", "source", _S), "{{source}} invalid"),
            Query(_rate("dcnios_producer_delivery_errors_total", "source", _S), "{{source}} delivery errors"),
            Query(_rate("dcnios_producer_reconnects_total", "source", _S), "{{source}} reconnects"),
        ),
    ),
    Panel(
        "Relayed sources (S3 notifications): upstream messages /s by outcome",
        "source",
        "ops",
        (
            Query(
                _rate("dcnios_producer_upstream_messages_total", "source, outcome", _S),
                "{{source}} {{outcome}}",
            ),
        ),
    ),
    Panel(
        "OSCAR calls /s by outcome",
        "consumer",
        "ops",
        (
            Query(
                _rate("dcnios_consumer_invocations_total", "consumer, status", _C), "{{consumer}} {{status}}"
            ),
        ),
    ),
    Panel(
        "Lag (records not committed)",
        "consumer",
        "short",
        (Query(f"sum by (consumer) (dcnios_consumer_lag{{{_C}}})", "{{consumer}}"),),
    ),
    Panel(
        "Rate: achieved and group limit",
        "consumer",
        "ops",
        (
            Query(f"sum by (consumer) (dcnios_consumer_achieved_rate{{{_C}}})", "{{consumer}} achieved"),
            Query(
                f"max by (consumer) (dcnios_consumer_group_rate_limit{{{_C}}})",
                "{{consumer}} limit (-1: none)",
            ),
        ),
    ),
    Panel(
        "In flight",
        "consumer",
        "short",
        (
            Query(f"sum by (consumer) (dcnios_consumer_in_flight{{{_C}}})", "{{consumer}} records"),
            Query(f"sum by (consumer) (dcnios_consumer_followed_jobs{{{_C}}})", "{{consumer}} followed jobs"),
        ),
    ),
    Panel(
        "Retries /s",
        "consumer",
        "ops",
        (Query(_rate("dcnios_consumer_retries_total", "consumer", _C), "{{consumer}}"),),
    ),
    Panel(
        "Dead letters (1h)",
        "consumer",
        "short",
        (
            Query(
                f"sum by (consumer, reason) (increase(dcnios_consumer_dead_letters_total{{{_C}}}[1h]))",
                "{{consumer}} {{reason}}",
            ),
        ),
    ),
    Panel(
        "Job outcomes (1h)",
        "consumer",
        "short",
        (
            Query(
                f"sum by (consumer, state) (increase(dcnios_consumer_jobs_total{{{_C}}}[1h]))",
                "{{consumer}} {{state}}",
            ),
        ),
    ),
    Panel(
        "Latency: OSCAR call p99, job run p90, event -> job finished p90",
        "consumer",
        "s",
        (
            Query(
                "histogram_quantile(0.99, "
                + _rate("dcnios_consumer_invocation_seconds_bucket", "consumer, le", _C)
                + ")",
                "{{consumer}} call p99",
            ),
            Query(
                "histogram_quantile(0.9, "
                + _rate("dcnios_consumer_job_run_seconds_bucket", "consumer, le", _C)
                + ")",
                "{{consumer}} job run p90",
            ),
            Query(
                "histogram_quantile(0.9, "
                + _rate("dcnios_consumer_job_end_to_end_seconds_bucket", "consumer, le", _C)
                + ")",
                "{{consumer}} end to end p90",
            ),
        ),
    ),
    Panel(
        "OSCAR down (breaker open), paused",
        "consumer",
        "short",
        (
            Query(f"max by (consumer) (dcnios_consumer_oscar_down{{{_C}}})", "{{consumer}} OSCAR down"),
            Query(f"max by (consumer) (dcnios_consumer_paused{{{_C}}})", "{{consumer}} paused"),
        ),
    ),
)

_RATE_BINDS: Final = (
    "(max by (consumer) (dcnios_consumer_group_rate_limit) > 0"
    " and on (consumer) sum by (consumer) (dcnios_consumer_achieved_rate)"
    " >= on (consumer) 0.9 * max by (consumer) (dcnios_consumer_group_rate_limit))"
)

ALERTS: Final[tuple[Alert, ...]] = (
    Alert(
        "DcniosConsumerLagGrowing",
        "(sum by (consumer) (deriv(dcnios_consumer_lag[10m])) > 0"
        " and on (consumer) sum by (consumer) (dcnios_consumer_lag) > 100)"
        f" unless on (consumer) {_RATE_BINDS}",
        "15m",
        "warning",
        "dcnios consumer {{ $labels.consumer }}: lag growing for 15 minutes",
        "Lag grows and the group is not held back by its rate: "
        "the members cannot keep up (add members up to the partition count, raise concurrency, or "
        "check OSCAR's latency).",
    ),
    Alert(
        "DcniosDeadLettersGrowing",
        "sum by (consumer, reason) (increase(dcnios_consumer_dead_letters_total[10m])) > 0",
        "0m",
        "warning",
        "dcnios consumer {{ $labels.consumer }}: records dead-lettered ({{ $labels.reason }})",
        "Records went to the DLQ in the last 10 minutes; inspect them with "
        "`dcnios dlq list` and re-drive them with `dcnios dlq replay`.",
    ),
    Alert(
        "DcniosProducerGap",
        "sum by (source, reason) (increase(dcnios_producer_gaps_total[15m])) > 0",
        "0m",
        "warning",
        "dcnios source {{ $labels.source }}: gap in the event stream ({{ $labels.reason }})",
        "The producer lost events ({{ $labels.reason }}) and repairs the gap by listing; see <prefix>.gaps.",
    ),
    Alert(
        "DcniosCheckpointStale",
        "(time() - max by (source) (dcnios_producer_checkpoint_timestamp_seconds) > 900)"
        " and on (source) (max by (source) (dcnios_producer_last_event_id)"
        " > on (source) max by (source) (dcnios_producer_checkpoint_event_id))",
        "5m",
        "critical",
        "dcnios source {{ $labels.source }}: checkpoint 15 minutes behind the events read",
        "Events were read but the checkpoint has not advanced past them for 15 minutes: "
        "records are not being acknowledged by Kafka, or a gap repair is stuck.",
    ),
    Alert(
        "DcniosUpstreamReleased",
        'sum by (source) (increase(dcnios_producer_upstream_messages_total{outcome="released"}[10m])) > 0',
        "0m",
        "warning",
        "dcnios source {{ $labels.source }}: upstream messages not written to Kafka",
        "Kafka did not acknowledge a batch within message.timeout.ms: it was handed back to the "
        "upstream (redelivered later) and the source restarted. Check the brokers.",
    ),
    Alert(
        "DcniosJobsFailing",
        'sum by (consumer) (increase(dcnios_consumer_jobs_total{state="Failed"}[15m])) > 0',
        "0m",
        "warning",
        "dcnios consumer {{ $labels.consumer }}: OSCAR jobs failed",
        "Followed jobs ended Failed in the last 15 minutes; read their logs in OSCAR.",
    ),
    Alert(
        "DcniosConsumerDown",
        f'up{{job="{CONSUMER_JOB}"}} == 0',
        "5m",
        "critical",
        "dcnios consumer pod {{ $labels.pod }} is down",
        "Prometheus cannot scrape {{ $labels.instance }} for 5 minutes.",
    ),
    Alert(
        "DcniosProducerDown",
        f'up{{job="{PRODUCER_JOB}"}} == 0',
        "5m",
        "critical",
        "dcnios producer pod {{ $labels.pod }} is down",
        "Prometheus cannot scrape {{ $labels.instance }} for 5 minutes; no dCache events are published.",
    ),
)


def saturation_query(consumer: ConsumerSpec) -> str:
    """The members a rate-limited group needs: members x group rate / achieved rate, while there is
    lag, OSCAR is up and the group is not paused. With the rate reached it is at most the members
    there are (scale in); with no lag it is empty (KEDA's ``ignoreNullValues``: the minimum)."""
    c = f'consumer="{consumer.name}"'
    return (
        f"(count(dcnios_consumer_achieved_rate{{{c}}})"
        f" * max(dcnios_consumer_group_rate_limit{{{c}}})"
        f" / clamp_min(sum(dcnios_consumer_achieved_rate{{{c}}}), 0.001))"
        f" and on() (sum(dcnios_consumer_lag{{{c}}}) > 0)"
        f" and on() (max(dcnios_consumer_oscar_down{{{c}}}) == 0)"
        f" and on() (max(dcnios_consumer_paused{{{c}}}) == 0)"
    )


def rules_file() -> dict[str, Any]:
    """A Prometheus rules file (``promtool check rules``; also what the PrometheusRule carries)."""
    return {"groups": [{"name": "dcnios", "rules": [a.to_rule() for a in ALERTS]}]}


def prometheus_rule() -> Manifest:
    return Manifest(
        PROMETHEUS_OPERATOR_API,
        "PrometheusRule",
        "dcnios",
        {"spec": rules_file()},
        labels=component_labels("monitoring", "dcnios"),
        file="monitoring.yaml",
    )


def service_monitor() -> Manifest:
    return Manifest(
        PROMETHEUS_OPERATOR_API,
        "ServiceMonitor",
        "dcnios",
        {
            "spec": {
                "jobLabel": JOB_LABEL,
                "selector": {"matchLabels": {"app.kubernetes.io/name": "dcnios"}},
                "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
            }
        },
        labels=component_labels("monitoring", "dcnios"),
        file="monitoring.yaml",
    )


def scrape_configs(namespace: str) -> list[dict[str, Any]]:
    """For a Prometheus without the operator (``extraScrapeConfigs`` of the community chart):
    pods of the namespace labelled as dcnios, on their ``metrics`` port, with ``job`` set to
    dcnios-producer or dcnios-consumer as the ServiceMonitor sets it."""
    return [
        {
            "job_name": "dcnios",
            "scrape_interval": "30s",
            "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [namespace]}}],
            "relabel_configs": [
                {
                    "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                    "regex": "dcnios",
                    "action": "keep",
                },
                {
                    "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                    "regex": "metrics",
                    "action": "keep",
                },
                {
                    "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
                    "target_label": "job",
                    "replacement": "dcnios-$1",
                },
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            ],
        }
    ]


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "expr": q.expr,
                "legendFormat": q.legend,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
            }
            for i, q in enumerate(panel.queries)
        ],
    }


def _variable(name: str, metric: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": f"label_values({metric}, {name})", "refId": name},
        "definition": f"label_values({metric}, {name})",
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }


def dashboard() -> dict[str, Any]:
    """Grafana dashboard JSON: a row per scope, two panels a line."""
    panels: list[dict[str, Any]] = []
    y, panel_id = 0, 1
    for scope, title in (("source", "Sources (producers)"), ("consumer", "Consumers")):
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        panel_id, y = panel_id + 1, y + 1
        for i, panel in enumerate(p for p in PANELS if p.scope == scope):
            panels.append(_panel(panel, panel_id, 12 * (i % 2), y + 8 * (i // 2)))
            panel_id += 1
        y += 8 * ((sum(p.scope == scope for p in PANELS) + 1) // 2)
    return {
        "uid": "dcnios",
        "title": "dcnios",
        "tags": ["dcnios", "kafka", "oscar"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "current": {}},
                _variable("source", "dcnios_producer_records_total"),
                _variable("consumer", "dcnios_consumer_in_flight"),
            ]
        },
        "panels": panels,
    }


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard, as Grafana would send it with every variable at All."""
    return [
        q.expr.replace("$__rate_interval", "1m").replace("$source", ".*").replace("$consumer", ".*")
        for p in PANELS
        for q in p.queries
    ]
