"""The OSCAR API as dcnios uses it: invocations, the service definition, job listings and logs.

Follows shared/reference/oscar-api.md. ``POST /job/{service}`` succeeds with 201 and an empty
body, ``POST /run/{service}`` with 200 (§1, §4); nothing else counts, and redirects are never
followed (a 301 would turn the POST into a GET, a 307 re-POSTs without the token). A repeated
``X-Delegated-Job-ID`` answers 500 ``jobs.batch "<name>" already exists`` (§4.1 step 14): the job
exists. ``/system/*`` takes Basic (cluster admin) or an OIDC bearer (§2.1).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import requests
import urllib3
from requests.adapters import HTTPAdapter

from dcnios.errors import NoDCacheInputError, OscarError
from dcnios.http import TrustedSession
from dcnios.spec import OscarSpec

__all__ = [
    "DCACHE_PROVIDER",
    "Answer",
    "Attempt",
    "OscarInvoker",
    "OscarUnreachableError",
    "ServiceInput",
    "answer_attempt",
    "refused_everywhere",
    "retry_after_seconds",
    "service_input",
    "token_failure",
]

logger = logging.getLogger(__name__)
_ALREADY_EXISTS: Final = "already exists"
DCACHE_PROVIDER: Final = "webdav.dcache"
#: What OSCAR itself answers when it, or the cluster under it, is failing as a whole (§4.2: 500 is
#: the Kubernetes API's error text; 502-504 come from the ingress when the manager is down).
_SYSTEM_STATUSES: Final = frozenset({500, 502, 503, 504})
#: The most of an answer that is read. OSCAR's answers to a call are a few bytes to a few hundred
#: (an error text); a job listing page a few hundred KB; of a job's log only the end is kept.
ANSWER_BYTES: Final = 64 << 10
_LISTING_BYTES: Final = 16 << 20
_LOG_TAIL_BYTES: Final = 64 << 10


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one HTTP attempt, classified once.

    ``exists``: OSCAR already has a job of this name (a replay of a deterministic id).
    ``system``: OSCAR as a whole failed (connection refused, 5xx): a circuit-breaker signal, not
    a fault of this record.
    ``outage``: a failure no record causes and no retry of it fixes, so every call is held at
    once: ``"auth"`` (the credentials are refused even after a token refetch, or the service does
    not exist) or ``"tls"`` (the certificate cannot be verified).
    """

    ok: bool
    status: int | None
    retryable: bool
    error: str
    retry_after: float | None = None
    exists: bool = False
    system: bool = False
    outage: str | None = None


class _TooSlow(Exception):
    pass


class OscarUnreachableError(OscarError):
    """No answer from OSCAR, or not in time: an outage, not a configuration error."""


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer read within its bounds: the status, and at most so many bytes of the body."""

    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; ValueError for anything else (too deep included)."""
        try:
            return json.loads(self.body)
        except RecursionError:
            raise ValueError("JSON nested too deep") from None


def _read_bounded(response: requests.Response, limit: int, deadline: float, *, tail: bool = False) -> bytes:
    """At most ``limit`` bytes of a streamed body (its end with ``tail``), by ``deadline``.

    requests' read timeout bounds each read of the socket, not the whole body: a peer that
    trickles one byte a second never trips it, and a body read with ``.content`` is held in
    memory whole, however large. ``read1`` returns whatever one read brings, so the deadline is
    checked whenever bytes arrive. A body not read to its end closes its connection; one read to
    its end gives the connection back to the pool.
    """
    kept: deque[bytes] = deque()
    size = 0
    complete = False
    try:
        while True:
            if time.monotonic() > deadline:
                raise _TooSlow
            try:
                chunk = response.raw.read1(8192, decode_content=True)
            except urllib3.exceptions.ReadTimeoutError as exc:
                # Read from raw, so requests does not translate urllib3's errors: done here, so
                # callers see the exceptions they handle for every other failed call.
                raise requests.exceptions.ReadTimeout(str(exc)) from exc
            except urllib3.exceptions.HTTPError as exc:
                raise requests.exceptions.ConnectionError(str(exc)) from exc
            if not chunk:
                complete = True
                break
            kept.append(chunk)
            size += len(chunk)
            while tail and size - len(kept[0]) >= limit:
                size -= len(kept.popleft())
            if not tail and size >= limit:
                break
    finally:
        if complete:
            response.raw.release_conn()
        else:
            response.close()
    body = b"".join(kept)
    return body[-limit:] if tail else body[:limit]


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class ServiceInput:
    """The service's dCache input: provider and path (oscar-api.md §7)."""

    provider: str
    path: str


