"""A lean HTTP/1.1 client for one origin and one kind of call: the consumer's ``POST``.

Written by hand, not taken from aiohttp, for a measured reason: on this hot path aiohttp spends
about 0.13 ms of CPU per call building its request and response objects (``ClientRequest``,
payload registry, auto headers, the multidict of headers), which is 40 % of the consumer's loop
at concurrency 64 (bench/NOTES.md); a protocol that writes one pre-formatted head and parses only
what the answer's classification needs costs a fraction of that. It does only this:

- keep-alive connections to one host, plain or TLS (verification on, with the given context);
- a request head written in one piece, with a ``Content-Length`` body;
- answers framed by ``Content-Length``, ``chunked``, or the connection's close (RFC 9112 §6.3),
  1xx interim answers skipped, the body kept up to a limit (the rest closes the connection);
- the answer's status and headers (names lower-cased).

Anything else (proxies, redirects, compression) is not needed here: the caller uses aiohttp when
a proxy is configured, and never follows redirects.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urlsplit

__all__ = ["Http1Answer", "Http1Error", "Http1Pool"]

_MAX_HEAD: Final = 64 << 10
_IDLE_MAX: Final = 256


class Http1Error(ConnectionError):
    """The peer broke the protocol or the connection before a whole answer."""


@dataclass(frozen=True, slots=True)
class Http1Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._answer: asyncio.Future[Http1Answer] | None = None
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._headers: dict[str, str] = {}
        self._framing = ""  # length | chunked | close
        self._remaining = 0
        self._body = bytearray()
        self._in_head = True
        self._chunk_state = "size"  # size | data | crlf | trailer
        self.reusable = True

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        answer = self._answer
        if answer is None or answer.done():
            return
        if not self._in_head and self._framing == "close":
            self._finish(reusable=False)
            return
        answer.set_exception(Http1Error(f"connection closed before a whole answer ({exc or 'EOF'})"))

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            # Bytes nobody asked for: the connection's state is unknown, so it is not reused.
            self.reusable = False
            if self.transport is not None:
                self.transport.close()
            return
        self._buffer += data
        try:
            self._parse()
        except Http1Error as exc:
            if not self._answer.done():
                self._answer.set_exception(exc)
            if self.transport is not None:
                self.transport.close()

    @property
    def answered(self) -> bool:
        """Whether any of the current answer has arrived (then a retry could repeat a call)."""
        return bool(self._status or self._body)

    # -- requests --------------------------------------------------------------------------
    async def request(self, head_and_body: bytes) -> Http1Answer:
        assert self.transport is not None
        self._reset()
        self._buffer.clear()
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(head_and_body)
        try:
            return await self._answer
        finally:
            self._answer = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- parsing ---------------------------------------------------------------------------
    def _parse(self) -> None:
        while self._in_head:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    raise Http1Error("answer head over 64 KiB")
                return
            head = bytes(self._buffer[:end]).decode("latin-1")
            del self._buffer[: end + 4]
            self._read_head(head)
        if self._framing == "length":
            take = min(self._remaining, len(self._buffer))
            self._keep(self._buffer[:take])
            del self._buffer[:take]
            self._remaining -= take
            if self._remaining == 0:
                self._finish(reusable=True)
        elif self._framing == "chunked":
            self._parse_chunks()
        else:  # until the connection closes
            self._keep(self._buffer)
            self._buffer.clear()

    def _read_head(self, head: str) -> None:
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise Http1Error(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise Http1Error(f"malformed header line: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            return  # an interim answer (100 Continue, 103): the real one follows
        self._in_head = False
        self._status = status
        self._headers = headers
        connection = headers.get("connection", "").lower()
        self.reusable = parts[0] == "HTTP/1.1" and "close" not in connection
        if status in (204, 304):
            self._framing, self._remaining = "length", 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._framing = "chunked"
        elif "content-length" in headers:
            try:
                self._remaining = int(headers["content-length"])
            except ValueError:
                raise Http1Error(f"bad Content-Length {headers['content-length'][:40]!r}") from None
            if self._remaining < 0:
                raise Http1Error("negative Content-Length")
            self._framing = "length"
        else:
            self._framing, self.reusable = "close", False
        if self._framing == "length" and self._remaining == 0:
            self._finish(reusable=self.reusable)

    def _parse_chunks(self) -> None:
        while True:
            if self._chunk_state == "size":
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    if len(self._buffer) > 1024:
                        raise Http1Error("chunk size line too long")
                    return
                size_text = bytes(self._buffer[:end]).split(b";", 1)[0].strip()
                del self._buffer[: end + 2]
                try:
                    self._remaining = int(size_text, 16)
                except ValueError:
                    raise Http1Error(f"bad chunk size {size_text[:20]!r}") from None
                self._chunk_state = "data" if self._remaining else "trailer"
            elif self._chunk_state == "data":
                take = min(self._remaining, len(self._buffer))
                self._keep(self._buffer[:take])
                del self._buffer[:take]
                self._remaining -= take
                if self._remaining:
                    return
                self._chunk_state = "crlf"
            elif self._chunk_state == "crlf":
                if len(self._buffer) < 2:
                    return
                if self._buffer[:2] != b"\r\n":
                    raise Http1Error("chunk not followed by CRLF")
                del self._buffer[:2]
                self._chunk_state = "size"
            else:  # trailer fields, then an empty line
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    if len(self._buffer) > _MAX_HEAD:
                        raise Http1Error("trailer over 64 KiB")
                    return
                del self._buffer[: end + 2]
                if end == 0:
                    self._finish(reusable=self.reusable)
                    return

    def _keep(self, data: bytes | bytearray) -> None:
        room = self._limit - len(self._body)
        if room > 0:
            self._body += data[:room]
        if len(data) > room:
            # More than the caller reads: answer now with what is kept, and drop the connection
            # rather than read the rest.
            self._finish(reusable=False)
            if self.transport is not None:
                self.transport.close()

    def _finish(self, *, reusable: bool) -> None:
        self.reusable = reusable and not self._buffer
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(Http1Answer(self._status, self._headers, bytes(self._body)))


class Http1Pool:
    """Connections to the origin of ``url``, reused while idle; at most ``_IDLE_MAX`` kept idle."""

    def __init__(
        self,
        url: str,
        *,
        tls: ssl.SSLContext | None,
        limit: int,
        connect_timeout: float | None = None,
        answer_timeout: float | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = tls if parts.scheme == "https" else None
        authority = parts.netloc.rsplit("@", 1)[-1]
        self._host_header = f"Host: {authority}\r\n".encode("latin-1")
        self._limit = limit
        # As requests' (connect, read) pair: a silent answer fails after answer_timeout, not after
        # both together, so a call to a hung server ends as soon as the blocking client's would.
        self._connect_timeout = connect_timeout
        self._answer_timeout = answer_timeout
        self._idle: deque[_Connection] = deque()

    async def _connection(self) -> tuple[_Connection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, True
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, protocol = await loop.create_connection(
                lambda: _Connection(self._limit),
                self.host,
                self.port,
                ssl=self.tls,
                server_hostname=self.host if self.tls is not None else None,
            )
        return protocol, False

    async def _exchange(self, conn: _Connection, payload: bytes) -> Http1Answer:
        async with asyncio.timeout(self._answer_timeout):
            return await conn.request(payload)

    def head(self, method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
        lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), self._host_header]
        for name, value in headers.items():
            if any(ch in value for ch in "\r\n\0") or any(ch in name for ch in "\r\n\0: "):
                raise ValueError(f"header {name!r} holds a control character")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(f"Content-Length: {len(body)}\r\n\r\n".encode("latin-1"))
        lines.append(body)
        return b"".join(lines)

    async def request(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Http1Answer:
        """One request and its answer (the caller bounds the time). A reused connection that the
        peer had closed before anything came back is retried once on a new one, as a fresh
        connection would have been used if the close had been seen first."""
        payload = self.head(method, target, headers, body)
        conn, reused = await self._connection()
        try:
            answer = await self._exchange(conn, payload)
        except Http1Error:
            conn.close()
            if not reused or conn.answered:
                raise
            conn, _ = await self._connection_new()
            try:
                answer = await self._exchange(conn, payload)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            conn.close()  # cancelled or timed out mid-answer: its state is unknown
            raise
        if conn.reusable and not conn.closed and len(self._idle) < _IDLE_MAX:
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    async def _connection_new(self) -> tuple[_Connection, bool]:
        self.close()  # the peer closed one idle connection: the others are likely closed too
        return await self._connection()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
