"""Drop records already finished within a time window (producer replays after a crash).

The consumer asks ``finished`` at admission and calls ``remember`` only when a record's first copy
has finished: a copy re-fetched after a revoke, while the stale one still sleeps in its backoff,
is not a duplicate of anything that ran. ``first_time`` is for one-pass readers (replays)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["DedupWindow"]


class DedupWindow:
    def __init__(
        self, seconds: float, clock: Callable[[], float] = time.monotonic, max_keys: int = 1_000_000
    ):
        self.seconds = seconds
        self._clock = clock
        self._max = max_keys
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, key: str) -> bool:
        """True the first time ``key`` is offered within the window (and remembers it)."""
        if self.seconds <= 0:
            return True
        now = self._clock()
        with self._lock:
            while self._seen:
                oldest, at = next(iter(self._seen.items()))
                if now - at < self.seconds and len(self._seen) < self._max:
                    break
                del self._seen[oldest]
            if key in self._seen:
                return False
            self._seen[key] = now
            return True

    def finished(self, key: str) -> bool:
        """Whether ``key`` finished within the window (``remember`` was called); remembers nothing."""
        if self.seconds <= 0:
            return False
        now = self._clock()
        with self._lock:
            self._expire(now)
            return key in self._seen

    def remember(self, key: str) -> None:
        """``key``'s record finished (its job ran or it is in the DLQ): later copies are duplicates."""
        if self.seconds <= 0:
            return
        now = self._clock()
        with self._lock:
            self._expire(now)
            self._seen[key] = now
            self._seen.move_to_end(key)

    def _expire(self, now: float) -> None:
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self.seconds and len(self._seen) < self._max:
                return
            del self._seen[oldest]
