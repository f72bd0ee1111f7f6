from __future__ import annotations

import re
import time

from dcnios.consumers.breaker import ORDINARY, CircuitBreaker
from dcnios.consumers.dedup import DedupWindow
from dcnios.consumers.jobs import JobEnd, PendingJobsGate, job_name
from dcnios.consumers.oscar import Attempt, service_input
from dcnios.consumers.ratelimit import RateLimiter, member_share
from dcnios.consumers.record import (
    DeadLetter,
    Done,
    Follow,
    Hold,
    Prepared,
    RecordPolicy,
    Retry,
    staged_name,
    traceparent_for,
)
from dcnios.consumers.tracking import OffsetTracker
from dcnios.spec import parse_spec
from dcnios.storage_event import StorageEvent, dcache_envelope


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def event(event_id: int | None = 1, path: str = "/data/in/a.png") -> StorageEvent:
    return StorageEvent("src", path, "a.png", ("IN_CLOSE_WRITE",), None, False, "ch", event_id, "http://s", 5)


def test_rate_limiter_spaces_slots_exactly() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, clock)
    waits = [limiter.reserve() for _ in range(21)]
    assert all(abs(w - i * 0.1) < 1e-9 for i, w in enumerate(waits))  # one slot every 100 ms
    clock.now += 60  # after an idle spell, a small burst (50 ms of slots) is allowed
    assert [round(limiter.reserve(), 9) for _ in range(3)] == [0, 0.05, 0.15]


def test_rate_limiter_change_and_unlimited() -> None:
    clock = Clock()
    limiter = RateLimiter(None, clock)
    assert limiter.reserve() == 0 and limiter.reserve() == 0
    limiter.set_rate(0.0)
    assert limiter.reserve() == float("inf")
    limiter.set_rate(100.0)
    clock.now += 10
    assert limiter.reserve() == 0


def test_member_share() -> None:
    assert member_share(200, 4, 12) == 200 / 3
    assert member_share(200, 0, 12) == 0
    assert member_share(200, 12, 12) == 200


def test_watermark_never_passes_unfinished() -> None:
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.add("t", 0, offset)
    tracker.done("t", 0, 1)
    tracker.done("t", 0, 2)
    assert tracker.to_commit() == {("t", 0): 0}
    tracker.done("t", 0, 0)
    assert tracker.to_commit() == {("t", 0): 3}
    tracker.committed({("t", 0): 3})
    assert tracker.to_commit() == {}
    tracker.done("t", 0, 4)
    tracker.done("t", 0, 3)
    assert tracker.to_commit() == {("t", 0): 5}
    assert tracker.total_in_flight() == 0


def test_dedup_window_expires() -> None:
    clock = Clock()
    window = DedupWindow(10, clock)
    assert window.first_time("a") and not window.first_time("a")
    clock.now += 11
    assert window.first_time("a")
    assert DedupWindow(0, clock).first_time("x") and DedupWindow(0, clock).first_time("x")


def test_dedup_drops_only_what_finished() -> None:
    clock = Clock()
    window = DedupWindow(10, clock)
    assert not window.finished("a")
    assert not window.finished("a")  # asking twice does not make a copy in flight a duplicate
    window.remember("a")
    assert window.finished("a")
    clock.now += 11
    assert not window.finished("a")
    off = DedupWindow(0, clock)
    off.remember("x")
    assert not off.finished("x")


def test_job_names_are_stable_dns_labels_per_generation_and_attempt() -> None:
    label = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
    long_service = "a-very-long-service-name-indeed-" * 2
    names = {
        job_name(event(), "grayify"),
        job_name(event(), "grayify", attempt=2),
        job_name(event(), "grayify", generation=1),
        job_name(event(), "grayify", generation=1, attempt=2),
    }
    assert len(names) == 4  # every (generation, attempt) is a new Kubernetes Job
    assert job_name(event(), "grayify") == job_name(event(), "grayify") != job_name(event(2), "grayify")
    for name in [*names, job_name(event(), long_service, generation=123456789, attempt=99)]:
        assert label.fullmatch(name) and len(name) <= 63, name


def test_staged_name_is_relative_to_the_input_path() -> None:
    assert staged_name("/data/in/a.png", "/data/in") == "a.png"
    assert staged_name("/data/in/y z ü#%?.png", "/data/in") == "y z ü#%?.png"
    assert staged_name("/data/in/x/y z/ü#%?.png", "/data/in") is None  # the supervisor fails on '/'
    assert staged_name("/data/in/x/y z/ü#%?.png", "/data/in", nested=True) == "x/y z/ü#%?.png"
    assert staged_name("/a.png", "/") == "a.png"
    assert staged_name("/data/in/a.png", "/", nested=True) == "data/in/a.png"
    assert staged_name("/data/inbox/a.png", "/data/in") is None  # a sibling, not below it
    assert staged_name("/other/a.png", "/data/in") is None
    assert staged_name("/data/in", "/data/in") is None


