"""Runs sandbox OSCAR jobs for real, the way OSCAR's FaaS supervisor does inside a job's pod.

Reference: shared/reference/oscar-api.md §5.2 and §5.3. The body is ``$EVENT``; a dCache event
(``event`` + ``subscription`` keys) makes the supervisor fetch ``<webdav><input>/<event.name>``
into ``$TMP_INPUT_DIR`` and set ``$INPUT_FILE_PATH``; other JSON is written to an input file; a
non-JSON body is base64-decoded into one. Files the script leaves in ``$TMP_OUTPUT_DIR`` are
collected into ``<output>/<service>/``. As in OSCAR, the script's exit status does not change the
job's state (the supervisor never checks it), but it is logged and counted.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from dcnios.sandbox.oscar import Job

__all__ = ["JobRunner", "ScriptService"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScriptService:
    name: str
    script: str
    #: The dCache directory the service's input is read from (the FDL's webdav.dcache input path).
    input: str = "/"


@dataclass
class JobTotals:
    succeeded: int = 0
    failed: int = 0
    script_errors: int = 0
    outputs: int = 0
    by_service: dict[str, int] = field(default_factory=dict)


class JobRunner:
    """A bounded worker pool that runs each job's script; pass it as OscarEmulator's executor."""

    def __init__(
        self,
        services: Mapping[str, ScriptService],
        output_dir: str,
        *,
        webdav: str | None = None,
        workers: int = 4,
        timeout: float = 300.0,
        session: requests.Session | None = None,
    ) -> None:
        for service in services.values():
            if not os.path.isfile(service.script):
                raise FileNotFoundError(f"service {service.name}: script {service.script!r} not found")
        self.services = dict(services)
        self.output_dir = output_dir
        self.webdav = webdav.rstrip("/") if webdav else None
        self.timeout = timeout
        self.session = session or requests.Session()
        self.totals = JobTotals()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox-job")
        self._running = 0

    def __call__(self, job: Job) -> None:
        self._pool.submit(self._run, job)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def _run(self, job: Job) -> None:
        job.start = time.time()
        job.status = "Running"
        lines: list[str] = []
        ok = False
        try:
            ok = self._execute(job, lines)
        except Exception as exc:  # a supervisor error fails the job, as in OSCAR
            lines.append(f"supervisor error: {type(exc).__name__}: {exc}")
            logger.warning("job %s failed: %s", job.name, exc)
        job.log = "\n".join(lines) + "\n"
        job.finish = time.time()
        job.status = "Succeeded" if ok else "Failed"
        with self._lock:
            if ok:
                self.totals.succeeded += 1
            else:
                self.totals.failed += 1
            self.totals.by_service[job.service] = self.totals.by_service.get(job.service, 0) + 1

    def _execute(self, job: Job, lines: list[str]) -> bool:
        service = self.services.get(job.service)
        if service is None:
            lines.append(f"no script for service {job.service!r}")
            return False
        with tempfile.TemporaryDirectory(prefix=f"oscar-{job.service}-") as tmp:
            input_dir, output_dir = os.path.join(tmp, "input"), os.path.join(tmp, "output")
            os.makedirs(input_dir)
            os.makedirs(output_dir)
            env = {
                **os.environ,
                "EVENT": job.event.decode("utf-8", errors="replace"),
                "TMP_INPUT_DIR": input_dir,
                "TMP_OUTPUT_DIR": output_dir,
                "JOB_UUID": job.name,
                "OSCAR_SERVICE_NAME": job.service,
            }
            env["INPUT_FILE_PATH"] = self._stage_in(service, job, input_dir, lines)
            command = [service.script] if os.access(service.script, os.X_OK) else ["/bin/sh", service.script]
            lines.append(f"running {' '.join(command)}")
            try:
                done = subprocess.run(  # noqa: S603 - the operator's own script
                    command,
                    env=env,
                    cwd=tmp,
                    capture_output=True,
                    timeout=self.timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                lines.append(f"script timed out after {self.timeout:g} s")
                return False
            lines.extend(done.stdout.decode(errors="replace").splitlines())
            lines.extend(done.stderr.decode(errors="replace").splitlines())
            if done.returncode != 0:
                # OSCAR's supervisor does not check this; the job still ends Succeeded there.
                lines.append(f"script exited with status {done.returncode}")
                tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["(no stderr)"]
                logger.warning(
                    "%s: script %s exited %d: %s", job.name, service.script, done.returncode, tail[0]
                )
                with self._lock:
                    self.totals.script_errors += 1
            collected = self._collect(job.service, output_dir)
            lines.append(f"collected {collected} output file(s)")
            return True

    def _stage_in(self, service: ScriptService, job: Job, input_dir: str, lines: list[str]) -> str:
        try:
            body: Any = json.loads(job.event)
        except ValueError:
            body = None
        if body is None:
            try:
                data = base64.b64decode(job.event, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError("the body is neither JSON nor base64") from exc
            path = os.path.join(input_dir, f"event-file-{uuid.uuid4()}")
            with open(path, "wb") as handle:
                handle.write(data)
            return path
        if isinstance(body, dict) and "event" in body and "subscription" in body:
            name = body["event"].get("name") if isinstance(body["event"], dict) else None
            if not isinstance(name, str) or not name:
                raise ValueError("dCache event without event.name")
            if self.webdav is None:
                raise ValueError("a dCache event, but no WebDAV door is configured (--webdav)")
            remote = f"{self.webdav}{service.input.rstrip('/')}/{name}"
            lines.append(f"downloading {remote}")
            response = self.session.get(remote, timeout=30)
            if response.status_code != 200:
                raise OSError(f"GET {remote}: HTTP {response.status_code}")
            path = os.path.join(input_dir, os.path.basename(name))
            with open(path, "wb") as handle:
                handle.write(response.content)
            return path
        path = os.path.join(input_dir, f"event-file-{uuid.uuid4()}")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(body, handle)
        return path

    def _collect(self, service: str, produced: str) -> int:
        target = os.path.join(self.output_dir, service)
        count = 0
        for dirpath, _, filenames in os.walk(produced):
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), produced)
                os.makedirs(os.path.dirname(os.path.join(target, rel)), exist_ok=True)
                shutil.copyfile(os.path.join(dirpath, name), os.path.join(target, rel))
                count += 1
        with self._lock:
            self.totals.outputs += count
        return count
