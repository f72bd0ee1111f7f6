"""A token bucket (as GCRA) shared by every record of one consumer process. Pure maths."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["RateLimiter", "member_share"]

#: Burst allowance in seconds of the rate: small, so the achieved rate stays close to the target.
BURST_SECONDS: Final = 0.05


def member_share(group_rate: float, assigned: int, total: int) -> float:
    """This member's part of the group rate: proportional to its share of the partitions."""
    if total <= 0 or assigned <= 0:
        return 0.0
    return group_rate * assigned / total


class RateLimiter:
    """``reserve()`` gives the wait for the next slot; ``None`` rate means unlimited.

    Each caller reserves a slot ``1/rate`` after the previous one (GCRA), which keeps the long-run
    rate exact however many records ask at once; up to ``BURST_SECONDS`` of slots may be
    taken at once after an idle spell.
    """

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._rate: float | None = None
        self._next = clock()
        self.set_rate(rate)

    @property
    def rate(self) -> float | None:
        return self._rate

    def set_rate(self, rate: float | None) -> None:
        with self._lock:
            self._rate = rate if rate is None or rate > 0 else 0.0
            self._next = max(self._next, self._clock()) if self._rate else self._clock()

    def reserve(self) -> float:
        """Reserve the next slot; returns how long to wait for it (0 = now). inf while rate is 0."""
        with self._lock:
            rate = self._rate
            if rate is None:
                return 0.0
            if rate == 0:
                return float("inf")
            now = self._clock()
            interval = 1.0 / rate
            slot = max(self._next, now - BURST_SECONDS)
            self._next = slot + interval
            return max(0.0, slot - now)
