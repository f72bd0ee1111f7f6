"""Job tracking, OSCAR's real answers and the circuit breaker, against the OSCAR emulator and Kafka.

With ``job_id: deterministic`` and cluster credentials a record is done when its job ends, not
when OSCAR answers 201. Jobs that fail run again under new names, then go to the DLQ with their
log tail; a restart follows the jobs it already created instead of creating them again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from consumer_harness import committed, consumer_spec, dlq_raw, event, invoked_names, produce, start
from producer_harness import wait_for

from dcnios.consumers.jobs import JobWatch, PendingJobsGate, job_name
from dcnios.consumers.oscar import OscarInvoker
from dcnios.consumers.replay import replay_window
from dcnios.sandbox.oscar import OscarEmulator
from dcnios.spec import parse_spec

pytestmark = pytest.mark.integration

TRACKED = ", job_id: deterministic, pending_poll_interval: 100ms"
FAST_RETRY = "    retry: {max_attempts: 2, initial_backoff: 50ms, max_backoff: 100ms}\n"


@pytest.fixture
def oscar() -> Iterator[OscarEmulator]:
    with OscarEmulator(job_duration=None) as emu:  # jobs stay Running until the test ends them
        emu.add_service("grayify", input_path="/data/in")
        yield emu


def _total(bootstrap: str, prefix: str) -> int:
    return sum(committed(bootstrap, f"{prefix}-svc", f"{prefix}.events", 6).values())


def test_a_record_is_committed_only_when_its_job_has_ended(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("t")
    spec = consumer_spec(tmp_path, bootstrap, oscar.endpoint, prefix, oscar_extra=TRACKED)
    assert spec.consumers[0].oscar.tracking
    produce(bootstrap, f"{prefix}.events", [event(i) for i in range(12)])
    running = start(spec)
    try:
        wait_for(lambda: len(oscar.jobs("grayify")) == 12, 60)
        time.sleep(2.5)  # two commit intervals and many listings: 201s alone commit nothing
        assert _total(bootstrap, prefix) == 0
        oscar.finish_jobs("grayify")
        wait_for(lambda: _total(bootstrap, prefix) == 12, 30)
    finally:
        running.halt()
    metrics = running.runner.metrics
    assert metrics.jobs.labels("svc", "Succeeded")._value.get() == 12
    assert metrics.job_run.labels("svc")._sum.get() >= 0
    assert len(oscar.job_calls("grayify")) == 12 and not running.errors


def test_a_failed_job_runs_again_under_a_new_name_then_goes_to_the_dlq_with_its_log(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("t")
    spec = consumer_spec(tmp_path, bootstrap, oscar.endpoint, prefix, oscar_extra=TRACKED, extra=FAST_RETRY)

    def fail_every_job() -> None:
        for job in oscar.jobs("grayify"):
            if job.status == "Running":
                job.log = f"staging {job.name}: RemoteResourceNotFound\n"
                job.status, job.finish = "Failed", time.time()

    produce(bootstrap, f"{prefix}.events", [event(1)])
    running = start(spec)
    try:
        deadline = time.monotonic() + 60
        while _total(bootstrap, prefix) < 1 and time.monotonic() < deadline:
            with oscar.lock:
                fail_every_job()
            time.sleep(0.05)
    finally:
        running.halt()
    first = job_name(event(1), "grayify")
    assert [j.name for j in oscar.jobs("grayify")] == [first, f"{first}-a2"]
    [(_value, headers)] = dlq_raw(bootstrap, f"{prefix}.events.dlq", 1)
    assert headers["dcnios-reason"] == b"job-failed"
    assert headers["dcnios-error"] == f"job {first}-a2 Failed".encode()
    assert headers["dcnios-job-log-tail"] == f"staging {first}-a2: RemoteResourceNotFound\n".encode()
    assert running.runner.metrics.jobs.labels("svc", "Failed")._value.get() == 2


def test_a_call_retried_after_an_error_asks_for_the_same_job(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    """A 502 may come after OSCAR created the job: the retry must name the same job, so OSCAR
    answers "already exists" instead of creating a second one. Only a job that ended without
    success gets a new name."""
    prefix = unique("t")
    spec = consumer_spec(tmp_path, bootstrap, oscar.endpoint, prefix, oscar_extra=TRACKED, extra=FAST_RETRY)
    failed_once: set[str] = set()

    def first_call_fails(call: Any) -> int | None:
        name = call.headers.get("X-Delegated-Job-ID", "")
        if name in failed_once:
            return None
        failed_once.add(name)
        return 502

    oscar.fault = first_call_fails
    oscar.job_duration = 0.0
    produce(bootstrap, f"{prefix}.events", [event(1)])
    running = start(spec)
    try:
        wait_for(lambda: _total(bootstrap, prefix) == 1, 60)
    finally:
        running.halt()
    assert [j.name for j in oscar.jobs("grayify")] == [job_name(event(1), "grayify")]
    assert running.runner.metrics.dlq.labels("svc", "failed")._value.get() == 0


def test_a_job_that_never_ends_is_deleted_and_run_again(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    """A pod that never pulls its image stays Pending for good (backoffLimit 0: the Job never
    fails). Past oscar.job_timeout the job is deleted and counts as a failed attempt."""
    prefix = unique("t")
    spec = consumer_spec(
        tmp_path,
        bootstrap,
        oscar.endpoint,
        prefix,
        oscar_extra=TRACKED + ", job_timeout: 1s",
        extra=FAST_RETRY,
    )
    produce(bootstrap, f"{prefix}.events", [event(1)])
    running = start(spec)
    try:
        [(_value, headers)] = dlq_raw(bootstrap, f"{prefix}.events.dlq", 1, timeout=60)
    finally:
        running.halt()
    first = job_name(event(1), "grayify")
    assert headers["dcnios-reason"] == b"job-failed"
    assert headers["dcnios-error"].startswith(f"job {first}-a2 TimedOut (not ended within".encode())
    assert oscar.jobs("grayify") == []  # both were deleted
    assert len(oscar.job_calls("grayify")) == 2
    assert running.runner.metrics.jobs.labels("svc", "TimedOut")._value.get() == 2


def test_a_restart_follows_its_jobs_instead_of_creating_them_again(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("t")
    spec = consumer_spec(tmp_path, bootstrap, oscar.endpoint, prefix, oscar_extra=TRACKED)
    produce(bootstrap, f"{prefix}.events", [event(i) for i in range(8)])
    running = start(spec)
    try:
        wait_for(lambda: len(oscar.jobs("grayify")) == 8, 60)
    finally:
        running.halt()
    assert _total(bootstrap, prefix) == 0  # nothing ended: nothing committed
    again = start(spec)
    try:
        wait_for(lambda: sum(1 for c in oscar.calls if c.status == 500) >= 8, 60)  # "already exists"
        oscar.finish_jobs("grayify")
        wait_for(lambda: _total(bootstrap, prefix) == 8, 30)
    finally:
        again.halt()
    assert len(oscar.jobs("grayify")) == 8  # no job was created twice
    assert again.runner.metrics.jobs.labels("svc", "Succeeded")._value.get() == 8


def test_two_copies_of_one_event_both_finish_with_their_one_job(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    """A producer replay delivers an event twice: the second copy finds the job "already exists"
    and follows it too; both records finish when that one job ends."""
    prefix = unique("t")
    spec = consumer_spec(
        tmp_path, bootstrap, oscar.endpoint, prefix, oscar_extra=TRACKED, extra="    dedup_window: 0s\n"
    )
    events = [event(i) for i in range(10)]
    produce(bootstrap, f"{prefix}.events", events + events)
    running = start(spec)
    try:
        wait_for(lambda: sum(1 for c in oscar.calls if c.status == 500) >= 10, 60)
        oscar.finish_jobs("grayify")
        wait_for(lambda: _total(bootstrap, prefix) == 20, 30)
    finally:
        running.halt()
    assert len(oscar.jobs("grayify")) == 10


def test_replay_runs_every_job_again(
    bootstrap: str, oscar: OscarEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    oscar.job_duration = 0.0
    prefix = unique("t")
    spec = consumer_spec(tmp_path, bootstrap, oscar.endpoint, prefix, oscar_extra=TRACKED)
    events = [event(i) for i in range(5)]
    started = int(time.time() * 1000) - 1000
    produce(bootstrap, f"{prefix}.events", events)
    running = start(spec)
    try:
        wait_for(lambda: _total(bootstrap, prefix) == 5, 60)
    finally:
        running.halt()
    result = replay_window(spec, spec.consumers[0], started, int(time.time() * 1000))
    assert result.invoked == 5 and not result.failed
    names = [j.name for j in oscar.jobs("grayify")]
    assert len(names) == 10  # a replay is a new generation: new jobs, not "already exists"
    assert {job_name(e, "grayify", result.generation) for e in events} <= set(names)
    assert sum(1 for c in oscar.calls if c.status == 500) == 0


def test_the_job_listing_is_read_through_every_page(oscar: OscarEmulator) -> None:
    oscar.page_size = 7
    cs = parse_spec(
        "consumers:\n  - {name: c, topic: t, oscar: {endpoint: '" + oscar.endpoint + "', service: grayify,"
        " username: oscar, password: oscar123, job_id: deterministic}}\n"
    ).consumers[0]
    invoker = OscarInvoker(cs.oscar, 4)
    token = oscar.services["grayify"].token
    for i in range(30):
        name = job_name(event(i), "grayify")
        assert (
            invoker.session.post(
                f"{oscar.endpoint}/job/grayify",
                data=b"{}",
                headers={"Authorization": f"Bearer {token}", "X-Delegated-Job-ID": name},
            ).status_code
            == 201
        )
    gate = PendingJobsGate(100)
    watch = JobWatch(invoker, interval=0.1, gate=gate)
    last = job_name(event(29), "grayify")
    ended: list[str] = []
    watch.follow(last, lambda end: ended.append(end.status))
    oscar.finish_jobs("grayify")
    for job in oscar.jobs("grayify")[:20]:
        job.status = "Running"  # 20 still active, 10 ended: the last one is on page 5
    watch.poll_once()
    assert watch.pages_read == 5  # 30 jobs, 7 a page
    assert gate.active == 20
    assert ended == ["Succeeded"]


def test_an_outage_holds_invocations_instead_of_dead_lettering_them(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("t")
    with OscarEmulator() as oscar:
        token = oscar.add_service("grayify")
        spec = consumer_spec(
            tmp_path,
            bootstrap,
            oscar.endpoint,
            prefix,
            token=token,
            oscar_extra=", health_probe_max: 1s",
            extra=FAST_RETRY,
        )
        oscar.outage = True
        produce(bootstrap, f"{prefix}.events", [event(i) for i in range(40)])
        running = start(spec)
        try:
            m = running.runner.metrics
            wait_for(lambda: m.oscar_down.labels("svc")._value.get() == 1, 30)
            time.sleep(8)  # an outage many times the retry budget (2 attempts, 100 ms apart)
            assert m.dlq.labels("svc", "failed")._value.get() == 0
            calls_while_down = len(oscar.calls)
            assert calls_while_down < 60  # held, not hammered: probes of /health with backoff
            oscar.outage = False
            wait_for(lambda: _total(bootstrap, prefix) == 40, 60)
        finally:
            running.halt()
        assert len(oscar.job_calls("grayify")) == 40
        assert m.dlq.labels("svc", "failed")._value.get() == 0
        assert m.oscar_down.labels("svc")._value.get() == 0


class _Redirector(BaseHTTPRequestHandler):
    """A proxy or a moved endpoint: 301/307 to elsewhere, or a 200 HTML page."""

    mode = "301"
    target = ""
    seen: ClassVar[list[tuple[str, str]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _any(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append((self.command, self.path))
        if self.path.startswith("/elsewhere"):
            body = b"ok"
            self.send_response(200)
        elif self.mode == "html":
            body = b"<html>login</html>"
            self.send_response(200)
        else:
            body = b""
            self.send_response(int(self.mode))
            self.send_header("Location", f"{self.target}/elsewhere{self.path}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _any


@pytest.mark.parametrize("mode", ["301", "307", "html"])
def test_a_redirect_or_a_non_oscar_answer_is_never_success(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str], mode: str
) -> None:
    prefix = unique("t")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    _Redirector.mode, _Redirector.seen = mode, []
    _Redirector.target = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = consumer_spec(tmp_path, bootstrap, _Redirector.target, prefix, token="b" * 64)
        produce(bootstrap, f"{prefix}.events", [event(i) for i in range(3)])
        running = start(spec)
        try:
            dead = dlq_raw(bootstrap, f"{prefix}.events.dlq", 3)
        finally:
            running.halt()
    finally:
        server.shutdown()
        server.server_close()
    assert not any(path.startswith("/elsewhere") for _, path in _Redirector.seen)  # never followed
    assert len([m for m, _ in _Redirector.seen if m == "POST"]) == 3  # and never retried
    for _, headers in dead:
        error = headers["dcnios-error"].decode()
        if mode == "html":
            assert error.startswith("HTTP 200 is not OSCAR's answer to POST /job/grayify (expected 201)")
        else:
            assert error.startswith(f"HTTP {mode} redirect to {_Redirector.target}/elsewhere/job/grayify")
            assert headers["dcnios-reason"] == b"config"
    assert _total(bootstrap, prefix) == 3


def test_untracked_consumers_say_why_at_startup(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    prefix = unique("t")
    with OscarEmulator() as oscar:
        spec = consumer_spec(tmp_path, bootstrap, oscar.endpoint, prefix, token=oscar.add_service("grayify"))
        produce(bootstrap, f"{prefix}.events", [event(1)])
        running = start(spec)
        try:
            wait_for(lambda: _total(bootstrap, prefix) == 1, 60)
        finally:
            running.halt()
    assert "with job_id: random OSCAR returns no job name" in caplog.text
    assert invoked_names(oscar.job_calls("grayify")) == ["f00001.png"]
    assert json.loads(oscar.job_calls("grayify")[0].body)["event"]["name"] == "f00001.png"
