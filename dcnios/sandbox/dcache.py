"""An emulator of dCache's storage-events API (frontend ``/api/v1/events``) and namespace listing.

Written from shared/reference/dcache-events.md (section numbers below refer to it) and from
dCache's source (dCache/dcache at 77340d66; the file behind each behaviour is named where it is
coded). It serves the tests and ``dcnios sandbox``; the pipeline never imports it.

Faithful parts:

* events: frames byte for byte (§4.2), per-channel ids from 0 (§4.4), the 16383-event ring
  buffer and the Last-Event-ID algorithm with EVENT_LOSS (§6), response headers withheld until
  the first frame (§4.1, switchable), 201/303 inotify subscribe (§5.3), 8.2 error bodies (§2.1),
  channel expiry → 404, COMPETING_CLIENT, SHUTDOWN, SUBSCRIPTION_CLOSED + IN_IGNORED,
  IN_Q_OVERFLOW;
* the metronome event type (§5.2): selector validation and its messages, a new subscription
  (201) on every POST, fixed-rate ticks that take channel ids and fill the ring buffer,
  ``${count}``/``${username}``, ``count`` closing the subscription;
* ``GET /namespace{path}`` (§11): the default and ``optional=true`` attribute sets, ``fileName``
  on children only, ``children``/``limit``/``offset`` with their 400s, children in directory
  order (never sorted), listings that cost O(page);
* the namespace's timestamps: a rename touches only the directory entry (the moved inode keeps
  its times and PNFS-ID), the parents' mtime and ctime move on every create, remove and rename,
  and a rename over an existing name removes it first.

``blackhole()`` is a test hook that models the network (a firewall silently dropping a
connection), not anything dCache does.

Upstream files behind the class names cited in comments (F = modules/dcache-frontend/src/main/
java/org/dcache/restful, C = modules/chimera/src/main/java/org/dcache/chimera):

* FileResources: F/resources/namespace/FileResources.java; NamespaceUtils:
  F/util/namespace/NamespaceUtils.java; JsonFileAttributes: F/providers/JsonFileAttributes.java;
* ChimeraNameSpaceProvider: modules/dcache-chimera/src/main/java/org/dcache/chimera/namespace/
  ChimeraNameSpaceProvider.java; FsSqlDriver, JdbcFs, DirectoryStreamImpl: C/<name>.java;
  chimera.attr-consistency: skel/share/defaults/chimera.properties;
* Metronome, Selector, Selection: F/events/streams/metronome/<name>.java; Channel:
  F/events/Channel.java; EventResources: F/resources/EventResources.java.
"""

from __future__ import annotations

import base64
import errno
import gc
import json
import logging
import math
import os
import queue
import re
import secrets
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["DCacheEmulator"]

logger = logging.getLogger(__name__)

BACKLOG: Final = 16383
# Written out again from the reference rather than imported from dcnios.inotify: an emulator that
# shares the product's constants would agree with the product's mistakes.
EVENT_FLAGS: Final = (
    "IN_ACCESS",
    "IN_ATTRIB",
    "IN_CLOSE_WRITE",
    "IN_CLOSE_NOWRITE",
    "IN_CREATE",
    "IN_DELETE",
    "IN_DELETE_SELF",
    "IN_MODIFY",
    "IN_MOVE_SELF",
    "IN_MOVED_FROM",
    "IN_MOVED_TO",
    "IN_OPEN",
)
MACROS: Final = {
    "IN_ALL_EVENTS": EVENT_FLAGS,
    "IN_CLOSE": ("IN_CLOSE_WRITE", "IN_CLOSE_NOWRITE"),
    "IN_MOVE": ("IN_MOVED_FROM", "IN_MOVED_TO"),
}
MODIFIERS: Final = ("IN_DONT_FOLLOW", "IN_EXCL_UNLINK", "IN_MASK_ADD", "IN_ONESHOT", "IN_ONLYDIR")
SELECTOR_ORDER: Final = (*EVENT_FLAGS, *MACROS, *MODIFIERS)
_API: Final = "/api/v1"

# -- namespace facts ---------------------------------------------------------------------------
# FsSqlDriver.mkdir: a new directory has nlink 2 and size 512; each subdirectory adds one link
# to its parent (createInodeInParent → incNlinkForDir).
_DIR_SIZE: Final = 512
# ChimeraNameSpaceProvider.getFileAttributes reports permission bits only (S_PERMS). The values
# are the emulator's choice: dCache's depend on the creating door and directory tags.
_DIR_MODE: Final = 0o755
_FILE_MODE: Final = 0o644
# NamespaceUtils.mimeTypeOf.
# For a REGULAR file dCache guesses from the name (or a mime_type xattr); the guess is not
# emulated: every file is application/octet-stream, the guess's fallback.
_DIR_MIME: Final = "application/vnd.dcache.folder"
_FILE_MIME: Final = "application/octet-stream"
# Integer.parseInt, as FileResources.getFileAttributes applies it to limit and offset: an optional
# sign, then decimal digits (Character.digit accepts any script's, as Python's \d and int() do).
_JAVA_INT: Final = re.compile(r"[+-]?\d+")
_INT_MIN: Final = -(2**31)
_INT_MAX: Final = 2**31 - 1

# -- metronome facts ---------------------------------------------------------------------------
# Metronome.java and Selector.java.
_METRONOME_MESSAGE: Final = "tick"
_MAX_HZ: Final = 1_000_000.0
_MAX_DELAY: Final = 300.0  # five minutes
_MIN_HZ: Final = 1 / _MAX_DELAY
_MIN_DELAY: Final = 1 / _MAX_HZ
# Selector.validationError formats the bounds with Java's %g (six significant digits, never
# trimmed, scientific below 1e-4 and from 1e6); Python's %g trims, so the texts are written out.
_MIN_HZ_TEXT: Final = "0.00333333"
_MAX_HZ_TEXT: Final = "1.00000e+06"
_MIN_DELAY_TEXT: Final = "1.00000e-06"
_MAX_DELAY_TEXT: Final = "300.000"
#: Ticks fired per hold of the emulator lock: a metronome at 1 MHz catches up (fixed rate, as
#: ScheduledThreadPoolExecutor does) without starving the request handlers.
_TICKS_PER_PASS: Final = 1024


def _json(obj: Any) -> bytes:
    # Jackson's compact output: no spaces, raw UTF-8, '/' not escaped (§11).
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _split(path: str) -> tuple[str, str]:
    """(parent, name) of a normalised absolute path other than ``/``."""
    parent, _, name = path.rpartition("/")
    return parent or "/", name


