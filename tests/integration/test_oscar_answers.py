"""OSCAR's answers are read within bounds: a huge body or a trickle cannot hold a call forever."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dcnios.consumers.oscar import OscarInvoker
from dcnios.sandbox.tls import make_pki
from dcnios.spec import parse_spec

pytestmark = pytest.mark.integration


Send = Callable[[bytes], None]


@contextmanager
def hostile_oscar(answer: Callable[[Send], None]) -> Iterator[tuple[str, list[int]]]:
    """A server that reads one request and answers through ``answer(send)``; yields the endpoint
    and how many bytes it managed to send."""
    server = socket.create_server(("127.0.0.1", 0))
    sent: list[int] = [0]
    done = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(30)
            conn.recv(65536)

            def send(data: bytes) -> None:
                conn.sendall(data)
                sent[0] += len(data)

            with contextlib.suppress(OSError):  # the client gave up: what was sent is counted
                answer(send)
            done.set()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", sent
    finally:
        done.wait(15)
        server.close()


def invoker(endpoint: str) -> OscarInvoker:
    spec = parse_spec(
        "consumers:\n  - {name: c, topic: t, oscar: {endpoint: '" + endpoint + "', service: svc, "
        "token: '" + "a" * 64 + "', timeout: 1s, connect_timeout: 1s, input_path: /in}}\n",
        env={},
    )
    return OscarInvoker(spec.consumers[0].oscar, pool_size=1)


def test_a_trickled_answer_ends_the_call_at_its_timeout() -> None:
    def trickle(send: Send) -> None:
        send(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):  # one byte every 0.2 s: each read is in time, the whole is not
            send(b"x")
            time.sleep(0.2)

    with hostile_oscar(trickle) as (endpoint, _):
        started = time.monotonic()
        attempt = invoker(endpoint).invoke(b"{}", {})
        elapsed = time.monotonic() - started
    assert not attempt.ok and attempt.system and attempt.retryable
    assert "the answer took over" in attempt.error
    assert elapsed < 5  # timeout (1 s) + connect_timeout (1 s), not the 20 s the trickle lasts


def test_a_huge_answer_is_not_read_whole() -> None:
    def huge(send: Send) -> None:
        send(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n" % (200 << 20))
        block = b"e" * (1 << 20)
        for _ in range(200):
            send(block)

    with hostile_oscar(huge) as (endpoint, sent):
        attempt = invoker(endpoint).invoke(b"{}", {})
    assert attempt.status == 500 and attempt.system and len(attempt.error) < 600
    assert sent[0] < 32 << 20  # the client closed the connection after its 64 KiB


class _TlsOscar(BaseHTTPRequestHandler):
    """OSCAR's token lookup and /job, over HTTPS with a private CA."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"name": "svc", "token": "t" * 64}).encode()
        self.send_response(200 if self.path == "/system/services/svc" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ok = self.headers.get("Authorization") == "Bearer " + "t" * 64
        self.send_response(201 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def tls_oscar(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    pki = make_pki(tmp_path / "pki")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TlsOscar)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", pki.ca
    finally:
        server.shutdown()
        server.server_close()


def _fetching_invoker(endpoint: str, ca: Path | None) -> OscarInvoker:
    bundle = f", ca_bundle: '{ca}'" if ca else ""
    spec = parse_spec(
        "consumers:\n  - {name: c, topic: t, oscar: {endpoint: '" + endpoint + "', service: svc, "
        "username: oscar, password: secret, input_path: /in" + bundle + "}}\n",
        env={},
    )
    return OscarInvoker(spec.consumers[0].oscar, pool_size=1)


def test_the_token_is_fetched_with_the_private_ca(tls_oscar: tuple[str, Path]) -> None:
    # oscar-python passed bool(ssl) to requests, so a private ca_bundle never reached the fetch.
    endpoint, ca = tls_oscar
    attempt = _fetching_invoker(endpoint, ca).invoke(b"{}", {})
    assert attempt.ok and attempt.status == 201


def test_an_unverifiable_certificate_holds_every_call(tls_oscar: tuple[str, Path]) -> None:
    endpoint, _ = tls_oscar
    spec = parse_spec(
        "consumers:\n  - {name: c, topic: t, oscar: {endpoint: '" + endpoint + "', service: svc, "
        "token: '" + "t" * 64 + "', input_path: /in}}\n",
        env={},
    )
    attempt = OscarInvoker(spec.consumers[0].oscar, pool_size=1).invoke(b"{}", {})
    assert not attempt.ok and attempt.outage == "tls" and attempt.error.startswith("TLS: ")


def test_an_answer_cut_short_is_a_failed_call_not_a_crash() -> None:
    def cut(send: Send) -> None:
        send(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100\r\n\r\nonly ten b")

    with hostile_oscar(cut) as (endpoint, _):
        attempt = invoker(endpoint).invoke(b"{}", {})
    assert not attempt.ok and attempt.system and attempt.retryable
