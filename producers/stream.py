"""The SSE stream of one channel: a reader thread feeding the run loop through a bounded queue."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import requests

from dcnios.producers.dcache_api import DCacheClient
from dcnios.producers.sse import DEFAULT_MAX_FRAME, Frame, Oversized, iter_frame_batches
from dcnios.storage_event import now_millis

__all__ = ["Batch", "Ended", "EventStream", "body_chunks"]

#: Small on purpose: when the loop falls behind, the reader blocks and TCP pushes back on dCache
#: (which buffers per channel) instead of frames piling up in this process.
_QUEUE_BATCHES: Final = 16


@dataclass(frozen=True, slots=True)
class Batch:
    """The complete frames of one network chunk, and when they were read (our clock)."""

    frames: list[Frame | Oversized]
    observed_ms: int


@dataclass(frozen=True, slots=True)
class Ended:
    """The stream ended: ``cause`` is the error, or None for a clean end of the body."""

    cause: BaseException | None


_Item = tuple[int, Batch | Ended]

_READ: Final = 64 << 10


def body_chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives.

    ``iter_content(chunk_size=None)`` yields as data arrives only for a chunked body: a body
    delimited by the connection's close (HTTP/1.0, or a proxy that strips the chunking) is read
    to its end first, and an endless event stream never yields. ``read1`` returns whatever one
    read of the socket brings, for either framing.
    """
    raw = response.raw
    if raw.chunked:
        # amt bounds what one chunk of the body costs: with None a peer's declared chunk size is
        # read whole, whatever max_frame says.
        yield from raw.stream(_READ, decode_content=True)
        return
    while chunk := raw.read1(_READ, decode_content=True):
        yield chunk


class EventStream:
    """One stream at a time; opening a new one makes whatever the old one still yields stale."""

    def __init__(self, client: DCacheClient, name: str, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.client = client
        self.name = name
        self.max_frame = max_frame
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=_QUEUE_BATCHES)
        self._generation = 0
        self._response: requests.Response | None = None
        self._held: Batch | Ended | None = None

    def open(self, channel_url: str, last_event_id: int | None, *, silence: float | None) -> None:
        """Start reading ``channel_url`` after ``last_event_id``; ``silence`` bounds each wait."""
        self.close()
        self._generation += 1
        thread = threading.Thread(
            target=self._read,
            args=(self._generation, channel_url, last_event_id, silence),
            name=f"sse-{self.name}",
            daemon=True,
        )
        thread.start()

    def _read(self, generation: int, url: str, last_event_id: int | None, silence: float | None) -> None:
        end: BaseException | None = None
        try:
            response = self.client.open_stream(url, last_event_id, silence=silence)
            self._response = response
            for frames in iter_frame_batches(body_chunks(response), self.max_frame):
                self._queue.put((generation, Batch(frames, now_millis())))
                if generation != self._generation:
                    return
        except Exception as exc:  # any end of the stream, including a close() from the run loop
            end = exc
        self._queue.put((generation, Ended(end)))

    def close(self) -> None:
        # close() would wait for the reader thread's lock; shutting the socket down makes the
        # blocked read return at once, and the reader thread then ends by itself.
        self._generation += 1
        response, self._response = self._response, None
        connection = getattr(getattr(response, "raw", None), "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def hold(self, item: Batch | Ended) -> None:
        """Give ``item`` back: the next ``next()`` returns it first."""
        self._held = item

    def next(self, timeout: float = 0.1) -> Batch | Ended | None:
        """The current stream's next batch or end; None when nothing arrived within ``timeout``."""
        if self._held is not None:
            item, self._held = self._held, None
            return item
        try:
            generation, item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        return item if generation == self._generation else None
