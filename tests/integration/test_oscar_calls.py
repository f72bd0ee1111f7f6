"""The consumer's asyncio calls answer as the blocking client does, on both of its transports:
the lean HTTP/1.1 connection pool (the default) and aiohttp (a given session, or a proxy).

Hostile and unusual answers come from raw sockets; the usual ones from the OSCAR emulator and,
where it is installed, from Debian's nginx (a server nobody here wrote)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from test_oscar_answers import Send, hostile_oscar, tls_oscar  # noqa: F401 - the fixture

from dcnios.aio import loop_factory
from dcnios.consumers.calls import OscarCalls, tls_context
from dcnios.consumers.oscar import Attempt, OscarInvoker
from dcnios.sandbox.oscar import OscarEmulator
from dcnios.spec import parse_spec

pytestmark = pytest.mark.integration

TOKEN = "a" * 64
TRANSPORTS = ["lean", "aiohttp"]


def _invoker(endpoint: str, extra: str = "") -> OscarInvoker:
    spec = parse_spec(
        "consumers:\n  - {name: c, topic: t, oscar: {endpoint: '" + endpoint + "', service: svc, "
        "token: '" + TOKEN + "', timeout: 1s, connect_timeout: 1s, input_path: /in" + extra + "}}\n",
        env={},
    )
    return OscarInvoker(spec.consumers[0].oscar, pool_size=1)


def call(
    invoker: OscarInvoker, transport: str, times: int = 1, headers: dict[str, str] | None = None
) -> list[Attempt]:
    """``times`` calls in a row on one client, as the consumer makes them."""

    async def run() -> list[Attempt]:
        session = None
        if transport == "aiohttp":
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls_context(invoker.spec.ca_bundle))
            )
        calls = OscarCalls(invoker, concurrency=4, session=session)
        try:
            return [await calls.invoke(b"{}", dict(headers or {})) for _ in range(times)]
        finally:
            await calls.close()
            if session is not None:
                await session.close()

    with asyncio.Runner(loop_factory=loop_factory()) as runner:  # the consumer's loop: uvloop
        return runner.run(run())


@contextmanager
def scripted(answers: list[bytes], *, close_after: bool = False) -> Iterator[tuple[str, list[int]]]:
    """Answers requests in order, on as many connections as the client opens; yields the endpoint
    and the number of connections accepted. ``close_after``: close each connection after one
    answer without saying so (what a server's keep-alive timeout does)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(15)
    accepted = [0]
    queue = list(answers)

    def serve_one(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            while queue:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    request += chunk
                conn.sendall(queue.pop(0))
                if close_after:
                    return

    def serve() -> None:
        with contextlib.suppress(OSError):
            while queue:
                conn, _ = server.accept()
                accepted[0] += 1
                threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    finally:
        server.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_trickled_answer_ends_the_call_at_its_timeout(transport: str) -> None:
    def trickle(send: Send) -> None:
        send(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            send(b"x")
            time.sleep(0.2)

    with hostile_oscar(trickle) as (endpoint, _):
        started = time.monotonic()
        (attempt,) = call(_invoker(endpoint), transport)
        elapsed = time.monotonic() - started
    assert not attempt.ok and attempt.system and attempt.retryable and "the answer took over" in attempt.error
    assert elapsed < 5


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_huge_answer_is_not_read_whole(transport: str) -> None:
    def huge(send: Send) -> None:
        send(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n" % (200 << 20))
        block = b"e" * (1 << 20)
        for _ in range(200):
            send(block)

    with hostile_oscar(huge) as (endpoint, sent):
        (attempt,) = call(_invoker(endpoint), transport)
    assert attempt.status == 500 and attempt.system and len(attempt.error) < 600
    assert sent[0] < 32 << 20


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_answer_cut_short_is_a_failed_call(transport: str) -> None:
    def cut(send: Send) -> None:
        send(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100\r\n\r\nonly ten b")

    with hostile_oscar(cut) as (endpoint, _):
        (attempt,) = call(_invoker(endpoint), transport)
    assert not attempt.ok and attempt.system and attempt.retryable


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tls_with_the_private_ca_and_without_it(transport: str, tls_oscar: tuple[str, Path]) -> None:  # noqa: F811
    endpoint, ca = tls_oscar
    trusted = _invoker(endpoint, f", ca_bundle: '{ca}'")
    trusted._token = "t" * 64  # the emulator's token: no fetch needed
    assert [a.status for a in call(trusted, transport)] == [201]
    (refused,) = call(_invoker(endpoint), transport)
    assert not refused.ok and refused.outage == "tls" and refused.error.startswith("TLS: ")


def test_chunked_answers_retry_after_and_keep_alive() -> None:
    answers = [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nslow \r\n5\r\ndown!\r\n0\r\nX-Trailer: t\r\n\r\n",
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 41\r\n\r\n"
        b'jobs.batch "svc-abc" already exists here.',
        b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://elsewhere/\r\nContent-Length: 0\r\n\r\n",
    ]
    with scripted(answers) as (endpoint, accepted):
        attempts = call(_invoker(endpoint), "lean", times=4, headers={"X-Delegated-Job-ID": "svc-abc"})
    assert attempts[0].ok and attempts[0].status == 201
    assert attempts[1].status == 429 and attempts[1].retry_after == 7 and "slow down!" in attempts[1].error
    assert attempts[2].ok and attempts[2].exists
    assert attempts[3].status == 301 and "https://elsewhere/" in attempts[3].error
    assert accepted[0] == 1  # one keep-alive connection for all four


def test_a_body_delimited_by_the_close_and_a_server_that_drops_idle_connections() -> None:
    answers = [
        b"HTTP/1.1 503 Service Unavailable\r\n\r\nthe ingress says no",  # no length: read to the close
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    ]
    with scripted(answers, close_after=True) as (endpoint, accepted):
        attempts = call(_invoker(endpoint), "lean", times=3)
    assert attempts[0].status == 503 and "the ingress says no" in attempts[0].error
    # The second connection was closed by the server after its answer; the third call finds it
    # dead (at once, or when its request gets no answer) and goes on a new one.
    assert [a.status for a in attempts[1:]] == [201, 201]
    assert accepted[0] == 3


def test_a_broken_status_line_and_a_header_that_cannot_be_sent() -> None:
    with scripted([b"SPDY/3 200 OK\r\n\r\n"]) as (endpoint, _):
        (broken,) = call(_invoker(endpoint), "lean")
    assert not broken.ok and broken.system and "not an HTTP/1.x status line" in broken.error
    invoker = _invoker("http://127.0.0.1:9")
    invoker._token = "t" * 63 + "\r\nX-Injected: 1"  # a fetched token is not checked at load time
    (refused,) = call(invoker, "lean")
    assert not refused.ok and refused.outage == "auth" and "control character" in refused.error


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_emulators_answers_classified_alike(transport: str) -> None:
    with OscarEmulator() as oscar:
        token = oscar.add_service("svc", input_path="/in")
        good = _invoker(oscar.endpoint)
        good._token = token
        assert [a.status for a in call(good, transport, times=3)] == [201, 201, 201]
        oscar.fault = lambda c: 429
        (limited,) = call(good, transport)
        assert limited.status == 429 and limited.retryable and not limited.system
        oscar.fault = None
        (refused,) = call(_invoker(oscar.endpoint), transport)  # a token the service does not have
    assert refused.outage == "auth" and refused.status == 401


@pytest.fixture
def nginx_endpoint(tmp_path: Path) -> Iterator[str]:
    module = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None or not module.exists():
        pytest.skip("Debian's nginx and libnginx-mod-http-echo are not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "logs").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"load_module {module};\nworker_processes 1;\ndaemon off;\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/logs/error.log;\nevents {{ worker_connections 64; }}\n"
        "http {\n  access_log off;\n  keepalive_requests 1000;\n"
        f"  client_body_temp_path {tmp_path};\n  proxy_temp_path {tmp_path};\n"
        f"  fastcgi_temp_path {tmp_path};\n  uwsgi_temp_path {tmp_path};\n  scgi_temp_path {tmp_path};\n"
        f"  server {{\n    listen 127.0.0.1:{port};\n"
        "    location /job/ { echo_read_request_body; echo_status 201; echo_sleep 0.01; }\n"
        "    location /chunked/ { echo_read_request_body; echo_status 429; echo 'slow'; echo 'down'; }\n"
        "  }\n}\n"
    )
    process = __import__("subprocess").Popen([nginx, "-p", str(tmp_path), "-c", str(conf)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def test_against_nginx(nginx_endpoint: str) -> None:
    # nginx answers with keep-alive and (for echo's body) chunked transfer coding.
    attempts = call(_invoker(nginx_endpoint), "lean", times=20)
    assert [a.status for a in attempts] == [201] * 20
    chunked = _invoker(nginx_endpoint)
    chunked.url = nginx_endpoint + "/chunked/svc"
    (limited,) = call(chunked, "lean")
    assert limited.status == 429 and "slow\ndown" in limited.error
