"""An upstream that is an HTTP endpoint the object store posts to (MinIO's or RGW's webhook).

Each POST waits until the relay has written its records and Kafka has acknowledged them, then
gets ``200``; a body the relay could not write, or one still unwritten after ``ack_timeout``, gets
``503``, so the object store keeps it and retries (MinIO's webhook target and RGW's persistent
topics both do). Bad input (not an S3 notification, a body over ``max_body``) is reported to
``<topic>.invalid`` and answered ``200`` like any other settled message: retrying it cannot help.

stdlib ``http.server`` on purpose: one POST at a time per connection, a thread each, and the
handler blocks until Kafka answers, which is all this needs; aiohttp would put an event loop in a
source that otherwise has none.
"""

from __future__ import annotations

import hmac
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import Any, Final

from dcnios.errors import ConfigError
from dcnios.producers.upstream import Delivery
from dcnios.spec import WebhookSpec
from dcnios.storage_event import now_millis

__all__ = ["WebhookUpstream"]

logger = logging.getLogger(__name__)

#: Requests that may wait for the relay at once; beyond, a POST is answered 503 at once.
QUEUE_LIMIT: Final = 10_000
_CHUNK: Final = 64 << 10


@dataclass(slots=True)
class _Waiter:
    done: threading.Event = field(default_factory=threading.Event)
    status: int = 503
    reason: str = ""


class WebhookUpstream:
    def __init__(self, spec: WebhookSpec, source: str) -> None:
        self.spec = spec
        self.source = source
        self.description = f"webhook http://{spec.host}:{spec.port}{spec.path}"
        self._queue: queue.Queue[Delivery] = queue.Queue(QUEUE_LIMIT)
        self._server: ThreadingHTTPServer | None = None
        self._closing = threading.Event()

    @property
    def port(self) -> int:
        """The bound port (the spec's)."""
        assert self._server is not None, "open() first"
        return int(self._server.server_address[1])

    def open(self) -> None:
        try:
            self._server = ThreadingHTTPServer((self.spec.host, self.spec.port), self._handler())
        except OSError as exc:
            raise ConfigError(
                f"source {self.source}: cannot listen on {self.spec.host}:{self.spec.port} "
                f"(webhook.host/webhook.port): {exc.strerror or exc}"
            ) from exc
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, daemon=True, name=f"webhook-{self.source}"
        ).start()

    def receive(self, timeout: float) -> Sequence[Delivery]:
        try:
            out = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(out) < QUEUE_LIMIT:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return out

    def acknowledge(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            self._answer(d, 200, "")

    def release(self, deliveries: Sequence[Delivery], reason: str) -> None:
        for d in deliveries:
            self._answer(d, 503, reason)

    def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        while True:  # whoever still waits is told to retry
            try:
                self._answer(self._queue.get_nowait(), 503, "dcnios is stopping")
            except queue.Empty:
                break

    @staticmethod
    def _answer(delivery: Delivery, status: int, reason: str) -> None:
        waiter: _Waiter = delivery.handle
        waiter.status, waiter.reason = status, reason
        waiter.done.set()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        upstream = self
        spec = self.spec
        token = spec.token.reveal().encode() if spec.token is not None else None

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("webhook %s: %s", upstream.source, format % args)

            def _reply(self, status: int, text: str) -> None:
                body = (text + "\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self) -> None:
                # MinIO's webhook target probes its endpoint with HEAD before it sends.
                self.send_response(200 if self.path.split("?")[0] == spec.path else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                if self.path.split("?")[0] != spec.path:
                    self._drain()
                    self._reply(404, f"no webhook at {self.path}; this source listens on {spec.path}")
                    return
                if token is not None:
                    given = self.headers.get("Authorization", "")
                    scheme, _, value = given.partition(" ")
                    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token):
                        self._drain()
                        self._reply(401, "missing or wrong bearer token")
                        return
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    self.close_connection = True
                    self._reply(411, "a Content-Length is required")
                    return
                size = int(length)
                body = self.rfile.read(min(size, spec.max_body))
                rejected = None
                if size > spec.max_body:
                    self._skip(size - spec.max_body)
                    rejected = f"body of {size} bytes is over webhook.max_body ({spec.max_body})"
                waiter = _Waiter()
                delivery = Delivery(
                    body=body,
                    origin=f"http {self.client_address[0]}:{self.client_address[1]}",
                    attributes=MappingProxyType(
                        {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
                    ),
                    handle=waiter,
                    received_ms=now_millis(),
                    rejected=rejected,
                )
                if upstream._closing.is_set():
                    self._reply(503, "dcnios is stopping; retry")
                    return
                try:
                    upstream._queue.put(delivery, timeout=float(spec.ack_timeout))
                except queue.Full:
                    self._reply(503, "too many notifications waiting; retry")
                    return
                if not waiter.done.wait(float(spec.ack_timeout)):
                    self._reply(503, f"not acknowledged by Kafka within {spec.ack_timeout:g}s; retry")
                    return
                if waiter.status == 200:
                    self._reply(200, "ok")
                else:
                    self._reply(waiter.status, f"not written ({waiter.reason}); retry")

            def _drain(self) -> None:
                length = self.headers.get("Content-Length")
                if length is not None and length.isdigit():
                    self._skip(int(length))
                else:
                    self.close_connection = True

            def _skip(self, n: int) -> None:
                while n > 0:
                    chunk = self.rfile.read(min(n, _CHUNK))
                    if not chunk:
                        break
                    n -= len(chunk)

        return Handler
