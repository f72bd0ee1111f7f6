"""A STOMP subscription whose messages are acknowledged one by one, only when the caller says so.

Rucio's Hermes publishes to a STOMP destination (ActiveMQ or RabbitMQ) with ``persistent: true``
(rucio lib/rucio/daemons/hermes/hermes.py). dcnios subscribes with ``ack: client-individual``: a
message the broker handed over stays unacknowledged until its record is in Kafka; a connection that
drops makes the broker redeliver every message it had not acknowledged (STOMP 1.2, "ACK"). So
nothing is acknowledged twice or early, and an ack id never outlives its connection: a delivery
from an earlier connection is not acknowledged (the broker already put it back).

stomp-py's receiver thread only queues deliveries; connecting, subscribing and reconnecting with
backoff happen on this intake's own thread, and acks on the caller's (stomp-py sends are locked).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import stomp
import stomp.exception

from dcnios.secrets import Secret

__all__ = ["Delivery", "StompEndpoint", "StompIntake"]

logger = logging.getLogger(__name__)

_CONNECT_TIMEOUT: Final = 10.0


@dataclass(frozen=True, slots=True)
class StompEndpoint:
    """Where and how to subscribe (built from a ``type: rucio`` source)."""

    hosts: tuple[tuple[str, int], ...]
    destination: str
    vhost: str | None = None
    username: str | None = None
    password: Secret | None = None
    tls: bool = False
    ca_bundle: str | None = None
    verify: bool = True
    cert: str | None = None
    key: str | None = None
    #: How many unacknowledged messages the broker may hand over at once.
    prefetch: int = 256
    heartbeat_ms: int = 10_000
    reconnect_backoff: float = 0.5
    reconnect_backoff_max: float = 30.0
    subscription_id: str = "dcnios"

    def subscribe_headers(self) -> dict[str, str]:
        # Each broker reads its own prefetch header and ignores the other's (RabbitMQ STOMP
        # "prefetch-count"; ActiveMQ "activemq.prefetchSize").
        return {"prefetch-count": str(self.prefetch), "activemq.prefetchSize": str(self.prefetch)}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the broker sent it; ``connection`` tells which connection may ack it."""

    body: bytes
    headers: Mapping[str, str]
    ack_id: str
    connection: int
    #: When it arrived here (time.monotonic), for the age of what waits.
    received: float = field(default_factory=time.monotonic)

    @property
    def redelivered(self) -> bool:
        # ActiveMQ sets "redelivered: true"; RabbitMQ's STOMP adapter does the same for requeued
        # messages.
        return self.headers.get("redelivered") == "true"


class _Listener(stomp.ConnectionListener):  # type: ignore[misc]
    """Runs on stomp-py's receiver thread: hands each event of one connection to the intake."""

    def __init__(
        self,
        connection: int,
        received: Callable[[Delivery], None],
        broker_error: Callable[[str], None],
        lost: Callable[[int], None],
    ) -> None:
        self._connection = connection
        self._received, self._broker_error, self._lost = received, broker_error, lost

    def on_message(self, frame: Any) -> None:
        headers = {str(k): str(v) for k, v in frame.headers.items()}
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
        ack_id = headers.get("ack") or headers.get("message-id", "")
        self._received(Delivery(body, headers, ack_id, self._connection))

    def on_error(self, frame: Any) -> None:
        message = frame.headers.get("message", "")
        detail = frame.body.decode(errors="replace") if isinstance(frame.body, bytes) else str(frame.body)
        self._broker_error(f"{message} {detail}".strip())

    def on_disconnected(self) -> None:
        self._lost(self._connection)

    def on_heartbeat_timeout(self) -> None:
        logger.warning("STOMP heart-beats stopped arriving; reconnecting")


