"""`dcnios up`, `status` and `replay` against the real broker and the emulators."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from consumer_harness import dlq_raw, event, invoked_names, produce
from producer_harness import wait_for

from dcnios.broker import free_port
from dcnios.consumers.replay import replay_window
from dcnios.control import write_control
from dcnios.errors import ConfigError
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.sandbox.oscar import OscarEmulator
from dcnios.spec import load_spec
from dcnios.stack import Stack
from dcnios.status import pipeline_status

REPO = Path(__file__).resolve().parents[2]
DCNIOS = str(Path(sys.executable).with_name("dcnios"))


def _demo_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DEMO_DIR": str(tmp_path),
        "DEMO_DCACHE_PORT": str(free_port()),
        "DEMO_OSCAR_PORT": str(free_port()),
    }


def test_demo_once_processes_every_sample_file(tmp_path: Path) -> None:
    """What `make demo DEMO_ARGS=--once` runs, with its own embedded broker and a clean directory."""
    (tmp_path / "inbox").mkdir()
    done = subprocess.run(
        [DCNIOS, "up", "-c", str(REPO / "examples" / "demo.yaml"), "--seed", "12", "--once"],
        env=_demo_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = dict(
        line.strip().rsplit("  ", 1)
        for line in done.stdout.split("summary:\n", 1)[1].splitlines()
        if line.strip()
    )
    parsed = {k.strip(): v.strip() for k, v in summary.items()}
    assert (
        parsed.items()
        >= {
            "files seeded": "12",
            "jobs run": "12",
            "outputs written": "12",
            "lost": "0",
            "duplicates": "0",
            "missing": "-",
        }.items()
    )
    inputs = sorted((tmp_path / "inbox").glob("sample-*.csv"))
    assert len(inputs) == 12
    for path in inputs:
        report = (tmp_path / "outbox" / "checksum" / f"{path.name}.sha256.txt").read_text()
        assert f"sha256: {hashlib.sha256(path.read_bytes()).hexdigest()}" in report


def _spec_text(bootstrap: str, prefix: str, dcache: str, oscar: str, token: str) -> str:
    return f"""\
kafka:
  bootstrap_servers: "{bootstrap}"
  internal_prefix: {prefix}
  topic_defaults: {{partitions: 3}}
sources:
  - name: src
    endpoint: "{dcache}"
    auth: {{username: alice, password: secret}}
    paths: [/data/in]
    topic: {prefix}.events
consumers:
  - name: svc
    group: {prefix}-svc  # unique per test: the session broker outlives it
    topic: {prefix}.events
    oscar: {{endpoint: "{oscar}", service: svc, token: "{token}", input_path: /data/in}}
    librdkafka: {{session.timeout.ms: "6000"}}
  - name: via-nifi
    topic: {prefix}.events
    oscar: {{endpoint: "{oscar}", service: svc, token: "{token}", input_path: /data/in}}
nifi:
  endpoint: https://nifi.invalid/nifi-api
  auth: {{token: x}}
  consumers: [via-nifi]