def service_input(definition: dict[str, Any]) -> ServiceInput | None:
    """The input the supervisor stages dCache events from: the first ``webdav.dcache`` entry.

    faas-supervisor matches the provider exactly (``events/__init__.py`` ``_parse_dcache_event``:
    the first input whose ``storage_provider`` is ``webdav.dcache``; the id ``dcache`` is
    hard-coded), so a ``webdav.<other>`` input is never used for a dCache event.
    """
    for entry in definition.get("input") or ():
        if isinstance(entry, dict) and entry.get("storage_provider") == DCACHE_PROVIDER:
            path = entry.get("path")
            if isinstance(path, str):
                return ServiceInput(DCACHE_PROVIDER, "/" + path.strip("/"))
    return None


class OscarInvoker:
    """Thread-safe; one per consumer process.

    A session passed in is used as it is (its adapters, trust and headers are the caller's);
    otherwise one is built with a connection pool of ``pool_size`` and the spec's ``ca_bundle``.
    """

    def __init__(self, spec: OscarSpec, pool_size: int, session: requests.Session | None = None) -> None:
        self.spec = spec
        if session is None:
            session = TrustedSession()
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(pool_size, 1), max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.verify = spec.ca_bundle or True
        self.session = session
        self.base = spec.endpoint.rstrip("/")
        self.path = f"/{'job' if spec.mode == 'async' else 'run'}/{spec.service}"
        self.url = self.base + self.path
        self._success = 201 if spec.mode == "async" else 200
        self._lock = threading.Lock()
        self._token: str | None = spec.token.reveal() if spec.token is not None else None
        self._token_generation = 0

    # -- /system/* -------------------------------------------------------------------------
    def _system_auth(self) -> tuple[dict[str, str], tuple[str, str] | None]:
        if self.spec.username is not None and self.spec.password is not None:
            return {}, (self.spec.username, self.spec.password.reveal())
        if self.spec.oidc_token is not None:
            return {"Authorization": f"Bearer {self.spec.oidc_token.reveal()}"}, None
        raise OscarError(
            f"no OSCAR credentials for /system/{self.spec.service} (give username/password or oidc_token)"
        )

    def system_get(
        self,
        path: str,
        params: dict[str, str] | None = None,
        timeout: float = 30,
        *,
        limit: int = _LISTING_BYTES,
        tail: bool = False,
    ) -> Answer:
        """GET ``/system/<path>``, at most ``limit`` bytes within ``timeout`` in all; raises
        OscarError naming the call on anything but 200."""
        return self._system("GET", path, (200,), params=params, timeout=timeout, limit=limit, tail=tail)

    def _system(
        self,
        method: str,
        path: str,
        ok: tuple[int, ...],
        *,
        params: dict[str, str] | None = None,
        timeout: float = 30,
        limit: int = ANSWER_BYTES,
        tail: bool = False,
    ) -> Answer:
        headers, auth = self._system_auth()
        call = f"{method} /system/{path}"
        deadline = time.monotonic() + float(self.spec.connect_timeout) + timeout
        try:
            response = self.session.request(
                method,
                f"{self.base}/system/{path}",
                params=params,
                headers=headers,
                auth=auth,
                timeout=(float(self.spec.connect_timeout), timeout),
                allow_redirects=False,
                stream=True,
            )
            answer = Answer(response.status_code, _read_bounded(response, limit, deadline, tail=tail))
        except (requests.RequestException, _TooSlow) as exc:
            why = "too slow" if isinstance(exc, _TooSlow) else type(exc).__name__
            raise OscarUnreachableError(
                f"{call}: OSCAR unreachable at {self.base} ({why})", call=call
            ) from exc
        if answer.status not in ok:
            raise OscarError(
                f"{call}: HTTP {answer.status} {answer.text[:200]}".rstrip(), status=answer.status, call=call
            )
        return answer

    def service_definition(self) -> dict[str, Any]:
        response = self.system_get(f"services/{self.spec.service}")
        try:
            definition = response.json()
        except ValueError as exc:
            raise OscarError(f"GET /system/services/{self.spec.service}: not JSON") from exc
        if not isinstance(definition, dict):
            raise OscarError(f"GET /system/services/{self.spec.service}: not a service definition")
        return definition

    def input_path(self) -> str:
        """The dCache directory the service stages from: the spec's, else the service's own."""
        if self.spec.input_path is not None:
            return self.spec.input_path
        found = service_input(self.service_definition())
        if found is None:
            raise NoDCacheInputError(
                f"OSCAR service {self.spec.service} has no webdav.dcache input, so its supervisor "
                "cannot stage dCache files: add `input: [{storage_provider: webdav.dcache, path: "
                "<dir>}]` to its FDL, set oscar.input_path, or use payload: record"
            )
        return found.path

    def delete_job(self, job: str) -> None:
        """``DELETE /system/logs/{service}/{job}`` (§3): 204."""
        self._system("DELETE", f"logs/{self.spec.service}/{job}", (200, 204))

    def job_log(self, job: str) -> str:
        """The end of a job's log (a job may log gigabytes; the DLQ keeps its tail)."""
        return self.system_get(f"logs/{self.spec.service}/{job}", limit=_LOG_TAIL_BYTES, tail=True).text

    def list_jobs(self, page: str | None = None) -> dict[str, Any]:
        """One page of ``GET /system/logs/{service}`` (§3.3)."""
        response = self.system_get(f"logs/{self.spec.service}", params={"page": page} if page else None)
        try:
            body = response.json() if response.body else {}
        except ValueError as exc:
            raise OscarError(f"GET /system/logs/{self.spec.service}: not JSON") from exc
        return body if isinstance(body, dict) else {}

    def healthy(self) -> bool:
        """``GET /health`` answers 200 ``Ok`` (§3), without credentials."""
        deadline = time.monotonic() + float(self.spec.connect_timeout) + 10
        try:
            response = self.session.get(
                f"{self.base}/health",
                timeout=(float(self.spec.connect_timeout), 10),
                allow_redirects=False,
                stream=True,
            )
            _read_bounded(response, ANSWER_BYTES, deadline)
        except (requests.RequestException, _TooSlow):
            return False
        return response.status_code == 200

    # -- token -----------------------------------------------------------------------------
    def cached_token(self) -> tuple[str, int] | None:
        """The token and its generation when one is known: no call to OSCAR."""
        with self._lock:
            return None if self._token is None else (self._token, self._token_generation)

    def token(self) -> tuple[str, int]:
        with self._lock:
            if self._token is None:
                self._token = self._fetch_token()
                self._token_generation += 1
            return self._token, self._token_generation

    def refresh_token(self, seen_generation: int) -> bool:
        """Re-fetch after a 401 (OSCAR <= 3.7 rotates tokens on update). False if not possible."""
        if self.spec.username is None and self.spec.oidc_token is None:
            return False
        with self._lock:
            if self._token_generation == seen_generation:  # another thread may have refreshed already
                self._token = self._fetch_token()
                self._token_generation += 1
        logger.info("re-fetched the token of OSCAR service %s", self.spec.service)
        return True

    def _fetch_token(self) -> str:
        # Through our own session, not oscar-python's Client: that opens a connection per call and
        # passes bool(ssl) to requests, which drops a private ca_bundle.
        token = self.service_definition().get("token")
        if not isinstance(token, str) or not token:
            raise OscarError(f"GET /system/services/{self.spec.service}: the definition holds no token")
        return token

    # -- invocation ------------------------------------------------------------------------
    def invoke(self, body: bytes, headers: dict[str, str]) -> Attempt:
        try:
            token, generation = self.token()
        except OscarError as exc:
            # Fetching the token is part of the call: OSCAR down at start is an outage, not a bug.
            return token_failure("token fetch", exc)
        attempt = self._post(body, headers, token)
        if attempt.status == 401:
            try:
                refreshed = self.refresh_token(generation)
            except OscarError as exc:
                return token_failure("token refresh", exc)
            if refreshed:
                token, _ = self.token()
                attempt = self._post(body, headers, token)
        return refused_everywhere(attempt)

    def _post(self, body: bytes, headers: dict[str, str], token: str) -> Attempt:
        all_headers = {"Content-Type": "application/json", **headers, "Authorization": f"Bearer {token}"}
        # The call's timeout bounds the whole answer too, not only each read of it.
        deadline = time.monotonic() + float(self.spec.connect_timeout) + float(self.spec.timeout)
        try:
            response = self.session.post(
                self.url,
                data=body,
                headers=all_headers,
                timeout=(float(self.spec.connect_timeout), float(self.spec.timeout)),
                allow_redirects=False,
                stream=True,
            )
            content = _read_bounded(response, ANSWER_BYTES, deadline)
        except _TooSlow:
            return Attempt(
                False, None, True, f"timeout: the answer took over {self.spec.timeout}s", system=True
            )
        except requests.exceptions.SSLError as exc:
            return Attempt(False, None, True, f"TLS: {exc}", system=True, outage="tls")
        except requests.Timeout as exc:
            return Attempt(False, None, True, f"timeout: {exc}", system=True)
        except requests.ConnectionError as exc:
            return Attempt(False, None, True, f"connection error: {exc}", system=True)
        except requests.RequestException as exc:
            return Attempt(False, None, True, f"{type(exc).__name__}: {exc}")
        return answer_attempt(
            response.status_code,
            content,
            location=response.headers.get("Location"),
            retry_after=response.headers.get("Retry-After"),
            path=self.path,
            success=self._success,
            job_named="X-Delegated-Job-ID" in headers,
        )


