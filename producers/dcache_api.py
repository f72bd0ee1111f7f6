"""Client of dCache's events and namespace REST API (one injected requests.Session).

Follows shared/reference/dcache-events.md: 201/303 on subscribe with redirects off, the 8.2 and
pre-8.2 error bodies, 404 meaning the channel is gone, no read timeout on the SSE GET.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import requests

from dcnios.errors import ChannelGoneError, DCacheError
from dcnios.http import TrustedSession
from dcnios.secrets import CONTROL_CHARACTER, has_control_character, read_secret_file
from dcnios.spec import SourceSpec

__all__ = [
    "LIST_PAGE",
    "Child",
    "DCacheClient",
    "ListingUnstableError",
    "UnreadableListingError",
    "new_session",
    "url_path",
]

logger = logging.getLogger(__name__)
_CONNECT_TIMEOUT: Final = 10.0
#: Children per namespace request. dCache has no maximum (FileResources.java), but one response
#: for a directory of a million files would be hundreds of megabytes of JSON.
LIST_PAGE: Final = 10_000
#: Chimera lists children in no defined order (no ORDER BY in DirectoryStreamImpl.java), so
#: offsets move when entries come and go between pages. Pages overlap by this many entries,
#: and a listing whose pages do not join up is started again.
_LIST_OVERLAP: Final = 1_000
_LIST_ATTEMPTS: Final = 5
_METRONOME: Final = "/subscriptions/metronome/"


class ListingUnstableError(DCacheError):
    """A directory changed faster than its pages could be read, several times over."""


@dataclass(frozen=True, slots=True)
class Child:
    """One entry of a namespace listing: the fields dCache sends by default (NamespaceUtils.java).

    ``ctime`` is absent on purpose: dCache sends it only with ``optional=true``, and a rename
    keeps it anyway (FsSqlDriver.java rename), so it says nothing about arrival.
    """

    name: str
    is_dir: bool
    mtime: int
    pnfsid: str | None = None
    size: int | None = None


class UnreadableListingError(DCacheError):
    """A listing dCache answered with 200 that is not one: no use asking again."""

    def __init__(self, message: str, *, body: bytes) -> None:
        super().__init__(message, status=200)
        self.body = body


def _int(value: Any) -> int | None:
    # Bounded to 64 bits: SQLite and Avro hold no more, and a 5000-digit number is no time.
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    return None


def _child(entry: Any) -> Child | None:
    """One child entry, or None when it names nothing usable; bad attributes are dropped, not fatal.

    Names get the checks names from the stream get: a listing is no more trusted than a frame.
    """
    if not isinstance(entry, dict):
        return None
    name = entry.get("fileName")
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\x00" in name:
        return None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    pnfsid = entry.get("pnfsId")
    return Child(
        name,
        entry.get("fileType") == "DIR",
        _int(entry.get("mtime")) or 0,
        pnfsid if isinstance(pnfsid, str) else None,
        _int(entry.get("size")),
    )


def url_path(path: str) -> str:
    """A namespace path as a URL path: every segment percent-encoded (JAX-RS decodes it)."""
    return quote(path, safe="/")


def new_session(source: SourceSpec) -> requests.Session:
    """A session with the source's credentials and trust. TLS verification stays on."""
    session = TrustedSession()
    session.verify = source.ca_bundle or True
    auth = source.auth
    if auth is not None:
        if auth.username is not None and auth.password is not None:
            session.auth = (auth.username, auth.password.reveal())
        elif auth.cert is not None:
            session.cert = (auth.cert, auth.key) if auth.key else auth.cert
    session.headers["User-Agent"] = "dcnios-producer"
    return session


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason or str(response.status_code)
    if isinstance(body, dict):
        if "detail" in body:  # dCache >= 8.2
            return str(body["detail"])
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):  # before 8.2
            return str(errors[0].get("message", ""))
    return response.reason or str(response.status_code)