"""


def test_up_against_the_emulators_invokes_every_event_once_and_status_reports_it(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str]
) -> None:
    prefix = unique("up")
    with DCacheEmulator() as dcache, OscarEmulator() as oscar:
        dcache.mkdir("/data/in")
        token = oscar.add_service("svc")
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(_spec_text(bootstrap, prefix, dcache.endpoint, oscar.endpoint, token))
        stack = Stack(load_spec(spec_path), base_dir=str(tmp_path))
        stack.start()
        try:
            assert stack.skipped == ["via-nifi"]
            assert [c.name for c in stack.components] == ["svc", "src"]
            assert stack.wait_ready(60)
            for i in range(40):
                dcache.upload(f"/data/in/f{i:03d}.dat")
            wait_for(lambda: len(oscar.job_calls("svc")) >= 40, timeout=60)
            wait_for(lambda: stack.metric("dcnios_consumer_lag", consumer="svc") == 0, timeout=30)

            # The checkpoint is written once a second after the acks, so status catches up with
            # the last event read rather than matching it at once.
            last_read = int(stack.metric("dcnios_producer_last_event_id"))
            statuses: list[dict[str, Any]] = []

            def checkpoint_caught_up() -> bool:
                statuses.append(pipeline_status(stack.spec))
                return bool(statuses[-1]["sources"][0]["checkpoint_event_id"] == last_read)

            wait_for(checkpoint_caught_up, timeout=30)
            status = statuses[-1]
            (source,) = status["sources"]
            assert source["name"] == "src"
            assert source["checkpoint_age_s"] is not None and source["checkpoint_age_s"] < 60
            svc = next(c for c in status["consumers"] if c["name"] == "svc")
            assert svc["lag"] == 0 and svc["dlq_depth"] == 0
            assert sum(p["committed"] or 0 for p in svc["partitions"]) == 40
            assert svc["rate"] == "unlimited" and svc["rate_source"] == "spec" and svc["paused"] is False
            nifi = next(c for c in status["consumers"] if c["name"] == "via-nifi")
            assert nifi["nifi"] is True and nifi["lag"] == 40  # nobody consumes it here

            write_control(stack.spec.kafka, "svc", rate="7/s", paused=True)
            wait_for(lambda: stack.metric("dcnios_consumer_paused", consumer="svc") == 1, timeout=10)
            for i in range(5):
                dcache.upload(f"/data/in/late{i}.dat")
            wait_for(lambda: stack.metric("dcnios_producer_records_total") >= 45, timeout=20)
            status = pipeline_status(stack.spec)
            svc = next(c for c in status["consumers"] if c["name"] == "svc")
            assert svc["lag"] == 5 and svc["paused"] is True
            assert svc["rate"] == "7/s" and svc["rate_source"] == "control"
            assert svc["oscar"] == "up"
            oscar.outage = True  # status probes what the breaker probes: OSCAR's /health
            assert next(c for c in pipeline_status(stack.spec)["consumers"] if c["name"] == "svc")[
                "oscar"
            ].startswith("down")
            oscar.outage = False
            write_control(stack.spec.kafka, "svc", paused=False)
            wait_for(lambda: len(oscar.job_calls("svc")) >= 45, timeout=30)
        finally:
            stack.stop()
        names = invoked_names(oscar.job_calls("svc"))
        assert sorted(names) == sorted({*names}) and len(names) == 45
        assert all(not c.ready for c in stack.components)


def test_replay_reinvokes_exactly_the_window(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str]
) -> None:
    prefix = unique("replay")
    with OscarEmulator() as oscar:
        token = oscar.add_service("svc")
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(
            _spec_text(bootstrap, prefix, "http://127.0.0.1:1/api/v1", oscar.endpoint, token)
        )
        spec = load_spec(spec_path)
        from dcnios.kafka import ensure_topics
        from dcnios.topics import topic_plan

        ensure_topics(spec.kafka, topic_plan(spec))
        topic = f"{prefix}.events"
        produce(bootstrap, topic, [event(i, f"/data/in/old{i}.png") for i in range(10)])
        time.sleep(0.05)  # Kafka timestamps have millisecond resolution: keep the batches apart
        boundary = int(time.time() * 1000)
        time.sleep(0.05)
        window = [event(100 + i, f"/data/in/{'keep' if i % 2 else 'other'}{i}.png") for i in range(8)]
        produce(bootstrap, topic, [*window, window[1]])  # a producer replay: same channel and id
        progress: list[tuple[int, int]] = []
        result = replay_window(
            spec,
            spec.consumer("svc"),
            boundary,
            int(time.time() * 1000) + 1000,
            progress=lambda d, t: progress.append((d, t)),
        )
        assert result.invoked == 8 and result.duplicates == 1 and not result.failed
        assert sorted(invoked_names(oscar.job_calls("svc"))) == sorted(e.name for e in window)
        assert progress[-1] == (9, 9)

        glob_result = replay_window(
            spec, spec.consumer("svc"), boundary, int(time.time() * 1000) + 1000, path_glob="/data/in/keep*"
        )
        assert glob_result.invoked == 4 and glob_result.filtered == 4
        assert len(oscar.job_calls("svc")) == 12

        empty = replay_window(spec, spec.consumer("svc"), boundary + 3_600_000, boundary + 7_200_000)
        assert empty.scanned == 0 and len(oscar.job_calls("svc")) == 12


# -- bad input --------------------------------------------------------------------------------------
def _sandbox_spec(
    tmp_path: Path,
    bootstrap: str,
    prefix: str,
    *,
    dport: int,
    oport: int,
    script: str,
    oscar_extra: str = "",
    sandbox_extra: str = "",
) -> Path:
    path = tmp_path / "sandbox.yaml"
    path.write_text(
        f"""\
