"""The event loop every asyncio part of dcnios runs on, and a loop for blocking callers.

uvloop where it is installed (it roughly halves the loop's own cost per call); the standard
loop otherwise, so nothing depends on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread", "loop_factory"]

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop  # optional: a faster loop, with the same behaviour
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


class LoopThread:
    """An event loop on its own thread, for callers that block (``dcnios replay``, ``dlq replay``)."""

    def __init__(self, name: str) -> None:
        self.loop = loop_factory()()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop once what was submitted has been awaited by its callers."""
        if not self.loop.is_running():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
