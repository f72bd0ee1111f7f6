"""A STOMP subscription as a relayed source's upstream (Rucio's Hermes publishes over STOMP).

Hermes sends each message to a STOMP destination on ActiveMQ or RabbitMQ with ``persistent: true``
(rucio lib/rucio/daemons/hermes/hermes.py). dcnios subscribes with ``ack: client-individual``: a
message the broker handed over stays unacknowledged until the relay says Kafka has its record
(``acknowledge``), or is handed back (``release``, a NACK). A connection that drops makes the
broker redeliver every message it had not acknowledged (STOMP 1.2, "ACK"); an ack id never outlives
its connection, so deliveries of an earlier connection are neither acknowledged nor handed out
again here (the broker already put them back).

stomp-py's receiver thread only queues deliveries; connecting, subscribing and reconnecting with
backoff happen on this upstream's own thread, acknowledgements on the relay's.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import stomp
import stomp.exception

from dcnios.errors import RemoteError
from dcnios.metrics import ProducerMetrics
from dcnios.producers.upstream import Delivery
from dcnios.spec import StompSpec
from dcnios.storage_event import now_millis

__all__ = ["StompUpstream", "login_problem"]

logger = logging.getLogger(__name__)

_CONNECT_TIMEOUT: Final = 10.0
#: The receipt asked for with SUBSCRIBE: a refused subscription (no permission on the queue) then
#: fails the connect with the broker's ERROR instead of a silent disconnect afterwards.
_SUBSCRIBED: Final = "dcnios-subscribed"
#: Most deliveries one ``receive`` hands out.
_BATCH: Final = 512


@dataclass(frozen=True, slots=True)
class _Handle:
    connection: int
    ack_id: str


@dataclass(frozen=True, slots=True)
class _Message:
    body: bytes
    headers: dict[str, str]
    connection: int
    received_ms: int


class _Listener(stomp.ConnectionListener):  # type: ignore[misc]
    """Runs on stomp-py's receiver thread: hands each event of one connection to the upstream."""

    def __init__(
        self,
        connection: int,
        received: Callable[[_Message], None],
        broker_error: Callable[[str], None],
        lost: Callable[[int], None],
    ) -> None:
        self._connection = connection
        self._received, self._broker_error, self._lost = received, broker_error, lost
        #: Set by the SUBSCRIBE's receipt, an ERROR frame or the connection's end, whichever first.
        self.answered = threading.Event()
        self.subscribed = False

    def on_receipt(self, frame: Any) -> None:
        if frame.headers.get("receipt-id") == _SUBSCRIBED:
            self.subscribed = True
            self.answered.set()

    def on_message(self, frame: Any) -> None:
        headers = {str(k).lower(): str(v) for k, v in frame.headers.items()}
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
        self._received(_Message(body, headers, self._connection, now_millis()))

    def on_error(self, frame: Any) -> None:
        message = frame.headers.get("message", "")
        detail = frame.body.decode(errors="replace") if isinstance(frame.body, bytes) else str(frame.body)
        self._broker_error(f"{message} {detail}".strip())
        self.answered.set()

    def on_disconnected(self) -> None:
        self.answered.set()
        self._lost(self._connection)

    def on_heartbeat_timeout(self) -> None:
        logger.warning("STOMP heart-beats stopped arriving; reconnecting")


class _SocketErrors(logging.Handler):
    """Keeps the socket or TLS error stomp.py logs for each of our brokers it could not reach.

    stomp.py's transport catches them (``attempt_connection``), logs "could not connect to host %s,
    port %s: %s" and raises an empty ConnectFailedException; this is the only place the reason
    (refused, a certificate that does not verify) survives.
    """

    def __init__(self, hosts: list[tuple[str, int]]) -> None:
        super().__init__(logging.WARNING)
        self._hosts = {(h, str(p)) for h, p in hosts}
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if (
            isinstance(args, tuple)
            and len(args) == 3
            and str(record.msg).startswith("could not connect")
            and (str(args[0]), str(args[1])) in self._hosts
        ):
            self.errors.append(f"{args[0]}:{args[1]}: {args[2]}")


def _connection(spec: StompSpec, hosts: list[tuple[str, int]]) -> stomp.Connection12:
    heartbeat = int(spec.heartbeat * 1000)
    conn = stomp.Connection12(
        host_and_ports=hosts,
        vhost=spec.vhost,
        heartbeats=(heartbeat, heartbeat),
        keepalive=True,
        timeout=_CONNECT_TIMEOUT,
        auto_decode=False,  # the body's bytes, as Hermes sent them
        reconnect_attempts_max=1,  # the backoff is ours (StompUpstream._run), across all brokers
    )
    if spec.tls:
        conn.set_ssl(
            for_hosts=hosts,
            ca_certs=spec.ca_bundle,
            cert_file=spec.cert,
            key_file=spec.key,
            verify=spec.verify,
        )
    return conn