def test_service_input_is_the_first_webdav_dcache_input() -> None:
    definition = {
        "input": [
            {"storage_provider": "minio.default", "path": "bucket/in"},
            {"storage_provider": "webdav.other", "path": "elsewhere"},  # the supervisor ignores it
            {"storage_provider": "webdav.dcache", "path": "data/in/"},
        ]
    }
    found = service_input(definition)
    assert found is not None and (found.provider, found.path) == ("webdav.dcache", "/data/in")
    assert service_input({"input": [{"storage_provider": "webdav.x", "path": "b"}]}) is None
    assert service_input({}) is None


def _policy(*, tracking: bool = True, attempts: int = 3, payload: str = "dcache") -> RecordPolicy:
    spec = parse_spec(
        "consumers:\n"
        "  - {name: c, topic: t, payload: " + payload + ", retry: {max_attempts: " + str(attempts) + "},\n"
        "     oscar: {endpoint: 'https://o', service: grayify, username: u, password: p,\n"
        "             job_id: deterministic}}\n"
    )
    return RecordPolicy(spec.consumers[0], input_path="/data/in", tracking=tracking)


def test_the_body_names_the_file_relative_to_the_input_path() -> None:
    nested = StorageEvent(
        "src", "/data/in/run1/a.png", "a.png", ("IN_CLOSE_WRITE",), None, False, "ch", 1, "http://s", 5
    )
    refused = _policy().prepare(nested)
    assert isinstance(refused, DeadLetter) and refused.reason == "unstageable"
    assert "below a sub-directory of the service's input path /data/in" in refused.error
    flat = _policy().prepare(event())
    assert isinstance(flat, Prepared) and flat.body == dcache_envelope(event())  # byte-exact dCache
    outside = _policy().prepare(event(path="/elsewhere/a.png"))
    assert isinstance(outside, DeadLetter) and outside.reason == "unstageable"
    assert "/elsewhere/a.png is outside the service's input path /data/in" in outside.error
    assert (
        b'"path":"/elsewhere/a.png"' in _policy(payload="record").prepare(event(path="/elsewhere/a.png")).body
    )  # type: ignore[union-attr]


def test_decisions_after_a_call() -> None:
    policy = _policy()
    ok, exists = Attempt(True, 201, False, ""), Attempt(True, 500, False, "", exists=True)
    assert policy.after_call(ok, 1, breaker_open=False, job="j") == Follow("j")
    assert policy.after_call(exists, 1, breaker_open=False, job="j") == Follow("j")  # follow, not done
    untracked = _policy(tracking=False)
    assert untracked.after_call(exists, 1, breaker_open=False, job="j") == Done("exists")
    down = Attempt(False, None, True, "connection refused", system=True)
    assert isinstance(policy.after_call(down, 3, breaker_open=True, job="j"), Hold)  # not counted
    assert isinstance(policy.after_call(down, 1, breaker_open=False, job="j"), Retry)
    assert isinstance(policy.after_call(down, 3, breaker_open=False, job="j"), DeadLetter)
    moved = Attempt(False, 301, False, "HTTP 301 redirect to https://x")
    assert policy.after_call(moved, 1, breaker_open=False, job="j") == DeadLetter(
        "config", "HTTP 301 redirect to https://x", 301
    )


def test_decisions_after_a_job() -> None:
    policy = _policy(attempts=2)
    assert policy.after_job(JobEnd("j", "Succeeded"), 1) == Done("succeeded")
    retry = policy.after_job(JobEnd("j", "Failed", log_tail="boom"), 1)
    assert isinstance(retry, Retry) and retry.attempt == 2 and "job j Failed" in retry.error
    final = policy.after_job(JobEnd("j-a2", "Failed", log_tail="boom"), 2)
    assert final == DeadLetter("job-failed", "job j-a2 Failed", None, "boom")
    missing = policy.after_job(JobEnd("j", "Missing"), 2)
    assert isinstance(missing, DeadLetter) and "not in OSCAR's job listing" in missing.error


def test_circuit_breaker_opens_on_a_run_or_a_majority_of_system_failures() -> None:
    breaker = CircuitBreaker()
    assert not any(breaker.record(True) for _ in range(4))
    assert breaker.record(False) is False  # a success resets the run
    assert not any(breaker.record(True) for _ in range(4))
    assert breaker.record(True, "refused") and breaker.is_open and breaker.reason == "refused"
    breaker.close()
    assert not breaker.is_open
    mixed = CircuitBreaker()
    outcomes = [i % 5 != 0 for i in range(20)]  # 16 of 20 fail, never 5 in a row
    opened = [mixed.record(failed) for failed in outcomes]
    assert opened[-1] and sum(opened) == 1
    assert mixed.try_enter() is None  # open: no call goes


