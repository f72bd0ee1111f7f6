"""An emulator of the OSCAR manager API, written from shared/reference/oscar-api.md (§13 checklist).

It serves the tests and ``dcnios sandbox``; the pipeline never imports it. Version modes:
``"3"`` (unknown service → 404 before auth; PUT rotates the token), ``"4"`` (unknown service with
a 64-char token → 401) and ``"4.1"`` (adds ``X-Delegated-Job-ID`` as the job name).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["Call", "Job", "JobExecutor", "OscarEmulator"]

logger = logging.getLogger(__name__)
_DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
#: A fault decides what one /job or /run call gets: None (normal), an HTTP status, or "timeout".
Fault = Callable[["Call"], int | str | None]
#: Runs a created job for real (``dcnios sandbox oscar``); it owns the job's state from then on.
JobExecutor = Callable[["Job"], None]


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int = 0
    query: dict[str, str] = field(default_factory=dict)


@dataclass
class Job:
    name: str
    service: str
    event: bytes
    created: float
    status: str = "Pending"
    start: float | None = None
    finish: float | None = None
    log: str = ""


def _job_info(job: Job) -> dict[str, str]:
    # creation_time is really the pod's start time in OSCAR (oscar-api.md §3.3).
    fields = (
        ("status", job.status),
        ("creation_time", _iso(job.start)),
        ("start_time", _iso(job.start)),
        ("finish_time", _iso(job.finish)),
    )
    return {k: v for k, v in fields if v is not None}


def _page_of(jobs: list[Job], token: str | None, size: int) -> dict[str, Any] | None:
    """One page of GET /system/logs/{service}: at most ``size`` jobs, then ``next_page`` (a
    Kubernetes continue token, opaque to clients) and ``remaining_jobs``; both omitted at the end
    (pkg/handlers/logs.go, pkg/types/jobinfo.go: JOB_LISTING_LIMIT is 70)."""
    start = 0
    if token:
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix("continue:"))
        except (ValueError, UnicodeDecodeError):
            return None
    chunk = jobs[start : start + size]
    body: dict[str, Any] = {"jobs": {j.name: _job_info(j) for j in chunk}}
    rest = len(jobs) - start - len(chunk)
    if rest > 0:
        body["next_page"] = base64.urlsafe_b64encode(f"continue:{start + len(chunk)}".encode()).decode()
        body["remaining_jobs"] = rest
    return body


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Service:
    definition: dict[str, Any]
    token: str
    jobs: dict[str, Job] = field(default_factory=dict)


class _QuietServer(ThreadingHTTPServer):
    # OSCAR is a Go net/http server, whose listen backlog is the kernel's somaxconn (Go's
    # net/sock_linux.go maxListenerBacklog; 4096 on current kernels). socketserver's default of
    # 5 drops the SYNs of a client that opens its connections at once, and each dropped SYN costs
    # a 1 s retransmit: a stall real OSCAR does not have. Set on the class, since the constructor
    # listens before an instance attribute could be set.
    request_queue_size = socket.SOMAXCONN

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients killed mid-request (the kill -9 scenarios) reset connections: not an emulator error.
        logger.debug("connection from %s ended abruptly", client_address)


class OscarEmulator:
    """An OSCAR cluster on 127.0.0.1. Jobs go Pending → Running → Succeeded on a timer."""

    def __init__(
        self,
        *,
        version: str = "4.1",
        admin: tuple[str, str] = ("oscar", "oscar123"),
        port: int = 0,
        latency: float = 0.0,
        job_duration: float | None = 0.0,
        pending_time: float = 0.0,
        executor: JobExecutor | None = None,
        page_size: int = 70,
    ) -> None:
        self.version = version
        self.page_size = page_size  # JOB_LISTING_LIMIT (pkg/handlers/logs.go)
        self.admin = admin
        self.latency = latency
        self.job_duration = job_duration  # None: jobs stay Running until finish_jobs()
        self.pending_time = pending_time
        self.executor = executor
        self.lock = threading.RLock()
        self.services: dict[str, _Service] = {}
        self.calls: list[Call] = []
        self.fault: Fault | None = None
        #: The manager is down behind its ingress: every request, /health included, gets 503.
        self.outage = False
        self._server = _QuietServer(("127.0.0.1", port), _make_handler(self))
        self._server.daemon_threads = True

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OscarEmulator:
        threading.Thread(target=self._server.serve_forever, daemon=True, name="oscar-emu").start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OscarEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- hooks -----------------------------------------------------------------------------
    def add_service(self, name: str, *, input_path: str | None = None, **definition: Any) -> str:
        """Create a service as POST /system/services would; returns its token.

        ``input_path``: a dCache input (``input: [{storage_provider: webdav.dcache, path}]``, §7).
        """
        token = secrets.token_hex(32)
        if input_path is not None:
            definition.setdefault("input", [{"storage_provider": "webdav.dcache", "path": input_path}])
        full = {
            "name": name,
            "image": "ghcr.io/grycap/imagemagick",
            "script": "echo",
            "cpu": "0.2",
            "memory": "256Mi",
            "log_level": "INFO",
            "visibility": "private",
            "owner": "cluster_admin",
            **definition,
            "token": token,
        }
        with self.lock:
            self.services[name] = _Service(full, token)
        return token

    def rotate_token(self, name: str) -> str:
        """What PUT /system/services does on OSCAR <= 3.7: a new token."""
        with self.lock:
            service = self.services[name]
            service.token = secrets.token_hex(32)
            service.definition["token"] = service.token
            return service.token

    def jobs(self, service: str) -> list[Job]:
        with self.lock:
            self.advance()
            return list(self.services[service].jobs.values())

    def job_calls(self, service: str | None = None) -> list[Call]:
        """Accepted (201) job submissions, in arrival order."""
        with self.lock:
            return [
                c
                for c in self.calls
                if c.path.startswith("/job/")
                and c.status == 201
                and (service is None or c.path == f"/job/{service}")
            ]

    def finish_jobs(self, service: str, status: str = "Succeeded") -> None:
        with self.lock:
            for job in self.services[service].jobs.values():
                if job.status in ("Pending", "Running"):
                    job.status, job.finish = status, time.time()

    def advance(self) -> None:
        if self.executor is not None:
            return  # the executor moves its jobs along
        now = time.time()
        for service in self.services.values():
            for job in service.jobs.values():
                if job.status == "Pending" and now - job.created >= self.pending_time:
                    job.status, job.start = "Running", now
                if (
                    job.status == "Running"
                    and self.job_duration is not None
                    and job.start is not None
                    and now - job.start >= self.job_duration
                ):
                    job.status, job.finish = "Succeeded", now


def _make_handler(emu: OscarEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "oscar-emulator"

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s %s", self.address_string(), format % args)

        def _send(
            self,
            status: int,
            body: bytes = b"",
            ctype: str | None = None,
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if ctype:
                self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)

        def _text(self, status: int, text: str) -> None:
            self._send(status, text.encode(), "text/plain; charset=utf-8")

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

        def _basic_ok(self) -> bool:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return False
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            return (user, password) == emu.admin

        def _dispatch(self) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            call = Call(self.command, path, dict(self.headers.items()), body, time.time(), query=query)
            with emu.lock:
                emu.calls.append(call)
            if len(body) < length:
                # The client went away mid-body: io.ReadAll fails and OSCAR answers 500 (§4.1 step 6).
                call.status = 500
                self.close_connection = True
                return
            status = self._route(call)
            call.status = status

        do_GET = do_POST = do_PUT = do_DELETE = _dispatch

        def _route(self, call: Call) -> int:
            path, method = call.path, call.method
            if emu.outage:
                # The manager pod is down: the ingress in front of it answers every path with
                # 503 (oscar-api.md §4.2: 502/503/504 come from the ingress, never from OSCAR).
                self._send(
                    503,
                    b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
                    "text/html",
                )
                return 503
            if path == "/health" and method == "GET":
                self._text(200, "Ok")
                return 200
            if path.startswith(("/job/", "/run/")) and method == "POST":
                return self._invoke(call, path.split("/")[1], path.split("/", 2)[2])
            parts = path.split("/")
            if len(parts) == 5 and parts[1:3] == ["system", "services"] and parts[4] == "auth":
                return self._service_auth(call, parts[3])
            if path.startswith("/system/"):
                if not self._basic_ok():
                    # gin BasicAuth: 401, realm header, empty body (OIDC disabled here).
                    self._send(401, headers={"WWW-Authenticate": 'Basic realm="Authorization Required"'})
                    return 401
                return self._system(call, path[len("/system/") :], method)
            self._text(404, "404 page not found")
            return 404

        def _system(self, call: Call, rest: str, method: str) -> int:
            parts = rest.split("/")
            with emu.lock:
                if parts == ["info"] and method == "GET":
                    self._json(
                        200,
                        {
                            "version": f"v{emu.version}",
                            "git_commit": "emulator",
                            "architecture": "amd64",
                            "kubernetes_version": "v1.30.0",
                        },
                    )
                    return 200
                if parts[0] == "services" and len(parts) == 2 and method == "GET":
                    service = emu.services.get(parts[1])
                    if service is None:
                        self._send(404)
                        return 404
                    self._json(200, service.definition)
                    return 200
                if parts[0] == "services" and len(parts) == 1 and method == "GET":
                    self._json(200, [s.definition for s in emu.services.values()])
                    return 200
                if parts[0] == "logs" and len(parts) == 3 and method == "DELETE":
                    # DELETE /system/logs/{service}/{job} (§3): 204, 404 for an unknown job.
                    service = emu.services.get(parts[1])
                    if service is None or service.jobs.pop(parts[2], None) is None:
                        self._send(404)
                        return 404
                    self._send(204)
                    return 204
                if parts[0] == "logs" and len(parts) == 3 and method == "GET":
                    service = emu.services.get(parts[1])
                    job = service.jobs.get(parts[2]) if service is not None else None
                    if job is None:
                        self._send(404)
                        return 404
                    self._text(200, job.log)
                    return 200
                if parts[0] == "logs" and len(parts) == 2 and method == "GET":
                    service = emu.services.get(parts[1])
                    if service is None:
                        self._send(404)
                        return 404
                    emu.advance()
                    page = _page_of(list(service.jobs.values()), call.query.get("page"), emu.page_size)
                    if page is None:
                        # A bad continue token fails the Kubernetes list call, and OSCAR answers
                        # a failed list with 500 and the error text (oscar-api.md §3).
                        self._text(500, "invalid continue token")
                        return 500
                    self._json(200, page)
                    return 200
            self._text(404, "404 page not found")
            return 404

        def _service_auth(self, call: Call, name: str) -> int:
            """``GET /system/services/{name}/auth`` (v4 only, §3): 200 for the service's token
            (Bearer) or the admin (Basic), 401 otherwise, 404 for an unknown service."""
            if call.method != "GET" or not emu.version.startswith("4"):
                self._text(404, "404 page not found")
                return 404
            with emu.lock:
                service = emu.services.get(name)
            if service is None:
                self._send(404)
                return 404
            header = call.headers.get("Authorization", "")
            if self._basic_ok() or header == f"Bearer {service.token}":
                self._send(200)
                return 200
            self._send(401)
            return 401

        def _invoke(self, call: Call, kind: str, name: str) -> int:
            if emu.latency:
                time.sleep(emu.latency)
            fault = emu.fault(call) if emu.fault is not None else None
            if fault == "timeout":
                time.sleep(3600)  # the client's read timeout fires first
                return 0
            if isinstance(fault, int):
                self._text(fault, f"injected failure {fault}")
                return fault
            with emu.lock:
                service = emu.services.get(name)
                if service is None and emu.version.startswith("3"):
                    self._send(404)  # v3 looks the service up before checking auth
                    return 404
                header = call.headers.get("Authorization", "")
                parts = header.split("Bearer ")
                if len(parts) != 2 or parts[0]:
                    self._send(401)
                    return 401
                token = parts[1].strip()
                if len(token) != 64:
                    # Not a service token: parsed as an OIDC JWT, which a garbage value is not (502 quirk).
                    self._text(502, "token contains an invalid number of segments")
                    return 502
                if service is None or service.token != token:
                    self._send(401)
                    return 401
                if kind == "run":
                    self._text(200, base64.b64encode(call.body).decode())
                    return 200
                job_name = f"{name[:16] if len(name) >= 25 else name}-{uuid.uuid4()}"
                delegated = call.headers.get("X-Delegated-Job-ID")
                if delegated is not None and emu.version.startswith("4.1"):
                    if not _DNS_LABEL.match(delegated):
                        self._text(500, f'Job.batch "{delegated}" is invalid: metadata.name: Invalid value')
                        return 500
                    if delegated in service.jobs:
                        self._text(500, f'jobs.batch "{delegated}" already exists')
                        return 500
                    job_name = delegated
                job = service.jobs[job_name] = Job(job_name, name, call.body, time.time())
            if emu.executor is not None:
                emu.executor(job)
            self._send(201)
            return 201

    return Handler
