"""The watch set of one channel: which subscription URL watches which directory, and the heartbeat."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from dcnios.errors import DCacheError
from dcnios.producers.dcache_api import DCacheClient
from dcnios.producers.records import join_path
from dcnios.spec import SourceSpec

__all__ = ["WatchSet"]

logger = logging.getLogger(__name__)


class WatchSet:
    """Subscriptions of the current channel. ``by_url`` maps subscription URL → directory."""

    def __init__(self, source: SourceSpec, client: DCacheClient) -> None:
        self.source = source
        self.client = client
        self.channel_url: str | None = None
        self.by_url: dict[str, str] = {}
        self.heartbeat_url: str | None = None

    def reset(self, channel_url: str, watches: dict[str, str] | None = None) -> None:
        self.channel_url = channel_url
        self.by_url = dict(watches or {})
        self.heartbeat_url = None

    @property
    def directories(self) -> list[str]:
        return sorted(set(self.by_url.values()))

    def subscription_for(self, directory: str) -> str:
        return next((u for u, p in self.by_url.items() if p == directory), "")

    def watching(self, directory: str) -> bool:
        return directory in self.by_url.values()

    def flags(self) -> list[str]:
        flags = {m for m in self.source.events if m != "IN_ISDIR"}
        if self.source.recursive:
            flags |= {"IN_CREATE", "IN_MOVED_TO", "IN_DELETE_SELF"}
        if self.source.reconcile:
            # The published-files index forgets files that leave, so that a file of the same name
            # written later is not taken for the one already published.
            flags |= {"IN_DELETE", "IN_MOVED_FROM"}
        return sorted(flags)

    # -- inotify ---------------------------------------------------------------------------
    def watch(self, path: str) -> tuple[str, bool]:
        assert self.channel_url is not None
        url, created = self.client.subscribe(self.channel_url, path, self.flags())
        self.by_url[url] = path
        logger.info("%s: watching %s (%s)", self.source.name, path, "new" if created else "merged")
        return url, created

    def watch_roots(self) -> list[str]:
        """Watch every configured path (and, if recursive, every directory below); the new URLs."""
        created = []
        for root in self.source.paths:
            url, was_created = self.watch(root)
            if was_created:
                created.append(url)
            if self.source.recursive:
                created.extend(self.watch_tree(root))
        return created

    def watch_tree(self, directory: str) -> list[str]:
        created = []
        for child in self._subdirectories(directory):
            path = join_path(directory, child)
            url, was_created = self.watch(path)
            if was_created:
                created.append(url)
            created.extend(self.watch_tree(path))
        return created

    def _subdirectories(self, directory: str) -> Iterator[str]:
        seen: set[str] = set()
        for page in self.client.iter_listing(directory):
            for child in page:
                if child.is_dir and child.name not in seen:
                    seen.add(child.name)
                    yield child.name

    def forget(self, url: str) -> str | None:
        return self.by_url.pop(url, None)

    def lost(self) -> list[str]:
        """Directories whose subscription the channel no longer has (forgotten here)."""
        assert self.channel_url is not None
        present = set(self.client.subscriptions(self.channel_url))
        gone = [url for url in self.by_url if url not in present]
        return [path for url in gone if (path := self.by_url.pop(url)) is not None]

    def missing_roots(self) -> list[str]:
        return [root for root in self.source.paths if not self.watching(root)]

    # -- heartbeat -------------------------------------------------------------------------
    def ensure_heartbeat(self) -> None:
        """One metronome on the channel, ticking every ``heartbeat``; extras are removed.

        Every metronome POST creates a new subscription (Metronome.java), so a restarted producer
        looks for its own first instead of adding one per restart.
        """
        if not self.source.heartbeat:
            return
        assert self.channel_url is not None
        keep: str | None = None
        for url in self.client.subscriptions(self.channel_url):
            if not self.client.is_metronome(url):
                continue
            try:
                ours = keep is None and self.client.selector(url).get("delay") == float(self.source.heartbeat)
            except DCacheError:
                ours = False
            if ours:
                keep = url
            else:
                self.client.unsubscribe(url)
        self.heartbeat_url = keep or self.client.subscribe_metronome(
            self.channel_url, float(self.source.heartbeat)
        )
        logger.debug(
            "%s: heartbeat %s every %ss", self.source.name, self.heartbeat_url, self.source.heartbeat
        )

    @property
    def silence(self) -> float | None:
        """How long the stream may stay silent before it counts as dead: three heartbeats."""
        return 3 * float(self.source.heartbeat) + 1.0 if self.source.heartbeat else None
