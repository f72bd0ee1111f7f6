"""Prometheus metrics. Each component gets its own registry, so tests can run several at once."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["ConsumerMetrics", "ProducerMetrics", "WorkflowMetrics", "serve_metrics"]

Health = Callable[[], tuple[bool, dict[str, Any]]]


#: The address the metrics server binds when the caller names none; 127.0.0.1 unless set. A pod sets
#: it to its own IP (`dcnios k8s`), where the kubelet probes and Prometheus scrapes.
METRICS_ADDR_ENV = "DCNIOS_METRICS_ADDR"


def serve_metrics(
    registry: CollectorRegistry, port: int, health: Health | None = None, addr: str | None = None
) -> ThreadingHTTPServer:
    """Serve ``/metrics`` (Prometheus) and ``/healthz`` (200 or 503 with a JSON body) from a thread.

    ``addr`` defaults to ``$DCNIOS_METRICS_ADDR``, else 127.0.0.1.
    """
    if addr is None:
        addr = os.environ.get(METRICS_ADDR_ENV) or "127.0.0.1"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the log

        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
            elif self.path.startswith("/healthz"):
                ok, detail = health() if health is not None else (True, {})
                body, status, ctype = (
                    json.dumps({"ok": ok, **detail}).encode(),
                    200 if ok else 503,
                    "application/json",
                )
            else:
                body, status, ctype = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((addr, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    return server


class ProducerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.frames = Counter("dcnios_producer_frames", "SSE frames read", ["source", "type"], registry=r)
        self.events = Counter(
            "dcnios_producer_events", "inotify events by mask", ["source", "mask"], registry=r
        )
        self.records = Counter("dcnios_producer_records", "records produced", ["source", "topic"], registry=r)
        self.invalid = Counter("dcnios_producer_invalid", "frames sent to .invalid", ["source"], registry=r)
        self.delivery_errors = Counter(
            "dcnios_producer_delivery_errors", "unacked records", ["source"], registry=r
        )
        self.reconnects = Counter(
            "dcnios_producer_reconnects", "SSE (dCache) or STOMP (Rucio) reconnects", ["source"], registry=r
        )
        self.gaps = Counter(
            "dcnios_producer_gaps", "gaps in the event stream", ["source", "reason"], registry=r
        )
        self.synthetic = Counter(
            "dcnios_producer_synthetic", "records found by reconciliation", ["source"], registry=r
        )
        self.listed = Counter(
            "dcnios_producer_listed_files",
            "files seen by reconciliation, by verdict against the published-files index",
            ["source", "verdict"],
            registry=r,
        )
        self.published_files = Gauge(
            "dcnios_producer_published_files", "files in the published-files index", ["source"], registry=r
        )
        self.silent_streams = Counter(
            "dcnios_producer_silent_streams",
            "streams given up after missing three heartbeats",
            ["source"],
            registry=r,
        )
        self.last_event_id = Gauge(
            "dcnios_producer_last_event_id", "newest SSE id read", ["source"], registry=r
        )
        self.checkpoint_id = Gauge(
            "dcnios_producer_checkpoint_event_id", "SSE id of the checkpoint", ["source"], registry=r
        )
        self.checkpoint_time = Gauge(
            "dcnios_producer_checkpoint_timestamp_seconds",
            "when the checkpoint was written",
            ["source"],
            registry=r,
        )
        self.upstream_messages = Counter(
            "dcnios_producer_upstream_messages",
            "messages of a relayed source (S3 notifications, Rucio) by outcome once settled upstream: "
            "published, skipped, invalid (to <topic>.invalid), released (not written; redelivered)",
            ["source", "outcome"],
            registry=r,
        )
        self.upstream_ack_time = Gauge(
            "dcnios_producer_upstream_ack_timestamp_seconds",
            "when a relayed source last acknowledged messages upstream (after Kafka's ack)",
            ["source"],
            registry=r,
        )
        self.ack_latency = Histogram(
            "dcnios_producer_event_ack_seconds",
            "SSE frame read (or upstream message received) -> its records acknowledged, observed once per "
            "network chunk of frames (per record for relayed sources)",
            ["source"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

    def checkpoint_written(self, source: str, event_id: int | None) -> None:
        if event_id is not None:
            self.checkpoint_id.labels(source).set(event_id)
        self.checkpoint_time.labels(source).set(time.time())


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        labels = ["consumer"]
        self.invocations = Counter(
            "dcnios_consumer_invocations", "OSCAR calls by outcome", [*labels, "status"], registry=r
        )
        self.latency = Histogram(
            "dcnios_consumer_invocation_seconds",
            "one OSCAR call",
            labels,
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.in_flight = Gauge(
            "dcnios_consumer_in_flight", "records admitted and not finished", labels, registry=r
        )
        self.retries = Counter("dcnios_consumer_retries", "retried OSCAR calls", labels, registry=r)
        self.dlq = Counter(
            "dcnios_consumer_dead_letters", "records sent to the DLQ", [*labels, "reason"], registry=r
        )
        self.skipped = Counter(
            "dcnios_consumer_skipped", "records not invoked", [*labels, "reason"], registry=r
        )
        self.rate_limit = Gauge(
            "dcnios_consumer_rate_limit", "this member's rate (events/s; -1 unlimited)", labels, registry=r
        )
        self.group_rate = Gauge(
            "dcnios_consumer_group_rate_limit", "the group's rate (-1 unlimited)", labels, registry=r
        )
        self.achieved = Gauge(
            "dcnios_consumer_achieved_rate", "invocations/s over the last 10 s", labels, registry=r
        )
        self.paused = Gauge("dcnios_consumer_paused", "1 while paused by `dcnios pause`", labels, registry=r)
        self.lag = Gauge(
            "dcnios_consumer_lag", "records not yet committed", [*labels, "topic", "partition"], registry=r
        )
        self.fetch_delay = Histogram(
            "dcnios_consumer_fetch_delay_seconds",
            "record written to Kafka -> fetched by this consumer (queueing in Kafka)",
            labels,
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.pending_jobs = Gauge(
            "dcnios_consumer_pending_jobs", "Pending+Running jobs (max_pending_jobs)", labels, registry=r
        )
        self.jobs = Counter(
            "dcnios_consumer_jobs", "followed OSCAR jobs by final state", [*labels, "state"], registry=r
        )
        job_buckets = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
        self.job_queue = Histogram(
            "dcnios_consumer_job_queue_seconds",
            "a followed job's time before its pod started (creation -> start)",
            labels,
            registry=r,
            buckets=job_buckets,
        )
        self.job_run = Histogram(
            "dcnios_consumer_job_run_seconds",
            "a followed job's run time (start -> finish)",
            labels,
            registry=r,
            buckets=job_buckets,
        )
        self.job_end_to_end = Histogram(
            "dcnios_consumer_job_end_to_end_seconds",
            "event observed by the producer -> its job finished",
            labels,
            registry=r,
            buckets=job_buckets,
        )
        self.followed_jobs = Gauge(
            "dcnios_consumer_followed_jobs", "jobs created and not yet ended", labels, registry=r
        )
        self.oscar_down = Gauge(
            "dcnios_consumer_oscar_down",
            "1 while the circuit breaker holds invocations (OSCAR failing as a whole)",
            labels,
            registry=r,
        )


class WorkflowMetrics:
    """A workflow orchestrator's runs and steps; ``deploy/monitoring.py`` queries these names."""

    RUN_STATES = ("running", "succeeded", "failed", "cancelled")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs = Gauge(
            "dcnios_workflow_runs",
            "runs this member owns, by state (finished ones until their partition moves)",
            ["workflow", "state"],
            registry=r,
        )
        self.runs_ended = Counter(
            "dcnios_workflow_runs_ended", "runs that reached a final state", ["workflow", "state"], registry=r
        )
        self.runs_started = Counter(
            "dcnios_workflow_runs_started", "runs started by a triggering event", ["workflow"], registry=r
        )
        self.step_jobs = Counter(
            "dcnios_workflow_step_jobs",
            "step jobs by how they ended (succeeded, failed, cancelled)",
            ["workflow", "step", "state"],
            registry=r,
        )
        self.step_latency = Histogram(
            "dcnios_workflow_step_seconds",
            "a step item from ready (its parents done) to its job's success",
            ["workflow", "step"],
            registry=r,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
        )
        self.overhead = Histogram(
            "dcnios_workflow_step_overhead_seconds",
            "orchestration per step item: ready -> job created, plus job ended -> next steps released",
            ["workflow"],
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
