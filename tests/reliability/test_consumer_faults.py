"""Consumer-side faults: kill -9 with work in flight, a failing OSCAR, rebalance storms, poison input."""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import (
    Child,
    Tally,
    assigned,
    consumer,
    invoked,
    paths_in,
    produce_events,
    read_all,
    wait_for,
    write_spec,
)

from dcnios.consumers.intake import MIN_WINDOW, WINDOW_FACTOR
from dcnios.consumers.run import ConsumerRunner
from dcnios.producers.run import SourceRunner
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.sandbox.oscar import Call, OscarEmulator
from dcnios.status import pipeline_status
from dcnios.topics import invalid_topic

FULL = pytest.param(True, marks=pytest.mark.reliability, id="full")
REDUCED = pytest.param(False, id="reduced")


def _consumer_spec(
    tmp: Path, bootstrap: str, prefix: str, oscar: str, extra: str = "", oscar_extra: str = ""
) -> tuple:  # type: ignore[type-arg]
    return write_spec(
        tmp,
        f"""\
kafka: {{bootstrap_servers: "{bootstrap}", internal_prefix: {prefix}, topic_defaults: {{partitions: 6}}}}
consumers:
  - name: svc
    group: {prefix}-svc  # unique per test: the session broker outlives it
    topic: {prefix}.events
    oscar:
      {{endpoint: "{oscar}", service: svc, username: oscar, password: oscar123, timeout: 1s{oscar_extra}}}
    concurrency: 32
    retry: {{max_attempts: 6, initial_backoff: 20ms, max_backoff: 200ms}}
    librdkafka: {{session.timeout.ms: "6000", heartbeat.interval.ms: "500"}}
{extra}""",
    )


@pytest.mark.parametrize("job_id", ["random", "deterministic"])
@pytest.mark.parametrize("full", [REDUCED, FULL])
def test_consumer_kill9_with_work_in_flight(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str], tally: list[Tally], full: bool, job_id: str
) -> None:
    n, kills = (20000, 10) if full else (1500, 2)
    with OscarEmulator(version="4.1", latency=0.01) as oscar:
        oscar.add_service("svc", input_path="/in")
        spec, path = _consumer_spec(
            tmp_path, bootstrap, unique("kill9c"), oscar.endpoint, oscar_extra=f", job_id: {job_id}"
        )
        names = [f"f{i:06d}.dat" for i in range(n)]
        produce_events(bootstrap, spec.consumers[0].topic, names)
        child = consumer(path).start()
        try:
            for k in range(kills):
                # Kill while calls are in flight, each time a bit further into the stream.
                target = (k + 1) * n // (kills + 2)
                wait_for(lambda t=target: len(oscar.job_calls("svc")) >= t, 300, f"{target} invocations")
                child.kill9()
                child.start()
            wait_for(lambda: set(names) <= set(invoked(oscar.job_calls("svc"))), 600, "every record invoked")
        finally:
            child.stop()
        accepted = invoked(oscar.job_calls("svc"))
        jobs = len(oscar.services["svc"].jobs)
    duplicates = jobs - n
    window = max(32 * WINDOW_FACTOR, MIN_WINDOW)  # what may be invoked ahead of the last commit
    tally.append(
        Tally(
            f"consumer kill -9 x{kills}, job_id {job_id}",
            n,
            len(set(names) - set(accepted)),
            duplicates,
            notes=f"duplicate jobs; bound {kills} x {window} in flight"
            if job_id == "random"
            else "OSCAR refuses repeats",
        )
    )
    assert set(names) <= set(accepted)
    if job_id == "deterministic":
        assert duplicates == 0
    else:
        assert duplicates <= kills * window


