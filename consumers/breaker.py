"""Circuit breaker: when OSCAR fails as a whole, hold every invocation instead of spending retries.

A connection refused or a 5xx on most calls is not a fault of the records being invoked; without
the breaker each of them would burn its ``max_attempts`` and the whole backlog would land in the
DLQ during an outage. Pure state; the consumer probes ``GET /health`` while it is open.

``/health`` answers without asking Kubernetes, so it passing does not prove that jobs can be
created again: it only makes the breaker half-open. One call goes through then (the others wait
for it): a system failure opens the breaker again at once (held, not counted), an answer closes
it. A caller that took that one call and then did not make it gives it back (``release_probe``).

Only that call decides. Calls that were let through before the breaker opened may still be under
way when it goes half-open; their outcomes describe OSCAR as it was, so they are not counted then
(one failing late used to re-open a breaker whose probe had just succeeded). ``try_enter`` hands
out an ``Entry``, and the probe's carries its number.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["ORDINARY", "CircuitBreaker", "Entry"]

#: Opens after this many system failures in a row ...
CONSECUTIVE: Final = 5
#: ... or when this share of the last WINDOW calls were system failures.
WINDOW: Final = 20
SHARE: Final = 0.8


@dataclass(frozen=True, slots=True)
class Entry:
    """One call let through: ``probe`` is its number as the half-open probe, 0 for an ordinary call."""

    probe: int = 0


#: The entry of every call made while the breaker is closed (one object, not one per call).
ORDINARY: Final = Entry()


class CircuitBreaker:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: deque[bool] = deque(maxlen=WINDOW)  # True: a system failure
        self._run = 0
        self.is_open = False
        self.half_open = False
        self.opened_at: float | None = None
        self.openings = 0
        #: How often a call's success closed it: the prober starts its delays again from each.
        self.closings = 0
        self.reason = ""
        #: Opened by an outage that ``/health`` cannot see (refused credentials): the probe is a
        #: real call, let through half-open, not ``GET /health``.
        self.probe_by_call = False
        self._probe_taken = False
        #: The number of the newest half-open probe handed out.
        self._probe = 0

    def record(self, system_failure: bool, error: str = "", entry: Entry = ORDINARY) -> bool:
        """Count one call's outcome; True when this call opened the breaker."""
        with self._lock:
            if self.half_open and entry.probe != self._probe:
                return False  # let through before the breaker opened: not the probe
            self._recent.append(system_failure)
            self._run = self._run + 1 if system_failure else 0
            if self.half_open:
                self.half_open = self._probe_taken = False
                if system_failure:
                    self.is_open = True
                    self.reason = error
                    return True
                self.opened_at = None
                self.closings += 1
                self.probe_by_call = False
                self._recent.clear()
                return False
            if self.is_open or not system_failure:
                return False
            share = sum(self._recent) / len(self._recent)
            if self._run >= CONSECUTIVE or (len(self._recent) == WINDOW and share >= SHARE):
                self.is_open = True
                self.opened_at = self._clock()
                self.openings += 1
                self.reason = error
                return True
            return False

    def trip(self, error: str, *, probe_by_call: bool, entry: Entry = ORDINARY) -> bool:
        """Open at once: a failure that no record causes (credentials refused, a certificate that
        cannot be verified) fails every call alike. True when this call opened it."""
        with self._lock:
            if self.half_open and entry.probe != self._probe:
                return False  # let through before the breaker opened: not the probe
            self.half_open = self._probe_taken = False
            self.probe_by_call = probe_by_call
            self.reason = error
            if self.is_open:
                return False
            self.is_open = True
            if self.opened_at is None:
                self.opened_at = self._clock()
                self.openings += 1
            return True

    def probe_passed(self) -> None:
        """``GET /health`` answered: let calls through, half-open, until one of them tells."""
        with self._lock:
            self.is_open = False
            self.half_open = True
            self._probe_taken = False
            self._probe += 1  # a number no caller holds until one takes the probe
            self._run = 0

    def release_probe(self, entry: Entry) -> None:
        """The caller of ``entry`` is not making its call (stopped, revoked): when it was the
        half-open probe, the next caller may take it."""
        with self._lock:
            if self.half_open and self._probe_taken and entry.probe == self._probe:
                self._probe_taken = False

    def close(self) -> None:
        with self._lock:
            self.is_open = self.half_open = self.probe_by_call = self._probe_taken = False
            self.opened_at = None
            self._run = 0
            self._recent.clear()

    def try_enter(self) -> Entry | None:
        """An entry when a call may go now: closed, or half-open with its one call not yet taken
        (then this caller takes it, as a numbered probe); None otherwise. Never blocks;
        event-loop callers wait by asking again."""
        with self._lock:
            if self.is_open or (self.half_open and self._probe_taken):
                return None
            if self.half_open:
                self._probe_taken = True
                self._probe += 1
                return Entry(self._probe)
            return ORDINARY
