"""The member's Kafka side, on one thread of its own: fetch, rebalance, flow control, commits.

confluent-kafka's calls block (a poll waits for records, a commit for the broker, a revoke
callback for the calls under way), so they stay off the event loop: one thread polls, and hands
each batch of records to the loop in one call. Everything a record needs after that happens on
the loop (run.py).

A partition's committed offset never passes a record that is not finished (tracking.py); a
revoke stops new calls for its partitions, waits (bounded by ``drain_timeout``) for the calls
under way, and commits what they finished before the partitions go.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from dcnios.consumers.ownership import TP, Ownership
from dcnios.consumers.tracking import OffsetTracker
from dcnios.errors import KafkaError
from dcnios.metrics import ConsumerMetrics
from dcnios.spec import ConsumerSpec

__all__ = ["Fetched", "Intake"]

logger = logging.getLogger(__name__)

#: How often finished records are committed (only partitions whose position moved). After a
#: crash, everything finished since the last commit runs again: at about 3k calls/s a second
#: was 3k repeated calls per crash. Kafka Streams commits every 100 ms under exactly-once; a
#: commit is one small request to the group coordinator.
COMMIT_INTERVAL: Final = 0.2
#: Admitted-but-unfinished records per process before fetching pauses: at least a second of the
#: fastest consumer measured (about 3k calls/s at concurrency 128), so the loop never runs dry
#: between a resume and the next fetch. Pausing makes librdkafka drop what it prefetched, so
#: fetching resumes only once the window is half empty (hysteresis). At about 2 KB a record
#: held, the window costs under 10 MB.
WINDOW_FACTOR: Final = 32
MIN_WINDOW: Final = 4096
_POLL_TIMEOUT: Final = 0.05
_BATCH: Final = 500
_LIBRDKAFKA_SESSION_TIMEOUT_MS: Final = 45_000  # librdkafka's default session.timeout.ms

#: A fetched record and the generation of its partition when it was fetched.
Fetched = tuple[Message, int]


class Intake:
    """Runs on its own thread until ``stop``; ``finished`` (set by the loop) lets it commit the
    last positions and leave the group."""

    def __init__(
        self,
        consumer: Consumer,
        cs: ConsumerSpec,
        *,
        ownership: Ownership,
        tracker: OffsetTracker,
        stop: threading.Event,
        metrics: ConsumerMetrics,
        hand_off: Callable[[list[Fetched]], None],
        on_ownership: Callable[[int], None],
        paused: Callable[[], bool],
        ready: threading.Event,
        crash: Callable[[BaseException], None],
        session_timeout: float = _LIBRDKAFKA_SESSION_TIMEOUT_MS / 1000,
    ) -> None:
        self.consumer = consumer
        self.cs = cs
        self.ownership = ownership
        self.tracker = tracker
        self.stop = stop
        self.metrics = metrics
        self._hand_off = hand_off
        self._on_ownership = on_ownership
        self._paused = paused
        self._crash = crash
        self._session_timeout = session_timeout
        self.finished = threading.Event()
        self.ready = ready
        self.total_partitions = 0
        self.paused_fetch = False
        self.last_tick = time.monotonic()
        self._rebalancing = True  # from subscribe, and from each revoke, until the next assignment
        self._in_flight = metrics.in_flight.labels(cs.name)
        self._thread = threading.Thread(target=self._run, name=f"kafka-{cs.name}", daemon=True)

    def start(self) -> Intake:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        consumer = self.consumer
        try:
            consumer.subscribe(
                [self.cs.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
            )
            last_commit = time.monotonic()
            while not self.stop.is_set():
                self.last_tick = time.monotonic()
                # consume(n, timeout) waits for n records or the timeout: at low rates that is a
                # fixed delay per record. Wait for the first only, then take what is ready.
                first = consumer.poll(_POLL_TIMEOUT)
                if first is not None:
                    accepted = self._accept([first, *consumer.consume(_BATCH - 1, 0)])
                    if accepted:
                        self._hand_off(accepted)
                self._flow_control()
                if time.monotonic() - last_commit >= COMMIT_INTERVAL:
                    self.commit()
                    self._update_lag()
                    last_commit = time.monotonic()
        except BaseException as exc:  # the member stops with it; the loop drains
            self._crash(exc)
        finally:
            self._leave()

    def _leave(self) -> None:
        consumer = self.consumer
        try:
            self._finish_rebalance()
            # The loop drains within drain_timeout; a little more covers its own stop.
            self.finished.wait(float(self.cs.drain_timeout) + 5)
            self.commit()
        except BaseException as exc:
            self._crash(exc)
        finally:
            consumer.close()

    def _accept(self, msgs: list[Message]) -> list[Fetched]:
        accepted: list[Fetched] = []
        for msg in msgs:
            if (err := msg.error()) is not None:
                if not err.retriable() and err.fatal():
                    raise KafkaError(f"{self.cs.name}: {err.str()}")
                logger.debug("%s: consumer error %s", self.cs.name, err.str())
                continue
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            generation = self.ownership.fetched((topic, partition))
            if generation is None:
                continue  # fetched before a revoke: the partition's next owner has it
            self.tracker.add(topic, partition, offset)
            accepted.append((msg, generation))
        return accepted

    def _finish_rebalance(self) -> None:
        """Leave the group from a settled state: a stop during a rebalance waits (bounded) for it.

        Tansu 0.6 wedges a group for good when a member leaves while its JoinGroup is pending:
        the departed member stays the leader of every later generation and never expires.
        Apache Kafka does not need this; there it costs at most one rebalance's time at stop.
        Records fetched meanwhile are not handed off, so they stay uncommitted for the next owner.
        """
        # A rebalance completes, or drops us, within the session timeout; with no broker it never
        # completes, so do not wait longer than that.
        deadline = time.monotonic() + min(float(self.cs.drain_timeout), self._session_timeout)
        if self._rebalancing:
            logger.info("%s: a rebalance is under way; leaving once it completes", self.cs.name)
        while self._rebalancing and time.monotonic() < deadline:
            self.consumer.poll(0.1)

    # -- rebalance callbacks (on this thread, inside poll) ---------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalancing = False
        self.ownership.assign((tp.topic, tp.partition) for tp in partitions)
        try:
            md = consumer.list_topics(self.cs.topic, timeout=10)
            self.total_partitions = len(md.topics[self.cs.topic].partitions)
        except (KafkaException, KeyError):
            self.total_partitions = max(self.total_partitions, len(self.ownership.assignment))
        self._on_ownership(self.total_partitions)
        self.ready.set()
        logger.info("%s: assigned %s", self.cs.name, [p for _, p in self.ownership.owned()])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalancing = not self.stop.is_set()  # at close, the group is being left anyway
        keys: set[TP] = {(tp.topic, tp.partition) for tp in partitions}
        self.ownership.begin_revoke(keys)
        # Calls already under way may finish and count; queued records will not start.
        deadline = time.monotonic() + float(self.cs.drain_timeout)
        while self.ownership.active(keys) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.commit(only=keys)
        self.ownership.end_revoke(keys)
        for topic, partition in keys:
            self.tracker.forget(topic, partition)
        self._on_ownership(self.total_partitions)
        logger.info("%s: revoked %s", self.cs.name, sorted(p for _, p in keys))

    # -- flow control, commits, lag --------------------------------------------------------
    def _flow_control(self) -> None:
        window = max(self.cs.concurrency * WINDOW_FACTOR, MIN_WINDOW)
        in_flight = self.tracker.total_in_flight()
        self._in_flight.set(in_flight)
        full = in_flight >= window if not self.paused_fetch else in_flight > window // 2
        want_pause = full or self._paused()
        if want_pause != self.paused_fetch:
            parts = [TopicPartition(t, p) for t, p in self.ownership.owned()]
            if parts:
                (self.consumer.pause if want_pause else self.consumer.resume)(parts)
            self.paused_fetch = want_pause

    def commit(self, only: set[TP] | None = None) -> None:
        positions = {k: v for k, v in self.tracker.to_commit().items() if only is None or k in only}
        if not positions:
            return
        offsets = [TopicPartition(t, p, pos) for (t, p), pos in positions.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            logger.warning("%s: commit failed (%s); will retry", self.cs.name, exc.args[0].str())
            return
        self.tracker.committed(positions)
        logger.debug("%s: committed %s", self.cs.name, positions)

    def _update_lag(self) -> None:
        for topic, partition in self.ownership.owned():
            try:
                # From the last fetch response: no extra broker round trip per partition per second.
                _low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            fetched = self.tracker.fetched(topic, partition)
            position = self.tracker.position(topic, partition)
            # Some brokers (Tansu) under-report the high watermark; what we fetched is a floor we trust.
            end = max(high, fetched or 0)
            lag = end - position if position is not None else end
            self.metrics.lag.labels(self.cs.name, topic, str(partition)).set(max(0, lag))
