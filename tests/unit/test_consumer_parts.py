from __future__ import annotations

import re
import threading

from dcnios.consumers.dedup import DedupWindow
from dcnios.consumers.oscar import job_id_for, payload_for, traceparent_for
from dcnios.consumers.ratelimit import RateLimiter, member_share
from dcnios.consumers.tracking import OffsetTracker
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
    stop = threading.Event()
    stop.set()
    limiter.set_rate(0.0)
    assert limiter.acquire(stop) is False


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
    window.forget("a")
    assert window.first_time("a")
    assert DedupWindow(0, clock).first_time("x") and DedupWindow(0, clock).first_time("x")


def test_job_id_is_a_stable_dns_label() -> None:
    job = job_id_for(event(), "grayify")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", job)
    assert job == job_id_for(event(), "grayify") != job_id_for(event(2), "grayify")
    assert len(job_id_for(event(), "a-very-long-service-name-indeed-" * 2)) <= 63


def test_payloads_and_traceparent() -> None:
    assert payload_for(event(), "dcache") == dcache_envelope(event())
    assert b'"path":"/data/in/a.png"' in payload_for(event(), "record")
    one, two = traceparent_for(event()), traceparent_for(event())
    assert one.split("-")[1] == two.split("-")[1] and one != two  # same trace, new span