@dataclass(slots=True)
class _Entry:
    """One inode and the path of its (only) directory entry. Times are epoch milliseconds."""

    path: str
    is_dir: bool
    pnfsid: str
    size: int = 0
    #: Set at creation and when an upload is committed; for a directory, whenever an entry is
    #: added, removed or renamed in it (FsSqlDriver incNlinkForDir/decNlinkForDir).
    mtime: int = 0
    #: As mtime, and also when attributes change (an upload's commit sets size).
    ctime: int = 0
    #: Set once, at creation (FsSqlDriver.createInode's icrtime); a rename does not touch it.
    creation_time: int = 0
    #: Set at creation; reads are not emulated, so never updated.
    atime: int = 0
    nlink: int = 1


@dataclass
class _Subscription:
    sid: str
    url: str
    pnfsid: str
    path: str
    selector: dict[str, Any]
    flags: frozenset[str]
    oneshot: bool


@dataclass
class _Metronome:
    """A metronome subscription (metronome/Selection.java): ticks at a fixed rate."""

    sid: str
    url: str
    selector: dict[str, Any]  # what GET returns: the supplied fields (Selector.java getters)
    message: str  # ${username} already replaced, as Selector.setMessage does
    period: float  # seconds, rounded to microseconds as Selector.tickDelay(MICROSECONDS) does
    count: int  # 0: unlimited
    start: float  # monotonic time of the subscription: tick n is due at start + n * period
    ticks: int = 0

    def due(self) -> float:
        return self.start + (self.ticks + 1) * self.period


class _Connection:
    """One attached SSE client: a queue of frames its handler thread writes out."""

    def __init__(self) -> None:
        self.frames: queue.Queue[bytes | None] = queue.Queue()
        self.closed = threading.Event()
        #: Set by DCacheEmulator.blackhole: nothing reaches the client any more, not even a close.
        self.blackholed = False

    def send(self, frame: bytes) -> None:
        if not self.closed.is_set() and not self.blackholed:
            self.frames.put(frame)

    def close(self) -> None:
        self.closed.set()
        self.frames.put(None)

    def blackhole(self) -> None:
        self.blackholed = True
        self.frames.put(None)  # wakes the writer, which then stops writing for good


@dataclass
class _Channel:
    cid: str
    url: str
    base: str  # scheme://host:port of the creating request: subscription URLs derive from it
    owner: str
    client_id: str
    timeout: int
    subs: dict[str, _Subscription] = field(default_factory=dict)
    metronomes: dict[str, _Metronome] = field(default_factory=dict)
    backlog: deque[tuple[int, bytes]] = field(default_factory=deque)
    next_id: int = 0
    conn: _Connection | None = None
    expires_at: float | None = None


