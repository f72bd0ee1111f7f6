"""``POST /job|run/{service}`` from the event loop: the consumer's hot path.

The blocking ``OscarInvoker`` keeps everything else OSCAR answers (the service definition, the
token, job listings, logs, ``/health``): those calls are rare, and run in a worker thread when
the loop needs one. Invocations do not go through requests: a requests call costs about 1 ms of
CPU here (an environment scan and a ``~/.netrc`` lookup per call, and a thread hand-off each way).
They go through a lean HTTP/1.1 connection pool (http1.py), or through aiohttp when a session is
given or the environment names a proxy for OSCAR. Each answer is classified by
``answer_attempt``, the same function the blocking client uses, so all three decide alike.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from typing import Final
from urllib.parse import urlsplit

import aiohttp
import certifi
from requests.utils import get_environ_proxies

from dcnios.aio import in_daemon_thread
from dcnios.consumers.http1 import Http1Error, Http1Pool
from dcnios.consumers.oscar import (
    ANSWER_BYTES,
    Attempt,
    OscarInvoker,
    answer_attempt,
    refused_everywhere,
    token_failure,
)
from dcnios.errors import OscarError

__all__ = ["OscarCalls", "tls_context"]

_READ_CHUNK: Final = 8192


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Verification on, against the spec's CA bundle, else certifi's (what requests trusts), so
    both clients accept and refuse the same certificates."""
    return ssl.create_default_context(cafile=ca_bundle or certifi.where())


class OscarCalls:
    """Invocations of one service, on the running event loop; ``await close()`` when done.

    A session passed in is used as it is (its connector, trust and headers are the caller's) and
    is not closed here; otherwise one is built with ``concurrency`` connections and the spec's
    ``ca_bundle``. Proxies come from the environment, as for requests.
    """

    def __init__(
        self, invoker: OscarInvoker, *, concurrency: int, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.invoker = invoker
        self.spec = invoker.spec
        self._given = session
        self._session = session
        self._concurrency = max(concurrency, 1)
        self._success = 201 if self.spec.mode == "async" else 200
        # Resolved once: requests resolves it on every call (part of its per-call cost).
        self._proxy = get_environ_proxies(invoker.url).get(invoker.url.split(":", 1)[0])
        self._budget = float(self.spec.connect_timeout) + float(self.spec.timeout)
        self._pool: Http1Pool | None = None
        self._target = urlsplit(invoker.url).path or "/"

    def _lean(self) -> Http1Pool | None:
        """The lean pool, unless a session was given or a proxy must be used."""
        if self._given is not None or self._proxy:
            return None
        if self._pool is None:
            https = self.invoker.url.startswith("https:")
            self._pool = Http1Pool(
                self.invoker.url,
                tls=tls_context(self.spec.ca_bundle) if https else None,
                limit=ANSWER_BYTES,
                connect_timeout=float(self.spec.connect_timeout),
                answer_timeout=float(self.spec.timeout),
            )
        return self._pool

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._concurrency,
                ssl=tls_context(self.spec.ca_bundle) if self.invoker.url.startswith("https:") else False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=float(self.spec.connect_timeout),
                    sock_read=float(self.spec.timeout),
                ),
                # No netrc and no proxy lookups per call: the token is the only credential sent.
                trust_env=False,
                auto_decompress=True,
            )
        return self._session

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
            await asyncio.sleep(0)  # closing a transport completes on the loop's next turn
        if self._session is not None and self._given is None:
            await self._session.close()
        self._session = self._given

    async def _token(self) -> tuple[str, int]:
        known = self.invoker.cached_token()
        if known is not None:
            return known
        return await in_daemon_thread("oscar-token", self.invoker.token)

    async def invoke(self, body: bytes, headers: dict[str, str]) -> Attempt:
        """One call, with one token refetch after a 401; never raises for what OSCAR answers."""
        try:
            token, generation = await self._token()
        except OscarError as exc:
            # Fetching the token is part of the call: OSCAR down at start is an outage, not a bug.
            return token_failure("token fetch", exc)
        attempt = await self._post(body, headers, token)
        if attempt.status == 401:
            try:
                refreshed = await in_daemon_thread(
                    "oscar-token", functools.partial(self.invoker.refresh_token, generation)
                )
            except OscarError as exc:
                return token_failure("token refresh", exc)
            if refreshed:
                token, _ = await self._token()
                attempt = await self._post(body, headers, token)
        return refused_everywhere(attempt)

    async def _post(self, body: bytes, headers: dict[str, str], token: str) -> Attempt:
        all_headers = {"Content-Type": "application/json", **headers, "Authorization": f"Bearer {token}"}
        pool = self._lean()
        try:
            # The call's timeout bounds the whole answer, not each read of it: a peer that
            # trickles its answer a byte at a time is cut at the same budget as a silent one.
            async with asyncio.timeout(self._budget):
                if pool is not None:
                    answer = await pool.request("POST", self._target, all_headers, body)
                    status, content = answer.status, answer.body
                    location, retry_after = answer.headers.get("location"), answer.headers.get("retry-after")
                else:
                    status, content, location, retry_after = await self._post_aiohttp(body, all_headers)
        except TimeoutError:
            return Attempt(
                False, None, True, f"timeout: the answer took over {self.spec.timeout}s", system=True
            )
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            return Attempt(False, None, True, f"TLS: {exc}", system=True, outage="tls")
        except ValueError as exc:
            # A header that cannot be sent (a fetched token with a line break): every call alike.
            return Attempt(False, None, True, f"request not sent: {exc}", outage="auth")
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, Http1Error, OSError) as exc:
            return Attempt(False, None, True, f"connection error: {exc!r}", system=True)
        except aiohttp.ClientError as exc:
            return Attempt(False, None, True, f"{type(exc).__name__}: {exc}")
        return answer_attempt(
            status,
            content,
            location=location,
            retry_after=retry_after,
            path=self.invoker.path,
            success=self._success,
            job_named="X-Delegated-Job-ID" in headers,
        )

    async def _post_aiohttp(
        self, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, str | None, str | None]:
        async with self._open().post(
            self.invoker.url, data=body, headers=headers, allow_redirects=False, proxy=self._proxy
        ) as response:
            content = await _read_bounded(response, ANSWER_BYTES)
            return (
                response.status,
                content,
                response.headers.get("Location"),
                response.headers.get("Retry-After"),
            )


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body. A body not read to its end closes its connection,
    so the next call on it does not read this answer's rest."""
    kept: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(_READ_CHUNK)
        if not chunk:
            return b"".join(kept)
        kept.append(chunk)
        size += len(chunk)
    if not response.content.at_eof():
        response.close()
    return b"".join(kept)[:limit]
