"""Which partitions this member owns, and for which records it may still act. Thread-safe.

The Kafka thread assigns and revokes; the event loop starts and settles records. A record
carries the generation of its partition from when it was fetched:
- it may *start* a call while its partition is assigned in that generation and not being revoked;
- it may *settle* (be marked done, so its offset can be committed) until the revoke completes,
  so a call that was under way when the revoke began still counts, and the revoke commits it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

__all__ = ["TP", "Ownership"]

TP = tuple[str, int]


class Ownership:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.assignment: set[TP] = set()
        self._generation: dict[TP, int] = {}
        self._revoking: set[TP] = set()
        self._active: dict[TP, int] = {}

    def assign(self, partitions: Iterable[TP]) -> None:
        with self._lock:
            for tp in partitions:
                self.assignment.add(tp)
                self._revoking.discard(tp)
                self._generation[tp] = self._generation.get(tp, 0) + 1

    def begin_revoke(self, partitions: Iterable[TP]) -> None:
        """No new calls for these partitions; calls under way may still settle."""
        with self._lock:
            self._revoking.update(partitions)

    def end_revoke(self, partitions: Iterable[TP]) -> None:
        """Their records are stale now: nothing of theirs settles any more."""
        with self._lock:
            for tp in partitions:
                self._revoking.discard(tp)
                self.assignment.discard(tp)
                self._generation[tp] = self._generation.get(tp, 0) + 1

    def fetched(self, tp: TP) -> int | None:
        """The generation a record fetched now belongs to; None if it is not ours to handle."""
        with self._lock:
            if tp not in self.assignment or tp in self._revoking:
                return None
            return self._generation.get(tp, 0)

    def may_start(self, tp: TP, generation: int) -> bool:
        with self._lock:
            return tp not in self._revoking and self._generation.get(tp) == generation

    def may_settle(self, tp: TP, generation: int) -> bool:
        with self._lock:
            return self._generation.get(tp) == generation

    def enter(self, tp: TP) -> None:
        with self._lock:
            self._active[tp] = self._active.get(tp, 0) + 1

    def leave(self, tp: TP) -> None:
        with self._lock:
            self._active[tp] -= 1

    def active(self, partitions: Iterable[TP] | None = None) -> int:
        """Records between their first call and their decision (all partitions, or these)."""
        with self._lock:
            if partitions is None:
                return sum(self._active.values())
            return sum(self._active.get(tp, 0) for tp in partitions)

    def owned(self) -> list[TP]:
        with self._lock:
            return sorted(self.assignment)
