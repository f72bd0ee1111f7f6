"""Server-Sent Events framing at the byte level.

sseclient-py decodes each line as strict UTF-8 and keeps no raw bytes, so one non-UTF-8 file
name would end the stream, and the frame could not be kept for ``<topic>.invalid``. This parser
splits frames on the blank line, keeps every frame's raw bytes, and leaves decoding to the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = ["Frame", "iter_frame_batches", "iter_frames"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One SSE frame. ``data`` joins multiple data lines with LF, as the SSE spec says."""

    event: bytes | None
    id: bytes | None
    data: bytes | None
    raw: bytes


def _parse(raw: bytes) -> Frame | None:
    event = frame_id = data = None
    for line in raw.split(b"\n"):
        line = line.removesuffix(b"\r")  # noqa: PLW2901
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


def iter_frame_batches(chunks: Iterable[bytes]) -> Iterator[list[Frame]]:
    """The complete frames of each network chunk, as one list (fewer hand-overs between threads).

    A trailing partial frame (connection cut) is never yielded.
    """
    buffer = b""
    for chunk in chunks:
        if not chunk:
            continue
        buffer += chunk.replace(b"\r\n", b"\n") if b"\r" in chunk else chunk
        parts = buffer.split(b"\n\n")
        buffer = parts.pop()
        batch = [frame for raw in parts if (frame := _parse(raw)) is not None]
        if batch:
            yield batch


def iter_frames(chunks: Iterable[bytes]) -> Iterator[Frame]:
    """Frames from a byte stream, one by one."""
    for batch in iter_frame_batches(chunks):
        yield from batch
