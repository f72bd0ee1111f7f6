"""One ``RecordDriver`` decides for the consumer, ``replay`` and ``dlq replay`` alike, and a
revoke lets the calls under way count. Against the real broker and the OSCAR emulator."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from consumer_harness import committed, consumer_spec, event, invoked_names, produce, spawn_consumer, start
from producer_harness import wait_for

from dcnios.cli import main as dcnios_main
from dcnios.codec import StorageEventCodec
from dcnios.consumers.replay import replay_window
from dcnios.sandbox.oscar import OscarEmulator

pytestmark = pytest.mark.integration


@pytest.fixture
def oscar() -> Iterator[OscarEmulator]:
    with OscarEmulator() as emu:
        emu.add_service("grayify", input_path="/data/in")
        yield emu


def test_dlq_replay_keeps_the_consumers_rate(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    # Before the shared driver, `dlq replay` called as fast as OSCAR answered, whatever the rate.
    prefix = unique("d")
    consumer_spec(  # writes the spec file and creates the topics
        tmp_path, bootstrap, oscar.endpoint, prefix, token=oscar.services["grayify"].token, extra="rate: 4/s"
    )
    codec, producer = StorageEventCodec(), Producer({"bootstrap.servers": bootstrap})
    for i in range(9):
        ev = event(i)
        value, headers = codec.encode(ev, f"{prefix}.events")  # a dead letter is the record as consumed
        producer.produce(f"{prefix}.events.dlq", value, ev.key, headers=headers)
    assert producer.flush(10) == 0
    config = str(tmp_path / f"{prefix}.yaml")
    assert dcnios_main(["dlq", "replay", "svc", "-c", config, "--idle-exit", "2"]) == 0
    calls = oscar.job_calls("grayify")
    assert sorted(invoked_names(calls)) == sorted(event(i).name for i in range(9))
    spread = max(c.at for c in calls) - min(c.at for c in calls)
    assert spread >= 8 / 4 - 0.1, f"9 calls at 4/s took {spread:.2f}s"


def test_replay_waits_for_room_under_max_pending_jobs(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    # Before the shared driver, `replay` ignored max_pending_jobs and posted the whole window.
    with OscarEmulator(job_duration=1.0) as oscar:
        oscar.add_service("grayify", input_path="/data/in")
        prefix = unique("r")
        spec = consumer_spec(
            tmp_path,
            bootstrap,
            oscar.endpoint,
            prefix,
            oscar_extra="max_pending_jobs: 2, pending_poll_interval: 100ms",
        )
        started = int(time.time() * 1000) - 1000
        produce(bootstrap, f"{prefix}.events", [event(i) for i in range(6)])
        result = replay_window(spec, spec.consumers[0], started, int(time.time() * 1000) + 1000)
        assert result.invoked == 6 and not result.failed
        calls = sorted(c.at for c in oscar.job_calls("grayify"))
    # Two jobs at a time, a second each: the fifth call waits for two jobs to end, twice over.
    assert calls[4] - calls[0] >= 1.8, [round(t - calls[0], 2) for t in calls]


def test_a_revoke_commits_the_calls_that_were_under_way(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    # Calls that finish while their partition is being revoked count: the revoke commits them, so
    # the partition's next owner does not invoke them again. (They used to be dropped as stale.)
    with OscarEmulator(latency=5.0) as oscar:
        oscar.add_service("grayify", input_path="/data/in")
        prefix = unique("v")
        spec = consumer_spec(
            tmp_path,
            bootstrap,
            oscar.endpoint,
            prefix,
            token=oscar.services["grayify"].token,
            partitions=2,
            oscar_extra="timeout: 20s",
        )
        producer, codec = Producer({"bootstrap.servers": bootstrap}), StorageEventCodec()
        for i in range(4):
            ev = event(i)
            value, headers = codec.encode(ev, f"{prefix}.events")
            producer.produce(f"{prefix}.events", value, ev.key, headers=headers, partition=i % 2)
        assert producer.flush(10) == 0
        first = start(spec)
        second = None
        try:
            wait_for(lambda: len(oscar.calls) >= 4, 30)  # all four under way, for 5 s each
            second = start(spec)  # the join revokes both of the first member's partitions
            wait_for(
                lambda: sum(committed(bootstrap, f"{prefix}-svc", f"{prefix}.events", 2).values()) == 4, 60
            )
            time.sleep(2)  # room for a second invocation, if one were coming
        finally:
            first.halt()
            if second is not None:
                second.halt()
        counts = Counter(invoked_names(oscar.job_calls("grayify")))
    assert counts == {event(i).name: 1 for i in range(4)}


def test_a_stop_does_not_wait_for_a_health_probe_under_way(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    # The breaker's GET /health ran on asyncio's default executor, which a closing loop joins: a
    # stop waited for a hanging probe to time out (its 10 s read timeout). A raw socket stands in
    # for an OSCAR whose jobs fail with 503 and whose /health hangs.
    server = socket.create_server(("127.0.0.1", 0))
    probes: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError), server:
            while True:
                conn, _ = server.accept()
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

    def answer(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), contextlib.ExitStack() as closing:
            closing.callback(lambda: None if conn in probes else conn.close())
            while True:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                if head.startswith(b"GET /health"):
                    probes.append(conn)  # never answered
                    return
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                body = head.split(b"\r\n\r\n", 1)[1]
                while len(body) < length:
                    body += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    prefix = unique("h")
    consumer_spec(tmp_path, bootstrap, endpoint, prefix, token="t" * 64, oscar_extra="connect_timeout: 5s")
    produce(bootstrap, f"{prefix}.events", [event(i) for i in range(8)])
    with (tmp_path / "consumer.log").open("wb") as log:
        proc = spawn_consumer(str(tmp_path / f"{prefix}.yaml"), log)
        try:
            wait_for(lambda: probes, 60)  # the breaker opened, and its probe hangs
            stopped = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            took = time.monotonic() - stopped
        finally:
            if proc.poll() is None:
                proc.kill()
            server.close()
            for probe in probes:
                probe.close()
    assert took < 6, f"the stop took {took:.1f}s"
