"""Real filesystem notifications under a local directory, replayed as dCache namespace events.

``dcnios sandbox dcache --root DIR`` maps DIR onto the namespace root ``/``: a file copied into
DIR/sub becomes ``/sub/<name>`` and produces the upload sequence of reference §5.5 (IN_CREATE,
IN_OPEN, IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE); deletes and renames produce theirs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Final

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from dcnios.sandbox.dcache import DCacheEmulator

__all__ = ["DirectoryEvents"]

logger = logging.getLogger(__name__)

#: A file renamed into DIR from elsewhere is never closed under DIR; after this much quiet, its
#: upload counts as finished.
SETTLE_SECONDS: Final = 1.0


class DirectoryEvents(FileSystemEventHandler):
    """Watches ``root`` (recursively) and drives ``emulator``'s namespace hooks from what happens."""

    def __init__(self, emulator: DCacheEmulator, root: str, *, settle: float = SETTLE_SECONDS) -> None:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"sandbox dCache root {root!r} is not a directory")
        self.emulator = emulator
        self.root = os.path.realpath(root)
        self.settle = settle
        # Uploads under way: namespace path → (monotonic time of last activity, size, wrote yet)
        self._open: dict[str, tuple[float, int, bool]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer = Observer()
        self._settler = threading.Thread(target=self._settle_loop, daemon=True, name="sandbox-settle")

    def start(self) -> DirectoryEvents:
        self._scan()
        self._observer.schedule(self, self.root, recursive=True)
        self._observer.start()
        self._settler.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._observer.stop()
        self._observer.join(timeout=5)

    def __enter__(self) -> DirectoryEvents:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- mapping -----------------------------------------------------------------------------
    def namespace_path(self, local: str | bytes) -> str | None:
        text = os.fsdecode(local)
        rel = os.path.relpath(text, self.root)
        if rel == ".":
            return "/"
        if rel.startswith(".."):
            return None
        return "/" + rel.replace(os.sep, "/")

    def _scan(self) -> None:
        """What is already there is in the namespace, silently (no one saw it arrive)."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(dirnames):
                path = self.namespace_path(os.path.join(dirpath, name))
                if path is not None:
                    self.emulator.put_silently(path, 0, directory=True)
            for name in sorted(filenames):
                local = os.path.join(dirpath, name)
                path = self.namespace_path(local)
                if path is not None:
                    self.emulator.put_silently(path, _size(local))

    # -- watchdog callbacks (observer thread) --------------------------------------------------
    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._handle(event)
        except (FileNotFoundError, KeyError) as exc:
            # The tree changed again before this notification was handled (or the parent is not
            # known yet); the next notification brings the namespace back in line.
            logger.debug("sandbox dCache: skipped %s: %s", event, exc)

    def _handle(self, event: FileSystemEvent) -> None:
        src = self.namespace_path(event.src_path)
        if src is None or src == "/":
            return
        emu = self.emulator
        if isinstance(event, DirCreatedEvent):
            emu.mkdir(src)
        elif isinstance(event, FileCreatedEvent):
            emu.begin_upload(src)
            with self._lock:
                self._open[src] = (time.monotonic(), _size(os.fsdecode(event.src_path)), False)
        elif isinstance(event, FileModifiedEvent):
            self._modified(src, os.fsdecode(event.src_path))
        elif isinstance(event, FileClosedEvent):
            with self._lock:
                self._open.pop(src, None)
            emu.finish_upload(src, _size(os.fsdecode(event.src_path)))
        elif isinstance(event, (FileDeletedEvent, DirDeletedEvent)):
            with self._lock:
                self._open.pop(src, None)
            if src in emu.entries:
                emu.rm(src)
        elif isinstance(event, (FileMovedEvent, DirMovedEvent)):
            self._moved(src, event)

    def _modified(self, path: str, local: str) -> None:
        with self._lock:
            state = self._open.get(path)
            if state is None:
                return
            first = not state[2]
            self._open[path] = (time.monotonic(), _size(local), True)
        if first:
            # The pool sends IN_MODIFY on the first write and then at most every 10 s (§5.5).
            self.emulator.wrote(path)

    def _moved(self, src: str, event: FileSystemEvent) -> None:
        dst = self.namespace_path(event.dest_path)
        emu = self.emulator
        if dst is None:
            if src in emu.entries:
                emu.rm(src)
            return
        with self._lock:
            pending = self._open.pop(src, None)
            if pending is not None:
                self._open[dst] = pending
        if src in emu.entries:
            emu.mv(src, dst)
        elif event.is_directory:
            emu.mkdir(dst)
        else:
            emu.upload(dst, _size(os.fsdecode(event.dest_path)))

    def _settle_loop(self) -> None:
        while not self._stop.wait(self.settle / 4):
            now = time.monotonic()
            done: list[tuple[str, int]] = []
            with self._lock:
                for path, (last, size, _) in list(self._open.items()):
                    if now - last >= self.settle:
                        local = os.path.join(self.root, path.lstrip("/"))
                        current = _size(local)
                        if current != size:
                            self._open[path] = (now, current, True)
                            continue
                        del self._open[path]
                        done.append((path, current))
            for path, size in done:
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                    self.emulator.finish_upload(path, size)


def _size(local: str) -> int:
    try:
        return os.stat(local).st_size
    except OSError:
        return 0