def test_the_breaker_is_half_open_after_a_passing_probe() -> None:
    breaker = CircuitBreaker()
    for _ in range(5):
        breaker.record(True)
    assert breaker.is_open
    breaker.probe_passed()  # /health answers: calls may go through again
    assert not breaker.is_open and breaker.half_open
    probe = breaker.try_enter()
    assert probe is not None and probe.probe
    assert breaker.record(True, "500 from Kubernetes", probe)  # the probe failing re-opens at once
    assert breaker.is_open and breaker.reason == "500 from Kubernetes"
    breaker.probe_passed()
    probe = breaker.try_enter()
    assert probe is not None
    assert breaker.record(False, "", probe) is False  # the probe's success closes it
    assert breaker.closings == 1  # counted, so the prober's delays start again however soon it re-opens
    assert not breaker.is_open and not breaker.half_open
    assert not any(breaker.record(True) for _ in range(4))  # closed: a run of five again


def test_half_open_lets_one_call_through_until_it_reports() -> None:
    breaker = CircuitBreaker()
    assert breaker.trip("HTTP 401 (the credentials are refused)", probe_by_call=True)
    assert breaker.is_open and breaker.probe_by_call
    assert not breaker.try_enter()
    breaker.probe_passed()
    first = breaker.try_enter()  # this caller makes the one call
    assert first is not None and first is not ORDINARY
    assert not breaker.try_enter()  # held while the probe call is under way
    breaker.release_probe(ORDINARY)  # not the probe's caller: gives nothing back
    assert not breaker.try_enter()
    breaker.release_probe(first)  # the probe's caller was stopped before calling: the next one goes
    second = breaker.try_enter()
    assert second is not None
    breaker.release_probe(first)  # a second release by the first caller frees nothing
    assert not breaker.try_enter()
    # the second caller was refused too
    assert breaker.trip("HTTP 401 again", probe_by_call=True, entry=second)
    assert breaker.is_open and breaker.reason == "HTTP 401 again"
    breaker.probe_passed()
    third = breaker.try_enter()
    assert third is not None
    assert breaker.record(False, "", third) is False  # the call was answered: closed
    assert not breaker.is_open and not breaker.half_open and not breaker.probe_by_call
    assert breaker.try_enter() is ORDINARY and breaker.try_enter() is ORDINARY  # closed: every call goes


def test_only_the_probe_decides_a_half_open_breaker() -> None:
    breaker = CircuitBreaker()
    before = [breaker.try_enter() for _ in range(3)]  # calls under way when OSCAR falls over
    assert all(e is ORDINARY for e in before)
    for _ in range(5):
        breaker.record(True, "503")
    assert breaker.is_open
    breaker.probe_passed()
    probe = breaker.try_enter()
    assert probe is not None
    assert breaker.record(False, "", probe) is False and not breaker.is_open and not breaker.half_open
    # Opened again, half-open again: a call from before the outage fails late, as does a refused one.
    for _ in range(5):
        breaker.record(True, "503")
    breaker.probe_passed()
    probe = breaker.try_enter()
    assert probe is not None
    assert breaker.record(True, "timed out", before[0]) is False  # stale: does not re-open it
    assert not breaker.trip("HTTP 401", probe_by_call=True, entry=before[1])  # stale: nor does this
    assert breaker.half_open and not breaker.is_open
    assert breaker.record(False, "", probe) is False and not breaker.half_open  # the probe decides


def test_the_pending_jobs_gate_counts_calls_and_recent_returns() -> None:
    gate = PendingJobsGate(2)
    assert gate.try_take() and gate.try_take()
    assert not gate.try_take()  # two calls under way
    gate.cancel()  # one gave its slot back without calling
    assert gate.try_take()
    gate.release()
    gate.release()  # both returned: their jobs may not be listed yet, so they still count
    assert not gate.try_take()
    gate.observe(active=1, listing_started=time.monotonic() + 1)  # a listing begun after both
    assert gate.try_take()  # one job pending, one slot free
    assert not gate.try_take()


def test_an_outage_holds_the_record_instead_of_spending_its_attempts() -> None:
    refused = Attempt(False, 401, True, "HTTP 401 (the credentials are refused)", outage="auth")
    assert isinstance(_policy().after_call(refused, 99, breaker_open=False, job=None), Hold)


def test_payloads_and_traceparent() -> None:
    assert b'"path":"/data/in/a.png"' in _policy(payload="record").prepare(event()).body  # type: ignore[union-attr]
    one, two = traceparent_for(event()), traceparent_for(event())
    assert one.split("-")[1] == two.split("-")[1] and one != two  # same trace, new span
