"""Carries one record from its body to a final decision, on the event loop.

``RecordPolicy`` (record.py) decides; this drives: it waits for a turn (pause, the
``max_pending_jobs`` gate, the rate, a concurrency slot), calls OSCAR, feeds the circuit breaker,
sleeps out retries (Retry-After first), and follows a tracked job to its end. The live consumer,
``dcnios replay`` and ``dcnios dlq replay`` all drive records through one ``RecordDriver``, so
they cannot disagree on rate, gate, breaker or retries.

Waits end early when ``stop`` is set or the caller's ``stale()`` turns true (a revoked
partition): a record in a long backoff never holds its key, or a revoke, until it wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from dcnios.aio import in_daemon_thread
from dcnios.consumers.breaker import CircuitBreaker, Entry
from dcnios.consumers.calls import OscarCalls
from dcnios.consumers.jobs import JobEnd, JobWatch, PendingJobsGate
from dcnios.consumers.oscar import Attempt
from dcnios.consumers.ratelimit import RateLimiter
from dcnios.consumers.record import (
    DeadLetter,
    Decision,
    Follow,
    Hold,
    Prepared,
    Progress,
    RecordPolicy,
    Retry,
)
from dcnios.storage_event import StorageEvent

__all__ = ["RecordDriver"]

logger = logging.getLogger(__name__)

#: How often a waiting record looks at its stop, staleness, the breaker, the gate and the pause.
_RECHECK: Final = 0.05
_SLEEP_SLICE: Final = 0.2

OnAttempt = Callable[[Attempt, float], None]
OnJobEnd = Callable[[JobEnd], None]


def _never() -> bool:
    return False


class RecordDriver:
    """One consumer's records, driven on the loop that calls it.

    ``paused``: whether calls are held (the control topic's pause). ``watch`` is needed when the
    policy tracks jobs; its poller thread resolves job ends onto this loop.
    """

    def __init__(
        self,
        policy: RecordPolicy,
        calls: OscarCalls,
        *,
        stop: threading.Event,
        breaker: CircuitBreaker | None = None,
        limiter: RateLimiter | None = None,
        gate: PendingJobsGate | None = None,
        watch: JobWatch | None = None,
        paused: Callable[[], bool] = _never,
    ) -> None:
        self.policy = policy
        self.calls = calls
        self.stop = stop
        self.breaker = breaker or CircuitBreaker()
        self.limiter = limiter or RateLimiter(None)
        self.gate = gate
        self.watch = watch
        self.paused = paused
        self._slots = asyncio.Semaphore(max(policy.cs.concurrency, 1))

    # -- waits -----------------------------------------------------------------------------
    async def sleep(self, seconds: float, stale: Callable[[], bool] = _never) -> bool:
        """Sleep ``seconds``; False as soon as stopped or stale."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            if self.stop.is_set() or stale():
                return False
            await asyncio.sleep(min(left, _SLEEP_SLICE))
        return not (self.stop.is_set() or stale())

    async def _until(self, ready: Callable[[], bool], stale: Callable[[], bool]) -> bool:
        """Wait until ``ready()`` (which may take something when it answers True)."""
        while not ready():
            if self.stop.is_set() or stale():
                return False
            await asyncio.sleep(_RECHECK)
        return True

    async def _turn(self, stale: Callable[[], bool]) -> Entry | None:
        """A concurrency slot, the breaker, the pause, a gate slot, then the rate. An entry holds
        the concurrency slot and a gate slot until ``_release_turn`` (and, half-open, the
        breaker's one call); None holds nothing.

        The breaker is asked only once a slot is held: records that queued for a slot while the
        breaker opened must not call once they get one.
        """
        await self._slots.acquire()
        entry: Entry | None = None

        def enter() -> bool:
            nonlocal entry
            entry = self.breaker.try_enter()
            return entry is not None

        try:
            if (
                await self._until(enter, stale)
                and await self._until(lambda: not self.paused(), stale)
                and (self.gate is None or await self._until(self.gate.try_take, stale))
            ):
                if await self._rate_slot(stale):
                    return entry
                if self.gate is not None:
                    self.gate.cancel()
        except BaseException:
            if entry is not None:
                self.breaker.release_probe(entry)
            self._slots.release()
            raise
        if entry is not None:
            self.breaker.release_probe(entry)
        self._slots.release()
        return None

    async def _rate_slot(self, stale: Callable[[], bool]) -> bool:
        while True:
            wait = self.limiter.reserve()
            if wait == 0:
                return True
            if wait == float("inf"):  # a rate of 0: held until the rate changes
                if not await self.sleep(_SLEEP_SLICE, stale):
                    return False
                continue
            return await self.sleep(wait, stale)

    def _release_turn(self) -> None:
        if self.gate is not None:
            self.gate.release()
        self._slots.release()

    # -- calls -----------------------------------------------------------------------------
    async def decide(
        self,
        prepared: Prepared,
        progress: Progress,
        *,
        stale: Callable[[], bool] = _never,
        on_attempt: OnAttempt | None = None,
    ) -> Decision | None:
        """Call OSCAR until Done, Follow or DeadLetter; None when stopped or stale first.

        Retries sleep here; a Hold waits for the breaker and repeats the same attempt.
        """
        policy, breaker = self.policy, self.breaker
        while not self.stop.is_set() and not stale():
            entry = await self._turn(stale)
            if entry is None:
                return None
            try:
                if stale():  # revoked while waiting for a turn: the partition's new owner calls it
                    breaker.release_probe(entry)
                    return None
                job = policy.job(prepared.event, progress.job_try)
                started = time.perf_counter()
                attempt = await self.calls.invoke(prepared.body, policy.headers(prepared.event, job))
            except BaseException:
                breaker.release_probe(entry)
                raise
            finally:
                self._release_turn()
            if on_attempt is not None:
                on_attempt(attempt, time.perf_counter() - started)
            self._feed_breaker(attempt, entry)
            decision = policy.after_call(attempt, progress.attempt, breaker_open=breaker.is_open, job=job)
            if isinstance(decision, Hold):
                continue
            if isinstance(decision, Retry):
                logger.warning(
                    "%s: %s failed (%s), attempt %d/%d, retrying in %.2fs",
                    policy.cs.name,
                    prepared.event.path,
                    decision.error,
                    progress.attempt,
                    policy.cs.retry.max_attempts,
                    decision.delay,
                )
                progress.attempt = decision.attempt
                if not await self.sleep(decision.delay, stale):
                    return None
                continue
            return decision
        return None

    def _feed_breaker(self, attempt: Attempt, entry: Entry) -> None:
        base = self.calls.invoker.base
        if attempt.outage is not None:
            # The breaker's probe for TLS is /health (it fails over TLS alike); for refused
            # credentials it is one real call at a time, since /health asks for none.
            if self.breaker.trip(attempt.error, probe_by_call=attempt.outage == "auth", entry=entry):
                logger.error(
                    "OSCAR %s refuses every call (%s): invocations held, nothing dead-lettered, "
                    "until a probe passes",
                    base,
                    attempt.error,
                )
        elif self.breaker.record(attempt.system, attempt.error, entry):
            logger.error(
                "OSCAR %s is failing as a whole (%s): invocations held until GET /health answers",
                base,
                attempt.error,
            )

    # -- jobs ------------------------------------------------------------------------------
    async def job_end(self, job: str, stale: Callable[[], bool] = _never) -> JobEnd | None:
        """Wait for a followed job's end (from the job poller's thread); None if stopped or stale."""
        assert self.watch is not None, "tracking needs a JobWatch"
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[JobEnd] = loop.create_future()

        def resolve(end: JobEnd) -> None:
            if not ended.done():
                ended.set_result(end)

        def from_poller(end: JobEnd) -> None:
            # A loop closed meanwhile (the member stopped): the record stays uncommitted and its
            # next owner follows the same job.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(resolve, end)

        cancel = self.watch.follow(job, from_poller)
        try:
            while not ended.done():
                if self.stop.is_set() or stale():
                    return None
                await asyncio.wait({ended}, timeout=_SLEEP_SLICE)
            return ended.result()
        finally:
            if not ended.done():
                cancel()  # stopped, stale or cancelled: the poller no longer calls back

    async def follow_to_end(
        self,
        prepared: Prepared,
        progress: Progress,
        job: str,
        *,
        stale: Callable[[], bool] = _never,
        on_attempt: OnAttempt | None = None,
        on_job_end: OnJobEnd | None = None,
    ) -> Decision | None:
        """From a job that exists to Done or DeadLetter: a job that ended without success is
        retried under a new name, as the policy says."""
        while True:
            end = await self.job_end(job, stale)
            if end is None:
                return None
            if on_job_end is not None:
                on_job_end(end)
            after = self.policy.after_job(end, progress.attempt)
            if not isinstance(after, Retry):
                return after
            logger.warning(
                "%s: %s: %s; attempt %d/%d in %.2fs",
                self.policy.cs.name,
                prepared.event.path,
                after.error,
                after.attempt,
                self.policy.cs.retry.max_attempts,
                after.delay,
            )
            if not await self.sleep(after.delay, stale):
                return None
            progress.attempt = after.attempt
            progress.job_try += 1  # the job ended without success: the next one needs a new name
            decision = await self.decide(prepared, progress, stale=stale, on_attempt=on_attempt)
            if not isinstance(decision, Follow):
                return decision
            job = decision.job

    async def run_to_end(self, event: StorageEvent, *, stale: Callable[[], bool] = _never) -> Decision | None:
        """One record to its final decision (replays): Done or DeadLetter; None if stopped."""
        prepared = self.policy.prepare(event)
        if isinstance(prepared, DeadLetter):
            return prepared
        progress = Progress()
        decision = await self.decide(prepared, progress, stale=stale)
        if isinstance(decision, Follow):
            return await self.follow_to_end(prepared, progress, decision.job, stale=stale)
        return decision

    # -- the breaker's probe ---------------------------------------------------------------
    async def probe_while_open(
        self, *, max_delay: float, on_down: Callable[[bool], None] | None = None
    ) -> None:
        """Until stopped: while the breaker is open, probe with growing delays, then let calls
        through half-open. The probe is ``GET /health``, or for refused credentials (which
        /health does not check) the next real call itself.

        The delay keeps growing across re-openings and starts again only once a call succeeded
        (the breaker closed), so a cluster whose /health passes while jobs fail is not hammered.
        A close is counted by the breaker, not looked for here: a fast consumer can close and
        re-open it between two looks, and its delays must start again all the same.
        """
        breaker, name = self.breaker, self.policy.cs.name
        delay, closings = 1.0, breaker.closings
        while not self.stop.is_set():
            if breaker.closings != closings:
                delay, closings = 1.0, breaker.closings
            if not breaker.is_open:
                if not breaker.half_open:
                    delay = 1.0
                    if on_down is not None:
                        on_down(False)
                await asyncio.sleep(_SLEEP_SLICE)
                continue
            if on_down is not None:
                on_down(True)
            if not await self.sleep(delay):
                return
            try:
                passed = breaker.probe_by_call or await in_daemon_thread(
                    "oscar-health", self.calls.invoker.healthy
                )
            except Exception:  # the probe must outlive any failure, or the breaker stays open for good
                logger.exception("%s: the OSCAR health probe failed", name)
                passed = False
            if passed:
                down = time.monotonic() - (breaker.opened_at or time.monotonic())
                logger.warning(
                    "%s: OSCAR held for %.0fs (%s); trying a call again", name, down, breaker.reason
                )
                breaker.probe_passed()
            delay = min(delay * 2, max_delay)
