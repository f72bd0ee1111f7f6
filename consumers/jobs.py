"""OSCAR jobs after the 201: their names, the paginated listing, and following each one to its end.

A 201 from ``POST /job`` only means the Kubernetes Job exists; OSCAR runs it once
(``backoffLimit: 0``) and it can still fail (oscar-api.md §4.1 step 10). With deterministic job
names the consumer knows what to look for in ``GET /system/logs/{service}``, which lists at most
``JOB_LISTING_LIMIT`` (70) jobs a page plus ``next_page``/``remaining_jobs`` (§3.3). One poller
reads every page and feeds both the job follower and the ``max_pending_jobs`` gate.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from dcnios.consumers.oscar import OscarInvoker, parse_time
from dcnios.errors import OscarError
from dcnios.storage_event import StorageEvent, dedup_key

__all__ = ["JobEnd", "JobWatch", "PendingJobsGate", "job_name"]

logger = logging.getLogger(__name__)

#: Pod phases (§3.3); ``Suspended`` is a Job that Kueue has not admitted yet.
ACTIVE_STATES: Final = frozenset({"Pending", "Running", "Suspended"})
FINAL_STATES: Final = frozenset({"Succeeded", "Failed"})
_MAX_PAGES: Final = 10_000  # a listing that never ends is a broken server, not 700k jobs
_LOG_TAIL_CHARS: Final = 2000


def job_name(event: StorageEvent, service: str, generation: int = 0, attempt: int = 1) -> str:
    """A DNS-1123 label (<= 63 chars), the same for every delivery of one event.

    ``generation`` separates deliberate re-runs (``dcnios replay``, ``dlq replay``) from replays:
    OSCAR keeps a finished job's name for 30 days and refuses it again. ``attempt`` > 1 adds
    ``-a<n>``: a job that failed keeps its name, so each retry needs a new one.
    """
    seed = f"{event.source}\0{dedup_key(event)}" + (f"\0g{generation}" if generation else "")
    digest = hashlib.sha256(seed.encode()).hexdigest()[:32]
    base = f"{service[:20].rstrip('-')}-{digest}"
    return base if attempt == 1 else f"{base}-a{attempt}"


@dataclass(frozen=True, slots=True)
class JobEnd:
    """How a followed job ended. ``Missing``: it never showed up in the listing, or vanished."""

    name: str
    status: str  # Succeeded | Failed | Missing
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    log_tail: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == "Succeeded"


@dataclass(slots=True)
class _Followed:
    on_end: Callable[[JobEnd], None]
    since: float  # monotonic: last seen in a listing, or followed
    followed_at: float  # monotonic: when following began (the job deadline counts from here)
    posted_at: float  # wall clock: about when the job was created


class PendingJobsGate:
    """Holds invocations while the service's Pending + Running jobs are at ``limit``.

    Counts what the last listing saw, calls under way (their jobs may not exist yet), and calls
    that returned since that listing began; the listing poller calls ``observe``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._active = 0
        self._in_call = 0
        self._completed: deque[float] = deque()

    @property
    def active(self) -> int:
        return self._active

    def observe(self, active: int, listing_started: float) -> None:
        with self._lock:
            self._active = active
            while self._completed and self._completed[0] <= listing_started:
                self._completed.popleft()

    def try_take(self) -> bool:
        """Take a slot if there is room now; never blocks (event-loop callers ask again)."""
        with self._lock:
            if self._active + self._in_call + len(self._completed) >= self.limit:
                return False
            self._in_call += 1
            return True

    def release(self) -> None:
        """The call made with the slot returned: its job may not be in the listing yet."""
        with self._lock:
            self._in_call -= 1
            self._completed.append(time.monotonic())

    def cancel(self) -> None:
        """Give the slot back without a call."""
        with self._lock:
            self._in_call -= 1


