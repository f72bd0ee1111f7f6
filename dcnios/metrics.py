"""Prometheus metrics. Each component gets its own registry, so tests can run several at once."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["ProducerMetrics", "serve_metrics"]


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> None:
    """Expose ``/metrics`` on ``addr:port`` from a daemon thread."""
    start_http_server(port, addr=addr, registry=registry)


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
        self.reconnects = Counter("dcnios_producer_reconnects", "SSE reconnects", ["source"], registry=r)
        self.gaps = Counter(
            "dcnios_producer_gaps", "gaps in the event stream", ["source", "reason"], registry=r
        )
        self.synthetic = Counter(
            "dcnios_producer_synthetic", "records found by reconciliation", ["source"], registry=r
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
        self.ack_latency = Histogram(
            "dcnios_producer_event_ack_seconds",
            "SSE frame read -> record acknowledged",
            ["source"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

    def checkpoint_written(self, source: str, event_id: int | None) -> None:
        if event_id is not None:
            self.checkpoint_id.labels(source).set(event_id)
        self.checkpoint_time.labels(source).set(time.time())