class DCacheEmulator:
    """A dCache frontend on 127.0.0.1. Use as a context manager; drive it with the hook methods."""

    def __init__(
        self,
        users: dict[str, str] | None = None,
        tokens: dict[str, str] | None = None,
        *,
        port: int = 0,
        delay_headers: bool = True,
        default_timeout: int = 300,
        max_channels_per_user: int = 128,
        backlog: int = BACKLOG,
        files_root: str | None = None,
        clock_offset_ms: int = 0,
        webdav_tls: tuple[str, str] | None = None,
    ) -> None:
        self.backlog = backlog
        #: How far dCache's clock is ahead of ours (negative: behind), as NTP drift makes it.
        self.clock_offset_ms = clock_offset_ms
        #: Seconds between a stream GET arriving and the channel registering it, during which
        #: subscriptions are announced to nobody and their events are not streamed.
        self.attach_delay = 0.0
        #: A local directory whose files a WebDAV door serves (GET/HEAD outside /api/v1).
        self.files_root = files_root
        self.users = users if users is not None else {"alice": "secret"}
        self.tokens = tokens if tokens is not None else {}
        self.delay_headers = delay_headers
        self.default_timeout = default_timeout
        self.max_channels_per_user = max_channels_per_user
        self.lock = threading.RLock()
        self.channels: dict[str, _Channel] = {}
        #: Every inode by path (tests and the sandbox look paths up here).
        self.entries: dict[str, _Entry] = {"/": self._entry("/", True)}
        #: Each directory's entries by name, in the order they were added: Chimera's listing SQL
        #: (DirectoryStreamImpl) has no ORDER BY, so real order is whatever the database returns;
        #: creation order is one such order, and the emulator never sorts.
        self.children: dict[str, dict[str, _Entry]] = {"/": {}}
        # Names of a directory as a list, for slicing pages in O(page); built on the first
        # listing, appended to on create, dropped when an entry leaves the directory.
        self._order: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.fail_next: deque[int] = deque()
        #: Called with (method, path) as each request arrives: tests time faults to a call.
        self.before_request: Callable[[str, str], None] | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        self._server.daemon_threads = True
        #: dCache's WebDAV door is a door of its own (HTTPS, port 2880 by default); OSCAR's
        #: supervisor always speaks https:// to it (faassupervisor/storage/providers/webdav.py).
        self._door: ThreadingHTTPServer | None = None
        if webdav_tls is not None:
            if files_root is None:
                raise ValueError("a WebDAV door needs files_root")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*webdav_tls)
            self._door = _TlsServer(("127.0.0.1", 0), _make_handler(self, door=True), context)
            self._door.daemon_threads = True
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._tick_wake = threading.Event()  # a metronome was added: the ticker recomputes its sleep

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{_API}"

    @property
    def webdav_door(self) -> str | None:
        """``host:port`` of the HTTPS WebDAV door: the FDL's ``webdav.dcache.hostname`` form."""
        if self._door is None:
            return None
        host, port = self._door.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> DCacheEmulator:
        targets = [self._server.serve_forever, self._reaper, self._ticker]
        if self._door is not None:
            targets.append(self._door.serve_forever)
        for target in targets:
            thread = threading.Thread(target=target, daemon=True, name=f"dcache-emu-{target.__name__}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._tick_wake.set()
        with self.lock:
            for channel in self.channels.values():
                if channel.conn is not None:
                    channel.conn.close()
        self._server.shutdown()
        self._server.server_close()
        if self._door is not None:
            self._door.shutdown()
            self._door.server_close()

    def wait_stopped(self) -> None:
        """Block until stop() (a blackholed stream's handler parks here)."""
        self._stop.wait()

    def __enter__(self) -> DCacheEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _reaper(self) -> None:
        while not self._stop.wait(0.05):
            now = time.monotonic()
            with self.lock:
                for channel in list(self.channels.values()):
                    if channel.expires_at is not None and now >= channel.expires_at:
                        logger.info("channel %s expired", channel.cid)
                        self.close_channel(channel)

    def _ticker(self) -> None:
        """Fires every metronome's due ticks: one thread for all, as Metronome shares one executor."""
        while not self._stop.is_set():
            fired = 0
            wake: float | None = None
            with self.lock:
                now = time.monotonic()
                for channel in list(self.channels.values()):
                    for tick in list(channel.metronomes.values()):
                        # Fixed rate: a late tick is caught up, not skipped (scheduleAtFixedRate).
                        live = channel.metronomes
                        while fired < _TICKS_PER_PASS and tick.sid in live and tick.due() <= now:
                            self._tick(channel, tick)
                            fired += 1
                        if tick.sid in live:
                            wake = tick.due() if wake is None else min(wake, tick.due())
            if fired >= _TICKS_PER_PASS:
                continue  # behind: let the request handlers have the lock, then go on
            timeout = 1.0 if wake is None else max(0.0, wake - time.monotonic())
            if self._tick_wake.wait(timeout):
                self._tick_wake.clear()

    # -- ids -------------------------------------------------------------------------------
    @staticmethod
    def _pnfsid() -> str:
        return "0000" + secrets.token_hex(16).upper()

    def _now_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_offset_ms

    def _entry(self, path: str, is_dir: bool, size: int = 0) -> _Entry:
        # FsSqlDriver.createInode: ctime, atime, mtime and creation time are all "now".
        now = self._now_ms()
        if is_dir:
            return _Entry(path, True, self._pnfsid(), _DIR_SIZE, now, now, now, now, 2)
        return _Entry(path, False, self._pnfsid(), size, now, now, now, now, 1)

    # -- namespace structure ---------------------------------------------------------------
    def _touch_dir(self, path: str, now: int, nlink: int = 0) -> None:
        # FsSqlDriver.incNlinkForDir/decNlinkForDir: every create, remove and rename in a
        # directory sets its mtime and ctime (chimera.attr-consistency=strong, the default in
        # skel/share/defaults/chimera.properties, applies it at once).
        parent = self.entries[path]
        parent.mtime = parent.ctime = now
        parent.nlink += nlink

    def _link(self, entry: _Entry) -> None:
        """Enter ``entry`` in its parent directory, replacing whatever had that name."""
        parent, name = _split(entry.path)
        siblings = self.children[parent]
        if name in siblings:
            self._unlink(entry.path, entry.creation_time)
        siblings[name] = entry
        order = self._order.get(parent)
        if order is not None:
            order.append(name)
        self.entries[entry.path] = entry
        if entry.is_dir:
            self.children[entry.path] = {}
        self._touch_dir(parent, entry.creation_time, 1 if entry.is_dir else 0)

    def _unlink(self, path: str, now: int) -> _Entry:
        """Remove ``path`` (and, for a directory, everything under it) from the namespace."""
        entry = self.entries.pop(path)
        parent, name = _split(path)
        del self.children[parent][name]
        self._order.pop(parent, None)
        self._touch_dir(parent, now, -1 if entry.is_dir else 0)
        if entry.is_dir:
            pending = [path]
            while pending:  # O(subtree), not a scan of every path
                directory = pending.pop()
                self._order.pop(directory, None)
                for child in self.children.pop(directory).values():
                    del self.entries[child.path]
                    if child.is_dir:
                        pending.append(child.path)
        return entry

    def _repath(self, old: str, new: str) -> None:
        """A directory's subtree follows it from ``old`` to ``new`` (children, paths, caches)."""
        pending = [(old, new)]
        while pending:
            src, dst = pending.pop()
            kids = self.children.pop(src)
            self.children[dst] = kids
            order = self._order.pop(src, None)
            if order is not None:
                self._order[dst] = order
            for name, child in kids.items():
                del self.entries[child.path]
                child.path = f"{dst}/{name}"
                self.entries[child.path] = child
                if child.is_dir:
                    pending.append((f"{src}/{name}", child.path))

    def page(self, directory: str, offset: int = 0, limit: int | None = None) -> list[tuple[str, _Entry]]:
        """Entries [offset, offset+limit) of ``directory`` as (name, entry), in directory order."""
        with self.lock:
            siblings = self.children[directory]
            names = self._order.get(directory)
            if names is None:
                names = self._order[directory] = list(siblings)
            window = names[offset:] if limit is None else names[offset : offset + limit]
            return [(name, siblings[name]) for name in window]

    # -- namespace hooks -------------------------------------------------------------------
    def mkdir(self, path: str, *, parents: bool = True) -> None:
        with self.lock:
            parent = os.path.dirname(path) or "/"
            if parent not in self.entries:
                if not parents:
                    raise FileNotFoundError(parent)
                self.mkdir(parent)
            if path in self.entries:
                return
            self._link(self._entry(path, True))
            self._child_event(path, ["IN_CREATE", "IN_ISDIR"])

    def upload(self, path: str, size: int = 1024) -> None:
        """A WebDAV PUT (§5.5): IN_CREATE, IN_OPEN, IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE."""
        with self.lock:
            self.begin_upload(path)
            if size:
                self.wrote(path)
            self.finish_upload(path, size)

    def begin_upload(self, path: str) -> None:
        """The start of an upload: the door creates the entry, the pool opens the replica."""
        with self.lock:
            self._require_parent(path)
            self._link(self._entry(path, False, 0))
            self._child_event(path, ["IN_CREATE"])
            self._child_event(path, ["IN_OPEN"])

    def wrote(self, path: str) -> None:
        """Data arrived (the pool suppresses repeats; callers decide how often to call this)."""
        with self.lock:
            if path in self.entries:
                self._child_event(path, ["IN_MODIFY"])

    def finish_upload(self, path: str, size: int) -> None:
        """The replica is committed: attributes set, then IN_CLOSE_WRITE (§5.5 order)."""
        with self.lock:
            entry = self.entries.get(path)
            if entry is None:
                self._require_parent(path)
                entry = self._entry(path, False, size)
                self._link(entry)
            # Setting size is an attribute change: ctime moves with mtime.
            entry.size = size
            entry.mtime = entry.ctime = self._now_ms()
            self._child_event(path, ["IN_ATTRIB"])
            self._child_event(path, ["IN_CLOSE_WRITE"])

    def srm_upload(self, path: str, size: int = 1024) -> None:
        """An upload-directory commit (SRM, xroot POSC): a lone IN_MOVED_TO with a cookie."""
        with self.lock:
            self._require_parent(path)
            self._link(self._entry(path, False, size))
            self._child_event(path, ["IN_MOVED_TO"], cookie=self._cookie())

    def put_silently(self, path: str, size: int = 1024, *, directory: bool = False) -> None:
        """A file (or directory) appears with no event at all (as during a gap)."""
        with self.lock:
            self._require_parent(path)
            existing = self.entries.get(path)
            if directory and existing is not None and existing.is_dir:
                return  # already there, contents and all (as mkdir)
            self._link(self._entry(path, directory, size))

    def put_many(self, directory: str, names: Iterable[str], size: int = 1024) -> int:
        """Files ``names`` appear in ``directory`` with no event (benchmarks): one lock
        acquisition and one clock reading for the lot; a name already there is replaced.
        Returns how many were added."""
        batch = list(names)
        if len(set(batch)) != len(batch) or any(not n or "/" in n or n in (".", "..") for n in batch):
            raise ValueError("put_many takes distinct plain file names")
        with self.lock:
            parent = self.entries.get(directory)
            if parent is None or not parent.is_dir:
                raise FileNotFoundError(directory)
            siblings = self.children[directory]
            prefix = directory.rstrip("/") + "/"
            now = self._now_ms()
            for name in siblings.keys() & batch if siblings else ():
                self._unlink(prefix + name, now)
            ids = os.urandom(16 * len(batch)).hex().upper()  # as _pnfsid, drawn in one go
            # A million new objects would trigger repeated full collections, each walking every
            # entry already there: collection waits until the batch is in.
            collecting = gc.isenabled()
            gc.disable()
            try:
                fresh = [
                    _Entry(prefix + name, False, "0000" + ids[i : i + 32], size, now, now, now, now, 1)
                    for i, name in zip(range(0, 32 * len(batch), 32), batch, strict=True)
                ]
            finally:
                if collecting:
                    gc.enable()
            siblings.update(zip(batch, fresh, strict=True))
            self.entries.update((entry.path, entry) for entry in fresh)
            order = self._order.get(directory)
            if order is not None:
                order.extend(batch)
            if batch:
                self._touch_dir(directory, now)
        return len(batch)

    def rm(self, path: str) -> None:
        with self.lock:
            entry = self._unlink(path, self._now_ms())
            flag = ["IN_ISDIR"] if entry.is_dir else []
            self._child_event(path, ["IN_DELETE", *flag])
            self._self_event(entry.pnfsid, ["IN_DELETE_SELF", *flag], closes=True)

    def mv(self, src: str, dst: str) -> None:
        """A rename (JdbcFs.rename, FsSqlDriver.rename): only the directory entry changes. The
        moved inode keeps its PNFS-ID, mtime, ctime and creation time; both parents' mtime and
        ctime move. An existing ``dst`` of the same type is removed first."""
        with self.lock:
            entry = self.entries[src]
            if src == dst:
                return  # renaming onto itself: done, by POSIX (JdbcFs.rename)
            self._require_parent(dst)
            if entry.is_dir and dst.startswith(src.rstrip("/") + "/"):
                # FsSqlDriver.checkLoop
                raise OSError(errno.EINVAL, "Cannot move directory into its own subdirectory", dst)
            target = self.entries.get(dst)
            if target is not None:
                if target.is_dir != entry.is_dir:
                    raise FileExistsError(errno.EEXIST, "File exists", dst)  # JdbcFs.rename
                if target.is_dir and self.children[dst]:
                    raise OSError(errno.ENOTEMPTY, "directory is not empty", dst)  # FsSqlDriver.removeDir
            cookie = self._cookie()
            flag = ["IN_ISDIR"] if entry.is_dir else []
            self._child_event(src, ["IN_MOVED_FROM", *flag], cookie=cookie)
            now = self._now_ms()
            if target is not None:
                # dCache's events for the replaced target are not emulated: it just goes.
                self._unlink(dst, now)
            src_parent, src_name = _split(src)
            dst_parent, dst_name = _split(dst)
            del self.children[src_parent][src_name]
            self._order.pop(src_parent, None)
            del self.entries[src]
            entry.path = dst
            self.entries[dst] = entry
            self.children[dst_parent][dst_name] = entry
            order = self._order.get(dst_parent)
            if order is not None:
                order.append(dst_name)
            if entry.is_dir:
                self._repath(src, dst)
            if src_parent == dst_parent:
                self._touch_dir(src_parent, now)
            else:
                links = 1 if entry.is_dir else 0
                self._touch_dir(src_parent, now, -links)
                self._touch_dir(dst_parent, now, links)
            self._child_event(dst, ["IN_MOVED_TO", *flag], cookie=cookie)
            self._self_event(entry.pnfsid, ["IN_MOVE_SELF", *flag])

    def overflow(self, directory: str) -> None:
        """Events were dropped for the watchers of ``directory`` (§5.5)."""
        with self.lock:
            self._self_event(self.entries[directory].pnfsid, ["IN_Q_OVERFLOW"], management=True)

    def drop_connections(self) -> None:
        """Cut every SSE stream, as a network failure would."""
        with self.lock:
            for channel in self.channels.values():
                if channel.conn is not None:
                    channel.conn.close()

    def blackhole(self) -> None:
        """A test hook modelling the network, not dCache: a firewall starts dropping every
        attached SSE connection's packets without a FIN or RST.

        Each connection stays open (its socket is not closed) and no byte is sent on it ever
        again; the channel still counts it as attached, so no expiry timer starts. Events keep
        going into the ring buffer with ids as usual. A later GET on the channel is served as
        always: COMPETING_CLIENT goes to the silent connection (nowhere), the new one gets the
        Last-Event-ID replay. The silent connection's handler thread blocks until the emulator
        stops, then exits without writing."""
        with self.lock:
            for channel in self.channels.values():
                if channel.conn is not None:
                    channel.conn.blackhole()

    def expire_channels(self) -> None:
        """Expire every channel now, as the GC timer would (§6)."""
        with self.lock:
            for channel in list(self.channels.values()):
                self.close_channel(channel)

    def restart(self) -> None:
        """A frontend restart: SHUTDOWN to connected clients, every channel lost (§6)."""
        with self.lock:
            for channel in list(self.channels.values()):
                if channel.conn is not None:
                    channel.conn.send(self.system_frame({"type": "SHUTDOWN"}))
                    channel.conn.close()
                    channel.conn = None
            self.channels.clear()  # their metronomes stop with them: the ticker only sees these

    def inject(self, raw: bytes, *, with_id: bool = True) -> None:
        """Send arbitrary bytes as a frame on every channel (malformed-input tests)."""
        with self.lock:
            for channel in self.channels.values():
                frame = raw
                if with_id:
                    frame = raw.replace(b"{ID}", str(channel.next_id).encode())
                    channel.backlog.append((channel.next_id, frame))
                    channel.next_id += 1
                if channel.conn is not None:
                    channel.conn.send(frame)

    # -- event delivery --------------------------------------------------------------------
    def _require_parent(self, path: str) -> None:
        parent = os.path.dirname(path) or "/"
        if parent not in self.entries or not self.entries[parent].is_dir:
            raise FileNotFoundError(parent)

    @staticmethod
    def _cookie() -> str:
        return base64.b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()

    @staticmethod
    def system_frame(data: dict[str, Any]) -> bytes:
        return b"event: SYSTEM\ndata: " + _json(data) + b"\n\n"

    def _child_event(self, path: str, mask: list[str], cookie: str | None = None) -> None:
        parent = self.entries.get(os.path.dirname(path) or "/")
        if parent is None:
            return
        payload: dict[str, Any] = {"name": os.path.basename(path)}
        if cookie is not None:
            payload["cookie"] = cookie
        payload["mask"] = mask
        self._deliver(parent.pnfsid, payload, mask[0])

    def _self_event(
        self, pnfsid: str, mask: list[str], *, closes: bool = False, management: bool = False
    ) -> None:
        self._deliver(pnfsid, {"mask": mask}, mask[0], management=management)
        if closes:
            for channel in list(self.channels.values()):
                for sub in list(channel.subs.values()):
                    if sub.pnfsid == pnfsid:
                        self.close_subscription(channel, sub)

    def _deliver(self, pnfsid: str, payload: dict[str, Any], flag: str, *, management: bool = False) -> None:
        for channel in list(self.channels.values()):
            for sub in list(channel.subs.values()):
                if sub.pnfsid != pnfsid or (not management and flag not in sub.flags):
                    continue
                self._queue(channel, "inotify", {"event": payload, "subscription": sub.url})
                if sub.oneshot:
                    self.close_subscription(channel, sub)

    def _queue(self, channel: _Channel, event_type: str, data: dict[str, Any]) -> None:
        # Channel.sendEvent: every plugin event takes the channel's next id.
        event_id = channel.next_id
        channel.next_id += 1
        frame = b"event: %s\nid: %d\ndata: %s\n\n" % (event_type.encode(), event_id, _json(data))
        channel.backlog.append((event_id, frame))  # buffered whether or not a client is attached
        if channel.conn is not None:
            channel.conn.send(frame)

    def _tick(self, channel: _Channel, tick: _Metronome) -> None:
        # Selector.sendEvents: the count is 1-based; after the count-th tick, CLOSE_STREAM.
        tick.ticks += 1
        message = tick.message.replace("${count}", str(tick.ticks))
        self._queue(channel, "metronome", {"event": message, "subscription": tick.url})
        if tick.count and tick.ticks >= tick.count:
            self.close_metronome(channel, tick)

    def add_metronome(
        self, channel: _Channel, selector: dict[str, Any], message: str, period: float, count: int
    ) -> str:
        """A new metronome subscription on ``channel`` (Metronome.select); returns its URL."""
        with self.lock:
            sid = str(uuid.uuid4())  # Selection's id: UUID.randomUUID()
            url = f"{channel.url}/subscriptions/metronome/{sid}"
            # Selection.startTicking: the first tick one period from now, then at a fixed rate.
            channel.metronomes[sid] = _Metronome(sid, url, selector, message, period, count, time.monotonic())
            if channel.conn is not None:
                channel.conn.send(self.system_frame({"type": "NEW_SUBSCRIPTION", "subscription": url}))
            self._tick_wake.set()
        return url

    def close_subscription(self, channel: _Channel, sub: _Subscription) -> None:
        channel.subs.pop(sub.sid, None)
        if channel.conn is not None:
            channel.conn.send(self.system_frame({"type": "SUBSCRIPTION_CLOSED", "subscription": sub.url}))
        self._queue(channel, "inotify", {"event": {"mask": ["IN_IGNORED"]}, "subscription": sub.url})

    def close_metronome(self, channel: _Channel, tick: _Metronome) -> None:
        # Channel.subscribe's onClose: SUBSCRIPTION_CLOSED to a connected client; IN_IGNORED is
        # inotify's, so nothing else.
        if channel.metronomes.pop(tick.sid, None) is None:
            return
        if channel.conn is not None:
            channel.conn.send(self.system_frame({"type": "SUBSCRIPTION_CLOSED", "subscription": tick.url}))

    def close_channel(self, channel: _Channel) -> None:
        self.channels.pop(channel.cid, None)
        if channel.conn is not None:
            for url in [s.url for s in channel.subs.values()] + [m.url for m in channel.metronomes.values()]:
                channel.conn.send(self.system_frame({"type": "SUBSCRIPTION_CLOSED", "subscription": url}))
            channel.conn.close()
        channel.subs.clear()
        channel.metronomes.clear()
        channel.backlog.clear()

    # -- stream ----------------------------------------------------------------------------
    def attach(self, channel: _Channel, last_event_id: str | None) -> _Connection:
        conn = _Connection()
        with self.lock:
            if channel.conn is not None:
                channel.conn.send(self.system_frame({"type": "COMPETING_CLIENT"}))
                channel.conn.close()
            channel.conn = conn
            channel.expires_at = None
            if last_event_id is not None:
                try:
                    wanted = int(last_event_id)
                except ValueError:
                    wanted = None  # an unparsable header is ignored (§6)
                if wanted is not None:
                    while channel.backlog and channel.backlog[0][0] != wanted:
                        channel.backlog.popleft()
                    if channel.backlog:
                        for _, frame in list(channel.backlog)[1:]:
                            conn.send(frame)
                    else:
                        conn.send(self.system_frame({"type": "EVENT_LOSS"}))
        return conn

    def detach(self, channel: _Channel, conn: _Connection) -> None:
        with self.lock:
            if channel.conn is conn:
                channel.conn = None
                if channel.cid in self.channels:
                    channel.expires_at = time.monotonic() + channel.timeout


class _TlsServer(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], handler: Any, context: ssl.SSLContext) -> None:
        super().__init__(address, handler)
        self._context = context

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        # The handshake happens in the handler thread (on first read), not in the accept loop.
        return self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("WebDAV door: connection from %s ended abruptly", client_address)


