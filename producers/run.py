"""The producer run loop for one dCache source: SSE frames in, acknowledged Kafka records out.

Delivery guarantee: at least once. The checkpoint (channel, last event id, watches) advances only
past events whose records are all acknowledged, so a crash replays, never skips. Every gap the
stream cannot replay (EVENT_LOSS, a lost channel, IN_Q_OVERFLOW, a watch added late) is written to
the gaps topic and, with ``reconcile: true``, repaired against the published-files index.

The rooms: ``stream.py`` (reader thread), ``watches.py`` (subscriptions and the heartbeat),
``reconcile.py`` (gaps and their repair), ``index.py`` (what was published), ``outbox.py``
(records and their acks), ``checkpoint.py`` (the resume point and its progress slots). This
module connects them and decides what each frame leads to.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Final

import requests
import urllib3

from dcnios.codec import StorageEventCodec
from dcnios.errors import ChannelGoneError, DCacheError, DcniosError
from dcnios.kafka import LatchedProducer, prepare_internal_topics, producer_config
from dcnios.metrics import ProducerMetrics
from dcnios.producers.checkpoint import Checkpoint, CheckpointStore, Progress, Slot
from dcnios.producers.dcache_api import DCacheClient
from dcnios.producers.index import CLOCK_SKEW_MS, PublishedIndex
from dcnios.producers.outbox import Outbox
from dcnios.producers.reconcile import Reconciler
from dcnios.producers.records import (
    CONTENT_MASKS,
    Invalid,
    NewDirectory,
    Overflow,
    Publish,
    Removed,
    Skip,
    System,
    Tick,
    WatchGone,
    interpret,
    oversized,
)
from dcnios.producers.sse import Frame, Oversized
from dcnios.producers.stream import Batch, Ended, EventStream
from dcnios.producers.watches import WatchSet
from dcnios.spec import PipelineSpec, SourceSpec
from dcnios.storage_event import StorageEvent, now_millis
from dcnios.topics import checkpoint_topic, gaps_topic, invalid_topic, plans_named, published_topic

__all__ = ["CompetingClientError", "SourceRunner"]

logger = logging.getLogger(__name__)

CHECKPOINT_INTERVAL: Final = 1.0
_ATTACH_WAIT: Final = 2.0
_NO_ID: Final = -1


class CompetingClientError(DcniosError):
    """Another client attached to this source's channel (COMPETING_CLIENT)."""


