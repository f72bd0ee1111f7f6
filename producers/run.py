"""The producer run loop for one dCache source: SSE frames in, acknowledged Kafka records out.

Delivery guarantee: at least once. The checkpoint (channel, last event id, watches) advances only
past events whose records are all acknowledged, so a crash replays, never skips. Every gap the
stream cannot replay (EVENT_LOSS, a lost channel, IN_Q_OVERFLOW, a watch added late) is written to
the gaps topic and, with ``reconcile: true``, repaired by listing the directories.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

import requests
from confluent_kafka import Message

from dcnios.codec import StorageEventCodec
from dcnios.errors import ChannelGoneError, DCacheError, DcniosError
from dcnios.kafka import LatchedProducer, producer_config
from dcnios.metrics import ProducerMetrics
from dcnios.producers.checkpoint import Checkpoint, CheckpointStore
from dcnios.producers.dcache_api import DCacheClient
from dcnios.producers.records import Outcome, interpret, join_path
from dcnios.producers.sse import Frame, iter_frame_batches
from dcnios.spec import PipelineSpec, SourceSpec
from dcnios.storage_event import StorageEvent, now_millis
from dcnios.topics import gaps_topic, invalid_topic

__all__ = ["CompetingClientError", "SourceRunner"]

logger = logging.getLogger(__name__)

CHECKPOINT_INTERVAL: Final = 1.0
#: File times come from dCache's clock; allow this much skew when deciding what a gap may hide.
CLOCK_SKEW_MS: Final = 60_000
_ATTACH_WAIT: Final = 2.0
_REASON_HEADER: Final = "dcnios-reason"
_NO_ID: Final = -1
_QUEUE_BATCHES: Final = 16


#: (stream generation, frames of one network chunk | how the stream ended, when it was read)
_Item = tuple[int, list[Frame] | BaseException | None, int]


class CompetingClientError(DcniosError):
    """Another client attached to this source's channel (COMPETING_CLIENT)."""


@dataclass(slots=True)
class _Slot:
    """Records produced for one frame (or one reconciliation); the checkpoint waits for them."""

    event_id: int | None
    pending: int
    observed_ms: int


@dataclass(slots=True)
class _Progress:
    slots: deque[_Slot] = field(default_factory=deque)
    safe_id: int | None = None
    safe_observed_ms: int = 0

    def add(self, event_id: int | None, pending: int, observed_ms: int) -> _Slot:
        slot = _Slot(event_id, pending, observed_ms)
        self.slots.append(slot)
        return slot

    def advance(self) -> bool:
        moved = False
        while self.slots and self.slots[0].pending == 0:
            slot = self.slots.popleft()
            if slot.event_id is not None:
                self.safe_id = slot.event_id
                self.safe_observed_ms = slot.observed_ms
            moved = True
        return moved


