"""Client of dCache's events and namespace REST API (one injected requests.Session).

Follows shared/reference/dcache-events.md: 201/303 on subscribe with redirects off, the 8.2 and
pre-8.2 error bodies, 404 meaning the channel is gone, no read timeout on the SSE GET.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Final

import requests

from dcnios.errors import ChannelGoneError, DCacheError
from dcnios.http import TrustedSession
from dcnios.spec import SourceSpec

__all__ = ["Child", "DCacheClient", "new_session"]

logger = logging.getLogger(__name__)
_CONNECT_TIMEOUT: Final = 10.0


@dataclass(frozen=True, slots=True)
class Child:
    name: str
    is_dir: bool
    mtime: int
    ctime: int


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
            with open(auth.token_file, encoding="utf-8") as fh:
                self._token = fh.read().strip()

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
        timeout = (_CONNECT_TIMEOUT, None) if stream else (_CONNECT_TIMEOUT, self.source.request_timeout)
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

    def delete_channel(self, channel_url: str) -> None:
        response = self.request("DELETE", channel_url, what="delete channel")
        self._check(response, "delete channel", 204, 404)

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

    def subscription_path(self, url: str) -> str:
        response = self._check(self.request("GET", url, what="read subscription"), "read subscription", 200)
        return str(response.json()["path"])

    # -- stream and namespace --------------------------------------------------------------
    def open_stream(self, channel_url: str, last_event_id: int | None) -> requests.Response:
        """The SSE GET; blocks until dCache sends headers, which may be at the first frame."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        response = self.request("GET", channel_url, what="open event stream", stream=True, headers=headers)
        return self._check(response, "open event stream", 200)

    def list_directory(self, path: str) -> list[Child]:
        response = self.request(
            "GET", f"{self.endpoint}/namespace{path}", what=f"list {path}", params={"children": "true"}
        )
        body = self._check(response, f"list {path}", 200).json()
        children = []
        for child in body.get("children", []):
            mtime = int(child.get("mtime") or 0)
            children.append(
                Child(
                    str(child["fileName"]),
                    child.get("fileType") == "DIR",
                    mtime,
                    int(child.get("ctime") or mtime),
                )
            )
        return children