def login_problem(spec: StompSpec) -> str | None:
    """Connect and log in as the source would, then disconnect: why it failed, or None.

    No SUBSCRIBE: a subscription would take messages off the queue while it lasts.
    """
    hosts = [_host_port(b) for b in spec.brokers]
    conn = _connection(spec, hosts)
    errors: list[str] = []

    class _Errors(stomp.ConnectionListener):  # type: ignore[misc]
        def on_error(self, frame: Any) -> None:
            body = frame.body.decode(errors="replace") if isinstance(frame.body, bytes) else str(frame.body)
            errors.append(f"{frame.headers.get('message', '')} {body}".strip())

    conn.set_listener("doctor", _Errors())
    socket_errors = _SocketErrors(hosts)
    stomp_log = logging.getLogger("stomp.py")
    stomp_log.addHandler(socket_errors)
    password = spec.password.reveal() if spec.password is not None else None
    try:
        conn.connect(spec.username, password, wait=True)
    except stomp.exception.StompException as exc:
        return "; ".join(errors or socket_errors.errors) or type(exc).__name__
    finally:
        stomp_log.removeHandler(socket_errors)
    with contextlib.suppress(stomp.exception.StompException, OSError):
        conn.disconnect()
    return None


def _host_port(broker: str) -> tuple[str, int]:
    host, _, port = broker.rpartition(":")
    return host.strip("[]"), int(port)


