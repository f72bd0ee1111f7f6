"""Invoking one OSCAR service: pooled session, token cache, retry classification, job-state gate.

Follows shared/reference/oscar-api.md: POST /job/{service} (or /run) with the service token as
Bearer; 201 with an empty body is success; a repeated X-Delegated-Job-ID answers 500 "already
exists", which means the job exists, so it counts as success.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Final

import requests
from requests.adapters import HTTPAdapter

from dcnios.errors import OscarError
from dcnios.http import TrustedSession
from dcnios.spec import ConsumerSpec, OscarSpec
from dcnios.storage_event import StorageEvent, dcache_envelope, dedup_key, record_json

__all__ = [
    "Attempt",
    "OscarInvoker",
    "PendingJobsGate",
    "invoke_with_retry",
    "job_id_for",
    "payload_for",
    "traceparent_for",
]

logger = logging.getLogger(__name__)
_ALREADY_EXISTS: Final = "already exists"


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one HTTP attempt."""

    ok: bool
    status: int | None
    retryable: bool
    error: str
    retry_after: float | None = None


def payload_for(event: StorageEvent, mode: str) -> bytes:
    """``dcache``: the byte-exact dCache envelope; ``record``: the record as compact JSON."""
    if mode == "dcache":
        return dcache_envelope(event)
    return record_json(event)


def job_id_for(event: StorageEvent, service: str) -> str:
    """A DNS-1123 label (<= 63 chars) that is the same for every replay of one event."""
    digest = hashlib.sha256(f"{event.source}\0{dedup_key(event)}".encode()).hexdigest()[:40]
    prefix = service[:20].rstrip("-")
    return f"{prefix}-{digest}"


def traceparent_for(event: StorageEvent) -> str:
    """W3C traceparent: the trace id derives from the event, so all its attempts share one trace."""
    trace = hashlib.blake2b(dedup_key(event).encode(), digest_size=16).hexdigest()
    return f"00-{trace}-{secrets.token_hex(8)}-01"


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


class OscarInvoker:
    """Thread-safe; one per consumer process."""

    def __init__(self, spec: OscarSpec, pool_size: int, session: requests.Session | None = None) -> None:
        self.spec = spec
        self.session = session or TrustedSession()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(pool_size, 1), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.verify = spec.ca_bundle or True
        self.url = f"{spec.endpoint.rstrip('/')}/{'job' if spec.mode == 'async' else 'run'}/{spec.service}"
        self._lock = threading.Lock()
        self._token: str | None = spec.token.reveal() if spec.token is not None else None
        self._token_generation = 0

    # -- token -----------------------------------------------------------------------------
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
        # oscar-python opens a new connection per call: fine for this rare lookup, not the hot path.
        from oscar_python.client import Client

        options: dict[str, Any] = {
            "cluster_id": "dcnios",
            "endpoint": self.spec.endpoint.rstrip("/"),
            "ssl": self.spec.ca_bundle or True,
        }
        if self.spec.username is not None and self.spec.password is not None:
            options.update(user=self.spec.username, password=self.spec.password.reveal())
        elif self.spec.oidc_token is not None:
            options["oidc_token"] = self.spec.oidc_token.reveal()
        else:
            raise OscarError("no OSCAR credentials to fetch the service token with")
        try:
            response = Client(options=options).get_service(self.spec.service)
            token = json.loads(response.text)["token"]
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise OscarError(
                f"GET /system/services/{self.spec.service}: {status} (fetching the service token)",
                status=status,
                call=f"GET /system/services/{self.spec.service}",
            ) from exc
        except (requests.RequestException, KeyError, ValueError) as exc:
            raise OscarError(f"cannot fetch the token of OSCAR service {self.spec.service}: {exc}") from exc
        return str(token)

    # -- invocation ------------------------------------------------------------------------
    def invoke(self, body: bytes, headers: dict[str, str]) -> Attempt:
        token, generation = self.token()
        attempt = self._post(body, headers, token)
        if attempt.status == 401 and self.refresh_token(generation):
            token, _ = self.token()
            attempt = self._post(body, headers, token)
        return attempt

    def _post(self, body: bytes, headers: dict[str, str], token: str) -> Attempt:
        all_headers = {"Content-Type": "application/json", **headers, "Authorization": f"Bearer {token}"}
        try:
            response = self.session.post(
                self.url,
                data=body,
                headers=all_headers,
                timeout=(self.spec.connect_timeout, self.spec.timeout),
            )
        except requests.Timeout as exc:
            return Attempt(False, None, True, f"timeout: {exc}")
        except requests.ConnectionError as exc:
            return Attempt(False, None, True, f"connection error: {exc}")
        except requests.RequestException as exc:
            return Attempt(False, None, True, f"{type(exc).__name__}: {exc}")
        status = response.status_code
        text = response.text[:500]
        if 200 <= status < 300:
            return Attempt(True, status, False, "")
        if status == 500 and _ALREADY_EXISTS in text and "X-Delegated-Job-ID" in headers:
            return Attempt(True, status, False, "job already exists (replay)")
        if status == 429 or status >= 500:
            return Attempt(False, status, True, f"HTTP {status}: {text}".strip(), _retry_after(response))
        return Attempt(False, status, False, f"HTTP {status}: {text}".strip())


