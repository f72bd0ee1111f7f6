"""One member of a consumer group: Kafka records in, OSCAR invocations out.

Delivery guarantee: at least once. A partition's committed offset never passes a record that is
not finished, where finished means invoked successfully (with job tracking: its job Succeeded),
sent to the DLQ (acknowledged), filtered out, or dropped as a duplicate of a finished copy.

Two rooms. The Kafka side runs on one thread of its own (intake.py): fetch, rebalance, flow
control, commits. Everything else runs on one event loop (uvloop where installed): admission
(decode, filter, dedup), a queue per key, and each record's calls, retries and job, driven by the
``RecordDriver`` that ``replay`` and ``dlq replay`` use too. Records with the same key (path) are
invoked in order; different keys run in parallel, up to ``concurrency`` calls at a time. The
group's rate is shared between members in proportion to their partitions, and
``dcnios rate|pause|resume`` change it at runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import Consumer, Message

from dcnios.aio import loop_factory
from dcnios.codec import StorageEventCodec
from dcnios.consumers.breaker import CircuitBreaker
from dcnios.consumers.calls import OscarCalls
from dcnios.consumers.dedup import DedupWindow
from dcnios.consumers.driver import RecordDriver
from dcnios.consumers.intake import Fetched, Intake
from dcnios.consumers.jobs import JobEnd, JobWatch, PendingJobsGate
from dcnios.consumers.oscar import Attempt, OscarInvoker, OscarUnreachableError
from dcnios.consumers.ownership import TP, Ownership
from dcnios.consumers.ratelimit import RateLimiter, member_share
from dcnios.consumers.record import (
    DeadLetter,
    Decision,
    Done,
    Follow,
    Prepared,
    Progress,
    RecordPolicy,
    RecordReader,
    input_path_for,
)
from dcnios.consumers.tracking import OffsetTracker
from dcnios.control import ControlFollower, ControlState
from dcnios.errors import CodecError, DcniosError, KafkaError, OscarError
from dcnios.kafka import (
    LatchedProducer,
    RdConf,
    consumer_config,
    prepare_internal_topics,
    producer_config,
    truncated,
)
from dcnios.metrics import ConsumerMetrics
from dcnios.spec import ConsumerSpec, PipelineSpec
from dcnios.storage_event import StorageEvent, dedup_key, now_millis
from dcnios.topics import control_topic, plans_named

__all__ = ["ConsumerRunner"]

logger = logging.getLogger(__name__)

_DLQ_TIMEOUT: Final = 60.0
_DLQ_POLL: Final = 0.01
_DLQ_IDLE_POLL: Final = 0.2
_STOP_CHECK: Final = 0.05


@dataclass(slots=True)
class _Work:
    msg: Message
    event: StorageEvent
    generation: int
    first_attempt_ms: int = 0
    attempts: int = 0
    progress: Progress = field(default_factory=Progress)

    @property
    def tp(self) -> TP:
        return (self.msg.topic() or "", self.msg.partition() or 0)


class ConsumerRunner:
    """Runs one member of ``consumers[name]``'s group until ``stop`` is set."""

    _driver: RecordDriver  # built on the loop, in run()

    def __init__(
        self,
        spec: PipelineSpec,
        consumer: ConsumerSpec,
        *,
        stop: threading.Event,
        metrics: ConsumerMetrics | None = None,
        invoker: OscarInvoker | None = None,
        extra_config: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.cs = consumer
        #: Set by the caller's ``stop``, or by a crash: every wait of the member ends on it.
        self.stop = threading.Event()
        self._caller_stop = stop
        self.metrics = metrics or ConsumerMetrics()
        self.invoker = invoker or OscarInvoker(consumer.oscar, consumer.concurrency)
        self.codec = StorageEventCodec(spec.kafka.schema_registry)
        self.reader = RecordReader(consumer, self.codec)
        self.tracker = OffsetTracker()
        self.ownership = Ownership()
        self.dedup = DedupWindow(consumer.dedup_window)
        self.limiter = RateLimiter(consumer.rate.per_second if consumer.rate else None)
        self.gate = (
            PendingJobsGate(consumer.oscar.max_pending_jobs) if consumer.oscar.max_pending_jobs else None
        )
        self.tracking = consumer.oscar.tracking
        self.watch = (
            JobWatch(
                self.invoker,
                interval=float(consumer.oscar.pending_poll_interval),
                gate=self.gate,
                deadline=float(consumer.oscar.job_timeout) if self.tracking else None,
            )
            if self.tracking or self.gate is not None
            else None
        )
        self.breaker = CircuitBreaker()
        self.policy: RecordPolicy | None = None  # needs the service's input path: built in run()
        #: Invocations, on the loop (its session opens there, on the first call).
        self.calls = OscarCalls(self.invoker, concurrency=consumer.concurrency)
        self.control = ControlState()
        self.ready = threading.Event()
        self._intake: Intake | None = None
        self._total_partitions = 0
        self._extra = extra_config or {}
        self._crashed: BaseException | None = None
        self._background_stop = threading.Event()
        self._dlq = LatchedProducer(producer_config(spec.kafka))
        self._dlq_waiting = 0
        self._keys: dict[str, deque[_Work]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._completions: deque[float] = deque()
        self._m = {
            name: getattr(self.metrics, name).labels(consumer.name)
            for name in (
                "latency",
                "retries",
                "rate_limit",
                "group_rate",
                "achieved",
                "paused",
                "pending_jobs",
                "fetch_delay",
                "job_queue",
                "job_run",
                "job_end_to_end",
                "oscar_down",
                "followed_jobs",
            )
        }

    @property
    def assignment(self) -> set[TP]:
        return self.ownership.assignment

    # -- lifecycle -------------------------------------------------------------------------
    def _follow_caller_stop(self) -> None:
        while not self.stop.wait(_STOP_CHECK):
            if self._caller_stop.is_set():
                self.stop.set()

    def run(self) -> None:
        threading.Thread(target=self._follow_caller_stop, daemon=True, name="stop").start()
        prepare_internal_topics(self.spec.kafka, plans_named(self.spec, control_topic(self.spec.kafka)))
        input_path = input_path_for(self.cs, self._input_path)
        if self.stop.is_set():
            return
        self.policy = RecordPolicy(self.cs, input_path=input_path, tracking=self.tracking)
        self._announce_tracking()
        follower = ControlFollower(self.spec.kafka, self.cs.name, self._on_control).start()
        watch_thread = None
        if self.watch is not None:
            watch_thread = threading.Thread(
                target=self.watch.run, args=(self._background_stop,), daemon=True, name="jobs"
            )
            watch_thread.start()
        try:
            if not follower.caught_up.wait(30):
                raise KafkaError("the control topic did not answer within 30s")
            extra = {**self.cs.librdkafka, **self._extra}
            conf = consumer_config(self.spec.kafka, self.cs.group or f"dcnios-{self.cs.name}", **extra)
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                runner.run(self._serve(Consumer(conf), conf))
        finally:
            follower.stop()
            self._background_stop.set()
            self._dlq.flush(30)
            logger.info("%s: stopped", self.cs.name)
        if self._crashed is not None:
            raise DcniosError(f"{self.cs.name}: stopped by an unexpected error: {self._crashed!r}") from (
                self._crashed
            )

    async def _serve(self, consumer: Consumer, conf: RdConf) -> None:
        loop = asyncio.get_running_loop()
        assert self.policy is not None
        driver = self._driver = RecordDriver(
            self.policy,
            self.calls,
            stop=self.stop,
            breaker=self.breaker,
            limiter=self.limiter,
            gate=self.gate,
            watch=self.watch,
            paused=lambda: self.control.paused,
        )
        background = [
            loop.create_task(self._poll_dlq()),
            loop.create_task(
                driver.probe_while_open(
                    max_delay=float(self.cs.oscar.health_probe_max),
                    on_down=lambda down: self._m["oscar_down"].set(1 if down else 0),
                )
            ),
            loop.create_task(self._update_gauges()),
        ]

        def hand_off(batch: list[Fetched]) -> None:
            # A closed loop: these stay uncommitted and are redelivered.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._admit_batch, batch)

        session_ms = int(conf.get("session.timeout.ms", 45_000))
        intake = self._intake = Intake(
            consumer,
            self.cs,
            ownership=self.ownership,
            tracker=self.tracker,
            stop=self.stop,
            metrics=self.metrics,
            hand_off=hand_off,
            on_ownership=self._apply_rate_for,
            paused=lambda: self.control.paused,
            ready=self.ready,
            crash=lambda exc: self._crash(exc, None),
            session_timeout=session_ms / 1000,
        ).start()
        try:
            while not self.stop.is_set():
                await asyncio.sleep(_STOP_CHECK)
            await self._drain()
        finally:
            for task in [*self._tasks, *background]:
                task.cancel()
            await asyncio.gather(*self._tasks, *background, return_exceptions=True)
            await self.calls.close()
            intake.finished.set()
            # The Kafka thread commits what finished and leaves the group; its revoke callbacks
            # look at ownership only, not at this loop.
            await asyncio.to_thread(intake.join, float(self.cs.drain_timeout) + 60)

    def _input_path(self) -> str | None:
        """The service's input path; while OSCAR is down (no answer, 5xx) asked again with backoff,
        as a call would be: a consumer started during an outage waits for it, it does not exit."""
        delay = 1.0
        while True:
            try:
                return self.invoker.input_path()
            except OscarError as exc:
                if not isinstance(exc, OscarUnreachableError) and (exc.status or 0) < 500:
                    raise  # a configuration error: asking again changes nothing
                logger.warning("%s: %s; asking again in %.0fs", self.cs.name, exc, delay)
                if self.stop.wait(delay):
                    return None
                delay = min(delay * 2, float(self.cs.oscar.health_probe_max))

    def _announce_tracking(self) -> None:
        oscar = self.cs.oscar
        if self.tracking:
            logger.info(
                "%s: following every job to Succeeded/Failed; a record is committed when its job ends",
                self.cs.name,
            )
        elif oscar.mode == "async" and oscar.job_id != "deterministic":
            logger.warning(
                "%s: jobs are not followed: with job_id: random OSCAR returns no job name, so a 201 "
                "(the Job object exists) counts as done; set job_id: deterministic (OSCAR >= 4.1) "
                "and username/password to follow each job to its end",
                self.cs.name,
            )
        elif oscar.mode == "async":
            logger.warning(
                "%s: jobs are not followed (track_jobs is off): a 201 counts as done", self.cs.name
            )
        if self.policy is not None and self.policy.input_path is not None:
            logger.info("%s: the service stages files from %s", self.cs.name, self.policy.input_path)

    async def _drain(self) -> None:
        """Wait (bounded) for calls under way; queued records stay uncommitted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(self.cs.drain_timeout)
        while self.ownership.active() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        left = self.ownership.active()
        if left:
            logger.warning(
                "%s: %d records still in flight after %.0fs; they will be redelivered",
                self.cs.name,
                left,
                self.cs.drain_timeout,
            )

    def _crash(self, exc: BaseException, msg: Message | None) -> None:
        """An error no decision covers. The record it hit can be neither committed nor left
        waiting (its partition's watermark would stop for good), so the member stops with the
        error; the restart redelivers every record not committed."""
        where = f" on {_where(msg)}" if msg is not None else ""
        logger.error("%s: unexpected error%s; stopping", self.cs.name, where, exc_info=exc)
        if self._crashed is None:
            self._crashed = exc
        self.stop.set()  # the member's own stop: its supervisor's stays clear, so it restarts it

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._crash(exc, None)

    # -- admission (on the loop) -----------------------------------------------------------
    def _admit_batch(self, batch: list[Fetched]) -> None:
        if self.stop.is_set():
            return  # not admitted: uncommitted, redelivered
        try:
            for msg, generation in batch:
                self._admit(msg, generation)
        except Exception as exc:
            self._crash(exc, None)

    def _admit(self, msg: Message, generation: int) -> None:
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        if not self.ownership.may_start((topic, partition), generation):
            return
        kind, written_ms = msg.timestamp()
        if kind != 0:  # 0: the record has no timestamp
            self._m["fetch_delay"].observe(max(0.0, time.time() - written_ms / 1000))
        try:
            event = self.reader.read(msg)
        except CodecError as exc:
            logger.error("%s: poison record %s[%d]@%d: %s", self.cs.name, topic, partition, offset, exc)
            self._spawn(
                self._dead_letter(
                    msg,
                    generation,
                    str(exc),
                    status=None,
                    attempts=0,
                    first_ms=now_millis(),
                    reason="poison",
                )
            )
            return
        if not self.cs.filter.accepts(event.path, event.mask, event.event_name):
            self._skip(msg, generation, "filtered")
            return
        if self.dedup.finished(dedup_key(event)):
            self._skip(msg, generation, "duplicate")
            return
        work = _Work(msg, event, generation)
        qkey = self._order_key(work)
        waiting = self._keys.get(qkey)
        if waiting is not None:
            waiting.append(work)
            return
        self._keys[qkey] = deque()
        self._spawn(self._run_key(qkey, work))

    def _order_key(self, work: _Work) -> str:
        if self.cs.ordering == "key":
            return work.event.path
        if self.cs.ordering == "partition":
            return f"{work.msg.topic()}[{work.msg.partition()}]"
        return f"{work.msg.topic()}[{work.msg.partition()}]@{work.msg.offset()}"

    def _mark_done(self, msg: Message, generation: int) -> None:
        topic, partition = msg.topic() or "", msg.partition() or 0
        if self.ownership.may_settle((topic, partition), generation):
            self.tracker.done(topic, partition, msg.offset() or 0)

    def _skip(self, msg: Message, generation: int, reason: str) -> None:
        self.metrics.skipped.labels(self.cs.name, reason).inc()
        self._mark_done(msg, generation)

    # -- one key's records, in order -------------------------------------------------------
    async def _run_key(self, qkey: str, work: _Work) -> None:
        """Invoke ``work``, then the records that queued behind it under the same key, in order."""
        current: _Work | None = work
        try:
            while current is not None:
                try:
                    await self._process(current)
                except Exception as exc:
                    self._crash(exc, current.msg)
                waiting = self._keys[qkey]
                if self._crashed is not None:
                    waiting.clear()  # the key's order holds: all of it is redelivered
                current = waiting.popleft() if waiting else None
        finally:
            del self._keys[qkey]

    async def _process(self, work: _Work) -> None:
        tp = work.tp
        if not self.ownership.may_start(tp, work.generation):
            return
        self.ownership.enter(tp)
        try:
            await self._invoke(work)
        finally:
            self.ownership.leave(tp)

    def _stale(self, work: _Work) -> bool:
        """No new call for ``work``: its partition is being revoked, or was."""
        return not self.ownership.may_start(work.tp, work.generation)

    async def _invoke(self, work: _Work) -> None:
        assert self.policy is not None
        if work.progress.attempt == 1 and self.dedup.finished(dedup_key(work.event)):
            # A copy that queued behind its first copy (same key), which has finished since.
            self._skip(work.msg, work.generation, "duplicate")
            return
        if not work.first_attempt_ms:
            work.first_attempt_ms = now_millis()
        prepared = self.policy.prepare(work.event)
        if isinstance(prepared, DeadLetter):
            await self._settle(work, prepared)
            return
        decision = await self._driver.decide(
            prepared,
            work.progress,
            stale=functools.partial(self._stale, work),
            on_attempt=functools.partial(self._attempted, work),
        )
        if decision is None:
            return  # stopped or revoked before a verdict: uncommitted, redelivered
        if isinstance(decision, Follow):
            # The key moves on: a job can run for hours, and its record is settled when it ends.
            self._spawn(self._follow(work, prepared, decision.job))
            return
        await self._settle(work, decision)

    async def _follow(self, work: _Work, prepared: Prepared, job: str) -> None:
        assert self.watch is not None
        self._m["followed_jobs"].set(self.watch.following + 1)
        decision = await self._driver.follow_to_end(
            prepared,
            work.progress,
            job,
            stale=functools.partial(self._stale, work),
            on_attempt=functools.partial(self._attempted, work),
            on_job_end=functools.partial(self._job_ended, work),
        )
        self._m["followed_jobs"].set(self.watch.following)
        if decision is not None:
            await self._settle(work, decision)

    def _attempted(self, work: _Work, attempt: Attempt, seconds: float) -> None:
        work.attempts += 1
        self._m["latency"].observe(seconds)
        label = str(attempt.status) if attempt.status is not None else "error"
        self.metrics.invocations.labels(self.cs.name, label).inc()
        self._m["oscar_down"].set(1 if self.breaker.is_open else 0)
        if not attempt.ok and attempt.retryable:
            self._m["retries"].inc()

    def _job_ended(self, work: _Work, end: JobEnd) -> None:
        self.metrics.jobs.labels(self.cs.name, end.status).inc()
        if end.created is not None and end.started is not None:
            self._m["job_queue"].observe(max(0.0, end.started - end.created))
        if end.started is not None and end.finished is not None:
            self._m["job_run"].observe(max(0.0, end.finished - end.started))
        if end.finished is not None:
            self._m["job_end_to_end"].observe(max(0.0, end.finished - work.event.observed_at / 1000))

    async def _settle(self, work: _Work, decision: Decision) -> None:
        if not self.ownership.may_settle(work.tp, work.generation):
            return  # revoked meanwhile: the partition's new owner decides again
        if isinstance(decision, Done):
            self.dedup.remember(dedup_key(work.event))
            self._mark_done(work.msg, work.generation)
            self._completions.append(time.monotonic())
            return
        assert isinstance(decision, DeadLetter)
        logger.error(
            "%s: %s (%s) to the DLQ after %d attempt(s): %s",
            self.cs.name,
            _where(work.msg),
            work.event.path,
            work.attempts,
            decision.error,
        )
        if await self._dead_letter(
            work.msg,
            work.generation,
            decision.error,
            status=decision.status,
            attempts=work.attempts,
            first_ms=work.first_attempt_ms,
            reason=decision.reason,
            log_tail=decision.log_tail,
        ):
            self.dedup.remember(dedup_key(work.event))

    # -- the dead-letter topic -------------------------------------------------------------
    async def _dead_letter(
        self,
        msg: Message,
        generation: int,
        error: str,
        *,
        status: int | None,
        attempts: int,
        first_ms: int,
        reason: str,
        log_tail: str = "",
    ) -> bool:
        """Write ``msg`` to the DLQ; True once acknowledged (and marked done)."""
        headers: list[tuple[str, str | bytes | None]] = list(_headers(msg))
        headers += [
            ("dcnios-error", error.encode("utf-8", "replace")[:2000]),
            ("dcnios-http-status", str(status or "").encode()),
            ("dcnios-attempts", str(attempts).encode()),
            ("dcnios-first-attempt-ms", str(first_ms).encode()),
            ("dcnios-last-attempt-ms", str(now_millis()).encode()),
            ("dcnios-topic", (msg.topic() or "").encode()),
            ("dcnios-partition", str(msg.partition()).encode()),
            ("dcnios-offset", str(msg.offset()).encode()),
            ("dcnios-consumer", self.cs.name.encode()),
            ("dcnios-reason", reason.encode()),
        ]
        if log_tail:
            headers.append(("dcnios-job-log-tail", log_tail.encode("utf-8", "replace")[-2000:]))
        assert self.cs.dead_letter_topic is not None
        # Too large for the DLQ (a poison record over the producer's size limit) would be refused
        # at once; a cut copy and the offset of the whole record are what the DLQ can keep.
        value, cut = truncated(msg.value())
        headers += cut
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def delivered(_token: Any, _msg: Message) -> None:  # on this loop: _poll_dlq polls
            if not acked.done():
                acked.set_result(None)

        self._dlq.produce(
            self.cs.dead_letter_topic, value, key=msg.key(), headers=headers, on_delivery=delivered
        )
        self._dlq_waiting += 1
        try:
            await asyncio.wait_for(acked, _DLQ_TIMEOUT)
        except TimeoutError:
            logger.error(
                "%s: DLQ write for %s not acknowledged; leaving it uncommitted", self.cs.name, _where(msg)
            )
            return False
        finally:
            self._dlq_waiting -= 1
        self.metrics.dlq.labels(self.cs.name, reason).inc()
        self._mark_done(msg, generation)
        return True

    async def _poll_dlq(self) -> None:
        """Delivery reports: often while a dead letter waits for one, rarely otherwise (an idle
        consumer should not wake a hundred times a second)."""
        while True:
            try:
                self._dlq.poll(0)
            except DcniosError as exc:
                logger.error("%s: DLQ producer: %s", self.cs.name, exc)
                self.stop.set()
                return
            await asyncio.sleep(_DLQ_POLL if self._dlq_waiting else _DLQ_IDLE_POLL)

    # -- control, rate, gauges -------------------------------------------------------------
    def _on_control(self, state: ControlState) -> None:
        """From the control follower's thread: replacing the state is atomic, the limiter locks."""
        self.control = state
        self._m["paused"].set(1 if state.paused else 0)
        self._apply_rate()
        logger.info(
            "%s: control: rate=%s paused=%s",
            self.cs.name,
            state.rate if state.rate_set else f"{self.cs.rate or 'unlimited'} (spec)",
            state.paused,
        )

    def group_rate(self) -> float | None:
        """The group's rate now: the control topic's, else the spec's; None is unlimited."""
        rate = self.control.rate if self.control.rate_set else self.cs.rate
        return rate.per_second if rate is not None else None

    def _apply_rate_for(self, total_partitions: int) -> None:
        self._total_partitions = total_partitions
        self._apply_rate()

    def _apply_rate(self) -> None:
        group = self.group_rate()
        mine = (
            None
            if group is None
            else member_share(group, len(self.ownership.assignment), self._total_partitions)
        )
        self.limiter.set_rate(mine)
        self._m["rate_limit"].set(-1 if mine is None else mine)
        self._m["group_rate"].set(-1 if group is None else group)

    async def _update_gauges(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            while self._completions and now - self._completions[0] > 10:
                self._completions.popleft()
            self._m["achieved"].set(len(self._completions) / 10)
            if self.gate is not None:
                self._m["pending_jobs"].set(self.gate.active)

    def health(self) -> tuple[bool, dict[str, Any]]:
        intake = self._intake
        last_tick = intake.last_tick if intake is not None else time.monotonic()
        stalled = time.monotonic() - last_tick > 30
        return (
            self.ready.is_set() and not stalled,
            {
                "consumer": self.cs.name,
                "assigned": [p for _, p in self.ownership.owned()],
                "in_flight": self.tracker.total_in_flight(),
                "paused": self.control.paused,
                "rate_limit": self.limiter.rate,
                "poll_loop_stalled": stalled,
                "oscar_down": self.breaker.is_open,
                "following_jobs": self.watch.following if self.watch is not None else 0,
            },
        )


def _headers(msg: Message) -> list[tuple[str, str | bytes | None]]:
    raw = msg.headers() or []
    return list(raw.items()) if isinstance(raw, dict) else list(raw)


def _where(msg: Message) -> str:
    return f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
