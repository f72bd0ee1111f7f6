"""Re-drive a time window of a consumer's records into its OSCAR service (``dcnios replay``).

It reads in its own group (``<group>-replay``), so the live group's offsets and members are not
touched. Records are selected by Kafka timestamp (when the producer wrote them), the consumer's
filter and an optional path glob; the same event twice in the window (a producer replay after a
crash) is invoked once. The consumer's rate, concurrency, retry policy and job tracking apply,
through the same ``RecordPolicy`` as the consumer. A replay is a deliberate re-run: its job ids
carry a new generation, so OSCAR creates new jobs instead of answering "already exists".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from dcnios.codec import StorageEventCodec
from dcnios.consumers.breaker import CircuitBreaker
from dcnios.consumers.dedup import DedupWindow
from dcnios.consumers.jobs import JobWatch
from dcnios.consumers.oscar import OscarInvoker
from dcnios.consumers.ratelimit import RateLimiter
from dcnios.consumers.record import DeadLetter, Decision, Done, RecordPolicy, probe_while_open, run_record
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
    """One consumer's records re-run one at a time per thread: policy, breaker and job watch.

    ``dcnios replay`` and ``dcnios dlq replay`` both drive records through this, so they decide
    exactly as the live consumer does.
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
            input_path=self.invoker.input_path() if cs.payload == "dcache" else None,
            tracking=cs.oscar.tracking,
            generation=self.generation,
        )
        self.breaker = CircuitBreaker()
        self._stop_watch = threading.Event()
        self.watch: JobWatch | None = None
        if cs.oscar.tracking:
            self.watch = JobWatch(
                self.invoker,
                interval=float(cs.oscar.pending_poll_interval),
                deadline=float(cs.oscar.job_timeout),
            )
            threading.Thread(target=self.watch.run, args=(self._stop_watch,), daemon=True).start()
        self._probe = threading.Thread(target=self._probe_health, daemon=True)
        self._probe.start()

    def run(self, event: StorageEvent, stop: threading.Event) -> Decision | None:
        return run_record(self.policy, self.invoker, self.breaker, self.watch, event, stop=stop)

    def close(self) -> None:
        self._stop_watch.set()

    def _probe_health(self) -> None:
        probe_while_open(
            self.breaker,
            self.invoker,
            self._stop_watch,
            max_delay=float(self.cs.oscar.health_probe_max),
            name=self.cs.name,
        )


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
    codec = StorageEventCodec(spec.kafka.schema_registry)
    replayer = Replayer(cs, invoker)
    result.generation = replayer.generation
    limiter = RateLimiter(cs.rate.per_second if cs.rate else None)
    seen = DedupWindow(float("inf"))
    open_partitions = set(ranges)
    pending: set[Future[tuple[str, Decision | None]]] = set()
    lock = threading.Lock()

    def settle(done: set[Future[tuple[str, Decision | None]]]) -> None:
        for future in done:
            where, decision = future.result()
            with lock:
                if isinstance(decision, Done):
                    result.invoked += 1
                elif isinstance(decision, DeadLetter):
                    result.failed.append(f"{where}: {decision.error}")

    with ThreadPoolExecutor(max_workers=cs.concurrency, thread_name_prefix=f"replay-{cs.name}") as pool:
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
            job = _select(msg, cs=cs, codec=codec, path_glob=path_glob, seen=seen, result=result)
            if job is None:
                continue
            if not limiter.acquire(stop):
                break
            while len(pending) >= cs.concurrency:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                pending -= done
                settle(done)
            where = f"{cs.topic}[{msg.partition()}]@{msg.offset()}"
            pending.add(pool.submit(_invoke, replayer, job, stop, where))
        done, _ = wait(pending)
        settle(done)
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


def _invoke(
    replayer: Replayer, event: StorageEvent, stop: threading.Event, where: str
) -> tuple[str, Decision | None]:
    return where, replayer.run(event, stop)


def _select(
    msg: Message,
    *,
    cs: ConsumerSpec,
    codec: StorageEventCodec,
    path_glob: str | None,
    seen: DedupWindow,
    result: ReplayResult,
) -> StorageEvent | None:
    where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
    try:
        event = codec.decode(msg.value(), msg.headers(), cs.topic)
    except CodecError as exc:
        logger.warning("%s: poison record skipped (%s)", where, exc)
        result.poison += 1
        return None
    if not cs.filter.accepts(event.path, event.mask) or (
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
