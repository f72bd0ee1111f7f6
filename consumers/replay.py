"""Re-drive a time window of a consumer's records into its OSCAR service (``dcnios replay``).

It reads in its own group (``<group>-replay``), so the live group's offsets and members are not
touched. Records are selected by Kafka timestamp (when the producer wrote them), the consumer's
filter and an optional path glob; the same event twice in the window (a producer replay after a
crash) is invoked once. The consumer's rate, concurrency, ``max_pending_jobs``, retry policy
(Retry-After included) and job tracking apply, through the same ``RecordDriver`` as the consumer.
A replay is a deliberate re-run: its job ids carry a new generation, so OSCAR creates new jobs
instead of answering "already exists".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from dcnios.aio import LoopThread
from dcnios.codec import StorageEventCodec
from dcnios.consumers.calls import OscarCalls
from dcnios.consumers.dedup import DedupWindow
from dcnios.consumers.driver import RecordDriver
from dcnios.consumers.jobs import JobWatch, PendingJobsGate
from dcnios.consumers.oscar import OscarInvoker
from dcnios.consumers.ratelimit import RateLimiter
from dcnios.consumers.record import DeadLetter, Decision, Done, RecordPolicy, RecordReader, input_path_for
from dcnios.errors import CodecError, KafkaError
from dcnios.kafka import consumer_config
from dcnios.spec import ConsumerSpec, PipelineSpec, glob_match
from dcnios.status import partition_extents
from dcnios.storage_event import StorageEvent, dedup_key

__all__ = ["ReplayResult", "Replayer", "replay_window"]

logger = logging.getLogger(__name__)

#: progress(done, total): records looked at so far, and records in the window's offset range.
Progress = Callable[[int, int], None]


@dataclass
class ReplayResult:
    scanned: int = 0
    invoked: int = 0
    filtered: int = 0
    duplicates: int = 0
    poison: int = 0
    generation: int = 0
    failed: list[str] = field(default_factory=list)


class Replayer:
    """Records re-run through the live consumer's ``RecordDriver``: policy, rate, the
    ``max_pending_jobs`` gate, breaker, retries and job tracking, on a loop of its own.

    ``dcnios replay`` submits many records at once (the driver runs ``concurrency`` calls at a
    time); ``dcnios dlq replay`` runs one at a time. Both decide exactly as the live consumer does.
    """

    def __init__(
        self, cs: ConsumerSpec, invoker: OscarInvoker | None = None, *, generation: int | None = None
    ) -> None:
        self.cs = cs
        self.invoker = invoker or OscarInvoker(cs.oscar, cs.concurrency)
        # Nanoseconds: two replays started in the same second must not share job names.
        self.generation = generation if generation is not None else time.time_ns()
        self.policy = RecordPolicy(
            cs,
            input_path=input_path_for(cs, self.invoker.input_path),
            tracking=cs.oscar.tracking,
            generation=self.generation,
        )
        self.stop = threading.Event()
        gate = PendingJobsGate(cs.oscar.max_pending_jobs) if cs.oscar.max_pending_jobs else None
        self.watch: JobWatch | None = None
        if cs.oscar.tracking or gate is not None:
            self.watch = JobWatch(
                self.invoker,
                interval=float(cs.oscar.pending_poll_interval),
                gate=gate,
                deadline=float(cs.oscar.job_timeout) if cs.oscar.tracking else None,
            )
            threading.Thread(target=self.watch.run, args=(self.stop,), daemon=True).start()
        self._loop = LoopThread(f"replay-{cs.name}")
        self.calls = OscarCalls(self.invoker, concurrency=cs.concurrency)
        self.driver = RecordDriver(
            self.policy,
            self.calls,
            stop=self.stop,
            limiter=RateLimiter(cs.rate.per_second if cs.rate else None),
            gate=gate,
            watch=self.watch,
        )
        self._probe = self._loop.submit(
            self.driver.probe_while_open(max_delay=float(cs.oscar.health_probe_max))
        )

    def submit(self, event: StorageEvent, stop: threading.Event) -> Future[Decision | None]:
        """Start ``event``'s run; its future ends Done or DeadLetter, or None if stopped first."""
        return self._loop.submit(self.driver.run_to_end(event, stale=stop.is_set))

    def run(self, event: StorageEvent, stop: threading.Event) -> Decision | None:
        return self.submit(event, stop).result()

    def close(self) -> None:
        self.stop.set()
        try:
            self._probe.result(timeout=5)
            self._loop.submit(self.calls.close()).result(timeout=5)
        finally:
            self._loop.close()


def _start_offsets(consumer: Consumer, topic: str, partitions: list[int], start_ms: int) -> dict[int, int]:
    wanted = [TopicPartition(topic, p, start_ms) for p in partitions]
    found = consumer.offsets_for_times(wanted, timeout=10)
    return {tp.partition: tp.offset for tp in found}


