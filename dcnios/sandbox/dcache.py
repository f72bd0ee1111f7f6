"""An emulator of dCache's storage-events API (frontend ``/api/v1/events``) and namespace listing.

Written from shared/reference/dcache-events.md; section numbers below refer to it. It serves the
tests and ``dcnios sandbox``; the pipeline never imports it.

Faithful parts: frames byte for byte (§4.2), per-channel ids from 0 (§4.4), the 16383-event ring
buffer and the Last-Event-ID algorithm with EVENT_LOSS (§6), response headers withheld until the
first frame (§4.1, switchable), 201/303 subscribe (§5.3), 8.2 error bodies (§2.1), channel expiry
→ 404, COMPETING_CLIENT, SHUTDOWN, SUBSCRIPTION_CLOSED + IN_IGNORED, IN_Q_OVERFLOW, and
``GET /namespace{path}?children=true`` (§11).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
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


def _json(obj: Any) -> bytes:
    # Jackson's compact output: no spaces, raw UTF-8, '/' not escaped (§11).
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class _Entry:
    path: str
    is_dir: bool
    pnfsid: str
    size: int = 0
    mtime: int = 0
    ctime: int = 0


@dataclass
class _Subscription:
    sid: str
    url: str
    pnfsid: str
    path: str
    selector: dict[str, Any]
    flags: frozenset[str]
    oneshot: bool


class _Connection:
    """One attached SSE client: a queue of frames its handler thread writes out."""

    def __init__(self) -> None:
        self.frames: queue.Queue[bytes | None] = queue.Queue()
        self.closed = threading.Event()

    def send(self, frame: bytes) -> None:
        if not self.closed.is_set():
            self.frames.put(frame)

    def close(self) -> None:
        self.closed.set()
        self.frames.put(None)


@dataclass
class _Channel:
    cid: str
    url: str
    base: str  # scheme://host:port of the creating request: subscription URLs derive from it
    owner: str
    client_id: str
    timeout: int
    subs: dict[str, _Subscription] = field(default_factory=dict)
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
        self.entries: dict[str, _Entry] = {"/": self._entry("/", True)}
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
        targets = [self._server.serve_forever, self._reaper]
        if self._door is not None:
            targets.append(self._door.serve_forever)
        for target in targets:
            thread = threading.Thread(target=target, daemon=True, name=f"dcache-emu-{target.__name__}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self.lock:
            for channel in self.channels.values():
                if channel.conn is not None:
                    channel.conn.close()
        self._server.shutdown()
        self._server.server_close()
        if self._door is not None:
            self._door.shutdown()
            self._door.server_close()

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

    # -- ids -------------------------------------------------------------------------------
    @staticmethod
    def _pnfsid() -> str:
        return "0000" + secrets.token_hex(16).upper()

    def _now_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_offset_ms

    def _entry(self, path: str, is_dir: bool, size: int = 0) -> _Entry:
        now = self._now_ms()
        return _Entry(path, is_dir, self._pnfsid(), size, now, now)

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
            self.entries[path] = self._entry(path, True)
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
            self.entries[path] = self._entry(path, False, 0)
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
                entry = self.entries[path] = self._entry(path, False, size)
            entry.size, entry.mtime = size, self._now_ms()
            self._child_event(path, ["IN_ATTRIB"])
            self._child_event(path, ["IN_CLOSE_WRITE"])

    def srm_upload(self, path: str, size: int = 1024) -> None:
        """An upload-directory commit (SRM, xroot POSC): a lone IN_MOVED_TO with a cookie."""
        with self.lock:
            self._require_parent(path)
            self.entries[path] = self._entry(path, False, size)
            self._child_event(path, ["IN_MOVED_TO"], cookie=self._cookie())

    def put_silently(self, path: str, size: int = 1024, *, directory: bool = False) -> None:
        """A file (or directory) appears with no event at all (as during a gap)."""
        with self.lock:
            self._require_parent(path)
            self.entries[path] = self._entry(path, directory, size)

    def rm(self, path: str) -> None:
        with self.lock:
            entry = self.entries.pop(path)
            flag = ["IN_ISDIR"] if entry.is_dir else []
            if entry.is_dir:
                prefix = path.rstrip("/") + "/"
                for child in [p for p in self.entries if p.startswith(prefix)]:
                    del self.entries[child]
            self._child_event(path, ["IN_DELETE", *flag])
            self._self_event(entry.pnfsid, ["IN_DELETE_SELF", *flag], closes=True)

    def mv(self, src: str, dst: str) -> None:
        with self.lock:
            entry = self.entries.pop(src)
            cookie = self._cookie()
            flag = ["IN_ISDIR"] if entry.is_dir else []
            self._child_event(src, ["IN_MOVED_FROM", *flag], cookie=cookie)
            entry.path, entry.ctime = dst, self._now_ms()
            self.entries[dst] = entry
            if entry.is_dir:
                prefix = src.rstrip("/") + "/"
                for old in [p for p in self.entries if p.startswith(prefix)]:
                    moved = self.entries.pop(old)
                    moved.path = dst.rstrip("/") + "/" + old[len(prefix) :]
                    self.entries[moved.path] = moved
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
            self.channels.clear()

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
                self._queue(channel, {"event": payload, "subscription": sub.url})
                if sub.oneshot:
                    self.close_subscription(channel, sub)

    def _queue(self, channel: _Channel, data: dict[str, Any]) -> None:
        event_id = channel.next_id
        channel.next_id += 1
        frame = b"event: inotify\nid: " + str(event_id).encode() + b"\ndata: " + _json(data) + b"\n\n"
        channel.backlog.append((event_id, frame))  # buffered whether or not a client is attached
        if channel.conn is not None:
            channel.conn.send(frame)

    def close_subscription(self, channel: _Channel, sub: _Subscription) -> None:
        channel.subs.pop(sub.sid, None)
        if channel.conn is not None:
            channel.conn.send(self.system_frame({"type": "SUBSCRIPTION_CLOSED", "subscription": sub.url}))
        self._queue(channel, {"event": {"mask": ["IN_IGNORED"]}, "subscription": sub.url})

    def close_channel(self, channel: _Channel) -> None:
        self.channels.pop(channel.cid, None)
        if channel.conn is not None:
            for sub in channel.subs.values():
                channel.conn.send(self.system_frame({"type": "SUBSCRIPTION_CLOSED", "subscription": sub.url}))
            channel.conn.close()
        channel.subs.clear()
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
                self._namespace(rest[len("/namespace") :] or "/", parse_qs(split.query))
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
            path = path.rstrip("/") or "/"
            with emu.lock:
                entry = emu.entries.get(path)
                if entry is None:
                    self._fail(404, "Not Found")
                    return
                body: dict[str, Any] = {
                    "fileType": "DIR" if entry.is_dir else "REGULAR",
                    "pnfsId": entry.pnfsid,
                    "size": entry.size,
                    "mtime": entry.mtime,
                    "ctime": entry.ctime,
                }
                if entry.is_dir and query.get("children") == ["true"]:
                    prefix = path.rstrip("/") + "/"
                    body["children"] = [
                        {
                            "fileName": p[len(prefix) :],
                            "fileType": "DIR" if e.is_dir else "REGULAR",
                            "pnfsId": e.pnfsid,
                            "size": e.size,
                            "mtime": e.mtime,
                            "ctime": e.ctime,
                        }
                        for p, e in sorted(emu.entries.items())
                        if p.startswith(prefix) and "/" not in p[len(prefix) :] and p != path
                    ]
            self._reply(200, _json(body))

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
                with emu.lock:
                    urls = [s.url for s in channel.subs.values()]
                self._reply(200, _json(urls))
                return
            if len(parts) == 2 and parts[0] == "subscriptions" and self.command == "POST":
                if parts[1] != "inotify":
                    self._fail(400, f"Unknown event type: {parts[1]}")
                    return
                self._subscribe(channel)
                return
            if len(parts) == 3 and parts[0] == "subscriptions":
                with emu.lock:
                    sub = channel.subs.get(parts[2])
                if sub is None:
                    self._fail(
                        404, "No such subscription" if self.command == "GET" else "Subscription not found"
                    )
                elif self.command == "GET":
                    self._reply(200, _json(sub.selector))
                elif self.command == "DELETE":
                    with emu.lock:
                        emu.close_subscription(channel, sub)
                    self._reply(204)
                else:
                    self._fail(405, "Method Not Allowed")
                return
            self._fail(404, "Not Found")

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