def answer_attempt(
    status: int,
    content: bytes,
    *,
    location: str | None,
    retry_after: str | None,
    path: str,
    success: int,
    job_named: bool,
) -> Attempt:
    """One answer to ``POST {path}`` classified; the same for the blocking and the asyncio client."""
    text = content[:500].decode("utf-8", "replace")
    if status == success:
        return Attempt(True, status, False, "")
    if 300 <= status < 400:
        return Attempt(
            False,
            status,
            False,
            f"HTTP {status} redirect to {location or '(no Location)'}: oscar.endpoint is not the OSCAR API "
            "(redirects are not followed; fix the endpoint)",
        )
    if 200 <= status < 300:
        return Attempt(
            False,
            status,
            False,
            f"HTTP {status} is not OSCAR's answer to POST {path} (expected {success}): {text[:120]}".rstrip(),
        )
    if status == 500 and _ALREADY_EXISTS in text and job_named:
        return Attempt(True, status, False, "job already exists", exists=True)
    if status == 429 or status >= 500:
        return Attempt(
            False,
            status,
            True,
            f"HTTP {status}: {text}".strip(),
            retry_after_seconds(retry_after),
            system=status in _SYSTEM_STATUSES,
        )
    return Attempt(False, status, False, f"HTTP {status}: {text}".strip())


def refused_everywhere(attempt: Attempt) -> Attempt:
    """401, 403 or 404 after the token was refetched (if it could be): refused whoever the
    record is (the token, the rights, or the service itself). Dead-lettering each record would
    only empty the backlog, so it is an outage."""
    if attempt.status not in (401, 403, 404):
        return attempt
    what = "no such service" if attempt.status == 404 else "the credentials are refused"
    return Attempt(
        False,
        attempt.status,
        True,
        f"{attempt.error} ({what}: check oscar.service and its token or username/password)",
        outage="auth",
    )


def token_failure(what: str, exc: OscarError) -> Attempt:
    """OSCAR down (no answer, 5xx) is an outage; a 4xx (wrong credentials, no such service) is a
    configuration error that no retry fixes."""
    if exc.status is None or exc.status >= 500:
        return Attempt(False, exc.status, True, f"{what}: {exc}", system=True)
    if exc.status in (401, 403, 404):
        return Attempt(False, exc.status, True, f"{what}: {exc}", outage="auth")
    return Attempt(False, exc.status, False, f"{what}: {exc}")


def parse_time(value: Any) -> float | None:
    """OSCAR's job times (RFC 3339, UTC) as epoch seconds."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
