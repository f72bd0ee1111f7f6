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

__all__ = ["LoopThread", "in_daemon_thread", "loop_factory"]

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop  # optional: a faster loop, with the same behaviour
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


async def in_daemon_thread(name: str, call: Callable[[], T]) -> T:
    """``call()`` on a daemon thread of its own, awaited without blocking the loop.

    Not ``asyncio.to_thread``: the default executor's threads are joined when the loop closes and
    again when the interpreter exits, so a stop would wait for a blocking HTTP call (an OSCAR
    ``/health`` probe or a token request) to time out, up to its connect timeout plus 10 s. A
    daemon thread is abandoned instead; its result, if it ever comes, is dropped.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return  # the waiter was cancelled (a stop)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = call()
        except BaseException as exc:  # handed to the waiter, like to_thread does
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, None, exc)
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


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
