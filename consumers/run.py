"""One member of a consumer group: Kafka records in, OSCAR invocations out.

Delivery guarantee: at least once. A partition's committed offset never passes a record that is
not finished, where finished means invoked successfully (with job tracking: its job Succeeded),
sent to the DLQ (acknowledged), filtered out, or dropped as a duplicate of a finished copy. What
to send and what to do after each call or job is decided by ``RecordPolicy`` (record.py).
Records with the same key (path) are invoked in order; different keys run in parallel, up to
``concurrency`` at a time. The group's rate is shared between members
in proportion to their partitions, and ``dcnios rate|pause|resume`` change it at runtime.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from dcnios.codec import StorageEventCodec
from dcnios.consumers.breaker import CircuitBreaker
from dcnios.consumers.dedup import DedupWindow
from dcnios.consumers.jobs import JobEnd, JobWatch, PendingJobsGate
from dcnios.consumers.oscar import Attempt, OscarInvoker, OscarUnreachableError
from dcnios.consumers.ratelimit import RateLimiter, member_share
from dcnios.consumers.record import (
    DeadLetter,
    Decision,
    Done,
    Follow,
    Progress,
    RecordPolicy,
    Retry,
    call_until_decided,
    probe_while_open,
    wait_unless,
)
from dcnios.consumers.tracking import OffsetTracker
from dcnios.control import ControlFollower, ControlState
from dcnios.errors import CodecError, DcniosError, KafkaError, OscarError
from dcnios.kafka import (
    LatchedProducer,
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

COMMIT_INTERVAL: Final = 1.0
#: Admitted-but-unfinished records per process before fetching pauses: a multiple of concurrency,
#: and never so small that the window drains between two polls. Pausing makes librdkafka drop
#: its prefetched records, so fetching resumes only once the window is half empty (hysteresis).
WINDOW_FACTOR: Final = 8
MIN_WINDOW: Final = 1024
_POLL_TIMEOUT: Final = 0.05
_DLQ_TIMEOUT: Final = 60.0
_LIBRDKAFKA_SESSION_TIMEOUT_MS: Final = 45_000  # librdkafka's default session.timeout.ms


@dataclass(slots=True)
class _Work:
    msg: Message
    event: StorageEvent
    generation: int
    first_attempt_ms: int = 0
    attempts: int = 0
    progress: Progress = field(default_factory=Progress)


@dataclass(slots=True)
class _KeyQueue:
    running: bool = False
    waiting: deque[_Work] = field(default_factory=deque)


class ConsumerRunner:
    """Runs one member of ``consumers[name]``'s group until ``stop`` is set."""

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
        #: Set by the caller's ``stop``, or by a crash: every wait of the member's threads ends on it.
        self.stop = threading.Event()
        self._caller_stop = stop
        self.metrics = metrics or ConsumerMetrics()
        self.invoker = invoker or OscarInvoker(consumer.oscar, consumer.concurrency)
        self.codec = StorageEventCodec(spec.kafka.schema_registry)
        self.tracker = OffsetTracker()
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
        self.control = ControlState()
        self.assignment: set[tuple[str, int]] = set()
        self.total_partitions = 0
        self.paused_fetch = False
        self.ready = threading.Event()
        self.last_tick = time.monotonic()
        self._rebalancing = True  # from subscribe, and from each revoke, until the next assignment
        self._session_timeout = _LIBRDKAFKA_SESSION_TIMEOUT_MS / 1000
        self._extra = extra_config or {}
        self._crashed: BaseException | None = None
        self._lock = threading.Lock()
        self._keys: dict[str, _KeyQueue] = {}
        self._generation: dict[tuple[str, int], int] = {}
        self._pool = ThreadPoolExecutor(
            max_workers=consumer.concurrency, thread_name_prefix=f"oscar-{consumer.name}"
        )
        self._dlq = LatchedProducer(producer_config(spec.kafka))
        self._poller_stop = threading.Event()
        self._completions: deque[float] = deque()
        self._active: dict[tuple[str, int], int] = {}
        self._consumer: Consumer | None = None
        self._m = {
            name: getattr(self.metrics, name).labels(consumer.name)
            for name in (
                "latency",
                "in_flight",
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

    # -- lifecycle -------------------------------------------------------------------------
    def _follow_caller_stop(self) -> None:
        while not self.stop.wait(0.05):
            if self._caller_stop.is_set():
                self.stop.set()

    def run(self) -> None:
        threading.Thread(target=self._follow_caller_stop, daemon=True, name="stop").start()
        prepare_internal_topics(self.spec.kafka, plans_named(self.spec, control_topic(self.spec.kafka)))
        input_path = self._input_path() if self.cs.payload == "dcache" else None
        if self.stop.is_set():
            return
        self.policy = RecordPolicy(self.cs, input_path=input_path, tracking=self.tracking)
        self._announce_tracking()
        follower = ControlFollower(self.spec.kafka, self.cs.name, self._on_control).start()
        threads = [
            threading.Thread(target=self._poll_producer, daemon=True, name="dlq-poller"),
            threading.Thread(target=self._probe_health, daemon=True, name="oscar-health"),
        ]
        if self.watch is not None:
            threads.append(
                threading.Thread(target=self.watch.run, args=(self._poller_stop,), daemon=True, name="jobs")
            )
        for thread in threads:
            thread.start()
        if not follower.caught_up.wait(30):
            raise KafkaError("the control topic did not answer within 30s")
        extra = {**self.cs.librdkafka, **self._extra}
        conf = consumer_config(self.spec.kafka, self.cs.group or f"dcnios-{self.cs.name}", **extra)
        self._session_timeout = int(conf.get("session.timeout.ms", _LIBRDKAFKA_SESSION_TIMEOUT_MS)) / 1000
        consumer = self._consumer = Consumer(conf)
        consumer.subscribe(
            [self.cs.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        last_commit = time.monotonic()
        try:
            while not self.stop.is_set():  # a crash sets it too
                self.last_tick = time.monotonic()
                # consume(n, timeout) waits for n records or the timeout: at low rates that is a
                # fixed delay per record. Wait for the first only, then take what is ready.
                first = consumer.poll(_POLL_TIMEOUT)
                msgs = [first, *consumer.consume(499, 0)] if first is not None else []
                for msg in msgs:
                    self._admit(msg)
                self._flow_control(consumer)
                if time.monotonic() - last_commit >= COMMIT_INTERVAL:
                    self._commit(consumer)
                    self._update_gauges(consumer)
                    last_commit = time.monotonic()
        finally:
            self._finish_rebalance(consumer)
            self._drain()
            try:
                self._commit(consumer)
            finally:
                consumer.close()
                # The consumer holds our bound callbacks: drop it so this runner (and its DLQ
                # producer's connections) can be freed once run() returns.
                self._consumer = None
                follower.stop()
                self._poller_stop.set()
                self._dlq.flush(30)
                self._pool.shutdown(wait=False, cancel_futures=True)
                logger.info("%s: stopped", self.cs.name)
        if self._crashed is not None:
            raise DcniosError(f"{self.cs.name}: stopped by an unexpected error: {self._crashed!r}") from (
                self._crashed
            )

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

    def _finish_rebalance(self, consumer: Consumer) -> None:
        """Leave the group from a settled state: a stop during a rebalance waits (bounded) for it.

        Tansu 0.6 wedges a group for good when a member leaves while its JoinGroup is pending:
        the departed member stays the leader of every later generation and never expires.
        Apache Kafka does not need this; there it costs at most one rebalance's time at stop.
        Records fetched meanwhile are not admitted, so they stay uncommitted for the next owner.
        """
        # A rebalance completes, or drops us, within the session timeout; with no broker it never
        # completes, so do not wait longer than that.
        deadline = time.monotonic() + min(float(self.cs.drain_timeout), self._session_timeout)
        if self._rebalancing:
            logger.info("%s: a rebalance is under way; leaving once it completes", self.cs.name)
        while self._rebalancing and time.monotonic() < deadline:
            consumer.poll(0.1)

    def _drain(self) -> None:
        """Wait (bounded) for invocations under way; queued records stay uncommitted."""
        deadline = time.monotonic() + self.cs.drain_timeout
        while self._active_total() and time.monotonic() < deadline:
            time.sleep(0.02)
        left = self._active_total()
        if left:
            logger.warning(
                "%s: %d records still in flight after %.0fs; they will be redelivered",
                self.cs.name,
                left,
                self.cs.drain_timeout,
            )

    # -- assignment ------------------------------------------------------------------------
    def _active_total(self) -> int:
        with self._lock:
            return sum(self._active.values())

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalancing = False
        with self._lock:
            for tp in partitions:
                self.assignment.add((tp.topic, tp.partition))
                self._generation[(tp.topic, tp.partition)] = (
                    self._generation.get((tp.topic, tp.partition), 0) + 1
                )
        try:
            md = consumer.list_topics(self.cs.topic, timeout=10)
            self.total_partitions = len(md.topics[self.cs.topic].partitions)
        except (KafkaException, KeyError):
            self.total_partitions = max(self.total_partitions, len(self.assignment))
        self._apply_rate()
        self.ready.set()
        logger.info("%s: assigned %s", self.cs.name, sorted(p for _, p in self.assignment))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalancing = not self.stop.is_set()  # at close, the group is being left anyway
        keys = {(tp.topic, tp.partition) for tp in partitions}
        with self._lock:
            for key in keys:
                self._generation[key] = self._generation.get(key, 0) + 1  # queued work is now stale
        # Wait for invocations already under way; queued ones are stale now and will not start.
        deadline = time.monotonic() + self.cs.drain_timeout
        while any(self._active.get(k, 0) for k in keys) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._commit(consumer, only=keys)
        with self._lock:
            for key in keys:
                self.assignment.discard(key)
                self.tracker.forget(*key)
        self._apply_rate()
        logger.info("%s: revoked %s", self.cs.name, sorted(p for _, p in keys))

    # -- admission -------------------------------------------------------------------------
    def _admit(self, msg: Message) -> None:
        if (err := msg.error()) is not None:
            if not err.retriable() and err.fatal():
                raise KafkaError(f"{self.cs.name}: {err.str()}")
            logger.debug("%s: consumer error %s", self.cs.name, err.str())
            return
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        key = (topic, partition)
        if key not in self.assignment:
            return
        self.tracker.add(topic, partition, offset)
        kind, written_ms = msg.timestamp()
        if kind != 0:  # 0: the record has no timestamp
            self._m["fetch_delay"].observe(max(0.0, time.time() - written_ms / 1000))
        try:
            event = self.codec.decode(msg.value(), msg.headers(), topic)
        except CodecError as exc:
            logger.error("%s: poison record %s[%d]@%d: %s", self.cs.name, topic, partition, offset, exc)
            self._submit(
                functools.partial(
                    self._dead_letter,
                    msg,
                    str(exc),
                    status=None,
                    attempts=0,
                    first_ms=now_millis(),
                    reason="poison",
                )
            )
            return
        if not self.cs.filter.accepts(event.path, event.mask):
            self._skip(msg, "filtered")
            return
        if self.dedup.finished(dedup_key(event)):
            self._skip(msg, "duplicate")
            return
        work = _Work(msg, event, self._generation.get(key, 0))
        qkey = self._order_key(work)
        with self._lock:
            queue = self._keys.setdefault(qkey, _KeyQueue())
            if queue.running:
                queue.waiting.append(work)
                return
            queue.running = True
        self._submit(self._run_key, qkey, work)

    def _order_key(self, work: _Work) -> str:
        if self.cs.ordering == "key":
            return work.event.path
        if self.cs.ordering == "partition":
            return f"{work.msg.topic()}[{work.msg.partition()}]"
        return f"{work.msg.topic()}[{work.msg.partition()}]@{work.msg.offset()}"

    def _skip(self, msg: Message, reason: str) -> None:
        self.metrics.skipped.labels(self.cs.name, reason).inc()
        self.tracker.done(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)

    # -- workers ---------------------------------------------------------------------------
    def _run_key(self, qkey: str, work: _Work) -> None:
        """Invoke ``work``, then the records that queued behind it under the same key, in order."""
        current: _Work | None = work
        while current is not None:
            try:
                self._process(current)
            except Exception as exc:
                self._crash(exc, current.msg)
            with self._lock:
                queue = self._keys[qkey]
                if self._crashed is not None:
                    queue.waiting.clear()  # the key's order holds: all of it is redelivered
                if queue.waiting:
                    current = queue.waiting.popleft()
                else:
                    queue.running = False
                    del self._keys[qkey]
                    current = None

    def _submit(self, fn: Any, *args: Any) -> None:
        self._pool.submit(fn, *args).add_done_callback(self._check_done)

    def _check_done(self, future: Future[Any]) -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            self._crash(exc, None)

    def _crash(self, exc: BaseException, msg: Message | None) -> None:
        """An error no decision covers. The record it hit can be neither committed nor left
        waiting (its partition's watermark would stop for good), so the member stops with the
        error; the restart redelivers every record not committed."""
        where = f" on {_where(msg)}" if msg is not None else ""
        logger.error("%s: unexpected error%s; stopping", self.cs.name, where, exc_info=exc)
        if self._crashed is None:
            self._crashed = exc
        self.stop.set()  # the member's own stop: its supervisor's stays clear, so it restarts it

    def _stale(self, work: _Work) -> bool:
        return self._generation.get((work.msg.topic() or "", work.msg.partition() or 0)) != work.generation

    def _process(self, work: _Work) -> None:
        key = (work.msg.topic() or "", work.msg.partition() or 0)
        with self._lock:
            if self._stale(work):
                return
            self._active[key] = self._active.get(key, 0) + 1
        try:
            self._invoke_with_retries(work)
        finally:
            with self._lock:
                self._active[key] -= 1

    def _invoke_with_retries(self, work: _Work) -> None:
        assert self.policy is not None
        if work.progress.attempt == 1 and self.dedup.finished(dedup_key(work.event)):
            # A copy that queued behind its first copy (same key), which has finished since.
            self._skip(work.msg, "duplicate")
            return
        if not work.first_attempt_ms:
            work.first_attempt_ms = now_millis()
        prepared = self.policy.prepare(work.event)
        if isinstance(prepared, DeadLetter):
            self._settle(work, prepared)
            return
        decision = call_until_decided(
            self.policy,
            self.invoker,
            self.breaker,
            prepared,
            progress=work.progress,
            stop=self.stop,
            wait_turn=self._wait_for_turn,
            release_turn=self._release_turn,
            on_attempt=functools.partial(self._attempted, work),
            stale=lambda: self._stale(work),
        )
        if decision is None:
            # Stopped or revoked before a verdict: leave it uncommitted; it will be redelivered.
            return
        if isinstance(decision, Follow):
            assert self.watch is not None
            self.watch.follow(decision.job, functools.partial(self._job_ended, work))
            self._m["followed_jobs"].set(self.watch.following)
            return
        self._settle(work, decision)

    def _attempted(self, work: _Work, attempt: Attempt, seconds: float) -> None:
        work.attempts += 1
        self._m["latency"].observe(seconds)
        label = str(attempt.status) if attempt.status is not None else "error"
        self.metrics.invocations.labels(self.cs.name, label).inc()
        self._m["oscar_down"].set(1 if self.breaker.is_open else 0)
        if not attempt.ok and attempt.retryable:
            self._m["retries"].inc()

    def _job_ended(self, work: _Work, end: JobEnd) -> None:
        """From the job poller: the record's job has ended (or vanished, or timed out)."""
        assert self.policy is not None and self.watch is not None
        self._m["followed_jobs"].set(self.watch.following)
        if self._stale(work):
            return  # the partition's new owner follows the same job and counts it
        self.metrics.jobs.labels(self.cs.name, end.status).inc()
        if end.created is not None and end.started is not None:
            self._m["job_queue"].observe(max(0.0, end.started - end.created))
        if end.started is not None and end.finished is not None:
            self._m["job_run"].observe(max(0.0, end.finished - end.started))
        if end.finished is not None:
            self._m["job_end_to_end"].observe(max(0.0, end.finished - work.event.observed_at / 1000))
        decision = self.policy.after_job(end, work.progress.attempt)
        if isinstance(decision, Retry):
            logger.warning(
                "%s: %s: %s; attempt %d/%d in %.2fs",
                self.cs.name,
                _where(work.msg),
                decision.error,
                decision.attempt,
                self.cs.retry.max_attempts,
                decision.delay,
            )
            self._submit(self._retry_job, work, decision)
            return
        self._submit(self._settle, work, decision)

    def _retry_job(self, work: _Work, decision: Retry) -> None:
        if not wait_unless(decision.delay, self.stop, lambda: self._stale(work)):
            return
        work.progress.attempt = decision.attempt
        work.progress.job_try += 1  # the job ended without success: the next one needs a new name
        self._process(work)

    def _settle(self, work: _Work, decision: Decision) -> None:
        if self._stale(work):
            return  # revoked meanwhile: the partition's new owner decides again
        if isinstance(decision, Done):
            self._finished(work.msg, work.event)
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
        if self._dead_letter(
            work.msg,
            decision.error,
            status=decision.status,
            attempts=work.attempts,
            first_ms=work.first_attempt_ms,
            reason=decision.reason,
            log_tail=decision.log_tail,
        ):
            self.dedup.remember(dedup_key(work.event))

    def _probe_health(self) -> None:
        probe_while_open(
            self.breaker,
            self.invoker,
            self._poller_stop,
            max_delay=float(self.cs.oscar.health_probe_max),
            name=self.cs.name,
            on_down=lambda down: self._m["oscar_down"].set(1 if down else 0),
        )

    def _wait_for_turn(self) -> bool:
        """Pause, the max_pending_jobs gate, then the rate; True holds a gate slot until
        ``_release_turn``."""
        while self.control.paused:
            if self.stop.wait(0.1):
                return False
        if self.gate is not None and not self.gate.wait_for_room(self.stop):
            return False
        if self.limiter.acquire(self.stop):
            return True
        if self.gate is not None:
            self.gate.cancel()
        return False

    def _release_turn(self) -> None:
        if self.gate is not None:
            self.gate.release()

    def _finished(self, msg: Message, event: StorageEvent) -> None:
        self.dedup.remember(dedup_key(event))
        self.tracker.done(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
        with self._lock:
            self._completions.append(time.monotonic())

    def _dead_letter(
        self,
        msg: Message,
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
        acked = threading.Event()
        assert self.cs.dead_letter_topic is not None
        # Too large for the DLQ (a poison record over the producer's size limit) would be refused
        # at once; a cut copy and the offset of the whole record are what the DLQ can keep.
        value, cut = truncated(msg.value())
        headers += cut
        self._dlq.produce(
            self.cs.dead_letter_topic,
            value,
            key=msg.key(),
            headers=headers,
            on_delivery=lambda _t, _m: acked.set(),
        )
        if not acked.wait(_DLQ_TIMEOUT):
            logger.error(
                "%s: DLQ write for %s not acknowledged; leaving it uncommitted", self.cs.name, _where(msg)
            )
            return False
        self.metrics.dlq.labels(self.cs.name, reason).inc()
        self.tracker.done(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
        return True

    # -- background ------------------------------------------------------------------------
    def _poll_producer(self) -> None:
        while not self._poller_stop.is_set():
            try:
                self._dlq.poll(0.05)
            except DcniosError as exc:
                logger.error("%s: DLQ producer: %s", self.cs.name, exc)
                self.stop.set()
                return

    # -- flow control, rate, commits -------------------------------------------------------
    def _flow_control(self, consumer: Consumer) -> None:
        window = max(self.cs.concurrency * WINDOW_FACTOR, MIN_WINDOW)
        in_flight = self.tracker.total_in_flight()
        self._m["in_flight"].set(in_flight)
        full = in_flight >= window if not self.paused_fetch else in_flight > window // 2
        want_pause = full or self.control.paused
        if want_pause != self.paused_fetch:
            parts = [TopicPartition(t, p) for t, p in self.assignment]
            if parts:
                (consumer.pause if want_pause else consumer.resume)(parts)
            self.paused_fetch = want_pause

    def _on_control(self, state: ControlState) -> None:
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

    def _apply_rate(self) -> None:
        group = self.group_rate()
        mine = None if group is None else member_share(group, len(self.assignment), self.total_partitions)
        self.limiter.set_rate(mine)
        self._m["rate_limit"].set(-1 if mine is None else mine)
        self._m["group_rate"].set(-1 if group is None else group)

    def _commit(self, consumer: Consumer, only: set[tuple[str, int]] | None = None) -> None:
        positions = {k: v for k, v in self.tracker.to_commit().items() if only is None or k in only}
        if not positions:
            return
        offsets = [TopicPartition(t, p, pos) for (t, p), pos in positions.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            logger.warning("%s: commit failed (%s); will retry", self.cs.name, exc.args[0].str())
            return
        self.tracker.committed(positions)
        logger.debug("%s: committed %s", self.cs.name, positions)

    def _update_gauges(self, consumer: Consumer) -> None:
        now = time.monotonic()
        with self._lock:
            while self._completions and now - self._completions[0] > 10:
                self._completions.popleft()
            achieved = len(self._completions) / 10
        self._m["achieved"].set(achieved)
        if self.gate is not None:
            self._m["pending_jobs"].set(self.gate.active)
        for topic, partition in list(self.assignment):
            try:
                # From the last fetch response: no extra broker round trip per partition per second.
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            fetched = self.tracker.fetched(topic, partition)
            position = self.tracker.position(topic, partition)
            # Some brokers (Tansu) under-report the high watermark; what we fetched is a floor we trust.
            end = max(high, fetched or 0)
            lag = end - position if position is not None else end
            self.metrics.lag.labels(self.cs.name, topic, str(partition)).set(max(0, lag))

    def health(self) -> tuple[bool, dict[str, Any]]:
        stalled = time.monotonic() - self.last_tick > 30
        return (
            self.ready.is_set() and not stalled,
            {
                "consumer": self.cs.name,
                "assigned": sorted(p for _, p in self.assignment),
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