def _multistatus(href: str, is_dir: bool, size: int, mtime_ms: int) -> bytes:
    """A PROPFIND Depth 0 answer (RFC 4918 §9.1, §14.16): one response with the live properties
    a WebDAV door reports for a file or a collection.

    Written here rather than served by a WebDAV server library (wsgidav): the door must share this
    emulator's namespace, users and anonymous-read rule, and needs three read-only methods.
    webdavclient3 (what OSCAR's supervisor uses) reads only ``response/href`` and
    ``resourcetype`` from it (webdav3/client.py ``WebDavXmlUtils``)."""
    rtype = "<d:resourcetype><d:collection/></d:resourcetype>" if is_dir else "<d:resourcetype/>"
    modified = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(mtime_ms / 1000))
    length = "" if is_dir else f"<d:getcontentlength>{size}</d:getcontentlength>"
    xml = (
        '<?xml version="1.0" encoding="utf-8" ?><d:multistatus xmlns:d="DAV:"><d:response>'
        f"<d:href>{quote(href)}</d:href><d:propstat><d:prop>{rtype}{length}"
        f"<d:getlastmodified>{modified}</d:getlastmodified></d:prop>"
        "<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response></d:multistatus>"
    )
    return xml.encode()


def _error(status: int, detail: str | None = None) -> tuple[int, bytes]:
    phrase = HTTPStatus(status).phrase
    return status, _json({"status": str(status), "title": phrase, "detail": detail or phrase})


