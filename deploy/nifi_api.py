"""A small NiFi REST client: authentication, one clientId per run, errors that name the call.

Reference: shared/reference/nifi-deploy.md §1. The session keeps no cookies: the login response
sets ``__Secure-Authorization-Bearer``, and a request carrying it must also pass Spring's CSRF check
(§1.2), so the bearer header is the only credential sent.
"""

from __future__ import annotations

import http.cookiejar
import logging
import time
import uuid
from typing import Any, Final

import requests

from dcnios.errors import ConfigError, NiFiError
from dcnios.http import TrustedSession
from dcnios.spec import NifiSpec

__all__ = ["NifiClient", "new_session"]

logger = logging.getLogger(__name__)

_TIMEOUT: Final = (10, 60)


def new_session(spec: NifiSpec) -> requests.Session:
    session = TrustedSession()
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    session.verify = spec.ca_bundle or True
    if spec.auth is not None and spec.auth.cert is not None:
        session.cert = (spec.auth.cert, spec.auth.key) if spec.auth.key else spec.auth.cert
    return session


class NifiClient:
    """One deploy run against one NiFi: a stable clientId for revisions, a bearer token if needed."""

    def __init__(self, spec: NifiSpec, session: requests.Session | None = None) -> None:
        self.spec = spec
        self.base = spec.endpoint.rstrip("/")
        self.session = session or new_session(spec)
        self.client_id = str(uuid.uuid4())
        self._token: str | None = spec.auth.token.reveal() if spec.auth and spec.auth.token else None
        self._logged_in = False

    # -- authentication ----------------------------------------------------------------------
    def login(self) -> None:
        auth = self.spec.auth
        if auth is None or auth.username is None or auth.password is None:
            return
        call = "POST /access/token"
        try:
            response = self.session.post(
                f"{self.base}/access/token",
                data={"username": auth.username, "password": auth.password.reveal()},
                timeout=_TIMEOUT,
            )
        except requests.RequestException as exc:
            raise NiFiError(f"{call}: NiFi unreachable at {self.base}: {exc}", call=call) from exc
        if response.status_code == 409 and "HTTPS" in response.text:
            raise ConfigError(
                f"nifi.endpoint: {self.base} is plain HTTP, where NiFi issues no tokens and checks no "
                "credentials; use its https:// address (or drop nifi.auth for an unsecured NiFi)"
            )
        if response.status_code not in (200, 201):
            raise NiFiError(
                f"{call}: HTTP {response.status_code}: {_message(response)} (user {auth.username!r})",
                status=response.status_code,
                call=call,
            )
        self._token = response.text.strip()
        self.session.cookies.clear()
        self._logged_in = True

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    # -- calls -------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        files: dict[str, Any] | None = None,
        expect: tuple[int, ...] = (200, 201, 202),
    ) -> Any:
        """JSON (or text) of a successful call; NiFiError naming the call, status and message."""
        if self._token is None and not self._logged_in:
            self.login()
        call = f"{method} {path}"
        for attempt in (1, 2):
            try:
                response = self.session.request(
                    method,
                    f"{self.base}{path}",
                    json=body,
                    params=params,
                    data=data,
                    files=files,
                    headers=self._headers(),
                    timeout=_TIMEOUT,
                )
            except requests.RequestException as exc:
                raise NiFiError(f"{call}: NiFi unreachable at {self.base}: {exc}", call=call) from exc
            if response.status_code == 401 and attempt == 1 and self.spec.auth and self.spec.auth.username:
                logger.info("NiFi token expired; logging in again")
                self.login()
                continue
            if response.status_code not in expect:
                raise NiFiError(
                    f"{call}: HTTP {response.status_code}: {_message(response)}",
                    status=response.status_code,
                    call=call,
                )
            if not response.content:
                return None
            if "json" in response.headers.get("Content-Type", ""):
                return response.json()
            return response.text
        raise AssertionError("unreachable")

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, body=body, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("PUT", path, body=body, **kw)

    def delete(self, path: str, revision: dict[str, Any] | None = None, **kw: Any) -> Any:
        params = {"clientId": self.client_id}
        if revision is not None:
            params["version"] = str(revision.get("version", 0))
        return self.request("DELETE", path, params=params, **kw)

    def revision(self, version: int = 0) -> dict[str, Any]:
        return {"version": version, "clientId": self.client_id}

    # -- asynchronous requests (§1.1): POST, poll until complete, DELETE -------------------------
    def wait_for(self, path: str, done: Any, what: str) -> Any:
        deadline = time.monotonic() + float(self.spec.poll_timeout)
        delay = 0.05
        while True:
            entity = self.get(path)
            if done(entity):
                return entity
            if time.monotonic() > deadline:
                raise NiFiError(
                    f"GET {path}: {what} did not finish within {float(self.spec.poll_timeout):g}s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _message(response: requests.Response) -> str:
    text = response.text.strip()
    if "json" in response.headers.get("Content-Type", ""):
        try:
            data = response.json()
            text = str(data.get("message") or data)
        except (ValueError, AttributeError):
            pass
    return (text or response.reason or "no message")[:500]