class DCacheClient:
    """Channels, subscriptions, the SSE stream and directory listings of one source."""

    def __init__(self, source: SourceSpec, session: requests.Session | None = None) -> None:
        self.source = source
        self.session = session or new_session(source)
        self.endpoint = source.endpoint
        #: Children per listing request (tests lower it to see paging on small directories).
        self.list_page_size = LIST_PAGE
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._load_token()

    # -- auth ------------------------------------------------------------------------------
    def _load_token(self) -> None:
        auth = self.source.auth
        if auth is None:
            return
        if auth.token is not None:
            self._token = auth.token.reveal()
        elif auth.token_file is not None:
            # Read as at load time: a rotated file that is huge, not a file, or holds a control
            # character (which requests would quote, token and all, in its error) is refused.
            try:
                token = read_secret_file(auth.token_file)
            except ValueError as exc:
                raise DCacheError(f"cannot read token_file {auth.token_file!r}: {exc}") from None
            if has_control_character(token):
                raise DCacheError(f"token_file {auth.token_file!r} {CONTROL_CHARACTER}")
            self._token = token

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        with self._token_lock:
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def request(
        self, method: str, url: str, *, what: str, stream: bool = False, **kwargs: Any
    ) -> requests.Response:
        """One call; a 401 with a token_file re-reads the file once (rotating tokens)."""
        read_timeout = kwargs.pop("read_timeout", None)
        if not stream:
            read_timeout = self.source.request_timeout
        timeout = (_CONNECT_TIMEOUT, read_timeout)
        headers = kwargs.pop("headers", None)
        for attempt in (1, 2):
            try:
                response = self.session.request(
                    method,
                    url,
                    headers=self._headers(headers),
                    timeout=timeout,
                    stream=stream,
                    allow_redirects=False,
                    **kwargs,
                )
            except requests.RequestException as exc:
                raise DCacheError(f"{what}: {type(exc).__name__}: {exc}", call=f"{method} {url}") from exc
            rotating = self.source.auth is not None and self.source.auth.token_file is not None
            if response.status_code == 401 and rotating and attempt == 1:
                response.close()
                logger.info("%s: 401, re-reading %s", what, self.source.auth.token_file)  # type: ignore[union-attr]
                self._load_token()
                continue
            return response
        raise AssertionError("unreachable")

    def _check(self, response: requests.Response, what: str, *ok: int) -> requests.Response:
        if response.status_code in ok:
            return response
        status, detail = response.status_code, _detail(response)
        call = f"{response.request.method} {response.url}"
        response.close()
        if status == 401:
            raise DCacheError(
                f"{what}: 401 Unauthorized: check sources[].auth for {self.source.name}",
                status=401,
                call=call,
            )
        if status == 404 and "/events/channels/" in call:
            raise ChannelGoneError(f"{what}: 404 {detail}", status=404, call=call)
        raise DCacheError(f"{what}: {status} {detail}", status=status, call=call)

    # -- channels --------------------------------------------------------------------------
    def max_channel_timeout(self) -> int:
        response = self._check(
            self.request("GET", f"{self.endpoint}/events", what="service metadata"), "service metadata", 200
        )
        try:
            return int(response.json()["channels"]["lifetimeWhenDisconnected"]["maximum"])
        except (KeyError, TypeError, ValueError):
            return 86400

    def find_channel(self, client_id: str) -> str | None:
        response = self.request(
            "GET", f"{self.endpoint}/events/channels", what="list channels", params={"client-id": client_id}
        )
        urls = self._check(response, "list channels", 200).json()
        return str(urls[0]) if urls else None

    def create_channel(self, client_id: str) -> str:
        response = self.request(
            "POST", f"{self.endpoint}/events/channels", what="create channel", json={"client-id": client_id}
        )
        location = self._check(response, "create channel", 201).headers.get("Location")
        if not location:
            raise DCacheError("create channel: 201 without a Location header")
        return location

    def channel_exists(self, channel_url: str) -> bool:
        response = self.request(
            "GET", channel_url, what="channel metadata", headers={"Accept": "application/json"}
        )
        if response.status_code == 404:
            response.close()
            return False
        self._check(response, "channel metadata", 200)
        return True

    def set_timeout(self, channel_url: str, seconds: int) -> None:
        response = self.request("PATCH", channel_url, what="set channel timeout", json={"timeout": seconds})
        self._check(response, "set channel timeout", 204)

    # -- subscriptions ---------------------------------------------------------------------
    def subscribe(self, channel_url: str, path: str, flags: list[str]) -> tuple[str, bool]:
        """Returns (subscription URL, created). 303 means merged into an existing watch."""
        response = self.request(
            "POST",
            f"{channel_url}/subscriptions/inotify",
            what=f"subscribe {path}",
            json={"path": path, "flags": flags},
        )
        self._check(response, f"subscribe {path}", 201, 303)
        location = response.headers.get("Location")
        if not location:
            raise DCacheError(f"subscribe {path}: {response.status_code} without a Location header")
        return location, response.status_code == 201

    def subscriptions(self, channel_url: str) -> list[str]:
        response = self.request("GET", f"{channel_url}/subscriptions", what="list subscriptions")
        return [str(u) for u in self._check(response, "list subscriptions", 200).json()]

    def subscribe_metronome(self, channel_url: str, delay: float) -> str:
        """A metronome subscription: dCache's own heartbeat; every POST creates a new one (201)."""
        response = self.request(
            "POST",
            f"{channel_url}/subscriptions/metronome",
            what="subscribe metronome",
            json={"delay": delay, "message": "dcnios"},
        )
        location = self._check(response, "subscribe metronome", 201).headers.get("Location")
        if not location:
            raise DCacheError("subscribe metronome: 201 without a Location header")
        return location

    @staticmethod
    def is_metronome(url: str) -> bool:
        return _METRONOME in url

    def selector(self, url: str) -> dict[str, Any]:
        response = self._check(self.request("GET", url, what="read subscription"), "read subscription", 200)
        body = response.json()
        if not isinstance(body, dict):
            raise DCacheError(f"read subscription {url}: not a JSON object")
        return body

    def unsubscribe(self, url: str) -> None:
        self._check(self.request("DELETE", url, what="unsubscribe"), "unsubscribe", 204, 404)

    # -- stream and namespace --------------------------------------------------------------
    def open_stream(
        self, channel_url: str, last_event_id: int | None, *, silence: float | None = None
    ) -> requests.Response:
        """The SSE GET; blocks until dCache sends headers, which may be at the first frame.

        ``silence`` is the longest wait for the next bytes (headers included) before the stream
        counts as dead; it is only safe with a heartbeat subscribed (dCache sends no keep-alive).
        """
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        response = self.request(
            "GET", channel_url, what="open event stream", stream=True, headers=headers, read_timeout=silence
        )
        return self._check(response, "open event stream", 200)

    def list_page(self, path: str, offset: int, limit: int) -> list[Child]:
        """One page of a directory's children, in dCache's (undefined) order."""
        response = self.request(
            "GET",
            f"{self.endpoint}/namespace{url_path(path)}",
            what=f"list {path}",
            params={"children": "true", "offset": str(offset), "limit": str(limit)},
        )
        checked = self._check(response, f"list {path}", 200)
        try:
            body = checked.json()
        except RecursionError:  # nesting 100,000 deep: hostile, and not a crash
            raise UnreadableListingError(f"list {path}: JSON nested too deep", body=checked.content) from None
        except ValueError as exc:
            raise UnreadableListingError(
                f"list {path}: the answer is not JSON: {str(exc)[:200]}", body=checked.content
            ) from None
        children = body.get("children") if isinstance(body, dict) else None
        if not isinstance(children, list):
            raise UnreadableListingError(
                f"list {path}: not a directory (the listing has no children)", body=checked.content
            )
        out = []
        for child in children:
            entry = _child(child)
            if entry is None:
                logger.warning(
                    "%s: list %s: skipping an unreadable entry %.200r", self.source.name, path, child
                )
                continue
            out.append(entry)
        return out

    def stat(self, path: str) -> Child | None:
        """``path``'s own attributes (the same default set a listing has); None when it is gone."""
        response = self.request("GET", f"{self.endpoint}/namespace{url_path(path)}", what=f"stat {path}")
        checked = self._check(response, f"stat {path}", 200, 404)
        if checked.status_code == 404:
            return None
        try:
            body = checked.json()
        except (ValueError, RecursionError):
            return None
        name = path.rsplit("/", 1)[-1]
        return _child({**body, "fileName": name}) if isinstance(body, dict) else None

    def iter_listing(self, path: str, page: int | None = None) -> Iterator[list[Child]]:
        """Every child of ``path``, page by page; a child may come twice, none is skipped.

        Pages overlap; when one does not contain the previous page's last entry, entries moved
        by more than the overlap while we read, and the listing starts over (pages already
        yielded stay yielded: the caller treats repeats as repeats).
        """
        page = page or self.list_page_size
        overlap = min(_LIST_OVERLAP, page // 10)
        for _attempt in range(_LIST_ATTEMPTS):
            offset, previous = 0, None
            while True:
                children = self.list_page(path, offset, page)
                names = {c.name for c in children}
                if previous and children and previous[-1].name not in names:
                    break
                fresh = children
                if previous:
                    seen = {c.name for c in previous}
                    fresh = [c for c in children if c.name not in seen]
                if fresh:
                    yield fresh
                if len(children) < page:
                    return
                previous, offset = children, offset + page - overlap
            logger.info("%s: listing shifted between pages; listing it again", path)
        raise ListingUnstableError(f"list {path}: the directory changed too fast to list in pages")