class StompUpstream:
    """Subscribes to one destination and keeps the subscription up (see the module docstring)."""

    def __init__(self, spec: StompSpec, source: str, metrics: ProducerMetrics | None = None) -> None:
        self.spec = spec
        self.source = source
        self._reconnects = (metrics or ProducerMetrics()).reconnects.labels(source)
        self.hosts = [_host_port(b) for b in spec.brokers]
        self.description = f"stomp {spec.destination} on {','.join(spec.brokers)}"
        self._queue: queue.Queue[_Message] = queue.Queue()
        self._lock = threading.Lock()
        self._conn: stomp.Connection12 | None = None
        self._generation = 0  # one per connection attempt
        self._live = 0  # the connection whose acks still mean something; 0 while down
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Successful connects so far (the first, then each reconnect).
        self.connects = 0
        #: Why the last connect failed or the broker sent an ERROR frame, for logs and status.
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._live != 0

    # -- Upstream ------------------------------------------------------------------------------
    def open(self) -> None:
        """Connect and subscribe once here (a wrong password or certificate fails the start with
        the broker's reason); later losses are reconnected with backoff on the upstream's thread."""
        try:
            self._connect()
        except (stomp.exception.StompException, OSError) as exc:
            raise RemoteError(
                f"source {self.source}: STOMP connect to {','.join(self.spec.brokers)} failed: "
                f"{self._reason(exc)}",
                call="CONNECT",
            ) from exc
        self._thread = threading.Thread(target=self._run, name=f"stomp-{self.source}", daemon=True)
        self._thread.start()

    def receive(self, timeout: float) -> Sequence[Delivery]:
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        messages = [first]
        while len(messages) < _BATCH:
            try:
                messages.append(self._queue.get_nowait())
            except queue.Empty:
                break
        # MESSAGE frames can come on a new connection before its SUBSCRIBE receipt made it the
        # live one: wait for that (bounded), or they would be dropped here unacknowledged and hold
        # a prefetch slot until the connection ends.
        newest = self._generation
        deadline = time.monotonic() + _CONNECT_TIMEOUT
        while (
            any(m.connection == newest for m in messages)
            and self._live != newest
            and self._generation == newest
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        live = self._live
        # A message of a lost connection is the broker's again; it comes back on the new one.
        return [self._delivery(m) for m in messages if m.connection == live]

    def acknowledge(self, deliveries: Sequence[Delivery]) -> None:
        self._settle(deliveries, ack=True)

    def release(self, deliveries: Sequence[Delivery], reason: str) -> None:
        logger.warning("source %s: handing %d messages back (%s)", self.source, len(deliveries), reason)
        self._settle(deliveries, ack=False)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=_CONNECT_TIMEOUT + 5)
        self._disconnect()

    # -- internals -------------------------------------------------------------------------
    def _delivery(self, message: _Message) -> Delivery:
        headers = message.headers
        ack_id = headers.get("ack") or headers.get("message-id", "")
        size, limit = len(message.body), self.spec.max_message
        return Delivery(
            body=message.body,
            origin=f"stomp {self.spec.destination} {headers.get('message-id', '?')}",
            attributes=headers,
            handle=_Handle(message.connection, ack_id),
            received_ms=message.received_ms,
            rejected=f"message of {size} bytes is over stomp.max_message ({limit})" if size > limit else None,
        )

    def _settle(self, deliveries: Sequence[Delivery], *, ack: bool) -> None:
        with self._lock:
            conn, live = self._conn, self._live
        stale = 0
        for delivery in deliveries:
            handle: _Handle = delivery.handle
            if conn is None or handle.connection != live:
                stale += 1
                continue
            try:
                if ack:
                    conn.ack(handle.ack_id)
                else:
                    conn.nack(handle.ack_id)
            except (stomp.exception.StompException, OSError) as exc:
                logger.warning("source %s: STOMP %s failed: %s", self.source, "ACK" if ack else "NACK", exc)
                stale += 1
        if stale:
            # Their connection is gone: the broker redelivers them, and the consumer's dedup
            # window drops the second copy of any that Kafka already has.
            logger.info("source %s: %d messages of a lost connection will be redelivered", self.source, stale)

    def _received(self, message: _Message) -> None:
        self._queue.put(message)

    def _broker_error(self, text: str) -> None:
        self.last_error = text
        logger.error("source %s: STOMP broker error: %s", self.source, text)

    def _lost(self, connection: int) -> None:
        with self._lock:
            if connection != self._live:
                return
            self._live = 0
        if not self._stop.is_set():
            logger.warning("source %s: STOMP connection lost; reconnecting", self.source)
        self._wake.set()

    def _run(self) -> None:
        delay: float = self.spec.reconnect_backoff
        while not self._stop.is_set():
            if self._live:
                self._wake.wait()
                self._wake.clear()
                continue
            self._disconnect()
            try:
                self._connect()
            except (stomp.exception.StompException, OSError) as exc:
                logger.warning(
                    "source %s: STOMP connect failed: %s; next try in %.1fs",
                    self.source,
                    self._reason(exc),
                    delay,
                )
                self._stop.wait(delay * random.uniform(0.8, 1.2))  # noqa: S311 (jitter, not crypto)
                delay = min(delay * 2, self.spec.reconnect_backoff_max)
                continue
            delay = self.spec.reconnect_backoff

    def _reason(self, exc: BaseException) -> str:
        # stomp-py logs each host's socket or TLS error itself and raises only this, empty.
        if self.last_error is None:
            plain = isinstance(exc, stomp.exception.ConnectFailedException) and not str(exc)
            self.last_error = "no broker answered (stomp.py's log says why)" if plain else str(exc)
        return self.last_error

    def _connect(self) -> None:
        spec = self.spec
        conn = _connection(spec, self.hosts)
        with self._lock:
            self._generation += 1
            generation = self._generation
        listener = _Listener(generation, self._received, self._broker_error, self._lost)
        conn.set_listener("dcnios", listener)
        self.last_error = None
        password = spec.password.reveal() if spec.password is not None else None
        socket_errors = _SocketErrors(self.hosts)
        stomp_log = logging.getLogger("stomp.py")
        stomp_log.addHandler(socket_errors)
        try:
            try:
                conn.connect(spec.username, password, wait=True)
            except stomp.exception.ConnectFailedException:
                if socket_errors.errors and self.last_error is None:
                    self.last_error = "; ".join(socket_errors.errors)
                raise
            finally:
                stomp_log.removeHandler(socket_errors)
            conn.subscribe(
                spec.destination,
                id=f"dcnios-{self.source}",
                ack="client-individual",
                # Each broker reads its own prefetch header and ignores the other's (RabbitMQ
                # STOMP "prefetch-count"; ActiveMQ "activemq.prefetchSize").
                headers={
                    "prefetch-count": str(spec.prefetch),
                    "activemq.prefetchSize": str(spec.prefetch),
                    "receipt": _SUBSCRIBED,
                },
            )
            listener.answered.wait(_CONNECT_TIMEOUT)
            if not listener.subscribed:
                raise stomp.exception.ConnectFailedException(
                    f"SUBSCRIBE {spec.destination} refused: {self.last_error or 'no receipt'}"
                )
        except BaseException:
            with contextlib.suppress(stomp.exception.StompException, OSError):
                conn.disconnect()
            raise
        with self._lock:
            self._conn, self._live = conn, generation
        if not conn.is_connected():  # dropped before _live was set: _lost ignored it
            self._lost(generation)
        self.connects += 1
        if self.connects > 1:
            self._reconnects.inc()
        logger.info("source %s: STOMP subscribed to %s", self.source, spec.destination)

    def _disconnect(self) -> None:
        with self._lock:
            conn, self._conn, self._live = self._conn, None, 0
        if conn is not None:
            # Already gone: fine, the broker requeues what was not acknowledged.
            with contextlib.suppress(stomp.exception.StompException, OSError):
                conn.disconnect()
