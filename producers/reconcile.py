"""Gaps and their repair: list the directories a gap may hide and publish what was never published.

A gap is written to ``<prefix>.gaps`` when its repair is done. The repair compares each listing
page with the published-files index (``index.py``), so it publishes exactly the files that are
new or changed, whatever their timestamps. It runs a page at a time between batches of frames,
so the stream keeps flowing during a long listing, and a live event read before a page that
published its file is recognised as covered. Its progress slot holds the checkpoint until the
repair is complete: a producer killed halfway repairs the same gap again after a restart.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from dcnios.errors import DCacheError
from dcnios.metrics import ProducerMetrics
from dcnios.producers.checkpoint import Progress, Slot
from dcnios.producers.dcache_api import Child, DCacheClient, UnreadableListingError
from dcnios.producers.index import Verdict
from dcnios.producers.outbox import Outbox
from dcnios.producers.records import join_path, listed_event
from dcnios.producers.watches import WatchSet
from dcnios.spec import SourceSpec
from dcnios.storage_event import now_millis

__all__ = ["Gap", "Reconciler"]

logger = logging.getLogger(__name__)
_FIRST_RETRY: Final = 1.0
_LAST_RETRY: Final = 60.0
#: Gaps that stand for the whole tree (the first start), below every watched root.
_WHOLE_TREE: Final = frozenset({"BASELINE", "BACKFILL"})


@dataclass(slots=True)
class Gap:
    reason: str
    directories: list[str]
    since_ms: int
    slot: Slot
    todo: deque[str]
    previous: str | None = None
    record: bool = True
    #: A baseline (the first start over an existing tree): files never published whose mtime is
    #: before this (our clock, less the skew) are indexed as handled, not published.
    baseline_before: int | None = None
    found: int = 0
    baselined: int = 0
    failed: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    retry_in: float = 0.0
    retry_at: float = 0.0


class Reconciler:
    """Open gaps, repaired one listing page per ``step``."""

    def __init__(
        self,
        source: SourceSpec,
        client: DCacheClient,
        *,
        watches: WatchSet,
        outbox: Outbox,
        progress: Progress,
        metrics: ProducerMetrics,
        channel_id: Callable[[], str],
        channel_url: Callable[[], str | None],
    ) -> None:
        self.source = source
        self.client = client
        self.watches = watches
        self.outbox = outbox
        self.index = outbox.index
        self.progress = progress
        self.metrics = metrics
        self.channel_id = channel_id
        self.channel_url = channel_url
        self.gaps: deque[Gap] = deque()
        self._listing: Iterator[list[Child]] | None = None
        self._directory: str | None = None
        #: Finished gaps whose records are not all acknowledged yet.
        self._settling: list[Gap] = []

    @property
    def busy(self) -> bool:
        return bool(self.gaps)

    @property
    def ready(self) -> bool:
        """Work that can be done now (not waiting to retry a listing)."""
        return bool(self.gaps) and self.gaps[0].retry_at <= time.monotonic()

    def open(
        self,
        reason: str,
        directories: list[str],
        since_ms: int,
        *,
        previous: str | None = None,
        record: bool = True,
        baseline_before: int | None = None,
    ) -> None:
        """A gap in ``directories``: since ``since_ms`` (our clock; 0 for "ever") events may be missing."""
        name = self.source.name
        self.metrics.gaps.labels(name, reason).inc()
        if baseline_before is None:
            logger.warning("%s: gap %s in %s", name, reason, directories)
        else:
            logger.info("%s: taking the baseline of %s", name, directories)
        slot = self.progress.add(None, 1, now_millis())  # the 1 is the repair itself
        todo = deque(sorted(set(directories))) if self.source.reconcile else deque()
        self.gaps.append(
            Gap(reason, directories, since_ms, slot, todo, previous, record, baseline_before=baseline_before)
        )
        if not self.source.reconcile:
            self._finish(self.gaps.pop())

    def step(self) -> bool:
        """One page of the oldest open gap's repair; True when that finished the gap."""
        if not self.gaps:
            return False
        gap = self.gaps[0]
        if gap.retry_at > time.monotonic():
            return False
        if self._listing is None:
            while gap.todo and gap.todo[0] in gap.done:
                gap.todo.popleft()
            if not gap.todo:
                self._finish(self.gaps.popleft())
                return True
            self._directory = gap.todo[0]
            self._listing = self.client.iter_listing(self._directory)
            assert self.index is not None
            self.index.begin_listing(now_millis())
        directory = self._directory
        assert directory is not None and self.index is not None
        # Before the request: a frame read before it is about a state this page shows.
        listed_at = now_millis()
        self.index.listing_at(listed_at)
        try:
            page = next(self._listing)
        except StopIteration:
            self.outbox.index_now(self.index.end_listing(directory), gap.slot)
            self._next_directory(gap, directory)
            return False
        except DCacheError as exc:
            self._failed(gap, directory, exc)
            return False
        self._page(gap, directory, page, listed_at)
        return False

    def _next_directory(self, gap: Gap, directory: str) -> None:
        gap.done.add(directory)
        gap.todo.popleft()
        self._listing, self._directory = None, None
        gap.retry_in = 0.0

    def _failed(self, gap: Gap, directory: str, exc: DCacheError) -> None:
        """A listing that failed: a transient failure is retried with backoff, for as long as it
        takes (the checkpoint waits); a directory gone leaves the index; anything else is
        reported in the gap record as ``failed``."""
        self._listing, self._directory = None, None
        # A directory that changes too fast to list in pages (ListingUnstableError) is transient
        # too: giving up would lose its files, and every attempt publishes what it saw.
        transient = exc.status is None or exc.status == 429 or exc.status >= 500
        if transient and not isinstance(exc, UnreadableListingError):
            gap.retry_in = min(_LAST_RETRY, gap.retry_in * 2 or _FIRST_RETRY)
            gap.retry_at = time.monotonic() + gap.retry_in
            logger.warning(
                "%s: cannot list %s (%s); trying again in %.0fs",
                self.source.name,
                directory,
                exc,
                gap.retry_in,
            )
            return
        if isinstance(exc, UnreadableListingError):
            self.outbox.invalid(exc.body, str(exc), gap.slot, self.channel_url())
        if exc.status == 404:
            logger.info("%s: %s is gone: %s", self.source.name, directory, exc)
            self.outbox.index_now(self.index.removed(directory, is_dir=True) if self.index else [], gap.slot)
        else:
            logger.error(
                "%s: cannot list %s to repair gap %s: %s", self.source.name, directory, gap.reason, exc
            )
            gap.failed.append(directory)
        self._next_directory(gap, directory)

    def pending(self) -> list[dict[str, Any]]:
        """The gaps as the checkpoint keeps them: every directory of each, until all it wrote is
        acknowledged. A directory listed, but whose records (or index records) are not
        acknowledged yet, would otherwise be skipped by a restart; listing it again is harmless,
        since the index decides what is published."""
        self._settling = [g for g in self._settling if g.slot.pending > 0]
        return [
            {
                "reason": g.reason,
                "directories": sorted(set(g.directories) | set(g.todo) | g.done),
                "since_ms": g.since_ms,
                "previous": g.previous,
                **({"baseline_before": g.baseline_before} if g.baseline_before is not None else {}),
            }
            for g in [*self._settling, *self.gaps]
        ]

    def _page(self, gap: Gap, directory: str, page: list[Child], listed_at: int) -> None:
        assert self.index is not None
        # A first start lists the whole tree, watched already or not; other gaps list the
        # directories they name, and directories nobody watched yet.
        whole_tree = gap.reason in _WHOLE_TREE
        for child in page:
            if child.is_dir and self.source.recursive:
                path = join_path(directory, child.name)
                if path in gap.done or (whole_tree and path in gap.todo):
                    continue
                if not self.watches.watching(path):
                    try:
                        self.watches.watch(path)
                    except DCacheError as exc:
                        logger.warning("%s: cannot watch %s: %s", self.source.name, path, exc)
                        continue
                elif not whole_tree:
                    continue
                gap.todo.append(path)
        subscription = self.watches.subscription_for(directory)
        verdicts = self.index.compare(directory, page)
        name = self.source.name
        found_before = gap.found
        for child, verdict in verdicts:
            baseline = (
                verdict is Verdict.NEW
                and gap.baseline_before is not None
                and child.mtime < gap.baseline_before
            )
            self.metrics.listed.labels(name, "baselined" if baseline else verdict.value).inc()
            if verdict is Verdict.SAME:
                continue
            if verdict is Verdict.SAME_UNSEEN:
                learned = self.index.learned(directory, child)
                if learned is not None:
                    self.outbox.index_now([learned], gap.slot)
                continue
            if baseline:
                path = join_path(directory, child.name)
                self.outbox.index_now([self.index.baselined(path, listed_at, child)], gap.slot)
                gap.baselined += 1
                continue
            event = listed_event(
                self.source,
                directory,
                child.name,
                channel_id=self.channel_id(),
                subscription=subscription,
                observed_at=listed_at,
                gap=gap.reason,
            )
            self.outbox.publish(event, gap.slot, listed_at, child=child, at_ms=listed_at)
            gap.found += 1
        self.metrics.synthetic.labels(name).inc(gap.found - found_before)

    def _finish(self, gap: Gap) -> None:
        now = now_millis()
        if gap.record or gap.found or gap.failed:
            record: dict[str, Any] = {
                "source": self.source.name,
                "reason": gap.reason,
                "start_ms": gap.since_ms,
                "end_ms": now,
                "directories": gap.directories,
                "channel": self.channel_url(),
                "previous_channel": gap.previous,
                "reconciled": gap.found,
                "reconcile": self.source.reconcile,
            }
            if gap.failed:
                record["failed"] = sorted(gap.failed)
            if gap.baseline_before is not None:
                record["baselined"] = gap.baselined
            self.outbox.gap(record, gap.slot)
        gap.slot.pending -= 1
        self._settling.append(gap)
        logger.info(
            "%s: gap %s repaired: %d files published%s",
            self.source.name,
            gap.reason,
            gap.found,
            f", {gap.baselined} already there indexed as handled" if gap.baseline_before is not None else "",
        )