def _silent(cause: BaseException | None) -> bool:
    """Whether the stream ended because nothing arrived within the read timeout."""
    while cause is not None:
        if isinstance(cause, requests.exceptions.ReadTimeout | urllib3.exceptions.ReadTimeoutError):
            return True
        if isinstance(cause, requests.exceptions.ConnectionError) and cause.args:
            inner = cause.args[0]
            if isinstance(inner, urllib3.exceptions.ReadTimeoutError):
                return True
        cause = cause.__cause__
    return False


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
        self.checkpoints = CheckpointStore(spec.kafka, self.producer)
        self.progress = Progress()
        self.index = (
            PublishedIndex(spec.kafka, published_topic(spec.kafka, source.name), self.producer)
            if source.reconcile
            else None
        )
        self.outbox = Outbox(
            source,
            self.producer,
            StorageEventCodec(spec.kafka.schema_registry),
            self.metrics,
            index=self.index,
            gaps_topic=gaps_topic(spec.kafka),
            invalid_topic=invalid_topic(source.topic),
        )
        self.watch_set = WatchSet(source, self.client)
        self.stream = EventStream(self.client, source.name, max_frame=source.max_frame)
        self.reconciler = Reconciler(
            source,
            self.client,
            watches=self.watch_set,
            outbox=self.outbox,
            progress=self.progress,
            metrics=self.metrics,
            channel_id=lambda: self.channel_id,
            channel_url=lambda: self.channel_url,
        )
        #: Set once the channel, stream and watches are up (tests and `dcnios up` wait on it).
        self.ready = threading.Event()
        self.channel_url: str | None = None
        self.last_received: int | None = None
        self.last_observed_ms = 0
        self._frame_counters: dict[bytes | None, Any] = {}
        self._mask_counters: dict[str, Any] = {}
        #: Events per mask in the chunk being handled, counted into the metric once per chunk.
        self._batch_masks: dict[str, int] = {}
        self._last_event_gauge = self.metrics.last_event_id.labels(source.name)
        self._announced: set[str] = set()
        self._saved: tuple[object, ...] | None = None
        self._last_save = 0.0
        self._baseline_opened = False

    @property
    def watches(self) -> dict[str, str]:
        """Subscription URL → directory."""
        return self.watch_set.by_url

    @property
    def channel_id(self) -> str:
        return (self.channel_url or "").rstrip("/").rsplit("/", 1)[-1]

    # -- public ----------------------------------------------------------------------------
    def run(self) -> None:
        """Run until stopped. Flushes and writes the checkpoint on the way out."""
        name = self.source.name
        try:
            k = self.spec.kafka
            own = [checkpoint_topic(k)] + ([published_topic(k, name)] if self.index is not None else [])
            prepare_internal_topics(k, plans_named(self.spec, *own))
            if self.index is not None:
                started = time.monotonic()
                files = self.index.load()
                self.metrics.published_files.labels(name).set(files)
                logger.info("%s: %d published files known (%.1fs)", name, files, time.monotonic() - started)
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
                # While a gap is being repaired, do not wait for frames: list the next page.
                item = self.stream.next(0.0 if self.reconciler.ready else 0.1)
                if isinstance(item, Batch):
                    self._handle_batch(item)
                    backoff = float(self.source.reconnect_backoff)
                elif isinstance(item, Ended):
                    backoff = self._reconnect(item.cause, backoff)
                if self.reconciler.ready and self.reconciler.step() and self.index is not None:
                    self.metrics.published_files.labels(name).set(len(self.index))
                self._tick()
        finally:
            self.stream.close()
            self._shutdown()
            if self.index is not None:
                self.index.close()

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
                # the checkpoint's repair still covers everything since it.
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
                    # The channel this attempt created was already watching: repair from it.
                    checkpoint = self._current_checkpoint()
                self.channel_url = None

    def _current_checkpoint(self) -> Checkpoint:
        return Checkpoint(
            self.source.name,
            self.channel_url or "",
            self.last_received,
            dict(self.watches),
            self.last_observed_ms or now_millis(),
            gaps=self.reconciler.pending(),
            indexed=self.index is not None,
        )

    def _open_baseline(self, checkpoint: Checkpoint | None) -> None:
        """The first start over an existing tree: an empty index means "never looked", not
        "nothing was ever published", so list the tree once before any gap can be repaired.

        Files older than the last time we know of (the checkpoint's last event, or now, less the
        clock skew) are indexed as handled; newer ones are published, which also covers the
        attach race. ``backfill: true`` publishes every file instead, on a first start only.
        """
        if self.index is None or self._baseline_opened or len(self.index):
            return
        if checkpoint is not None and checkpoint.indexed:
            return  # an empty tree; or a baseline under way, which resumes from the checkpoint
        self._baseline_opened = True
        directories = sorted(set(self.source.paths) | set(checkpoint.watches.values() if checkpoint else ()))
        if self.source.backfill and checkpoint is None:
            self.reconciler.open("BACKFILL", directories, 0)
            return
        cut = (checkpoint.last_observed_ms if checkpoint else now_millis()) - CLOCK_SKEW_MS
        self.reconciler.open("BASELINE", directories, cut, baseline_before=cut)

    def _resume_gaps(self, checkpoint: Checkpoint | None, *, only_baselines: bool = False) -> None:
        """Repairs the last run left unfinished: the checkpoint waited for them."""
        open_baseline = any(g.baseline_before is not None for g in self.reconciler.gaps)
        for gap in checkpoint.gaps if checkpoint is not None else []:
            baseline_before = gap.get("baseline_before")
            if only_baselines and (baseline_before is None or open_baseline):
                continue  # a reconnect within this run: the baseline is still open in memory
            self.reconciler.open(
                str(gap.get("reason", "RESUMED")),
                list(gap.get("directories", [])),
                int(gap.get("since_ms", 0)),
                previous=gap.get("previous"),
                baseline_before=None if baseline_before is None else int(baseline_before),
            )

    def _connect(self, checkpoint: Checkpoint | None) -> None:
        src = self.source
        client_id = src.client_id or src.name
        resume_id: int | None = None
        watches: dict[str, str] = {}
        url = checkpoint.channel if checkpoint else self.client.find_channel(client_id)
        if url is not None and not self.client.channel_exists(url):
            logger.warning("%s: channel %s is gone", src.name, url)
            url = None
        if url is not None and checkpoint is not None and checkpoint.channel == url:
            # No id yet: ask for -1, which dCache cannot find, so it answers EVENT_LOSS and
            # whatever happened while we were away is repaired instead of silently skipped.
            resume_id = checkpoint.last_event_id if checkpoint.last_event_id is not None else _NO_ID
            watches = dict(checkpoint.watches)
            self.last_observed_ms = checkpoint.last_observed_ms
            # Seeded, or an idle run would save a checkpoint without the id it resumed from.
            self.progress.safe_id = checkpoint.last_event_id
        elif url is not None:
            # Our channel (found by client-id) but no checkpoint for it: we cannot know what was
            # read, so force EVENT_LOSS and repair everything rather than skip the backlog.
            resume_id = _NO_ID
            self.last_observed_ms = 0
        fresh = url is None
        if url is None:
            url = self.client.create_channel(client_id)
            # Kept from the checkpoint when there is one: a crash before the CHANNEL_LOST
            # repair below must still repair from there, not from now.
            self.last_observed_ms = checkpoint.last_observed_ms if checkpoint else now_millis()
            self.progress.new_channel()
            self._announced.clear()  # subscription URLs of the old channel
            logger.info("%s: created channel %s", src.name, url)
        self.channel_url = url
        self.watch_set.reset(url, watches)
        timeout = min(int(src.channel_timeout), self.client.max_channel_timeout())
        self.client.set_timeout(url, timeout)
        self._open_baseline(checkpoint)
        if fresh and checkpoint is not None:
            self._repair_lost_channel(checkpoint)
        if fresh:
            self._save()  # a crash from here on resumes this channel, not a new one
        self.last_received = resume_id
        self.stream.open(url, resume_id, silence=self.watch_set.silence)
        if fresh:
            since = now_millis()
            # The heartbeat first: its ticks keep the stream from looking dead while we wait for
            # the watches to be announced.
            self.watch_set.ensure_heartbeat()
            missed = self._await_attach(self.watch_set.watch_roots())
            if missed and checkpoint is None and not self.reconciler.busy:
                self.reconciler.open("ATTACH_RACE", missed, since)
        else:
            self._resume_gaps(checkpoint)
            for path in self.watch_set.lost():
                self._rewatch(path, reason="NEW_WATCH", since_ms=self.last_observed_ms)
            for root in self.watch_set.missing_roots():
                self.watch_set.watch(root)
            self.watch_set.ensure_heartbeat()
        logger.info("%s: watching %d directories on %s", src.name, len(self.watches), url)
        self.ready.set()

    def _repair_lost_channel(self, checkpoint: Checkpoint) -> None:
        """Opened before the first save of the new channel: a checkpoint of it that did not carry
        this repair would let a crash skip everything the old channel missed. Repairing the old
        checkpoint's directories also covers any attach race."""
        self._resume_gaps(checkpoint, only_baselines=True)
        if any(g.previous == checkpoint.channel for g in self.reconciler.gaps):
            return  # connecting to a new channel was retried: the repair is open already
        lost = list(checkpoint.watches.values()) + list(self.source.paths)
        lost += [d for gap in checkpoint.gaps for d in gap.get("directories", [])]
        self.reconciler.open(
            "CHANNEL_LOST", sorted(set(lost)), checkpoint.last_observed_ms, previous=checkpoint.channel
        )

    def _await_attach(self, created: list[str]) -> list[str]:
        """On a new channel, NEW_SUBSCRIPTION proves the stream was attached before the watch.

        Without it, events between subscribing and attaching are lost (the channel has no id to
        resume from), so list the directory to find what was missed.
        """
        deadline = time.monotonic() + _ATTACH_WAIT
        while created and not all(u in self._announced for u in created) and time.monotonic() < deadline:
            item = self.stream.next()
            if isinstance(item, Ended):
                # The stream ended before the watch was announced (e.g. a frontend restart right
                # now): leave the end to the main loop, which reconnects.
                self.stream.hold(item)
                break
            if isinstance(item, Batch):
                self._handle_batch(item)
            self._tick()  # acks, index records and checkpoints go on while we wait
        return [self.watches[u] for u in created if u not in self._announced and u in self.watches]

    def _reconnect(self, cause: BaseException | None, backoff: float) -> float:
        if self.stop.is_set():
            return backoff
        name = self.source.name
        self.metrics.reconnects.labels(name).inc()
        if isinstance(cause, ChannelGoneError):
            logger.warning("%s: channel gone (%s); creating a new one", name, cause)
            previous = self._current_checkpoint()
            self.channel_url = None
            self._connect_retrying(previous)
            return float(self.source.reconnect_backoff)
        if isinstance(cause, DCacheError) and cause.status == 401:
            raise cause
        if _silent(cause):
            # A connection dropped without a FIN (a firewall, a load balancer) looks like this:
            # open, and silent, while dCache keeps buffering for the channel.
            self.metrics.silent_streams.labels(name).inc()
            logger.warning(
                "%s: no frame for %.0fs (3 heartbeats missed): reconnecting with Last-Event-ID %s",
                name,
                self.watch_set.silence or 0,
                self.last_received,
            )
            try:
                # Silence can also mean the metronome itself is gone (its SUBSCRIPTION_CLOSED is
                # not buffered while disconnected); without it every idle stream looks dead.
                self.watch_set.ensure_heartbeat()
            except ChannelGoneError as exc:
                return self._reconnect(exc, backoff)
            except DCacheError as exc:
                logger.warning("%s: cannot check the heartbeat: %s", name, exc)
            self._open_stream()
            return backoff
        delay = min(backoff, self.source.reconnect_backoff_max) * random.uniform(0.5, 1.0)  # noqa: S311
        logger.info(
            "%s: stream ended (%s); reconnecting in %.2fs with Last-Event-ID %s",
            name,
            cause or "EOF",
            delay,
            self.last_received,
        )
        if self.stop.wait(delay):
            return backoff
        self._open_stream()
        return min(backoff * 2, self.source.reconnect_backoff_max)

    def _open_stream(self) -> None:
        assert self.channel_url is not None
        last = self.last_received if self.last_received is not None else _NO_ID
        self.stream.open(self.channel_url, last, silence=self.watch_set.silence)

    # -- frames ----------------------------------------------------------------------------
    def _handle_batch(self, batch: Batch) -> None:
        """The frames of one network chunk share one progress slot, queued after every gap they
        open: the checkpoint passes the chunk once all of it is acknowledged and repaired, which
        for the frames before a gap-opening one is later than it could be, never earlier."""
        observed = batch.observed_ms
        slot = self.progress.slot(None, observed)
        kinds: dict[bytes | None, int] = {}
        for item in batch.frames:
            event = item.head.event if isinstance(item, Oversized) else item.event
            kinds[event] = kinds.get(event, 0) + 1
            self._handle(item, observed, slot)
        self.progress.append(slot)
        if slot.event_id is not None:
            self._last_event_gauge.set(slot.event_id)
        for event, count in kinds.items():
            counter = self._frame_counters.get(event)
            if counter is None:
                kind = (event or b"?").decode("utf-8", "replace")[:40]
                counter = self._frame_counters[event] = self.metrics.frames.labels(self.source.name, kind)
            counter.inc(count)
        for mask, count in self._batch_masks.items():
            counter = self._mask_counters.get(mask)
            if counter is None:
                counter = self._mask_counters[mask] = self.metrics.events.labels(self.source.name, mask)
            counter.inc(count)
        self._batch_masks.clear()

    def _handle(self, item: Frame | Oversized, observed: int, slot: Slot) -> None:
        frame = item.head if isinstance(item, Oversized) else item
        if isinstance(item, Oversized):
            meaning = oversized(item, self.stream.max_frame)
        else:
            meaning = interpret(
                frame,
                source=self.source,
                channel_id=self.channel_id,
                watches=self.watches,
                observed_at=observed,
            )
        event_id = meaning.event_id
        if event_id is not None:
            self.last_received = slot.event_id = event_id
        for outcome in meaning.outcomes:
            match outcome:
                case Publish(event):
                    self._publish(event, slot, observed)
                case Removed(path, is_dir):
                    if self.index is not None:
                        self.outbox.index_now(self.index.removed(path, is_dir=is_dir), slot)
                case Invalid(reason):
                    size = item.size if isinstance(item, Oversized) else len(frame.raw)
                    self.outbox.invalid(frame.raw, reason, slot, self.channel_url, size=size)
                case System(kind, sub):
                    self._system(kind, sub)
                case NewDirectory(path):
                    self._add_directory(path)
                case WatchGone(sub, path):
                    self._watch_gone(sub, path)
                case Overflow(path):
                    self.reconciler.open("IN_Q_OVERFLOW", [path], observed)
                case Tick() | Skip():
                    pass

    def _publish(self, event: StorageEvent, slot: Slot, observed: int) -> None:
        masks = self._batch_masks
        for mask in event.mask:
            masks[mask] = masks.get(mask, 0) + 1
        if (
            self.index is not None
            and not event.is_dir
            and any(m in CONTENT_MASKS for m in event.mask)
            and self.index.covered(event.path, observed)
        ):
            # A listing that ran after this frame was read already published the file.
            self.metrics.listed.labels(self.source.name, "covered").inc()
            logger.debug("%s: %s already published by a listing", self.source.name, event.path)
            return
        if self._listed_file_unchanged(event):
            self.metrics.listed.labels(self.source.name, "covered").inc()
            return
        self.outbox.publish(event, slot, observed)

    def _listed_file_unchanged(self, event: StorageEvent) -> bool:
        """Whether a live event is about the very file a listing already published.

        A frame read just after a listing page, about a file written just before it, is such an
        event; it may as well be a new write of that name. dCache never rewrites a file in place
        (a new write is a new pnfsId), so the file's attributes now tell which, exactly: only
        events for files a listing published pay for this one request.
        """
        if self.index is None or event.is_dir or not any(m in CONTENT_MASKS for m in event.mask):
            return False
        if event.observed_at - self.index.last_listing_ms > CLOCK_SKEW_MS:
            # The race is with a listing just run; long after one, an event is a new write, and
            # the hot path is spared an index lookup per event.
            return False
        listed = self.index.listed_fingerprint(event.path)
        if listed is None:
            return False
        try:
            now = self.client.stat(event.path)
        except DCacheError as exc:
            logger.debug("%s: cannot stat %s (%s): publishing", self.source.name, event.path, exc)
            return False
        return now is not None and (now.pnfsid, now.size, now.mtime) == listed

    def _system(self, kind: str, sub: str | None) -> None:
        logger.info("%s: SYSTEM %s %s", self.source.name, kind, sub or "")
        if kind == "NEW_SUBSCRIPTION" and sub:
            self._announced.add(sub)
        elif kind == "EVENT_LOSS":
            self.reconciler.open(
                "EVENT_LOSS",
                self.watch_set.directories,
                self.progress.safe_observed_ms or self.last_observed_ms,
            )
        elif kind == "COMPETING_CLIENT":
            raise CompetingClientError(
                f"{self.source.name}: another client attached to channel {self.channel_url}; "
                f"run one producer per source (client-id {self.source.client_id})"
            )
        elif kind == "SUBSCRIPTION_CLOSED" and sub:
            if sub == self.watch_set.heartbeat_url:
                if not self.stop.is_set():
                    try:
                        self.watch_set.ensure_heartbeat()
                    except DCacheError as exc:
                        logger.warning("%s: cannot renew the heartbeat: %s", self.source.name, exc)
            else:
                self._watch_gone(sub, self.watches.get(sub))

    def _watch_gone(self, sub: str | None, path: str | None) -> None:
        if sub is None or self.watch_set.forget(sub) is None or path is None:
            return
        if self.stop.is_set():
            return
        logger.info("%s: watch on %s closed", self.source.name, path)
        if path in self.source.paths:
            try:
                self._rewatch(path, reason="NEW_WATCH", since_ms=now_millis())
            except ChannelGoneError:
                # The whole channel is going (expiry, frontend restart): keep the directory among
                # the watches, so the CHANNEL_LOST gap that follows repairs it too.
                self.watches[sub] = path
            except DCacheError as exc:
                logger.error("%s: cannot re-watch %s: %s", self.source.name, path, exc)

    def _add_directory(self, path: str) -> None:
        if self.watch_set.watching(path):
            return
        try:
            self._rewatch(path, reason="NEW_WATCH", since_ms=0)
        except DCacheError as exc:
            logger.warning("%s: cannot watch new directory %s: %s", self.source.name, path, exc)

    def _rewatch(self, path: str, *, reason: str, since_ms: int) -> None:
        """Watch ``path`` and list it: files created before the watch existed are not missed."""
        self.watch_set.watch(path)
        # A directory just created is listed without a gap record, unless it holds files already.
        self.reconciler.open(reason, [path], since_ms, record=reason != "NEW_WATCH" or since_ms != 0)

    # -- checkpoints -----------------------------------------------------------------------
    def _tick(self) -> None:
        self.outbox.poll()
        if self.progress.advance():
            self.last_observed_ms = max(self.last_observed_ms, self.progress.safe_observed_ms)
        if time.monotonic() - self._last_save >= CHECKPOINT_INTERVAL:
            self._save()

    def _save(self) -> None:
        self._last_save = time.monotonic()
        gaps = self.reconciler.pending()
        state = (self.channel_url, self.progress.safe_id, tuple(sorted(self.watches.items())), repr(gaps))
        if state == self._saved or self.channel_url is None:
            return
        checkpoint = Checkpoint(
            self.source.name,
            self.channel_url,
            self.progress.safe_id,
            dict(self.watches),
            self.progress.safe_observed_ms or self.last_observed_ms,
            now_millis(),
            gaps,
            indexed=self.index is not None,
        )
        self.checkpoints.save(checkpoint)
        self._saved = state
        self.metrics.checkpoint_written(self.source.name, self.progress.safe_id)
        logger.debug("%s: checkpoint at event %s", self.source.name, self.progress.safe_id)

    def _shutdown(self) -> None:
        try:
            self.producer.flush(30)
            self.outbox.poll()  # index records whose file records were acknowledged in the flush
            self.producer.flush(30)
            self.progress.advance()
            self._save()
            self.producer.flush(30)
            logger.info("%s: stopped; checkpoint at event %s", self.source.name, self.progress.safe_id)
        except DcniosError as exc:
            self.metrics.delivery_errors.labels(self.source.name).inc()
            logger.error("%s: final flush failed: %s", self.source.name, exc)
            raise
