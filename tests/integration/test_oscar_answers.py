"""OSCAR's answers are read within bounds: a huge body or a trickle cannot hold a call forever."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from dcnios.consumers.oscar import OscarInvoker
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