kafka: {{bootstrap_servers: "{bootstrap}", internal_prefix: {prefix}, topic_defaults: {{partitions: 1}}}}
sandbox:
  dcache: {{root: inbox, port: {dport}, password: pw}}
  oscar:
    port: {oport}
    password: pw
    output: outbox
    services: [{{name: svc, script: {script}}}]{sandbox_extra}
sources:
  - {{name: src, endpoint: "http://127.0.0.1:{dport}/api/v1", auth: {{username: demo, password: pw}},
      paths: [/], events: [IN_CLOSE_WRITE], topic: {prefix}.events}}
consumers:
  - name: svc
    group: {prefix}-svc  # unique per test: the session broker outlives it
    topic: {prefix}.events
    oscar: {{endpoint: "http://127.0.0.1:{oport}", service: svc, username: oscar, password: pw{oscar_extra}}}
    librdkafka: {{session.timeout.ms: "6000"}}
"""
    )
    return path


def test_missing_directory_and_busy_port_are_clear_errors(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str]
) -> None:
    (tmp_path / "ok.sh").write_text("true\n")
    spec_path = _sandbox_spec(
        tmp_path, bootstrap, unique("bad"), dport=free_port(), oport=free_port(), script="ok.sh"
    )
    with pytest.raises(ConfigError, match=r"sandbox\.dcache\.root: directory not found: .*inbox"):
        Stack(load_spec(spec_path), base_dir=str(tmp_path)).start()
    (tmp_path / "inbox").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        spec_path = _sandbox_spec(
            tmp_path, bootstrap, unique("bad"), dport=free_port(), oport=port, script="ok.sh"
        )
        with pytest.raises(ConfigError, match=rf"sandbox\.oscar\.port: port {port} is already in use"):
            Stack(load_spec(spec_path), base_dir=str(tmp_path)).start()
    spec_path = _sandbox_spec(
        tmp_path, bootstrap, unique("bad"), dport=free_port(), oport=free_port(), script="missing.sh"
    )
    with pytest.raises(ConfigError, match=r"sandbox\.oscar\.services\[0\]\.script: file not found"):
        Stack(load_spec(spec_path), base_dir=str(tmp_path)).start()


def test_a_broken_script_fails_once_with_the_reason(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str]
) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "broken.sh").write_text("#!/bin/sh\necho 'cannot parse input' >&2\nexit 4\n")
    spec_path = _sandbox_spec(
        tmp_path, bootstrap, unique("broken"), dport=free_port(), oport=free_port(), script="broken.sh"
    )
    done = subprocess.run(
        [DCNIOS, "up", "-c", str(spec_path), "--seed", "2", "--once", "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "script errors     2" in done.stdout
    assert "broken.sh exited 4: cannot parse input" in done.stderr


def test_a_killed_job_is_retried_then_dead_lettered_and_once_reports_it(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str]
) -> None:
    """The job's process is killed (the sandbox's job_timeout): with tracking, each attempt fails,
    runs again under a new name, and the record ends in the DLQ with the job's log tail."""
    (tmp_path / "inbox").mkdir()
    (tmp_path / "slow.sh").write_text("#!/bin/sh\nsleep 30\n")
    prefix = unique("killed")
    spec_path = _sandbox_spec(
        tmp_path,
        bootstrap,
        prefix,
        dport=free_port(),
        oport=free_port(),
        script="slow.sh",
        oscar_extra=", job_id: deterministic, pending_poll_interval: 200ms",
        sandbox_extra="\n    job_timeout: 1s",
    )
    text = spec_path.read_text().replace(
        "    librdkafka:", "    retry: {max_attempts: 2, initial_backoff: 100ms}\n    librdkafka:"
    )
    spec_path.write_text(text)
    done = subprocess.run(
        [DCNIOS, "up", "-c", str(spec_path), "--seed", "1", "--once", "--timeout", "90"],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "jobs run          2" in done.stdout and "jobs failed       2" in done.stdout
    assert "dead letters      1" in done.stdout and "lost              1" in done.stdout
    assert "Failed; attempt 2/2" in done.stderr
    dead = dlq_raw(bootstrap, f"{prefix}.events.dlq", 1)
    assert len(dead) == 1
    assert dead[0][1]["dcnios-reason"] == b"job-failed"
    assert b"job timed out after 1 s" in dead[0][1]["dcnios-job-log-tail"]


def test_once_without_seed_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [DCNIOS, "up", "-c", str(REPO / "examples" / "demo.yaml"), "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "ConfigError: --once needs --seed N" in done.stderr


def _exited(pid: int) -> bool:
    """Gone, or a zombie: the launcher that started it has exited, and whoever adopted the
    process (PID 1 in a container) may not reap it at once."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_detach_runs_in_the_background_until_stop(
    tmp_path: Path, bootstrap: str, unique: Callable[[str], str]
) -> None:
    (tmp_path / "inbox").mkdir()
    script = tmp_path / "copy.sh"
    script.write_text('#!/bin/sh\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\n')
    spec_path = _sandbox_spec(
        tmp_path, bootstrap, unique("bg"), dport=free_port(), oport=free_port(), script="copy.sh"
    )

    def up(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DCNIOS, "up", "-c", str(spec_path), *flags, "--timeout", "90"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    started = up("--detach")
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int((tmp_path / ".dcnios" / "sandbox.up.pid").read_text())
    assert f"(pid {pid})" in started.stdout and f"dcnios up -c {spec_path} --stop" in started.stdout
    try:
        os.kill(pid, 0)  # the launcher has exited; the pipeline has not
        (tmp_path / "inbox" / "late.txt").write_text("dropped in while detached\n")
        copied = tmp_path / "outbox" / "svc" / "late.txt"
        deadline = time.monotonic() + 60
        while not copied.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert copied.read_text() == "dropped in while detached\n"

        again = up("--detach")
        assert again.returncode == 2 and f"already running in the background (pid {pid})" in again.stderr
    finally:
        stopped = up("--stop")
    assert stopped.returncode == 0 and f"stopped dcnios up (pid {pid})" in stopped.stdout
    assert _exited(pid)
    assert not (tmp_path / ".dcnios" / "sandbox.up.pid").exists()
    log = (tmp_path / ".dcnios" / "sandbox.up.log").read_text()
    assert "pipeline up:" in log and "stopping: producers, then consumers, then the rest" in log
    assert "no background dcnios up is running" in up("--stop").stdout


def test_detach_reports_a_pipeline_that_cannot_start(tmp_path: Path, bootstrap: str) -> None:
    (tmp_path / "ok.sh").write_text("true\n")
    spec_path = _sandbox_spec(
        tmp_path, bootstrap, "bgfail", dport=free_port(), oport=free_port(), script="ok.sh"
    )
    done = subprocess.run(  # no inbox directory: the background run fails at once
        [DCNIOS, "up", "-c", str(spec_path), "--detach", "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 1
    assert "exited with status 2 before it was up" in done.stderr
    assert "sandbox.dcache.root: directory not found" in done.stderr
    assert not (tmp_path / ".dcnios" / "sandbox.up.pid").exists()


@pytest.mark.parametrize(("given", "expected"), [("", {"fetch.wait.max.ms": "10"}), ("'50'", {})])
def test_consumers_on_the_embedded_broker_fetch_without_its_wait(
    tmp_path: Path, given: str, expected: dict[str, str]
) -> None:
    # Tansu answers a fetch only when fetch.wait.max.ms runs out: 100 ms on every record's way.
    own = f"\n    librdkafka: {{fetch.wait.max.ms: {given}}}" if given else ""
    path = tmp_path / "spec.yaml"
    path.write_text(
        "consumers:\n  - name: svc\n    topic: t\n    oscar: {endpoint: 'http://127.0.0.1:9', service: s, "
        f"token: '{'a' * 64}', input_path: /in}}{own}\n"
    )
    stack = Stack(load_spec(path))
    stack.broker = object()  # what _start_broker leaves when it started the embedded broker
    stack.spec = stack.spec.with_bootstrap(f"127.0.0.1:{free_port()}")
    runner = stack._consumer_runner(stack.spec.consumers[0], threading.Event())
    assert runner._extra == expected  # type: ignore[attr-defined]
    stack.broker = None
    assert stack._consumer_runner(stack.spec.consumers[0], threading.Event())._extra == {}  # type: ignore[attr-defined]
