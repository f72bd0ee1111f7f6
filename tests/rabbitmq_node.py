"""A private RabbitMQ node with its STOMP plugin (Debian's rabbitmq-server), for the Rucio tests.

Rucio's Hermes publishes to ActiveMQ or RabbitMQ over STOMP (rucio lib/rucio/daemons/hermes/
hermes.py); interTwin's instance is a RabbitMQ. The node runs as a child process with its own node
name, its own epmd, data and logs in a temporary directory and every listener on 127.0.0.1, so it
never meets a system RabbitMQ. Debian's /usr/sbin/rabbitmq-server wrapper switches to the
`rabbitmq` user when run as root, so the server script inside the package is run instead.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import stomp
import stomp.exception

from dcnios.broker import free_port
from dcnios.sandbox.tls import Pki, make_pki

__all__ = ["RabbitNode", "rabbitmq_missing"]

_SERVER_GLOB = "/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"
_START_TIMEOUT = 90.0


def _server_script() -> str | None:
    found = sorted(glob.glob(_SERVER_GLOB))
    return found[-1] if found else None


def rabbitmq_missing() -> str | None:
    """Why the node cannot start here, or None."""
    if _server_script() is None:
        return "rabbitmq-server is not installed (Debian package rabbitmq-server; .ci/run installs it)"
    if shutil.which("epmd") is None:
        return "epmd (Erlang) is not installed; it comes with Debian's rabbitmq-server"
    if not glob.glob(_SERVER_GLOB.replace("sbin/rabbitmq-server", "plugins/rabbitmq_stomp-*")):
        return "rabbitmq-server has no rabbitmq_stomp plugin"
    return None


@dataclass
class RabbitNode:
    """One RabbitMQ node: STOMP in plain text and over TLS, a user, a vhost (as interTwin's `rucio`)."""

    base: Path
    vhost: str = "rucio"
    user: str = "hermes"

    def __post_init__(self) -> None:
        self.password = secrets.token_urlsafe(12)
        self.stomp_port = free_port()
        self.stomp_tls_port = free_port()
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.pki: Pki = make_pki(self.base / "pki")
        self.started_in = 0.0
        self._server: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] = {}

    def _environment(self) -> dict[str, str]:
        base = self.base
        (base / "rabbitmq.conf").write_text(
            f"""\
listeners.tcp.default = 127.0.0.1:{self.amqp_port}
stomp.listeners.tcp.1 = 127.0.0.1:{self.stomp_port}
stomp.listeners.ssl.1 = 127.0.0.1:{self.stomp_tls_port}
ssl_options.cacertfile = {self.pki.ca}
ssl_options.certfile = {self.pki.cert}
ssl_options.keyfile = {self.pki.key}
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
default_vhost = {self.vhost}
default_user = {self.user}
default_pass = {self.password}
loopback_users = none
log.console = false
log.file.level = warning
"""
        )
        # The file `rabbitmq-plugins --offline enable rabbitmq_stomp` would write; writing it
        # directly saves an Erlang VM start (a few seconds) per session.
        (base / "enabled_plugins").write_text("[rabbitmq_stomp].\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(base),  # the Erlang cookie is written here, not in the real home
            RABBITMQ_NODENAME=f"dcnios{self.stomp_port}@localhost",
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_PID_FILE=str(base / "rabbit.pid"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            # Erlang distribution listens on every interface unless told otherwise.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def start(self) -> RabbitNode:
        script = _server_script()
        assert script is not None, rabbitmq_missing()
        env = self._env = self._environment()
        began = time.monotonic()
        self._epmd = subprocess.Popen(
            ["epmd", "-address", "127.0.0.1", "-port", str(self.epmd_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with (self.base / "server.out").open("wb") as out:
            self._server = subprocess.Popen(
                [script], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.base, start_new_session=True
            )
        try:
            self._wait_for_stomp(began + _START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began
        return self

    def _wait_for_stomp(self, deadline: float) -> None:
        assert self._server is not None
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                tail = (self.base / "server.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"rabbitmq-server exited with {self._server.returncode}:\n{tail}")
            try:  # the port first: stomp.py logs a warning for every refused connection
                socket.create_connection(("127.0.0.1", self.stomp_port), timeout=1).close()
            except OSError:
                time.sleep(0.2)
                continue
            conn = self.connection()
            try:
                conn.connect(self.user, self.password, wait=True)
            except (stomp.exception.ConnectFailedException, OSError):
                time.sleep(0.2)
                continue
            conn.disconnect()
            return
        raise RuntimeError(f"RabbitMQ's STOMP listener did not answer within {_START_TIMEOUT:.0f}s")

    def connection(self) -> stomp.Connection12:
        """A plain-text STOMP 1.2 connection to the node, set up as Hermes sets up its own."""
        return stomp.Connection12(
            host_and_ports=[("127.0.0.1", self.stomp_port)], vhost=self.vhost, keepalive=True, timeout=3
        )

    def publish_as_hermes(self, destination: str, body: bytes | str, event_type: str) -> None:
        """Send one message exactly as Hermes's deliver_to_activemq does (headers included)."""
        conn = self.connection()
        conn.connect(self.user, self.password, wait=True)
        try:
            conn.send(
                body=body,
                destination=destination,
                headers={"persistent": "true", "event_type": event_type},
            )
        finally:
            conn.disconnect()

    def ctl(self, *args: str) -> str:
        """rabbitmqctl against this node."""
        script = _server_script()
        assert script is not None
        return subprocess.run(
            [script.replace("rabbitmq-server", "rabbitmqctl"), "-q", *args],
            env=self._env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout

    def close_connections(self) -> None:
        """Drop every STOMP client connection, as a broker restart or a network cut does.

        rabbitmqctl close_all_connections leaves STOMP connections alone; the plugin's own function
        (rabbit_stomp.erl, also used when the plugin stops) closes them.
        """
        self.ctl("eval", 'rabbit_stomp:close_all_client_connections("dcnios test: connection dropped").')

    def queue_counts(self, queue: str) -> tuple[int, int]:
        """(ready, unacknowledged) messages of a queue, as the broker itself counts them (rabbitmqctl)."""
        out = self.ctl("list_queues", "-p", self.vhost, "name", "messages_ready", "messages_unacknowledged")
        for line in out.splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[0] == queue:
                return int(fields[1]), int(fields[2])
        return 0, 0

    def stop(self) -> None:
        if self._server is not None and self._server.poll() is None:
            self._server.send_signal(signal.SIGTERM)  # the script stops the node cleanly on TERM
            try:
                self._server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self._server.pid, signal.SIGKILL)
                self._server.wait()
        if self._epmd is not None and self._epmd.poll() is None:
            self._epmd.terminate()
            self._epmd.wait(10)

    def __enter__(self) -> RabbitNode:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