class JobWatch:
    """Polls every page of the job listing; resolves followed jobs and feeds the gate.

    ``missing_after``: a followed job absent from the listing that long (deleted, or never
    created) ends as ``Missing``; ``deadline``: a job not ended that long after it was followed
    ends as ``TimedOut`` and is deleted (a pod that never pulls its image, is never scheduled or
    never admitted by Kueue stays Pending for good: with ``backoffLimit: 0`` the Job never fails).
    The record policy treats both as a failed attempt.
    """

    def __init__(
        self,
        invoker: OscarInvoker,
        *,
        interval: float,
        gate: PendingJobsGate | None = None,
        missing_after: float = 300.0,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.invoker = invoker
        self.interval = interval
        self.gate = gate
        self.missing_after = missing_after
        self.deadline = deadline
        self._clock = clock
        self._lock = threading.Lock()
        # Several records can follow one job: a replayed copy finds its job "already exists".
        self._followed: dict[str, list[_Followed]] = {}
        self.last_error: str | None = None
        self.failing_since: float | None = None  # monotonic: the listing has failed since then
        self.pages_read = 0

    @property
    def following(self) -> int:
        with self._lock:
            return len(self._followed)

    def follow(self, name: str, on_end: Callable[[JobEnd], None]) -> Callable[[], None]:
        """Call ``on_end`` once, from the poller thread, when job ``name`` has ended (the
        ``RecordDriver`` moves it onto its loop).

        Returns a function that cancels this one follower.
        """
        now = self._clock()
        follower = _Followed(on_end, now, now, time.time())
        with self._lock:
            self._followed.setdefault(name, []).append(follower)

        def cancel() -> None:
            with self._lock:
                followers = self._followed.get(name, [])
                if follower in followers:
                    followers.remove(follower)
                if not followers:
                    self._followed.pop(name, None)

        return cancel

    def listing(self) -> dict[str, dict[str, Any]]:
        """Every job of the service, through all pages (``?page=<next_page>``)."""
        jobs: dict[str, dict[str, Any]] = {}
        page: str | None = None
        for _ in range(_MAX_PAGES):
            body = self.invoker.list_jobs(page)
            self.pages_read += 1
            found = body.get("jobs") or {}
            if isinstance(found, dict):
                jobs.update({k: v for k, v in found.items() if isinstance(v, dict)})
            page = body.get("next_page") or None
            if not page:
                return jobs
        raise OscarError(f"GET /system/logs/{self.invoker.spec.service}: more than {_MAX_PAGES} pages")

    def poll_once(self) -> None:
        # A paginated Kubernetes list is a snapshot of when it began: measure absence from then.
        started = self._clock()
        gate_started = time.monotonic()
        try:
            jobs = self.listing()
        except OscarError as exc:
            if self.last_error != str(exc):
                logger.warning("job listing failed: %s", exc)
            self.last_error = str(exc)
            self.failing_since = self.failing_since or started
            return
        self.last_error = self.failing_since = None
        if self.gate is not None:
            self.gate.observe(sum(1 for j in jobs.values() if j.get("status") in ACTIVE_STATES), gate_started)
        ended: list[tuple[list[_Followed], JobEnd]] = []
        timed_out: list[str] = []
        with self._lock:
            for name, followers in list(self._followed.items()):
                info = jobs.get(name)
                posted = min(f.posted_at for f in followers)
                if info is None:
                    if all(started - f.since >= self.missing_after for f in followers):
                        del self._followed[name]
                        ended.append((followers, JobEnd(name, "Missing", posted)))
                    continue
                for follower in followers:
                    follower.since = max(follower.since, started)
                status = info.get("status")
                if status in FINAL_STATES:
                    del self._followed[name]
                    ended.append(
                        (
                            followers,
                            JobEnd(
                                name,
                                str(status),
                                posted,  # OSCAR's creation_time is the pod's start (§3.3)
                                parse_time(info.get("start_time")),
                                parse_time(info.get("finish_time")),
                            ),
                        )
                    )
                elif self.deadline is not None and all(
                    started - f.followed_at >= self.deadline for f in followers
                ):
                    del self._followed[name]
                    timed_out.append(name)
                    ended.append((followers, JobEnd(name, "TimedOut", posted, log_tail=f"still {status}")))
        for name in timed_out:
            self._delete(name)
        for followers, found in ended:
            end = (
                found
                if found.status in ("Succeeded", "Missing", "TimedOut")
                else _with_log_tail(self.invoker, found)
            )
            for follower in followers:
                try:
                    follower.on_end(end)
                except Exception:  # a callback bug must not stop the poller for every other job
                    logger.exception("job %s: handling its end failed", end.name)

    def _delete(self, name: str) -> None:
        """DELETE /system/logs/{service}/{job}: a retry must not race a late start of this one."""
        try:
            self.invoker.delete_job(name)
        except OscarError as exc:
            logger.warning("job %s passed its deadline and could not be deleted: %s", name, exc)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception:  # the poller must outlive any one bad listing
                logger.exception("job listing poll failed")
            stop.wait(self.interval)


def _with_log_tail(invoker: OscarInvoker, end: JobEnd) -> JobEnd:
    if end.status == "Missing":
        return end
    try:
        log = invoker.job_log(end.name)
    except OscarError as exc:
        log = f"(log unavailable: {exc})"
    tail = log[-_LOG_TAIL_CHARS:]
    return JobEnd(end.name, end.status, end.created, end.started, end.finished, tail)