def _query_flag(query: dict[str, list[str]], name: str) -> bool:
    # A JAX-RS boolean @QueryParam: Boolean.valueOf of the first value ("true", any case).
    values = query.get(name) or [""]
    return values[0].lower() == "true"


def _java_int(text: str) -> int:
    if not _JAVA_INT.fullmatch(text):
        raise ValueError(text)
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:
        raise ValueError(text)
    return value


def _page_window(query: dict[str, list[str]]) -> tuple[int, int | None] | str:
    """(offset, limit) of a listing, or the 400's detail (FileResources.getFileAttributes)."""
    # Both are parsed before either's sign is checked; no limit means no limit (no maximum).
    try:
        offset = _java_int(query["offset"][0]) if "offset" in query else 0
        limit = _java_int(query["limit"][0]) if "limit" in query else None
    except ValueError:
        return "limit and offset must be an integer value."
    if offset < 0 or (limit is not None and limit < 0):
        return "limit and offset can not be less than zero."
    return offset, limit


def _attributes(entry: _Entry, optional: bool, name: str | None = None) -> dict[str, Any]:
    """NamespaceUtils.chimeraToJsonAttributes, for the attributes the emulator keeps.

    JsonFileAttributes omits unset members (NON_NULL); Jackson's member order is not reproduced
    (JSON objects are unordered)."""
    body: dict[str, Any] = {
        "pnfsId": entry.pnfsid,
        "nlink": entry.nlink,
        "mtime": entry.mtime,
        "creationTime": entry.creation_time,
        "size": entry.size,
        "mode": _DIR_MODE if entry.is_dir else _FILE_MODE,  # permission bits only
        "fileType": "DIR" if entry.is_dir else "REGULAR",
        "fileMimeType": _DIR_MIME if entry.is_dir else _FILE_MIME,
        "labels": [],  # JsonFileAttributes.getLabels: an empty set when there are none
    }
    if optional:
        # addAllOptionalAttributes: of its attributes only atime and ctime are emulated; access
        # latency, retention policy, ACL, owner, group, flags, HSM, storage info, locations,
        # checksums, storage and cache class and QoS are not.
        body["atime"] = entry.atime
        body["ctime"] = entry.ctime
    if name is not None:
        body["fileName"] = name  # FileResources sets it on children, never on the target
    return body


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"Non-standard token '{token}'")