@pytest.mark.reliability
def test_oscar_5xx_timeouts_and_a_token_rotation(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str], tally: list[Tally]
) -> None:
    n = 3000
    rng = random.Random(7)
    with OscarEmulator(version="4.1") as oscar:
        oscar.add_service("svc", input_path="/in")
        seen = {"n": 0}

        def fault(call: Call) -> int | str | None:
            seen["n"] += 1
            if seen["n"] == n // 3:
                oscar.rotate_token("svc")  # the consumer must re-fetch it (401 → token lookup)
            roll = rng.random()
            if roll < 0.30:
                return rng.choice([500, 502, 503, 504])
            if roll < 0.33:
                return "timeout"
            return None

        oscar.fault = fault
        spec, path = _consumer_spec(tmp_path, bootstrap, unique("faults"), oscar.endpoint)
        names = [f"f{i:06d}.dat" for i in range(n)]
        produce_events(bootstrap, spec.consumers[0].topic, names)
        child = consumer(path).start()
        dlq_topic = spec.consumers[0].dead_letter_topic

        expected = {f"/in/{x}" for x in names}

        def settled() -> bool:
            done = {f"/in/{x}" for x in invoked(oscar.job_calls("svc"))}
            if len(done) < n * 0.8:
                return False
            return expected <= done | set(paths_in(spec, dlq_topic))

        try:
            wait_for(settled, 600, "every record invoked or dead-lettered")
        finally:
            child.stop()
        done = {f"/in/{x}" for x in invoked(oscar.job_calls("svc"))}
        dead = paths_in(spec, dlq_topic)
    tally.append(
        Tally(
            "OSCAR 30% 5xx + 3% timeouts + token rotation",
            n,
            len(expected - done - set(dead)),
            len(oscar.job_calls("svc")) - len(done),
            len(dead),
            notes="each record invoked (201) or in the DLQ",
        )
    )
    assert expected <= done | set(dead)


@pytest.mark.reliability
def test_an_oscar_outage_of_three_minutes_moves_nothing_to_the_dlq(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str], tally: list[Tally]
) -> None:
    """The manager is down behind its ingress (503 on every path, /health included) for three
    minutes, many times the retry budget (6 attempts, at most 200 ms apart): the breaker holds the
    calls, probes /health, and lets them through once OSCAR is back."""
    n = 2000
    with OscarEmulator(version="4.1", latency=0.002) as oscar:
        oscar.add_service("svc", input_path="/in")
        spec, path = _consumer_spec(
            tmp_path, bootstrap, unique("outage"), oscar.endpoint, oscar_extra=", health_probe_max: 5s"
        )
        names = [f"f{i:06d}.dat" for i in range(n)]
        produce_events(bootstrap, spec.consumers[0].topic, names)
        child = consumer(path).start()
        expected = {f"/in/{x}" for x in names}
        try:
            wait_for(
                lambda: len(oscar.job_calls("svc")) >= n // 4, 120, "a quarter invoked before the outage"
            )
            oscar.outage = True
            time.sleep(180)
            oscar.outage = False
            wait_for(
                lambda: expected <= {f"/in/{x}" for x in invoked(oscar.job_calls("svc"))},
                300,
                "every record invoked after the outage",
            )
        finally:
            child.stop()
        done = {f"/in/{x}" for x in invoked(oscar.job_calls("svc"))}
        dead = paths_in(spec, spec.consumers[0].dead_letter_topic)
    tally.append(
        Tally(
            "OSCAR down 3 min (ingress 503 on every path)",
            n,
            len(expected - done - set(dead)),
            len(oscar.job_calls("svc")) - len(done),
            len(dead),
            notes="breaker held the calls; /health probed with backoff",
        )
    )
    assert expected <= done and not dead


@pytest.mark.reliability
def test_rebalance_storm(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str], tally: list[Tally]
) -> None:
    n, min_changes = 6000, 10
    with OscarEmulator(latency=0.005) as oscar:
        oscar.add_service("svc", input_path="/in")
        # The rate stretches the work over ~75 s, so the storm hits it throughout.
        spec, path = _consumer_spec(
            tmp_path, bootstrap, unique("storm"), oscar.endpoint, extra="    rate: 80/s\n"
        )
        names = [f"f{i:06d}.dat" for i in range(n)]
        produce_events(bootstrap, spec.consumers[0].topic, names)
        members: list[Child] = [consumer(path, tag=str(i), log_level="INFO").start() for i in range(3)]
        changes = 0
        rng = random.Random(3)
        try:
            for member in members:
                wait_for(functools.partial(assigned, member), 60, "first assignment")
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and (
                changes < min_changes or not set(names) <= set(invoked(oscar.job_calls("svc")))
            ):
                time.sleep(3)
                leaving = members.pop(rng.randrange(len(members)))
                leaving.stop()  # a graceful leave: drain, commit, close
                joining = consumer(path, tag=str(changes + 3), log_level="INFO").start()
                members.append(joining)
                # Each change is a full leave and join. (A member leaving mid-join wedges a Tansu
                # group for good; the consumer guards against it, see README, Reliability.)
                wait_for(functools.partial(assigned, joining), 60, "the joining member's assignment")
                changes += 1
            wait_for(lambda: set(names) <= set(invoked(oscar.job_calls("svc"))), 300, "every record invoked")
        finally:
            for member in members:
                member.stop()
        status = pipeline_status(spec)
        (svc,) = status["consumers"]
        calls = invoked(oscar.job_calls("svc"))
    tally.append(
        Tally(
            f"rebalance storm ({changes} leaves/joins)",
            n,
            len(set(names) - set(calls)),
            len(calls) - len(set(calls)),
            notes=f"final lag {svc['lag']}",
        )
    )
    assert changes >= min_changes
    assert svc["lag"] == 0  # commits reached the end of every partition
    assert set(names) <= set(calls)