def replay_window(
    spec: PipelineSpec,
    cs: ConsumerSpec,
    start_ms: int,
    end_ms: int,
    *,
    path_glob: str | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    invoker: OscarInvoker | None = None,
) -> ReplayResult:
    stop = stop or threading.Event()
    extents = partition_extents(spec.kafka, cs.topic)
    group = f"{cs.group}-replay"
    consumer = Consumer(consumer_config(spec.kafka, group, **cs.librdkafka))
    result = ReplayResult()
    try:
        starts = _start_offsets(consumer, cs.topic, sorted(extents), start_ms)
        # offsets_for_times answers -1 when no record is that new: nothing to replay there.
        ranges = {p: (off, extents[p][1]) for p, off in starts.items() if 0 <= off < extents[p][1]}
        total = sum(end - begin for begin, end in ranges.values())
        if progress is not None:
            progress(0, total)
        if not ranges:
            return result
        consumer.assign([TopicPartition(cs.topic, p, begin) for p, (begin, _) in ranges.items()])
        _drive(
            consumer,
            cs=cs,
            spec=spec,
            ranges=ranges,
            start_ms=start_ms,
            end_ms=end_ms,
            path_glob=path_glob,
            stop=stop,
            progress=progress,
            total=total,
            result=result,
            invoker=invoker,
        )
    finally:
        consumer.close()
    return result


def _drive(
    consumer: Consumer,
    *,
    cs: ConsumerSpec,
    spec: PipelineSpec,
    ranges: dict[int, tuple[int, int]],
    start_ms: int,
    end_ms: int,
    path_glob: str | None,
    stop: threading.Event,
    progress: Progress | None,
    total: int,
    result: ReplayResult,
    invoker: OscarInvoker | None,
) -> None:
    reader = RecordReader(cs, StorageEventCodec(spec.kafka.schema_registry))
    replayer = Replayer(cs, invoker)
    result.generation = replayer.generation
    seen = DedupWindow(float("inf"))
    open_partitions = set(ranges)
    pending: dict[Future[Decision | None], str] = {}

    def settle(done: set[Future[Decision | None]]) -> None:
        for future in done:
            where, decision = pending.pop(future), future.result()
            if isinstance(decision, Done):
                result.invoked += 1
            elif isinstance(decision, DeadLetter):
                result.failed.append(f"{where}: {decision.error}")

    try:
        while open_partitions and not stop.is_set():
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if (err := msg.error()) is not None:
                raise KafkaError(f"{cs.topic}: {err.str()}")
            if not _in_window(msg, ranges, open_partitions, start_ms, end_ms):
                continue
            result.scanned += 1
            if progress is not None:
                progress(result.scanned, total)
            job = _select(msg, cs=cs, reader=reader, path_glob=path_glob, seen=seen, result=result)
            if job is None:
                continue
            # The driver makes ``concurrency`` calls at a time; this bounds what waits for one.
            while len(pending) >= 2 * cs.concurrency:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                settle(done)
            pending[replayer.submit(job, stop)] = f"{cs.topic}[{msg.partition()}]@{msg.offset()}"
        done, _ = wait(pending)
        settle(done)
    finally:
        replayer.close()
    _commit_position(consumer)


def _in_window(
    msg: Message, ranges: dict[int, tuple[int, int]], open_partitions: set[int], start_ms: int, end_ms: int
) -> bool:
    """Whether ``msg`` belongs to the window; closes its partition at the window's end."""
    partition, offset = msg.partition(), msg.offset()
    assert partition is not None and offset is not None
    if partition not in open_partitions:
        return False
    if offset + 1 >= ranges[partition][1]:
        open_partitions.discard(partition)
    timestamp = msg.timestamp()[1]
    if timestamp > end_ms:
        open_partitions.discard(partition)
        return False
    # The start offset came from offsets_for_times, which some brokers answer loosely (Tansu
    # gives the first offset for a time after the newest record): check the timestamp too.
    return timestamp >= start_ms


def _select(
    msg: Message,
    *,
    cs: ConsumerSpec,
    reader: RecordReader,
    path_glob: str | None,
    seen: DedupWindow,
    result: ReplayResult,
) -> StorageEvent | None:
    where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
    try:
        event = reader.read(msg)
    except CodecError as exc:
        logger.warning("%s: poison record skipped (%s)", where, exc)
        result.poison += 1
        return None
    if not cs.filter.accepts(event.path, event.mask, event.event_name) or (
        path_glob is not None and not glob_match(path_glob, event.path)
    ):
        result.filtered += 1
        return None
    if not seen.first_time(dedup_key(event)):
        result.duplicates += 1
        return None
    return event


def _commit_position(consumer: Consumer) -> None:
    """Record how far the replay read, in its own group, so operators can see that it ran."""
    try:
        positions = consumer.position(consumer.assignment())
        valid = [tp for tp in positions if tp.offset >= 0]
        if valid:
            consumer.commit(offsets=valid, asynchronous=False)
    except KafkaException as exc:  # informational only; the replay itself is done
        logger.warning("replay position not committed: %s", exc)