class StompIntake:
    """Subscribes to one destination and keeps the subscription up; deliveries wait in a queue."""

    def __init__(self, endpoint: StompEndpoint) -> None:
        self.endpoint = endpoint
        self._queue: queue.Queue[Delivery] = queue.Queue()
        self._lock = threading.Lock()
        self._conn: stomp.Connection12 | None = None
        self._connection = 0  # generation: 0 none yet, then one per successful connect
        self._live = 0  # the generation whose acks still mean something, 0 when down
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connects = 0
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._live != 0

    def start(self) -> StompIntake:
        self._thread = threading.Thread(target=self._run, name="stomp-intake", daemon=True)
        self._thread.start()
        return self

    def take(self, timeout: float, limit: int = 512) -> list[Delivery]:
        """The deliveries waiting (at most ``limit``), after waiting up to ``timeout`` for the first."""
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        out = [first]
        while len(out) < limit:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return out

    def ack(self, delivery: Delivery) -> bool:
        """Acknowledge; False if its connection is gone (the broker redelivers it)."""
        return self._settle(delivery, ack=True)

    def nack(self, delivery: Delivery) -> bool:
        """Hand back for redelivery; False if its connection is gone (redelivered anyway)."""
        return self._settle(delivery, ack=False)

    def _settle(self, delivery: Delivery, *, ack: bool) -> bool:
        with self._lock:
            conn = self._conn
            if conn is None or delivery.connection != self._live:
                return False
        try:
            if ack:
                conn.ack(delivery.ack_id)
            else:
                conn.nack(delivery.ack_id)
        except stomp.exception.StompException as exc:
            verb = "ack" if ack else "nack"
            logger.warning("STOMP %s failed (%s); the broker redelivers the message", verb, exc)
            return False
        return True

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=_CONNECT_TIMEOUT + 5)
        self._disconnect()

    # -- stomp-py's receiver thread --------------------------------------------------------
    def _received(self, delivery: Delivery) -> None:
        self._queue.put(delivery)

    def _broker_error(self, text: str) -> None:
        self.last_error = text
        logger.error("STOMP broker error: %s", text)

    def _lost(self, connection: int) -> None:
        with self._lock:
            if connection != self._live:
                return
            self._live = 0
        if not self._stop.is_set():
            logger.warning("STOMP connection to %s lost; reconnecting", self._where())
        self._wake.set()

    # -- the intake's thread ---------------------------------------------------------------
    def _run(self) -> None:
        delay = self.endpoint.reconnect_backoff
        while not self._stop.is_set():
            if self._live:
                self._wake.wait()
                self._wake.clear()
                continue
            self._disconnect()
            try:
                self._connect()
            except (stomp.exception.StompException, OSError) as exc:
                reason = self.last_error or str(exc) or type(exc).__name__
                logger.warning(
                    "STOMP connect to %s failed: %s; next try in %.1fs", self._where(), reason, delay
                )
                self._stop.wait(delay * random.uniform(0.8, 1.2))  # noqa: S311 (jitter, not crypto)
                delay = min(delay * 2, self.endpoint.reconnect_backoff_max)
                continue
            delay = self.endpoint.reconnect_backoff

    def _connect(self) -> None:
        ep = self.endpoint
        conn = stomp.Connection12(
            host_and_ports=list(ep.hosts),
            vhost=ep.vhost,
            heartbeats=(ep.heartbeat_ms, ep.heartbeat_ms),
            keepalive=True,
            timeout=_CONNECT_TIMEOUT,
            auto_decode=False,  # the body's bytes, as Hermes sent them
            reconnect_attempts_max=1,  # backoff is ours (above), across all hosts
        )
        if ep.tls:
            conn.set_ssl(
                for_hosts=list(ep.hosts),
                ca_certs=ep.ca_bundle,
                cert_file=ep.cert,
                key_file=ep.key,
                verify=ep.verify,
            )
        generation = self._connection + 1
        conn.set_listener("dcnios", _Listener(generation, self._received, self._broker_error, self._lost))
        self.last_error = None
        password = ep.password.reveal() if ep.password is not None else None
        try:
            conn.connect(ep.username, password, wait=True)
            conn.subscribe(
                ep.destination, id=ep.subscription_id, ack="client-individual", headers=ep.subscribe_headers()
            )
        except BaseException:
            conn.disconnect()
            raise
        with self._lock:
            self._conn = conn
            self._connection = generation
            self._live = generation
        if not conn.is_connected():  # dropped before _live was set: _lost ignored it
            self._lost(generation)
        self.connects += 1
        logger.info("STOMP subscribed to %s on %s", ep.destination, self._where())

    def _disconnect(self) -> None:
        with self._lock:
            conn, self._conn, self._live = self._conn, None, 0
        if conn is not None:
            # Already gone: fine, the broker requeues what was not acknowledged.
            with contextlib.suppress(stomp.exception.StompException, OSError):
                conn.disconnect()

    def _where(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.endpoint.hosts)
