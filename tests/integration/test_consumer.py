"""dcnios-consumer against the OSCAR emulator and the real broker."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from consumer_harness import committed, consumer_spec, event, invoked_names, produce, spawn_consumer, start
from producer_harness import read_topic, run_in_thread, wait_for

from dcnios.broker import free_port
from dcnios.cli import main as dcnios_main
from dcnios.codec import StorageEventCodec
from dcnios.consumers.oscar import Attempt
from dcnios.consumers.run import ConsumerRunner
from dcnios.control import write_control
from dcnios.sandbox.oscar import Call, OscarEmulator
from dcnios.storage_event import dcache_envelope

pytestmark = pytest.mark.integration


@pytest.fixture
def oscar() -> Iterator[OscarEmulator]:
    with OscarEmulator() as emu:
        emu.add_service("grayify", input_path="/data/in")
        yield emu


def test_every_record_invoked_exactly_once(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    token = oscar.services["grayify"].token
    spec = consumer_spec(tmp_path, bootstrap, oscar.endpoint, prefix, token=token)
    events = [event(i) for i in range(200)]
    produce(bootstrap, f"{prefix}.events", events)
    running = start(spec)
    try:
        wait_for(lambda: len(oscar.jobs("grayify")) >= 200, 60)
        wait_for(
            lambda: sum(committed(bootstrap, f"{prefix}-svc", f"{prefix}.events", 6).values()) == 200, 30
        )
    finally:
        running.halt()
    calls = oscar.job_calls("grayify")
    assert sorted(invoked_names(calls)) == sorted(e.name or "" for e in events)
    by_name = {json.loads(c.body)["event"]["name"]: c for c in calls}
    first = by_name["f00000.png"]
    assert first.body == dcache_envelope(events[0])  # the byte-exact dCache envelope, not base64
    assert first.headers["Authorization"] == f"Bearer {token}"
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["traceparent"].startswith("00-") and len(first.headers["traceparent"]) == 55
    assert not running.errors


def test_keys_run_in_parallel_each_in_order(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    spec = consumer_spec(
        tmp_path,
        bootstrap,
        oscar.endpoint,
        prefix,
        token=oscar.services["grayify"].token,
        partitions=1,
        extra="payload: record",
    )
    overlap = {"now": 0, "max": 0}
    lock = threading.Lock()

    def slow(call: Call) -> None:
        with lock:
            overlap["now"] += 1
            overlap["max"] = max(overlap["max"], overlap["now"])
        time.sleep(0.02)
        with lock:
            overlap["now"] -= 1

    oscar.fault = slow  # type: ignore[assignment]
    # 12 keys in ONE partition: key ordering still lets different paths run side by side.
    events = [event(i, path=f"/data/in/k{i % 12}.png") for i in range(240)]
    produce(bootstrap, f"{prefix}.events", events)
    running = start(spec)
    try:
        wait_for(lambda: len(oscar.jobs("grayify")) >= 240, 60)
    finally:
        running.halt()
    seen: dict[str, list[int]] = defaultdict(list)
    for call in oscar.job_calls("grayify"):
        record = json.loads(call.body)
        seen[record["path"]].append(record["event_id"])
    assert {k: len(v) for k, v in seen.items()} == {f"/data/in/k{i}.png": 20 for i in range(12)}
    for ids in seen.values():
        assert ids == sorted(ids)
    assert overlap["max"] > 1  # within one partition, several keys were in flight at once


def test_order_of_same_key_follows_offsets(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    spec = consumer_spec(
        tmp_path,
        bootstrap,
        oscar.endpoint,
        prefix,
        token=oscar.services["grayify"].token,
        partitions=1,
        extra="    ordering: key\n    payload: record\n",
    )
    rng = random.Random(3)
    oscar.fault = lambda call: time.sleep(rng.uniform(0, 0.005))  # type: ignore[func-returns-value]
    events = [event(i, path=f"/data/in/k{i % 5}.png") for i in range(100)]
    produce(bootstrap, f"{prefix}.events", events)
    running = start(spec)
    try:
        wait_for(lambda: len(oscar.jobs("grayify")) >= 100, 60)
    finally:
        running.halt()
    seen: dict[str, list[int]] = defaultdict(list)
    for call in oscar.job_calls("grayify"):
        record = json.loads(call.body)  # payload: record carries the full path and event id
        seen[record["path"]].append(record["event_id"])
    for ids in seen.values():
        assert ids == sorted(ids)
    assert sum(len(v) for v in seen.values()) == 100


def test_commits_never_pass_an_unfinished_record(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    spec = consumer_spec(
        tmp_path,
        bootstrap,
        oscar.endpoint,
        prefix,
        token=oscar.services["grayify"].token,
        partitions=1,
        extra="    retry: {max_attempts: 1000, initial_backoff: 20ms, max_backoff: 50ms}\n",
    )
    release = threading.Event()
    oscar.fault = lambda call: None if release.is_set() or b"f00010" not in call.body else 503
    produce(bootstrap, f"{prefix}.events", [event(i) for i in range(30)])
    running = start(spec)
    try:
        wait_for(lambda: len(oscar.jobs("grayify")) >= 29, 60)
        time.sleep(1.5)  # let two commit intervals pass while f00010 keeps failing
        assert committed(bootstrap, f"{prefix}-svc", f"{prefix}.events", 1)[0] == 10
        release.set()
        wait_for(lambda: committed(bootstrap, f"{prefix}-svc", f"{prefix}.events", 1)[0] == 30, 30)
    finally:
        release.set()
        running.halt()


def test_failures_end_invoked_or_in_dlq(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    spec = consumer_spec(
        tmp_path,
        bootstrap,
        oscar.endpoint,
        prefix,
        token=oscar.services["grayify"].token,
        oscar_extra=", timeout: 300ms",
    )
    rng = random.Random(11)
    lock = threading.Lock()

    def flaky(call: Call) -> int | str | None:
        with lock:
            roll = rng.random()
        if roll < 0.25:
            return rng.choice([500, 502, 503, 504])
        if roll < 0.30:
            return "timeout"
        return None

    oscar.fault = flaky
    events = [event(i) for i in range(150)]
    produce(bootstrap, f"{prefix}.events", events)
    running = start(spec)
    try:
        wait_for(
            lambda: sum(committed(bootstrap, f"{prefix}-svc", f"{prefix}.events", 6).values()) == 150, 90
        )
        dead_letters = int(running.runner.metrics.dlq.labels("svc", "failed")._value.get())
        dlq = read_topic(bootstrap, f"{prefix}.events.dlq", lambda r: len(r) >= dead_letters, timeout=30)
    finally:
        running.halt()
    invoked = set(invoked_names(oscar.job_calls("grayify")))
    dead = {e.name for e in dlq}
    assert invoked | dead == {e.name for e in events}
    assert running.runner.metrics.retries.labels("svc")._value.get() > 20


def test_non_retryable_and_poison_go_to_dlq_with_headers(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    with OscarEmulator() as oscar:
        oscar.add_service("grayify", input_path="/data/in")
        oscar.fault = lambda call: 400  # about this record: not retried
        spec = consumer_spec(
            tmp_path, bootstrap, oscar.endpoint, prefix, token=oscar.services["grayify"].token
        )
        produce(bootstrap, f"{prefix}.events", [event(1)])
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(f"{prefix}.events", b"garbage", b"/data/in/poison", partition=0)
        producer.flush(10)
        running = start(spec)
        try:
            got: list = []  # type: ignore[type-arg]
            wait_for(lambda: len(got.__iadd__(_dlq_raw(bootstrap, f"{prefix}.events.dlq")) or got) >= 2, 60)
        finally:
            running.halt()
    headers = {h["dcnios-http-status"]: h for _, h in got[:2]}
    assert set(headers) == {b"400", b""}
    assert headers[b"400"]["dcnios-attempts"] == b"1"
    assert headers[b"400"]["dcnios-error"].startswith(b"HTTP 400")
    assert b"no dcnios-schema header" in headers[b""]["dcnios-error"]
    assert headers[b"400"]["dcnios-topic"] == f"{prefix}.events".encode()


@pytest.mark.parametrize("refusal", ["wrong token", "no such service"])
def test_refused_credentials_hold_the_backlog_instead_of_dead_lettering_it(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str], refusal: str
) -> None:
    """A 401 that no token refetch clears, or a 404 for the service, is no fault of a record:
    dead-lettering each would empty the backlog into the DLQ at full speed."""
    prefix = unique("c")
    with OscarEmulator(version="3") as oscar:  # v3 answers 404 for an unknown service
        right = oscar.add_service("grayify", input_path="/data/in")
        service = "grayify" if refusal == "wrong token" else "grayify-renamed"
        spec = consumer_spec(
            tmp_path,
            bootstrap,
            oscar.endpoint,
            prefix,
            token="b" * 64,
            oscar_extra=f"service: {service}, health_probe_max: 1s",
        )
        produce(bootstrap, f"{prefix}.events", [event(i) for i in range(20)])
        running = start(spec)
        try:
            runner = running.runner
            wait_for(lambda: runner.breaker.is_open, 30)
            assert "check oscar.service and its token" in runner.breaker.reason
            time.sleep(4)  # probes meanwhile: one call each, at 1 s, then 1 s again
            refused = [c for c in oscar.calls if c.path == f"/job/{service}"]
            assert 1 <= len(refused) <= 16  # the first calls in flight (8), then one per probe
            assert runner.metrics.dlq.labels("svc", "failed")._value.get() == 0
            # Fixed on OSCAR's side: the next probe call passes and the backlog flows.
            if refusal == "wrong token":
                oscar.services["grayify"].token = "b" * 64
            else:
                oscar.add_service("grayify-renamed")
                oscar.services["grayify-renamed"].token = "b" * 64
            wait_for(lambda: len(oscar.jobs(service)) >= 20, 60)
        finally:
            running.halt()
    assert right != "b" * 64
    assert sorted(invoked_names(oscar.job_calls(service))) == [f"f{i:05d}.png" for i in range(20)]


def test_a_poison_record_too_large_for_the_dlq_is_dead_lettered_cut(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    # 1.5 MB: over the DLQ producer's message.max.bytes, which refused the copy at once and left
    # the record neither committed nor dead-lettered (its partition stopped for good).
    prefix = unique("c")
    spec = consumer_spec(tmp_path, bootstrap, oscar.endpoint, prefix, partitions=1)
    big = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": str(4 << 20)})
    big.produce(f"{prefix}.events", b"\x00" * (3 << 19), b"/data/in/poison", partition=0)
    big.flush(10)
    produce(bootstrap, f"{prefix}.events", [event(1)])
    running = start(spec)
    try:
        got: list = []  # type: ignore[type-arg]
        wait_for(lambda: bool(got.__iadd__(_dlq_raw(bootstrap, f"{prefix}.events.dlq")) or got), 60)
        wait_for(lambda: len(oscar.jobs("grayify")) >= 1, 30)  # the record behind it goes on
        wait_for(lambda: committed(bootstrap, f"{prefix}-svc", f"{prefix}.events", 1) == {0: 2}, 30)
    finally:
        running.halt()
    (value, headers), *_ = got
    assert len(value) == 512 << 10
    assert headers["dcnios-truncated"] == b"true" and headers["dcnios-size"] == str(3 << 19).encode()
    assert headers["dcnios-offset"] == b"0" and not running.errors


def _dlq_raw(bootstrap: str, topic: str) -> list:  # type: ignore[type-arg]
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "dlq-reader"})
    md = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
    out = []
    try:
        for _ in range(10):
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                out.append((msg.value(), dict(msg.headers() or [])))
    finally:
        consumer.close()
    return out


def test_token_rotation_refetches_once(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    spec = consumer_spec(tmp_path, bootstrap, oscar.endpoint, prefix)  # username/password: token fetched
    produce(bootstrap, f"{prefix}.events", [event(i) for i in range(20)])
    running = start(spec)
    try:
        wait_for(lambda: len(oscar.jobs("grayify")) >= 20, 60)
        oscar.rotate_token("grayify")
        produce(bootstrap, f"{prefix}.events", [event(i) for i in range(20, 40)])
        wait_for(lambda: len(oscar.jobs("grayify")) >= 40, 60)
    finally:
        running.halt()
    lookups = [c for c in oscar.calls if c.path == "/system/services/grayify"]
    assert len(lookups) == 2
    assert sum(1 for c in oscar.calls if c.path == "/job/grayify" and c.status == 401) >= 1


def test_deterministic_job_ids_make_replays_harmless(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    spec = consumer_spec(
        tmp_path,
        bootstrap,
        oscar.endpoint,
        prefix,
        token=oscar.services["grayify"].token,
        oscar_extra=", job_id: deterministic",
        extra="    dedup_window: 0s\n",
    )
    events = [event(i) for i in range(10)]
    produce(bootstrap, f"{prefix}.events", events + events)  # a producer replay
    running = start(spec)
    try:
        wait_for(lambda: sum(committed(bootstrap, f"{prefix}-svc", f"{prefix}.events", 6).values()) == 20, 60)
    finally:
        running.halt()
    assert len(oscar.jobs("grayify")) == 10
    assert sum(1 for c in oscar.calls if c.status == 500) == 10
    assert running.runner.metrics.dlq.labels("svc", "failed")._value.get() == 0


def test_dedup_window_drops_producer_replays(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    spec = consumer_spec(tmp_path, bootstrap, oscar.endpoint, prefix, token=oscar.services["grayify"].token)
    events = [event(i) for i in range(10)]
    produce(bootstrap, f"{prefix}.events", events + events)
    running = start(spec)
    try:
        wait_for(lambda: sum(committed(bootstrap, f"{prefix}-svc", f"{prefix}.events", 6).values()) == 20, 60)
    finally:
        running.halt()
    assert Counter(invoked_names(oscar.job_calls("grayify"))) == Counter(e.name for e in events)


def test_filter_skips_and_commits(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    spec = consumer_spec(
        tmp_path,
        bootstrap,
        oscar.endpoint,
        prefix,
        token=oscar.services["grayify"].token,
        extra="    filter: {paths: ['/data/in/**/*.png']}\n",
    )
    produce(
        bootstrap,
        f"{prefix}.events",
        [event(1), event(2, path="/data/in/x.txt"), event(3, "/data/in/a/b.png")],
    )
    running = start(spec)
    try:
        wait_for(lambda: sum(committed(bootstrap, f"{prefix}-svc", f"{prefix}.events", 6).values()) == 3, 60)
    finally:
        running.halt()
    # a/b.png passes the filter, but OSCAR's supervisor cannot stage a nested name: DLQ, not a job.
    assert sorted(invoked_names(oscar.job_calls("grayify"))) == ["f00001.png"]


def test_max_pending_jobs_holds_and_releases(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    with OscarEmulator(job_duration=None) as oscar:  # jobs stay Running until finished by hand
        oscar.add_service("grayify")
        spec = consumer_spec(
            tmp_path,
            bootstrap,
            oscar.endpoint,
            prefix,
            oscar_extra=", max_pending_jobs: 5, pending_poll_interval: 100ms",
        )
        produce(bootstrap, f"{prefix}.events", [event(i) for i in range(20)])
        running = start(spec)
        try:
            wait_for(lambda: len(oscar.jobs("grayify")) >= 5, 60)
            time.sleep(1)  # several job-state polls: nothing more may start
            assert len(oscar.jobs("grayify")) == 5
            oscar.finish_jobs("grayify")
            wait_for(lambda: len(oscar.jobs("grayify")) >= 10, 30)
            oscar.finish_jobs("grayify")
            wait_for(lambda: len(oscar.jobs("grayify")) >= 15, 30)
        finally:
            running.halt()


def _arrivals(oscar: OscarEmulator, start_at: float, end_at: float) -> int:
    return sum(1 for c in oscar.job_calls("grayify") if start_at <= c.at < end_at)


def _healthz(port: int) -> dict:  # type: ignore[type-arg]
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:  # 503 until partitions are assigned
        return json.loads(exc.read())  # type: ignore[no-any-return]
    except OSError:
        return {}


def test_three_processes_share_the_group_rate(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:

    prefix = unique("c")
    consumer_spec(
        tmp_path,
        bootstrap,
        oscar.endpoint,
        prefix,
        token=oscar.services["grayify"].token,
        partitions=12,
        extra="rate: 200/s\nconcurrency: 16",
    )
    produce(bootstrap, f"{prefix}.events", [event(i) for i in range(4000)])
    exe = str(Path(sys.executable).parent / "dcnios-consumer")
    ports = [free_port() for _ in range(3)]
    with open(tmp_path / "members.log", "ab") as log:
        procs = [
            subprocess.Popen(
                [
                    exe,
                    "-c",
                    str(tmp_path / f"{prefix}.yaml"),
                    "--consumer",
                    "svc",
                    "--metrics-port",
                    str(port),
                ],
                stderr=log,
            )
            for port in ports
        ]
        try:
            # Measure once the group has settled: the range assignor gives each member 4 of 12.
            wait_for(lambda: all(len(_healthz(p).get("assigned", [])) == 4 for p in ports), 90)
            assert all(_healthz(p)["rate_limit"] == pytest.approx(200 / 3) for p in ports)
            time.sleep(1)
            t0 = time.time()
            time.sleep(10)
            count = _arrivals(oscar, t0, t0 + 10)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(60)
    assert abs(count / 10 - 200) <= 200 * 0.02, count / 10


def test_runtime_rate_change_and_pause(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    spec = consumer_spec(
        tmp_path,
        bootstrap,
        oscar.endpoint,
        prefix,
        token=oscar.services["grayify"].token,
        extra="    rate: 20/s\n",
    )
    produce(bootstrap, f"{prefix}.events", [event(i) for i in range(3000)])
    running = start(spec)
    try:
        wait_for(running.runner.ready.is_set, 60)
        time.sleep(1)
        write_control(spec.kafka, "svc", rate="100/s")
        changed = time.time()
        wait_for(lambda: running.runner.limiter.rate == 100, 5)
        assert time.time() - changed <= 1.0
        time.sleep(1)
        t0 = time.time()
        time.sleep(3)
        fast = _arrivals(oscar, t0, t0 + 3) / 3
        assert 95 <= fast <= 105, fast
        write_control(spec.kafka, "svc", paused=True)
        wait_for(lambda: running.runner.control.paused, 5)
        time.sleep(0.3)
        before = len(oscar.job_calls("grayify"))
        time.sleep(1)
        assert len(oscar.job_calls("grayify")) == before
        write_control(spec.kafka, "svc", paused=False)
        wait_for(lambda: len(oscar.job_calls("grayify")) > before + 10, 5)
    finally:
        running.halt()
    # The setting survives a restart: a new member starts at 100/s.
    again = start(spec)
    try:
        wait_for(again.runner.ready.is_set, 60)
        assert again.runner.group_rate() == 100
    finally:
        again.halt()


def test_an_unexpected_error_stops_the_member_instead_of_wedging_its_partition(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    token = oscar.services["grayify"].token
    spec = consumer_spec(tmp_path, bootstrap, oscar.endpoint, prefix, token=token, partitions=1)
    events = [event(i) for i in range(10)]
    produce(bootstrap, f"{prefix}.events", events)
    runner = ConsumerRunner(spec, spec.consumers[0], stop=threading.Event())
    real, calls = runner.calls.invoke, [0]

    async def with_a_bug(body: bytes, headers: dict[str, str]) -> Attempt:
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("a bug no decision covers")
        return await real(body, headers)

    runner.calls.invoke = with_a_bug  # type: ignore[method-assign]
    crashed = run_in_thread(runner, runner.stop)
    crashed.thread.join(60)
    assert not crashed.thread.is_alive()
    (error,) = crashed.errors
    assert "a bug no decision covers" in str(error)
    assert committed(bootstrap, f"{prefix}-svc", f"{prefix}.events", 1)[0] < 10
    again = start(spec)  # what a supervisor does: the restart redelivers what was not committed
    try:
        wait_for(lambda: set(invoked_names(oscar.job_calls("grayify"))) >= {e.name for e in events}, 60)
    finally:
        again.halt()


def test_a_consumer_started_while_oscar_is_down_waits_for_it(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    # The input path is read from the service definition at start: OSCAR down then (8 s in the
    # report) made the consumer exit instead of waiting, as its calls would.
    prefix = unique("c")
    port = free_port()
    spec = consumer_spec(tmp_path, bootstrap, f"http://127.0.0.1:{port}", prefix, oscar_extra="input_path: ~")
    produce(bootstrap, f"{prefix}.events", [event(i) for i in range(5)])
    running = start(spec)
    try:
        time.sleep(3)
        assert not running.errors and running.thread.is_alive()
        with OscarEmulator(port=port) as oscar:
            oscar.add_service("grayify", input_path="/data/in")
            wait_for(lambda: len(oscar.jobs("grayify")) >= 5, 60)
    finally:
        running.halt()


def test_a_second_sigterm_stops_at_once_even_with_calls_under_way(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    consumer_spec(
        tmp_path,
        bootstrap,
        oscar.endpoint,
        prefix,
        token=oscar.services["grayify"].token,
        extra="drain_timeout: 60s\n",
        oscar_extra="timeout: 60s",
    )
    oscar.latency = 30.0  # every call takes half a minute: the first SIGTERM waits for them
    produce(bootstrap, f"{prefix}.events", [event(i) for i in range(4)])
    config = str(tmp_path / f"{prefix}.yaml")
    with open(tmp_path / "consumer.log", "ab") as log:
        proc = spawn_consumer(config, log)
        try:
            wait_for(lambda: len(oscar.calls) >= 4, 60)
            proc.send_signal(signal.SIGTERM)
            time.sleep(1)
            assert proc.poll() is None  # draining: the calls under way may still finish
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            assert proc.wait(20) == 130
            assert time.monotonic() - started < 5
        finally:
            if proc.poll() is None:
                proc.kill()


def test_kill_9_mid_stream_then_restart(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    consumer_spec(
        tmp_path,
        bootstrap,
        oscar.endpoint,
        prefix,
        token=oscar.services["grayify"].token,
        extra="    rate: 300/s\n",
    )
    config = str(tmp_path / f"{prefix}.yaml")
    events = [event(i) for i in range(600)]
    produce(bootstrap, f"{prefix}.events", events)
    with open(tmp_path / "consumer.log", "ab") as log:
        proc = spawn_consumer(config, log)
        try:
            wait_for(lambda: len(oscar.jobs("grayify")) >= 200, 60)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = spawn_consumer(config, log)
            wait_for(lambda: set(invoked_names(oscar.job_calls("grayify"))) >= {e.name for e in events}, 120)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    counts = Counter(invoked_names(oscar.job_calls("grayify")))
    assert set(counts) == {e.name for e in events}


def test_cli_rejects_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "kafka: {bootstrap_servers: 'h:1'}\nconsumers:\n"
        "  - {name: svc, topic: t, oscar: {endpoint: 'https://o', service: s, token: t,"
        " max_pending_jobs: 3}, concurrency: 0, ordering: random}\n"
    )
    from dcnios.cli.consumer import main

    assert main(["-c", str(spec), "--consumer", "svc"]) == 2
    err = capsys.readouterr().err
    assert "consumers[0].concurrency: expected a positive number, got 0 (line 3)" in err
    assert "consumers[0].ordering: expected one of key, partition, none, got 'random' (line 3)" in err
    assert dcnios_main(["rate", "svc", "fast", "-c", str(spec)]) == 2


def test_dlq_replay_sends_dead_letters_back(
    bootstrap: str,
    oscar: OscarEmulator,
    tmp_path: Path,
    unique: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = unique("c")
    spec = consumer_spec(tmp_path, bootstrap, oscar.endpoint, prefix, token=oscar.services["grayify"].token)
    broken = threading.Event()
    broken.set()
    # 429: retried, then dead-lettered (a 5xx on every call is an outage, which the breaker holds).
    oscar.fault = lambda call: 429 if broken.is_set() else None
    events = [event(i) for i in range(5)]
    produce(bootstrap, f"{prefix}.events", events)
    running = start(spec)
    try:
        wait_for(lambda: running.runner.metrics.dlq.labels("svc", "failed")._value.get() == 5, 60)
    finally:
        running.halt()
    assert oscar.job_calls("grayify") == []
    broken.clear()  # OSCAR is back
    config = str(tmp_path / f"{prefix}.yaml")
    assert dcnios_main(["dlq", "replay", "svc", "-c", config, "--idle-exit", "2"]) == 0
    assert "replayed 5 dead letters" in capsys.readouterr().out
    assert sorted(invoked_names(oscar.job_calls("grayify"))) == sorted(e.name for e in events)
    # Progress is committed: a second run finds nothing new.
    assert dcnios_main(["dlq", "replay", "svc", "-c", config, "--idle-exit", "2"]) == 0
    assert "replayed 0 dead letters" in capsys.readouterr().out


def test_metrics_and_healthz(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    import urllib.request

    from dcnios.metrics import serve_metrics

    prefix = unique("c")
    spec = consumer_spec(
        tmp_path, bootstrap, oscar.endpoint, prefix, token=oscar.services["grayify"].token, extra="rate: 50/s"
    )
    produce(bootstrap, f"{prefix}.events", [event(i) for i in range(10)])
    running = start(spec)
    port = free_port()
    server = serve_metrics(running.runner.metrics.registry, port, running.runner.health)
    try:
        wait_for(lambda: len(oscar.jobs("grayify")) >= 10, 60)
        wait_for(
            lambda: running.runner.metrics.lag.labels("svc", f"{prefix}.events", "0")._value.get() == 0, 10
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
            text = response.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as response:
            health = json.loads(response.read())
    finally:
        server.shutdown()
        server.server_close()
        running.halt()
    assert 'dcnios_consumer_invocations_total{consumer="svc",status="201"} 10.0' in text
    assert 'dcnios_consumer_group_rate_limit{consumer="svc"} 50.0' in text
    assert "dcnios_consumer_invocation_seconds_bucket" in text
    assert f'dcnios_consumer_lag{{consumer="svc",partition="0",topic="{prefix}.events"}}' in text
    assert health["ok"] is True and health["consumer"] == "svc" and len(health["assigned"]) == 6


def test_the_first_member_stopped_mid_join_leaves_the_group_usable(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    # Tansu 0.6 wedges a group for good when its first member leaves while that member's JoinGroup
    # is pending (it stays leader, never syncs, never expires), so a stop during a rebalance first
    # lets the rebalance complete.
    prefix = unique("join")
    spec = consumer_spec(tmp_path, bootstrap, oscar.endpoint, prefix)
    # Joining: subscribed and polled, not assigned yet. (librdkafka's own join state, through a
    # stats_cb at 50 ms, crashed the process now and then: confluent-kafka's C layer asserts
    # `cs != NULL` in CallState_get when that callback fires.)
    stop = threading.Event()
    leaver = run_in_thread(ConsumerRunner(spec, spec.consumers[0], stop=stop), stop)
    runner = leaver.runner
    wait_for(lambda: runner._intake is not None and runner._intake._rebalancing, 30)
    intake = runner._intake
    assert intake is not None
    polled = intake.last_tick
    wait_for(lambda: intake.last_tick > polled, 30)  # the JoinGroup is sent from a poll
    time.sleep(0.1)
    assert intake._rebalancing, "assigned before the stop: the join was not pending"
    leaver.halt()
    assert not leaver.errors
    second = start(spec)
    try:
        produce(bootstrap, f"{prefix}.events", [event(i) for i in range(50)])
        wait_for(lambda: len(oscar.jobs("grayify")) >= 50, 60)
    finally:
        second.halt()
    assert sorted(invoked_names(oscar.job_calls("grayify"))) == [f"f{i:05d}.png" for i in range(50)]


def test_a_rebalance_during_retry_backoff_still_dead_letters_every_record(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    """The copy a member re-fetches after a revoke is not a duplicate of its stale copy still
    sleeping in backoff: dedup drops only records whose first copy finished."""
    prefix = unique("c")
    spec = consumer_spec(
        tmp_path,
        bootstrap,
        oscar.endpoint,
        prefix,
        token=oscar.services["grayify"].token,
        partitions=2,
        extra="retry: {max_attempts: 2, initial_backoff: 8s, max_backoff: 8s}\ndrain_timeout: 2s\n",
    )
    oscar.fault = lambda call: 429  # retryable, and not an outage: the breaker stays closed
    codec_producer = Producer({"bootstrap.servers": bootstrap})
    codec = StorageEventCodec()
    topic = f"{prefix}.events"
    for i in range(6):
        ev = event(i)
        value, headers = codec.encode(ev, topic)
        codec_producer.produce(topic, value, ev.key, headers=headers, partition=i % 2)
    assert codec_producer.flush(10) == 0
    first = start(spec)
    second = None
    try:
        wait_for(lambda: len([c for c in oscar.calls if c.path == "/job/grayify"]) >= 6, 60)
        second = start(spec)
        wait_for(lambda: sum(committed(bootstrap, f"{prefix}-svc", topic, 2).values()) == 6, 90)
    finally:
        first.halt()
        if second is not None:
            second.halt()
    dead = read_topic(bootstrap, f"{topic}.dlq", lambda r: len(r) >= 6, timeout=30)
    assert sorted(e.name for e in dead)[:6] == sorted(f"f{i:05d}.png" for i in range(6))