def _metronome_selector(raw: Any, username: str) -> tuple[dict[str, Any], str, float, int] | str:
    """A metronome selector read as Metronome.deserialise and Selector.validationError do.

    Returns the 400's detail, or (the selector as GET shows it, the message with ${username}
    replaced, the period in seconds, the count)."""
    # Parse errors carry no "Bad selector: " prefix (Metronome.deserialise throws its own
    # BadRequestException) and come in document order. Only "Bad selector value: " and the
    # Unrecognized field "<name>" opening are upstream's text: Jackson's wording after them is
    # not emulated, nor is its leniency (it coerces numeric strings and nulls to numbers);
    # anything but the schema's types (selectors-schema.json) is refused here.
    if not isinstance(raw, dict):
        return "Bad selector value: a selector is a JSON object"
    frequency: float | None = None
    delay: float | None = None
    supplied: str | None = None
    count = 0
    for key, value in raw.items():
        if key in ("frequency", "delay", "count"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f'Bad selector value: "{key}" must be a number'
            if key == "frequency":
                frequency = float(value)
            elif key == "delay":
                delay = float(value)
            else:
                count = int(value)  # a Java long: Jackson drops a fraction (ACCEPT_FLOAT_AS_INT)
        elif key == "message":
            if not isinstance(value, str):
                return 'Bad selector value: "message" must be a string'
            supplied = value
        else:
            return f'Bad selector value: Unrecognized field "{key}"'
    message = _METRONOME_MESSAGE if supplied is None else supplied.replace("${username}", username)
    problem = None
    if frequency is None and delay is None:
        problem = 'either "frequency" or "delay" must be specified'
    elif frequency is not None and delay is not None:
        problem = '"frequency" and "delay" cannot both be specified'
    elif frequency is not None and frequency < _MIN_HZ:
        problem = f'"frequency" is too small (less than {_MIN_HZ_TEXT})'
    elif frequency is not None and frequency > _MAX_HZ:
        problem = f'"frequency" is too big (more than {_MAX_HZ_TEXT})'
    elif delay is not None and delay < _MIN_DELAY:
        problem = f'"delay" is too small (less than {_MIN_DELAY_TEXT})'
    elif delay is not None and delay > _MAX_DELAY:
        problem = f'"delay" is too big (more than {_MAX_DELAY_TEXT})'
    elif not message:
        problem = '"message" cannot be empty'
    elif count < 0:
        problem = '"count" must be non-negative'
    if problem is not None:
        return f"Bad selector: {problem}"  # EventResources.subscribe, BAD_SELECTOR
    seconds = delay if delay is not None else 1 / frequency  # type: ignore[operator]
    micros = math.floor(1_000_000 * seconds + 0.5)  # Selector.tickDelay: Math.round to µs
    # Selection.selector(): the Selector's getters with NON_NULL, in its field order: the
    # message as supplied (before ${username}), the count only when non-zero.
    stored: dict[str, Any] = {}
    if frequency is not None:
        stored["frequency"] = frequency
    if delay is not None:
        stored["delay"] = delay
    if supplied is not None:
        stored["message"] = supplied
    if count:
        stored["count"] = count
    return stored, message, micros / 1_000_000, count


def _make_handler(emu: DCacheEmulator, *, door: bool = False) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "dCache-emulator"

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s %s", self.address_string(), format % args)

        # -- plumbing ----------------------------------------------------------------------
        def _reply(
            self,
            status: int,
            body: bytes = b"",
            headers: dict[str, str] | None = None,
            ctype: str | None = None,
        ) -> None:
            # Like Jetty, consume an unread request body first, or a kept-alive connection
            # would parse it as the start of the next request.
            self._body()
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if body and ctype is None:
                ctype = "application/json"
            if ctype:
                self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def _fail(self, status: int, detail: str | None = None) -> None:
            self._reply(*_error(status, detail))

        def parse_request(self) -> bool:
            self._request_body: bytes | None = None  # one handler serves a whole kept-alive connection
            return super().parse_request()

        def _body(self) -> bytes:
            cached = self._request_body
            if cached is None:
                length = int(self.headers.get("Content-Length") or 0)
                cached = self._request_body = self.rfile.read(length) if length else b""
            return cached

        def _user(self) -> str | None:
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                try:
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    return None
                return user if emu.users.get(user) == password else None
            if header.startswith("Bearer "):
                return emu.tokens.get(header[7:].strip())
            query = parse_qs(urlsplit(self.path).query)
            if "authz" in query:
                return emu.tokens.get(query["authz"][0])
            return None

        def _base(self) -> str:
            return f"http://{self.headers.get('Host', '127.0.0.1')}"

        def _dispatch(self) -> None:
            split = urlsplit(self.path)
            path = unquote(split.path)
            if emu.before_request is not None:
                emu.before_request(self.command, path)
            with emu.lock:
                if emu.fail_next:
                    status = emu.fail_next.popleft()
                    emu.requests.append((self.command, path, status))
                    self._fail(status)
                    return
            if door or not path.startswith(_API):
                if emu.files_root is not None and self.command in ("GET", "HEAD"):
                    self._webdav_get(path)
                elif emu.files_root is not None and self.command == "PROPFIND":
                    self._webdav_propfind(path)
                else:
                    self._fail(404, "Not Found")
                return
            rest = path[len(_API) :]
            if rest == "/events" and self.command == "GET":
                body = {
                    "channels": {
                        "lifetimeWhenDisconnected": {"minimum": 1, "maximum": 86400, "default": 300},
                        "maximumPerUser": emu.max_channels_per_user,
                    }
                }
                self._reply(200, _json(body))
                return
            user = self._user()
            if user is None:
                # No JSON body from the authentication handler (§7).
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="dCache"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                emu.requests.append((self.command, path, 401))
                return
            if rest.startswith("/namespace"):
                self._namespace(
                    rest[len("/namespace") :] or "/", parse_qs(split.query, keep_blank_values=True)
                )
            elif rest.startswith("/events/channels"):
                self._channels(
                    rest[len("/events/channels") :], user, parse_qs(split.query, keep_blank_values=True)
                )
            elif rest == "/events/eventTypes":
                self._reply(200, _json(["inotify", "metronome"]))
            else:
                self._fail(404, "Not Found")

        do_GET = do_HEAD = do_POST = do_PATCH = do_DELETE = do_PROPFIND = _dispatch

        # -- WebDAV door (file contents) -----------------------------------------------------
        def _door_local(self, path: str) -> str | None:
            """The local file behind a door path, after the door's auth rule; None if answered."""
            # Anonymous reads are allowed (webdav.authz.anonymous-operations=READONLY); wrong
            # credentials are still refused, as the door does.
            if "Authorization" in self.headers and self._user() is None:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="dCache"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            assert emu.files_root is not None
            root = os.path.realpath(emu.files_root)
            local = os.path.realpath(os.path.join(root, path.lstrip("/")))
            if os.path.commonpath([root, local]) != root or not os.path.exists(local):
                self._reply(404, b"Not Found", ctype="text/plain")
                return None
            return local

        def _webdav_get(self, path: str) -> None:
            local = self._door_local(path)
            if local is None:
                return
            if not os.path.isfile(local):
                self._reply(404, b"Not Found", ctype="text/plain")
                return
            with open(local, "rb") as handle:
                body = handle.read()
            self._reply(200, body, ctype="application/octet-stream")

        def _webdav_propfind(self, path: str) -> None:
            local = self._door_local(path)
            if local is None:
                return
            stat = os.stat(local)
            body = _multistatus(path, os.path.isdir(local), stat.st_size, int(stat.st_mtime * 1000))
            self._reply(207, body, ctype='application/xml; charset="utf-8"')

        # -- namespace ---------------------------------------------------------------------
        def _namespace(self, path: str, query: dict[str, list[str]]) -> None:
            """FileResources.getFileAttributes: one object for ``path``, plus a page of children
            for a DIR (ChimeraNameSpaceProvider.list counts [offset, offset+limit) past . and ..)."""
            # {path} arrives percent-decoded (JAX-RS @PathParam; _dispatch unquotes), so a client
            # must percent-encode %, #, ? and spaces in names.
            path = path.rstrip("/") or "/"
            listing = _query_flag(query, "children")
            optional = _query_flag(query, "optional")
            status, body = 200, b""
            with emu.lock:
                entry = emu.entries.get(path)
                if entry is None:
                    status, body = _error(404, "Not Found")
                else:
                    attributes = _attributes(entry, optional)
                    # Only a DIR gets children; for a file the flag (and limit/offset) is ignored.
                    if entry.is_dir and listing:
                        window = _page_window(query)
                        if isinstance(window, str):
                            status, body = _error(400, window)
                        else:
                            attributes["children"] = [
                                _attributes(child, optional, name) for name, child in emu.page(path, *window)
                            ]
                    if status == 200:
                        body = _json(attributes)
            self._reply(status, body)

        # -- channels ----------------------------------------------------------------------
        def _channels(self, rest: str, user: str, query: dict[str, list[str]]) -> None:
            parts = [p for p in rest.split("/") if p]
            if not parts:
                if self.command == "GET":
                    self._list_channels(user, query)
                elif self.command == "POST":
                    self._create_channel(user)
                else:
                    self._fail(405, "Method Not Allowed")
                return
            with emu.lock:
                channel = emu.channels.get(parts[0])
            if channel is None:
                self._fail(404, "No such channel")
                return
            if channel.owner != user:
                self._fail(403)
                return
            if len(parts) == 1:
                self._channel(channel)
            else:
                self._subscriptions(channel, parts[1:])

        def _list_channels(self, user: str, query: dict[str, list[str]]) -> None:
            wanted = query.get("client-id", [None])[0]
            with emu.lock:
                urls = [
                    c.url
                    for c in emu.channels.values()
                    if c.owner == user and (wanted is None or c.client_id == wanted)
                ]
            self._reply(200, _json(urls))

        def _create_channel(self, user: str) -> None:
            raw = self._body()
            client_id = ""
            if raw:
                try:
                    client_id = str(json.loads(raw).get("client-id", ""))[:256]
                except (json.JSONDecodeError, AttributeError):
                    self._fail(400, "Supplied JSON is invalid")
                    return
            with emu.lock:
                if sum(1 for c in emu.channels.values() if c.owner == user) >= emu.max_channels_per_user:
                    self._fail(429)
                    return
                cid = _b64url(secrets.token_bytes(16))
                base = self._base()
                url = f"{base}{_API}/events/channels/{cid}"
                channel = _Channel(cid, url, base, user, client_id, emu.default_timeout)
                channel.backlog = deque(maxlen=emu.backlog)
                channel.expires_at = time.monotonic() + channel.timeout
                emu.channels[cid] = channel
            self._reply(201, headers={"Location": url})

        def _channel(self, channel: _Channel) -> None:
            if self.command == "DELETE":
                with emu.lock:
                    emu.close_channel(channel)
                self._reply(204)
            elif self.command == "PATCH":
                try:
                    timeout = int(json.loads(self._body())["timeout"])
                except (ValueError, KeyError, TypeError):
                    self._fail(400, "Supplied JSON is invalid")
                    return
                if timeout < 1:
                    self._fail(400, "Timeout shorter than minimum allowed")
                    return
                if timeout > 86400:
                    self._fail(400, "Timeout longer than maximum allowed")
                    return
                with emu.lock:
                    channel.timeout = timeout
                    if channel.conn is None:
                        channel.expires_at = time.monotonic() + timeout
                self._reply(204)
            elif self.command == "GET" and "text/event-stream" in self.headers.get("Accept", ""):
                self._stream(channel)
            elif self.command == "GET":
                self._reply(200, _json({"timeout": channel.timeout}))
            else:
                self._fail(405, "Method Not Allowed")

        def _stream(self, channel: _Channel) -> None:
            if emu.attach_delay:
                time.sleep(emu.attach_delay)  # the GET's arrival is not observable (§6)
            conn = emu.attach(channel, self.headers.get("Last-Event-ID"))
            started = False
            try:
                if not emu.delay_headers:
                    self._stream_headers()
                    started = True
                ended = False
                while not ended:
                    batch = [conn.frames.get()]
                    # Frames queued meanwhile go out in one chunk; chunk boundaries mean nothing in SSE.
                    while len(batch) < 512 and batch[-1] is not None:
                        try:
                            batch.append(conn.frames.get_nowait())
                        except queue.Empty:
                            break
                    if conn.blackholed:
                        # The network drops everything from here on, a close included: hold the
                        # socket, silently, until the emulator stops (no spinning, no bytes).
                        emu.wait_stopped()
                        return
                    ended = batch[-1] is None
                    chunk = b"".join(f for f in batch if f is not None)
                    if not chunk:
                        continue
                    if not started:
                        self._stream_headers()
                        started = True
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                if started:
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
            except OSError:
                pass  # the client went away: detected lazily, as dCache does (§6)
            finally:
                emu.detach(channel, conn)
                self.close_connection = True

        def _stream_headers(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()

        # -- subscriptions -----------------------------------------------------------------
        def _subscriptions(self, channel: _Channel, parts: list[str]) -> None:
            if parts == ["subscriptions"] and self.command == "GET":
                # Channel.getSubscriptions: every type's (a ConcurrentHashMap's values: no order).
                with emu.lock:
                    urls = [s.url for s in channel.subs.values()]
                    urls += [m.url for m in channel.metronomes.values()]
                self._reply(200, _json(urls))
                return
            if len(parts) == 2 and parts[0] == "subscriptions" and self.command == "POST":
                if parts[1] == "inotify":
                    self._subscribe(channel)
                elif parts[1] == "metronome":
                    self._subscribe_metronome(channel)
                else:
                    self._fail(400, f"Unknown event type: {parts[1]}")
                return
            if len(parts) == 3 and parts[0] == "subscriptions":
                # Channel.getSubscription: looked up by (event type, id).
                kind, sid = parts[1], parts[2]
                with emu.lock:
                    sub: _Subscription | _Metronome | None = None
                    if kind == "inotify":
                        sub = channel.subs.get(sid)
                    elif kind == "metronome":
                        sub = channel.metronomes.get(sid)
                if sub is None:
                    self._fail(
                        404, "No such subscription" if self.command == "GET" else "Subscription not found"
                    )
                elif self.command == "GET":
                    self._reply(200, _json(sub.selector))
                elif self.command == "DELETE":
                    with emu.lock:
                        if isinstance(sub, _Metronome):
                            emu.close_metronome(channel, sub)
                        else:
                            emu.close_subscription(channel, sub)
                    self._reply(204)
                else:
                    self._fail(405, "Method Not Allowed")
                return
            self._fail(404, "Not Found")

        def _subscribe_metronome(self, channel: _Channel) -> None:
            """Metronome.select then EventResources.subscribe: always a new subscription (201)."""
            raw = self._body()
            if not raw:
                self._fail(400, "Missing JSON entity in POST request")
                return
            try:
                # Jackson refuses NaN and Infinity, which Python's parser accepts.
                selector = json.loads(raw, parse_constant=_refuse_constant)
            except (json.JSONDecodeError, ValueError) as exc:
                self._fail(400, f"Supplied JSON is invalid: {exc}")
                return
            parsed = _metronome_selector(selector, channel.owner)
            if isinstance(parsed, str):
                self._fail(400, parsed)
                return
            url = emu.add_metronome(channel, *parsed)
            self._reply(201, headers={"Location": url})

        def _subscribe(self, channel: _Channel) -> None:
            raw = self._body()
            if not raw:
                self._fail(400, "Missing JSON entity in POST request")
                return
            try:
                selector = json.loads(raw)
            except json.JSONDecodeError as exc:
                self._fail(400, f"Supplied JSON is invalid: {exc}")
                return
            if not isinstance(selector, dict) or "path" not in selector:
                self._fail(500, "Internal error: java.lang.IllegalStateException: path was not specified")
                return
            unknown = [k for k in selector if k not in ("path", "flags")]
            if unknown:
                self._fail(400, f'Bad selector: Bad selector value: Unrecognized field "{unknown[0]}"')
                return
            flags = selector.get("flags")
            if flags is not None:
                bad = [f for f in flags if f not in SELECTOR_ORDER]
                if bad:
                    self._fail(
                        400,
                        f"Bad selector: Bad selector value: Cannot deserialize value of type AddWatchFlag "
                        f'from String "{bad[0]}"',
                    )
                    return
                unsupported = [f for f in flags if f in ("IN_DONT_FOLLOW", "IN_EXCL_UNLINK")]
                if unsupported:
                    self._fail(400, f"Bad selector: Unsupported flags: [{', '.join(unsupported)}]")
                    return
            path = selector["path"]
            with emu.lock:
                entry = emu.entries.get(path)
                if entry is None:
                    self._fail(400, f"Not found: Problem with path: {path}")
                    return
                if flags and "IN_ONLYDIR" in flags and not entry.is_dir:
                    self._fail(400, "Failed condition: IN_ONLYDIR with REGULAR target")
                    return
                selected: set[str] = set()
                for f in flags if flags is not None else ["IN_ALL_EVENTS"]:
                    selected.update(MACROS.get(f, (f,) if f in EVENT_FLAGS else ()))
                stored: dict[str, Any] = {"path": path}
                if flags is not None:
                    stored["flags"] = [f for f in SELECTOR_ORDER if f in set(flags)]
                sid = _b64url(bytes.fromhex(entry.pnfsid))
                url = f"{channel.url}/subscriptions/inotify/{sid}"
                existing = channel.subs.get(sid)
                sub = _Subscription(
                    sid,
                    url,
                    entry.pnfsid,
                    path,
                    stored,
                    frozenset(selected),
                    bool(flags and "IN_ONESHOT" in flags),
                )
                channel.subs[sid] = sub
                if existing is None and channel.conn is not None:
                    channel.conn.send(emu.system_frame({"type": "NEW_SUBSCRIPTION", "subscription": url}))
            self._reply(303 if existing else 201, headers={"Location": url})

    return Handler
