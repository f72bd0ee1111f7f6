"""A compiled OSCAR stand-in with a fixed latency: Debian's nginx with the echo module.

``POST /job/<svc>`` answers 201 with an empty body after exactly ``latency`` seconds and burns no
CPU while it waits (``echo_sleep`` is a timer), so a client's throughput against it is bounded by
C/L and its own costs, not by the endpoint's. ``GET /health`` answers 200 and
``GET /system/services/<svc>`` a service definition with a webdav.dcache input, in case a
consumer asks for it (with ``input_path`` and ``token`` in the spec it does not).

Runs nginx as a child process (no daemon, its own prefix in a temporary directory, one worker,
127.0.0.1 on a free port). Where nginx or its echo module is missing, ``missing()`` says why, after
trying ``apt-get install`` when root, as .ci/run does for stunnel4.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

NGINX = "/usr/sbin/nginx"
ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"
PACKAGES = ("nginx-light", "libnginx-mod-http-echo", "wrk")

_CONF = """\
load_module {module};
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location ~ ^/job/[^/]+$ {{
            if ($request_method != POST) {{ return 405; }}
            echo_read_request_body;
            echo_status 201;
            echo_sleep {latency};
        }}
        location = /health {{ return 200 "ok\\n"; }}
        location ~ ^/system/services/[^/]+$ {{
            default_type application/json;
            return 200 '{service}';
        }}
    }}
}}
"""


def _missing_now() -> str | None:
    if not os.path.exists(NGINX):
        return f"{NGINX} is missing (Debian: apt-get install {' '.join(PACKAGES)})"
    if not os.path.exists(ECHO_MODULE):
        return f"{ECHO_MODULE} is missing (Debian: apt-get install libnginx-mod-http-echo)"
    if shutil.which("wrk") is None:
        return "wrk is missing (Debian: apt-get install wrk)"
    return None


_checked: list[str | None] = []


def _quiet(command: list[str]) -> int:
    return subprocess.run(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    ).returncode


def missing() -> str | None:
    """Why the compiled endpoint or wrk cannot run here, or None; installs them when root."""
    if _checked:
        return _checked[0]
    reason = _missing_now()
    if reason is not None and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"consumer: {reason}; installing {' '.join(PACKAGES)}", file=sys.stderr, flush=True)
        install = ["apt-get", "install", "-y", "-qq", *PACKAGES]
        if _quiet(install) != 0:
            _quiet(["apt-get", "update", "-qq"])
            _quiet(install)
        reason = _missing_now()
        if reason is not None:
            reason += "; apt-get install failed"
    _checked.append(reason)
    return reason


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NginxEndpoint:
    """``with NginxEndpoint(0.02, "svc", token) as ep: ep.endpoint`` -> http://127.0.0.1:<port>."""

    def __init__(self, latency: float, service: str, token: str) -> None:
        self.latency, self.service, self.token = latency, service, token
        self.endpoint = ""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> NginxEndpoint:
        reason = missing()
        if reason is not None:
            raise RuntimeError(reason)
        self._tmp = tempfile.TemporaryDirectory(prefix="dcnios-nginx-")
        prefix = Path(self._tmp.name)
        service = json.dumps(
            {
                "name": self.service,
                "token": self.token,
                "input": [{"storage_provider": "webdav.dcache", "path": "/in"}],
            }
        )
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(
            _CONF.format(
                module=ECHO_MODULE, prefix=prefix, port=port, latency=f"{self.latency:g}", service=service
            )
        )
        self._proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
                self.__exit__(None, None, None)
                raise RuntimeError(f"nginx did not start: {log.strip()[-500:]}")
            time.sleep(0.05)

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