class SourceRunner:
    """Runs one ``type: dcache`` source until ``stop`` is set."""

    def __init__(
        self,
        spec: PipelineSpec,
        source: SourceSpec,
        *,
        stop: threading.Event,
        session: requests.Session | None = None,
        metrics: ProducerMetrics | None = None,
        producer: LatchedProducer | None = None,
    ) -> None:
        self.spec = spec
        self.source = source
        self.stop = stop
        self.client = DCacheClient(source, session)
        self.metrics = metrics or ProducerMetrics()
        self.producer = producer or LatchedProducer(producer_config(spec.kafka))
        self.codec = StorageEventCodec(spec.kafka.schema_registry)
        self.checkpoints = CheckpointStore(spec.kafka, self.producer)
        self.invalid_topic = invalid_topic(source.topic)
        self.gaps_topic = gaps_topic(spec.kafka)
        self.progress = _Progress()
        #: Set once the channel, stream and watches are up (tests and `dcnios up` wait on it).
        self.ready = threading.Event()
        self.channel_url: str | None = None
        self.watches: dict[str, str] = {}  # subscription URL -> directory
        self.last_received: int | None = None
        self.last_observed_ms = 0
        # Small on purpose: when the loop falls behind, the reader blocks and TCP pushes back on
        # dCache (which buffers per channel) instead of frames piling up in this process.
        self._frames: queue.Queue[_Item] = queue.Queue(maxsize=_QUEUE_BATCHES)
        self._stream_end: _Item | None = None  # seen while attaching; the main loop reconnects
        self._label_cache: dict[tuple[int, str], Any] = {}
        self._ack_latency = self.metrics.ack_latency.labels(source.name)
        self._last_event_gauge = self.metrics.last_event_id.labels(source.name)
        self._generation = 0
        self._stream: requests.Response | None = None
        self._announced: set[str] = set()
        self._saved: tuple[str | None, int | None, tuple[tuple[str, str], ...]] | None = None
        self._last_save = 0.0

    # -- public ----------------------------------------------------------------------------
    def run(self) -> None:
        """Run until stopped. Flushes and writes the checkpoint on the way out."""
        name = self.source.name
        try:
            checkpoint = self.checkpoints.load(name)
            if checkpoint is not None:
                logger.info(
                    "%s: resuming channel %s after event %s",
                    name,
                    checkpoint.channel,
                    checkpoint.last_event_id,
                )
            self._connect_retrying(checkpoint)
            backoff = float(self.source.reconnect_backoff)
            while not self.stop.is_set():
                item = self._next_frame()
                if item is None:
                    self._tick()
                    continue
                generation, payload, observed = item
                if generation != self._generation:
                    continue  # left over from a stream that was replaced
                if isinstance(payload, list):
                    for frame in payload:
                        self._handle(frame, observed)
                    backoff = float(self.source.reconnect_backoff)
                    self._tick()
                    continue
                backoff = self._reconnect(payload, backoff)
        finally:
            self._close_stream()
            self._shutdown()

    # -- connection ------------------------------------------------------------------------
    def _connect_retrying(self, checkpoint: Checkpoint | None) -> None:
        """Connect; back off and retry while the frontend is unreachable, rate-limits (429) or fails
        (5xx). Auth and request errors (401, 403, 400) are final: retrying them only gets the
        client blocked (dCache blocks after repeated auth errors)."""
        backoff = float(self.source.reconnect_backoff)
        while True:
            try:
                self._connect(checkpoint)
                return
            except DCacheError as exc:
                # A channel gone mid-connect (a frontend restart right now) is retried like a 5xx;
                # the checkpoint's reconcile still covers everything since it.
                gone = isinstance(exc, ChannelGoneError)
                if not gone and exc.status is not None and exc.status != 429 and exc.status < 500:
                    raise
                delay = backoff * random.uniform(0.5, 1.0)  # noqa: S311
                logger.warning("%s: %s; retrying in %.2fs", self.source.name, exc, delay)
                self.metrics.reconnects.labels(self.source.name).inc()
                backoff = min(backoff * 2, float(self.source.reconnect_backoff_max))
                if self.stop.wait(delay):
                    raise
                if gone and checkpoint is None and self.channel_url is not None:
                    # The channel this attempt created was already watching: reconcile from it.
                    checkpoint = Checkpoint(
                        self.source.name,
                        self.channel_url,
                        self.last_received,
                        dict(self.watches),
                        self.last_observed_ms or now_millis(),
                    )
                self.channel_url = None

    def _connect(self, checkpoint: Checkpoint | None) -> None:
        src = self.source
        resume_id: int | None = None
        url = checkpoint.channel if checkpoint else self.client.find_channel(src.client_id or src.name)
        if url is not None and not self.client.channel_exists(url):
            logger.warning("%s: channel %s is gone", src.name, url)
            url = None
        if url is not None and checkpoint is not None and checkpoint.channel == url:
            # No id yet: ask for -1, which dCache cannot find, so it answers EVENT_LOSS and
            # whatever happened while we were away is reconciled instead of silently skipped.
            resume_id = checkpoint.last_event_id if checkpoint.last_event_id is not None else _NO_ID
            self.watches = dict(checkpoint.watches)
            self.last_observed_ms = checkpoint.last_observed_ms
        elif url is not None:
            # Our channel (found by client-id) but no checkpoint for it: we cannot know what was
            # read, so force EVENT_LOSS and reconcile everything rather than skip the backlog.
            resume_id = _NO_ID
            self.last_observed_ms = 0
        fresh = url is None
        if url is None:
            url = self.client.create_channel(src.client_id or src.name)
            # Kept from the checkpoint when there is one: a crash before the CHANNEL_LOST
            # reconcile below must still reconcile from there, not from now.
            self.last_observed_ms = checkpoint.last_observed_ms if checkpoint else now_millis()
            logger.info("%s: created channel %s", src.name, url)
        self.channel_url = url
        timeout = min(int(src.channel_timeout), self.client.max_channel_timeout())
        self.client.set_timeout(url, timeout)
        if fresh:
            self._save()  # a crash from here on resumes this channel, not a new one
        self.last_received = resume_id
        self._start_reader(resume_id)
        if fresh:
            self.watches = {}
            since = now_millis()
            missed = self._await_attach(self._subscribe_roots())
            if checkpoint is not None:
                # Reconciling from the old checkpoint also covers any attach race.
                lost = list(checkpoint.watches.values()) or list(src.paths)
                self._gap(
                    "CHANNEL_LOST",
                    sorted(set(lost) | set(self.watches.values())),
                    checkpoint.last_observed_ms,
                    previous=checkpoint.channel,
                )
            elif missed:
                self._gap("ATTACH_RACE", missed, since)
        else:
            self._ensure_subscriptions()
        logger.info("%s: watching %d directories on %s", src.name, len(self.watches), url)
        self.ready.set()

    @property
    def channel_id(self) -> str:
        return (self.channel_url or "").rstrip("/").rsplit("/", 1)[-1]

    def _flags(self) -> list[str]:
        flags = {m for m in self.source.events if m != "IN_ISDIR"}
        if self.source.recursive:
            flags |= {"IN_CREATE", "IN_MOVED_TO", "IN_DELETE_SELF"}
        return sorted(flags)

    def _watch(self, path: str) -> tuple[str, bool]:
        assert self.channel_url is not None
        url, created = self.client.subscribe(self.channel_url, path, self._flags())
        self.watches[url] = path
        logger.info("%s: watching %s (%s)", self.source.name, path, "new" if created else "merged")
        return url, created

    def _subscribe_roots(self) -> list[str]:
        created = []
        for root in self.source.paths:
            url, was_created = self._watch(root)
            if was_created:
                created.append(url)
            if self.source.recursive:
                created.extend(self._watch_tree(root))
        return created

    def _watch_tree(self, directory: str) -> list[str]:
        created = []
        for child in self.client.list_directory(directory):
            if child.is_dir:
                path = join_path(directory, child.name)
                url, was_created = self._watch(path)
                if was_created:
                    created.append(url)
                created.extend(self._watch_tree(path))
        return created

    def _ensure_subscriptions(self) -> None:
        assert self.channel_url is not None
        present = set(self.client.subscriptions(self.channel_url))
        for url, path in list(self.watches.items()):
            if url not in present:
                self.watches.pop(url)
                self._rewatch(path, reason="NEW_WATCH", since_ms=self.last_observed_ms)
        for root in self.source.paths:
            if root not in self.watches.values():
                self._watch(root)

    def _await_attach(self, created: list[str]) -> list[str]:
        """On a new channel, NEW_SUBSCRIPTION proves the stream was attached before the watch.

        Without it, events between subscribing and attaching are lost (the channel has no id to
        resume from), so list the directory to find what was missed.
        """
        deadline = time.monotonic() + _ATTACH_WAIT
        while created and not all(u in self._announced for u in created) and time.monotonic() < deadline:
            item = self._next_frame()
            if item is None or item[0] != self._generation:
                continue
            if not isinstance(item[1], list):
                # The stream ended before the watch was announced (e.g. a frontend restart right
                # now): leave the end to the main loop, which reconnects.
                self._stream_end = item
                break
            for frame in item[1]:
                self._handle(frame, item[2])
        return [self.watches[u] for u in created if u not in self._announced and u in self.watches]

    # -- SSE reader thread -----------------------------------------------------------------
    def _start_reader(self, last_event_id: int | None) -> None:
        self._close_stream()
        self._generation += 1
        generation = self._generation
        assert self.channel_url is not None
        url = self.channel_url
        thread = threading.Thread(
            target=self._read,
            args=(generation, url, last_event_id),
            name=f"sse-{self.source.name}",
            daemon=True,
        )
        thread.start()

    def _read(self, generation: int, url: str, last_event_id: int | None) -> None:
        end: BaseException | None = None
        try:
            response = self.client.open_stream(url, last_event_id)
            self._stream = response
            for batch in iter_frame_batches(response.iter_content(chunk_size=None)):
                self._frames.put((generation, batch, now_millis()))
                if generation != self._generation:
                    return
        except Exception as exc:  # any end of the stream, including a close() from the main thread
            end = exc
        self._frames.put((generation, end, now_millis()))

    def _close_stream(self) -> None:
        # close() would wait for the reader thread's lock; shutting the socket down makes the
        # blocked read return at once, and the reader thread then ends by itself.
        stream, self._stream = self._stream, None
        connection = getattr(getattr(stream, "raw", None), "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _next_frame(self) -> _Item | None:
        if self._stream_end is not None:
            item, self._stream_end = self._stream_end, None
            return item
        try:
            return self._frames.get(timeout=0.1)
        except queue.Empty:
            return None

    def _reconnect(self, cause: BaseException | None, backoff: float) -> float:
        if self.stop.is_set():
            return backoff
        self.metrics.reconnects.labels(self.source.name).inc()
        if isinstance(cause, ChannelGoneError):
            logger.warning("%s: channel gone (%s); creating a new one", self.source.name, cause)
            previous = Checkpoint(
                self.source.name,
                self.channel_url or "",
                self.last_received,
                dict(self.watches),
                self.last_observed_ms or now_millis(),
            )
            self.channel_url = None
            self._connect_retrying(previous)
            return float(self.source.reconnect_backoff)
        if isinstance(cause, DCacheError) and cause.status == 401:
            raise cause
        delay = min(backoff, self.source.reconnect_backoff_max) * random.uniform(0.5, 1.0)  # noqa: S311
        logger.info(
            "%s: stream ended (%s); reconnecting in %.2fs with Last-Event-ID %s",
            self.source.name,
            cause or "EOF",
            delay,
            self.last_received,
        )
        if self.stop.wait(delay):
            return backoff
        self._start_reader(self.last_received if self.last_received is not None else _NO_ID)
        return min(backoff * 2, self.source.reconnect_backoff_max)

    # -- frames ----------------------------------------------------------------------------
    def _handle(self, frame: Frame, observed: int) -> None:
        kind = (frame.event or b"?").decode("utf-8", "replace")
        self._metric(self.metrics.frames, kind).inc()
        outcomes = interpret(
            frame, source=self.source, channel_id=self.channel_id, watches=self.watches, observed_at=observed
        )
        event_id = next((o.event_id for o in outcomes if o.event_id is not None), None)
        if event_id is not None and event_id >= 0:
            self.last_received = event_id
            self._last_event_gauge.set(event_id)
        sends: list[tuple[str, bytes, bytes | None, list[tuple[str, str | bytes | None]]]] = []
        for outcome in outcomes:
            sends.extend(self._apply(outcome, frame, observed))
        slot = self.progress.add(event_id, len(sends), observed)
        for topic, value, key, headers in sends:
            self.producer.produce(
                topic, value, key=key, headers=headers, on_delivery=self._acked, token=(slot, topic, observed)
            )

    def _apply(
        self, outcome: Outcome, frame: Frame, observed: int
    ) -> list[tuple[str, bytes, bytes | None, list[tuple[str, str | bytes | None]]]]:
        name = self.source.name
        if outcome.kind == "publish":
            assert outcome.event is not None
            for mask in outcome.event.mask:
                self._metric(self.metrics.events, mask).inc()
            topic = self.source.topic_for(outcome.event.path)
            value, headers = self.codec.encode(outcome.event, topic)
            logger.debug("%s: %s %s -> %s", name, ",".join(outcome.event.mask), outcome.event.path, topic)
            return [(topic, value, outcome.event.key, headers)]
        if outcome.kind == "invalid":
            self.metrics.invalid.labels(name).inc()
            logger.warning("%s: invalid frame (%s) -> %s", name, outcome.reason, self.invalid_topic)
            invalid_headers: list[tuple[str, str | bytes | None]] = [
                (_REASON_HEADER, (outcome.reason or "").encode()),
                ("dcnios-source", name.encode()),
                ("dcnios-channel", (self.channel_url or "").encode()),
            ]
            return [(self.invalid_topic, frame.raw, None, invalid_headers)]
        if outcome.kind == "system":
            self._system(outcome)
        elif outcome.kind == "new_dir":
            assert outcome.path is not None
            self._add_directory(outcome.path)
        elif outcome.kind == "watch_gone":
            self._watch_gone(outcome.subscription, outcome.path)
        elif outcome.kind == "overflow":
            assert outcome.path is not None
            self._gap("IN_Q_OVERFLOW", [outcome.path], observed)
        return []

    def _system(self, outcome: Outcome) -> None:
        kind, sub = outcome.reason, outcome.subscription
        logger.info("%s: SYSTEM %s %s", self.source.name, kind, sub or "")
        if kind == "NEW_SUBSCRIPTION" and sub:
            self._announced.add(sub)
        elif kind == "EVENT_LOSS":
            self._gap(
                "EVENT_LOSS",
                sorted(set(self.watches.values())),
                self.progress.safe_observed_ms or self.last_observed_ms,
            )
        elif kind == "COMPETING_CLIENT":
            raise CompetingClientError(
                f"{self.source.name}: another client attached to channel {self.channel_url}; "
                f"run one producer per source (client-id {self.source.client_id})"
            )
        elif kind == "SUBSCRIPTION_CLOSED" and sub:
            self._watch_gone(sub, self.watches.get(sub))

    def _watch_gone(self, sub: str | None, path: str | None) -> None:
        if sub is None or self.watches.pop(sub, None) is None or path is None:
            return
        if self.stop.is_set():
            return
        logger.info("%s: watch on %s closed", self.source.name, path)
        if path in self.source.paths:
            try:
                self._rewatch(path, reason="NEW_WATCH", since_ms=now_millis())
            except ChannelGoneError:
                # The whole channel is going (expiry, frontend restart): keep the directory among
                # the watches, so the CHANNEL_LOST gap that follows reconciles it too.
                self.watches[sub] = path
            except DCacheError as exc:
                logger.error("%s: cannot re-watch %s: %s", self.source.name, path, exc)

    def _add_directory(self, path: str) -> None:
        if path in self.watches.values():
            return
        try:
            self._rewatch(path, reason="NEW_WATCH", since_ms=0)
        except DCacheError as exc:
            logger.warning("%s: cannot watch new directory %s: %s", self.source.name, path, exc)

    def _rewatch(self, path: str, *, reason: str, since_ms: int) -> None:
        """Watch ``path`` and list it: files created before the watch existed are not missed."""
        self._watch(path)
        self._gap(reason, [path], since_ms, record=reason != "NEW_WATCH" or since_ms != 0)

    # -- gaps and reconciliation -----------------------------------------------------------
    def _gap(
        self,
        reason: str,
        directories: list[str],
        since_ms: int,
        *,
        previous: str | None = None,
        record: bool = True,
    ) -> None:
        """Record a gap and list ``directories`` for files changed since ``since_ms``.

        ``since_ms`` is the last moment (our clock) the stream is known to have been complete,
        or 0 for everything. Files are matched by dCache's mtime, which lags our clock by the
        read delay of the frames and differs by any clock skew, so the listing starts
        CLOCK_SKEW_MS earlier: a few duplicates are cheap, a file missed at the edge is lost.
        """
        name = self.source.name
        self.metrics.gaps.labels(name, reason).inc()
        now = now_millis()
        since_ms = max(0, since_ms - CLOCK_SKEW_MS) if since_ms > 0 else 0
        logger.warning("%s: gap %s in %s since %d", name, reason, directories, since_ms)
        records: list[tuple[str, bytes, bytes | None, list[tuple[str, str | bytes | None]]]] = []
        found = 0
        if self.source.reconcile:
            for directory in directories:
                for event in self._reconcile(directory, since_ms, reason):
                    topic = self.source.topic_for(event.path)
                    value, headers = self.codec.encode(event, topic)
                    records.append((topic, value, event.key, headers))
                    found += 1
        self.metrics.synthetic.labels(name).inc(found)
        if record or found:
            gap = {
                "source": name,
                "reason": reason,
                "start_ms": since_ms,
                "end_ms": now,
                "directories": directories,
                "channel": self.channel_url,
                "previous_channel": previous,
                "reconciled": found,
                "reconcile": self.source.reconcile,
            }
            records.append((self.gaps_topic, json.dumps(gap).encode(), name.encode(), []))
        slot = self.progress.add(None, len(records), now)
        for topic, value, key, headers in records:
            self.producer.produce(
                topic, value, key=key, headers=headers, on_delivery=self._acked, token=(slot, topic, now)
            )

    def _reconcile(self, directory: str, since_ms: int, reason: str) -> list[StorageEvent]:
        try:
            children = self.client.list_directory(directory)
        except DCacheError as exc:
            logger.error("%s: cannot list %s to reconcile: %s", self.source.name, directory, exc)
            return []
        sub = next((u for u, p in self.watches.items() if p == directory), "")
        mask = next(
            (m for m in ("IN_CLOSE_WRITE", "IN_MOVED_TO") if m in self.source.events), self.source.events[0]
        )
        events = []
        for child in children:
            path = join_path(directory, child.name)
            if child.is_dir:
                if self.source.recursive and path not in self.watches.values():
                    self._watch(path)
                    events.extend(self._reconcile(path, 0, reason))
                continue
            if max(child.mtime, child.ctime) < since_ms:
                continue
            events.append(
                StorageEvent(
                    source=self.source.name,
                    path=path,
                    name=child.name,
                    mask=(mask,),
                    cookie=None,
                    is_dir=False,
                    channel=self.channel_id,
                    event_id=None,
                    subscription=sub,
                    observed_at=now_millis(),
                    synthetic=True,
                    gap=reason,
                )
            )
        return events

    # -- acks and checkpoints --------------------------------------------------------------
    def _acked(self, token: Any, msg: Message) -> None:
        slot, topic, observed = token
        slot.pending -= 1
        self._metric(self.metrics.records, topic).inc()
        self._ack_latency.observe(max(0, now_millis() - observed) / 1000)

    def _metric(self, family: Any, label: str) -> Any:
        # .labels() builds a key and takes a lock on every call; the hot path reuses children.
        key = (id(family), label)
        child = self._label_cache.get(key)
        if child is None:
            child = self._label_cache[key] = family.labels(self.source.name, label)
        return child

    def _tick(self) -> None:
        self.producer.poll(0)
        if self.progress.advance():
            self.last_observed_ms = max(self.last_observed_ms, self.progress.safe_observed_ms)
        if time.monotonic() - self._last_save >= CHECKPOINT_INTERVAL:
            self._save()

    def _save(self) -> None:
        self._last_save = time.monotonic()
        state = (self.channel_url, self.progress.safe_id, tuple(sorted(self.watches.items())))
        if state == self._saved or self.channel_url is None:
            return
        checkpoint = Checkpoint(
            self.source.name,
            self.channel_url,
            self.progress.safe_id,
            dict(self.watches),
            self.progress.safe_observed_ms or self.last_observed_ms,
            now_millis(),
        )
        self.checkpoints.save(checkpoint)
        self._saved = state
        self.metrics.checkpoint_written(self.source.name, self.progress.safe_id)
        logger.debug("%s: checkpoint at event %s", self.source.name, self.progress.safe_id)

    def _shutdown(self) -> None:
        try:
            self.producer.flush(30)
            self.progress.advance()
            self._save()
            self.producer.flush(30)
            logger.info("%s: stopped; checkpoint at event %s", self.source.name, self.progress.safe_id)
        except DcniosError as exc:
            self.metrics.delivery_errors.labels(self.source.name).inc()
            logger.error("%s: final flush failed: %s", self.source.name, exc)
            raise
