"""Offset watermarks: a partition's commit position never passes an unfinished record. Pure."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

__all__ = ["OffsetTracker", "PartitionOffsets"]


@dataclass(slots=True)
class PartitionOffsets:
    pending: deque[int] = field(default_factory=deque)  # offsets in poll order, oldest first
    done: set[int] = field(default_factory=set)
    next_offset: int | None = None  # the offset after the newest polled record
    committed: int | None = None

    def position(self) -> int | None:
        """The offset to commit: the oldest unfinished record, or past the newest one."""
        while self.pending and self.pending[0] in self.done:
            self.done.discard(self.pending.popleft())
        return self.pending[0] if self.pending else self.next_offset


class OffsetTracker:
    """Thread-safe: the poll loop adds offsets, worker threads mark them done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[tuple[str, int], PartitionOffsets] = {}

    def add(self, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            part = self._parts.setdefault((topic, partition), PartitionOffsets())
            part.pending.append(offset)
            part.next_offset = offset + 1

    def done(self, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            part = self._parts.get((topic, partition))
            if part is not None:
                part.done.add(offset)

    def total_in_flight(self) -> int:
        with self._lock:
            return sum(len(p.pending) - len(p.done) for p in self._parts.values())

    def to_commit(self) -> dict[tuple[str, int], int]:
        """Positions that moved since the last call; the caller commits them, then ``committed()``."""
        out = {}
        with self._lock:
            for key, part in self._parts.items():
                pos = part.position()
                if pos is not None and pos != part.committed:
                    out[key] = pos
        return out

    def committed(self, positions: dict[tuple[str, int], int]) -> None:
        with self._lock:
            for key, pos in positions.items():
                if key in self._parts:
                    self._parts[key].committed = pos

    def forget(self, topic: str, partition: int) -> None:
        with self._lock:
            self._parts.pop((topic, partition), None)

    def position(self, topic: str, partition: int) -> int | None:
        with self._lock:
            part = self._parts.get((topic, partition))
            return None if part is None else part.position()

    def fetched(self, topic: str, partition: int) -> int | None:
        with self._lock:
            part = self._parts.get((topic, partition))
            return None if part is None else part.next_offset