@pytest.mark.parametrize("full", [REDUCED, FULL])
def test_bad_input_flood(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str], tally: list[Tally], full: bool
) -> None:
    good, bad_rounds, poison = (2000, 200, 200) if full else (200, 10, 20)
    prefix = unique("flood")
    with DCacheEmulator() as dcache, OscarEmulator() as oscar:
        dcache.mkdir("/in")
        oscar.add_service("svc", input_path="/in")
        spec, _ = write_spec(
            tmp_path,
            f"""\
kafka: {{bootstrap_servers: "{bootstrap}", internal_prefix: {prefix}, topic_defaults: {{partitions: 3}}}}
sources:
  - name: src
    endpoint: "{dcache.endpoint}"
    auth: {{username: alice, password: secret}}
    paths: [/in]
    topic: {prefix}.events
consumers:
  - name: svc
    group: {prefix}-svc  # unique per test: the session broker outlives it
    topic: {prefix}.events
    oscar: {{endpoint: "{oscar.endpoint}", service: svc, username: oscar, password: oscar123}}
    librdkafka: {{session.timeout.ms: "6000"}}
""",
        )
        stop = threading.Event()
        runners = [
            SourceRunner(spec, spec.sources[0], stop=stop),
            ConsumerRunner(spec, spec.consumers[0], stop=stop),
        ]
        errors: list[BaseException] = []

        def run(r: SourceRunner | ConsumerRunner) -> None:
            try:
                r.run()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in runners]
        for t in threads:
            t.start()
        wait_for(lambda: all(r.ready.is_set() for r in runners), 60, "pipeline ready")
        with dcache.lock:
            (channel,) = dcache.channels.values()
            sub_url = next(iter(channel.subs.values())).url
        bad_frames = [
            b"event: inotify\nid: {ID}\ndata: {not json\n\n",
            b"event: inotify\nid: {ID}\ndata: \xff\xfe\xfa\n\n",
            b'event: inotify\nid: {ID}\ndata: {"event": 5, "subscription": 7}\n\n',
        ]
        long_name = "n" * 10240
        for i in range(good):
            dcache.upload(f"/in/f{i:06d}.dat", 10)
            if i % (good // bad_rounds) == 0:
                for frame in bad_frames:
                    dcache.inject(frame)
        long_frame = (
            b'event: inotify\nid: {ID}\ndata: {"event":{"name":"'
            + long_name.encode()
            + b'","mask":["IN_CLOSE_WRITE"]},"subscription":"'
            + sub_url.encode()
            + b'"}\n\n'
        )
        dcache.inject(long_frame)
        produce_poison = __import__("confluent_kafka").Producer({"bootstrap.servers": bootstrap})
        for i in range(poison):
            headers = [("dcnios-schema", b"\x00" * 8)] if i % 2 else []
            produce_poison.produce(
                spec.consumers[0].topic, b"\x07garbage" * (i % 5 + 1), f"p{i}".encode(), headers=headers
            )
        assert produce_poison.flush(30) == 0
        names = {f"f{i:06d}.dat" for i in range(good)} | {long_name}
        wait_for(lambda: names <= set(invoked(oscar.job_calls("svc"))), 300, "every good event invoked")
        dlq = spec.consumers[0].dead_letter_topic
        wait_for(lambda: len(read_all(spec, dlq)) >= poison, 120, "poison records dead-lettered")
        invalid = len(read_all(spec, invalid_topic(spec.sources[0].topic)))
        stop.set()
        for t in threads:
            t.join(60)
        dead = len(read_all(spec, dlq))
    injected = len(bad_frames) * len(range(0, good, good // bad_rounds))
    tally.append(
        Tally(
            "bad input flood (frames, JSON, UTF-8, 10 KB names, poison Avro)",
            good + 1 + injected + poison,
            0,
            0,
            dead,
            notes=f"{invalid} frames in .invalid, {dead} poison records in the DLQ",
        )
    )
    assert not errors and all(not t.is_alive() for t in threads)
    assert invalid == injected
    assert dead == poison