class PendingJobsGate:
    """Holds invocations while the service's Pending + Running jobs are at ``limit``.

    A 2xx from /job only means the Job object exists; this watches whether the cluster keeps up.
    """

    def __init__(self, spec: OscarSpec, limit: int, session: requests.Session | None = None) -> None:
        self.spec = spec
        self.limit = limit
        self.session = session or TrustedSession()
        self.session.verify = spec.ca_bundle or True
        self.url = f"{spec.endpoint.rstrip('/')}/system/logs/{spec.service}"
        self._cond = threading.Condition()
        self._active = 0  # Pending + Running in the last job listing
        self._in_call = 0  # invocations under way: their jobs may not exist yet
        self._completed: deque[float] = deque()  # when calls returned, until a listing includes them
        self.last_error: str | None = None

    @property
    def active(self) -> int:
        return self._active

    def poll_once(self) -> None:
        started = time.monotonic()
        headers = {}
        if self.spec.oidc_token is not None:
            headers["Authorization"] = f"Bearer {self.spec.oidc_token.reveal()}"
        auth = None
        if self.spec.username is not None and self.spec.password is not None:
            auth = (self.spec.username, self.spec.password.reveal())
        try:
            response = self.session.get(self.url, headers=headers, auth=auth, timeout=(5, 30))
            response.raise_for_status()
            jobs = (response.json() or {}).get("jobs", {})
            active = sum(1 for j in jobs.values() if j.get("status") in ("Pending", "Running", "Suspended"))
        except (requests.RequestException, ValueError) as exc:
            self.last_error = str(exc)
            logger.warning("GET /system/logs/%s failed: %s", self.spec.service, exc)
            return
        with self._cond:
            self.last_error = None
            self._active = active
            # Calls that returned before this listing began are in it; later ones may not be.
            while self._completed and self._completed[0] <= started:
                self._completed.popleft()
            self._cond.notify_all()

    def wait_for_room(self, stop: threading.Event) -> bool:
        """Take a slot for one call; ``release()`` it when the call returns."""
        with self._cond:
            while self._active + self._in_call + len(self._completed) >= self.limit:
                if stop.is_set():
                    return False
                self._cond.wait(0.2)
            self._in_call += 1
            return True

    def release(self) -> None:
        with self._cond:
            self._in_call -= 1
            self._completed.append(time.monotonic())


def invoke_with_retry(
    invoker: OscarInvoker, cs: ConsumerSpec, event: StorageEvent, stop: threading.Event
) -> Attempt:
    """One record outside the consumer loop (replays), with the consumer's retry policy."""
    headers = {"traceparent": traceparent_for(event)}
    if cs.oscar.job_id == "deterministic":
        headers["X-Delegated-Job-ID"] = job_id_for(event, cs.oscar.service)
    delay = float(cs.retry.initial_backoff)
    for attempt_no in range(1, cs.retry.max_attempts + 1):
        attempt = invoker.invoke(payload_for(event, cs.payload), headers)
        if attempt.ok or not attempt.retryable or attempt_no == cs.retry.max_attempts or stop.wait(delay):
            return attempt
        delay = min(delay * 2, float(cs.retry.max_backoff))
    raise AssertionError("max_attempts is at least 1")
