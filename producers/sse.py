"""Server-Sent Events framing at the byte level.

sseclient-py decodes each line as strict UTF-8 and keeps no raw bytes, so one non-UTF-8 file
name would end the stream, and the frame could not be kept for ``<topic>.invalid``; nor does it
bound a frame's size. This parser splits frames on the blank line, with CRLF, LF or CR line
endings (the SSE spec allows all three) wherever the network cuts them, keeps every frame's raw
bytes, does work linear in its input, and hands on a frame over the size limit as ``Oversized``
(its head only) instead of buffering it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_MAX_FRAME",
    "Frame",
    "FrameReader",
    "Oversized",
    "iter_frame_batches",
    "iter_frames",
]

#: dCache's inotify frames are a few hundred bytes; a megabyte is a broken or hostile peer.
DEFAULT_MAX_FRAME: Final = 1 << 20
#: How much of an oversized frame is kept, for ``<topic>.invalid``.
HEAD_BYTES: Final = 64 << 10


@dataclass(frozen=True, slots=True)
class Frame:
    """One SSE frame. ``data`` joins multiple data lines with LF, as the SSE spec says."""

    event: bytes | None
    id: bytes | None
    data: bytes | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class Oversized:
    """A frame longer than the limit: its ``event:`` and ``id:`` as far as its head shows them
    (``head.raw`` is that head, ``head.data`` None), and its whole size."""

    head: Frame
    size: int


def _parse(raw: bytes) -> Frame | None:
    event = frame_id = data = None
    for line in raw.split(b"\n"):
        if not line or line.startswith(b":"):
            continue  # comment / keep-alive
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"event":
            event = value
        elif name == b"id":
            frame_id = value
        elif name == b"data":
            data = value if data is None else data + b"\n" + value
    if event is None and frame_id is None and data is None:
        return None
    return Frame(event, frame_id, data, raw)


def _oversized(head: bytes, size: int) -> Oversized:
    # Only the head's complete lines: a cut "id: 1234" would read as id 12.
    fields = _parse(head[: head.rfind(b"\n") + 1])
    event, frame_id = (fields.event, fields.id) if fields is not None else (None, None)
    return Oversized(Frame(event, frame_id, None, head), size)


class FrameReader:
    """Byte chunks in, complete frames out.

    Line endings become LF chunk by chunk; a CR that ends one chunk is remembered, so a CRLF cut
    in two stays one line ending. The search for the blank line resumes where the last one
    stopped, so a long frame arriving in small chunks costs linear time, not quadratic.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._after_cr = False
        self._skipped: int | None = None  # bytes of an oversized frame dropped so far
        self._head = b""

    def feed(self, chunk: bytes) -> list[Frame | Oversized]:
        if not chunk:
            return []
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._after_cr = chunk[-1:] == b"\r"
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out: list[Frame | Oversized] = []
        buffer = self._buffer
        resume = max(0, len(buffer) - 1)  # the blank line may start with the buffer's last byte
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n\n", max(start, resume))) >= 0:
            self._emit(bytes(buffer[start:end]), out)
            start = end + 2
        if start:
            del buffer[:start]
        if len(buffer) + (self._skipped or 0) > self.max_frame:
            # Over the limit and not ended: keep its head, count the rest, and hold the last
            # byte, which may be the first LF of the blank line that ends it.
            if self._skipped is None:
                self._head, self._skipped = bytes(buffer[:HEAD_BYTES]), 0
            self._skipped += len(buffer) - 1
            del buffer[:-1]
        return out

    def _emit(self, raw: bytes, out: list[Frame | Oversized]) -> None:
        if self._skipped is not None:
            out.append(_oversized(self._head, self._skipped + len(raw)))
            self._skipped, self._head = None, b""
        elif len(raw) > self.max_frame:
            out.append(_oversized(raw[:HEAD_BYTES], len(raw)))
        elif (frame := _parse(raw)) is not None:
            out.append(frame)


def iter_frame_batches(
    chunks: Iterable[bytes], max_frame: int = DEFAULT_MAX_FRAME
) -> Iterator[list[Frame | Oversized]]:
    """The complete frames of each network chunk, as one list (fewer hand-overs between threads).

    A trailing partial frame (connection cut) is never yielded.
    """
    reader = FrameReader(max_frame)
    for chunk in chunks:
        batch = reader.feed(chunk)
        if batch:
            yield batch


def iter_frames(chunks: Iterable[bytes], max_frame: int = DEFAULT_MAX_FRAME) -> Iterator[Frame | Oversized]:
    """Frames from a byte stream, one by one."""
    for batch in iter_frame_batches(chunks, max_frame):
        yield from batch
