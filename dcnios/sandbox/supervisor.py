"""Runs sandbox OSCAR jobs for real, with OSCAR's own FaaS supervisor (the faas-supervisor package).

What a job's pod does (shared/reference/oscar-api.md §4.1 step 10): ``/bin/sh -c "echo $EVENT |
supervisor"`` with ``EVENT`` set to the request body. The supervisor (faas-supervisor 1.5.8, whose
event, WebDAV and binary-supervisor code is the same as 2.0.1 at grycap/faas-supervisor 97b91f2):

* reads the event on stdin only, and the service definition from ``FUNCTION_CONFIG`` (base64 YAML,
  ``faassupervisor/utils.py`` ``ConfigUtils.read_cfg_var``), the script from ``SCRIPT`` (base64,
  ``faas/binary/supervisor.py``);
* stages a dCache event's file from ``https://<webdav.dcache.hostname>/<input path>/<event.name>``
  (``events/dCache.py``, ``storage/providers/webdav.py``: HEAD, PROPFIND Depth 0, GET);
* makes ``$TMP_INPUT_DIR``/``$TMP_OUTPUT_DIR`` itself and removes them at exit;
* runs the script with ``/bin/sh`` and never checks its exit status: the job fails (supervisor exit
  status != 0) only when staging or an upload fails.

So this runner builds that environment, runs the real supervisor through the same shell line, and
takes the supervisor's exit status as the job's state. The script is wrapped so that its outputs
are copied to ``<output>/<service>/`` before the supervisor deletes them, and its own exit status
is recorded for the sandbox's counters (OSCAR records it nowhere).
"""

from __future__ import annotations

import base64
import importlib.util
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import yaml

from dcnios.errors import ConfigError
from dcnios.sandbox.oscar import Job

__all__ = [
    "JobRunner",
    "ObjectStore",
    "ScriptService",
    "WebdavDoor",
    "rucio_did_upstream",
    "supervisor_available",
    "supervisor_reads_rucio",
]

logger = logging.getLogger(__name__)

#: faas-supervisor's wheel names `webdavclient3==3.14.6requests`, which pip refuses: the Makefile
#: installs it with --no-deps, and the `local` extra carries what it imports.
INSTALL_HINT = (
    "OSCAR's FaaS supervisor is not installed: pip install 'dcnios[local]', then, with pip < 24.1 "
    "(its metadata is malformed), pip install --no-deps faas-supervisor==1.5.8; make install does both"
)

_WRAPPER = """\
/bin/sh "$DCNIOS_USER_SCRIPT" 2>"$DCNIOS_JOB_DIR/script-stderr"
status=$?
cat "$DCNIOS_JOB_DIR/script-stderr" >&2
echo $status > "$DCNIOS_JOB_DIR/script-status"
[ $status -eq 0 ] || echo "script exited with status $status"
cp -R "$TMP_OUTPUT_DIR/." "$DCNIOS_JOB_DIR/output/" 2>/dev/null
exit 0
"""


def supervisor_available() -> bool:
    return importlib.util.find_spec("faassupervisor") is not None


def supervisor_reads_rucio() -> bool:
    """Whether the installed supervisor has Rucio events (PyPI's 1.5.8, of 2023-04, has not)."""
    return importlib.util.find_spec("faassupervisor.events.rucio") is not None


def rucio_did_upstream(event: object) -> tuple[str, str] | None:
    """The (scope, name) that grycap/faas-supervisor at 97b91f2 (2.0.1, Rucio events since 2025-02,
    not on PyPI) would download for this JSON body, or None where it would not see a Rucio event.

    Facts, in its order of checks (faassupervisor/events/__init__.py ``parse_event``): a body with
    ``httpMethod`` is an API-gateway event and one with ``event`` and ``subscription`` a dCache
    event, both taken first; then ``_is_rucio_event``: ``'event_type' in event and 'scope' in
    event['payload']``. events/rucio.py ``RucioEvent`` reads ``event.get('event') or event``, then
    ``payload.name`` (object_key) and ``payload.scope``; storage/providers/rucio.py downloads
    ``list_files(scope, name)``, every file of a dataset or the file itself, through the input whose
    provider id is ``rucio`` (the FDL's ``rucio.rucio``).
    """
    if not isinstance(event, dict) or "httpMethod" in event:
        return None
    if "event" in event and "subscription" in event:
        return None
    if "event_type" not in event:
        return None
    payload = event["payload"]  # upstream indexes it: a missing payload raises there
    if not isinstance(payload, dict) or "scope" not in payload:
        # ``'scope' in <str>`` is a substring test upstream; a string payload then fails in
        # RucioEvent (str indices), so no DID comes out of it either way.
        return None
    inner = event.get("event") or event
    scope, name = inner["payload"]["scope"], inner["payload"]["name"]
    return (scope, name) if isinstance(scope, str) and isinstance(name, str) else None


@dataclass(frozen=True)
class ScriptService:
    name: str
    script: str
    #: The dCache directory the service's input is read from (the FDL's webdav.dcache input path).
    input: str = "/"
    #: The dCache directory its outputs are uploaded to (the FDL's webdav.dcache output path);
    #: None: they are collected under the runner's output directory.
    output: str | None = None


@dataclass(frozen=True)
class WebdavDoor:
    """The FDL's ``storage_providers.webdav.dcache``: ``hostname`` is ``host:port`` (no scheme)."""

    hostname: str
    login: str
    password: str
    ca_bundle: str


@dataclass(frozen=True)
class ObjectStore:
    """An S3 store in the FDL's ``storage_providers`` (``minio.<id>`` or ``s3.<id>``), an input of
    every service (``path``: the bucket).

    OSCAR's ``s3`` provider has no endpoint field (AWS only: faas-supervisor
    ``storage/providers/s3.py`` builds ``boto3.client('s3', region_name=…)``), so for ``s3`` the
    endpoint reaches boto3 the way boto3 itself reads it, ``AWS_ENDPOINT_URL_S3`` in the job's
    environment; ``minio`` takes it from the provider's ``endpoint`` (``providers/minio.py``).
    """

    provider: str  # "minio" | "s3"
    id: str
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"


@dataclass
class JobTotals:
    succeeded: int = 0
    failed: int = 0
    script_errors: int = 0
    outputs: int = 0
    by_service: dict[str, int] = field(default_factory=dict)


class JobRunner:
    """A bounded worker pool that runs each job through the real supervisor; OscarEmulator's executor."""

    def __init__(
        self,
        services: Mapping[str, ScriptService],
        output_dir: str,
        *,
        webdav: WebdavDoor | None = None,
        object_stores: tuple[ObjectStore, ...] = (),
        workers: int = 4,
        timeout: float = 300.0,
        dcache_root: str | None = None,
    ) -> None:
        if not supervisor_available():
            raise ConfigError(INSTALL_HINT)
        for service in services.values():
            if not os.path.isfile(service.script):
                raise FileNotFoundError(f"service {service.name}: script {service.script!r} not found")
        self.services = dict(services)
        self.output_dir = output_dir
        self.webdav = webdav
        self.object_stores = object_stores
        self.timeout = timeout
        #: The local directory behind the sandbox dCache: where "uploads" to a dCache output land.
        self.dcache_root = dcache_root
        self.totals = JobTotals()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox-job")

    def __call__(self, job: Job) -> None:
        self._pool.submit(self._run, job)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def function_config(self, service: ScriptService) -> dict[str, object]:
        """The service definition the supervisor reads (the part of the FDL it uses)."""
        config: dict[str, object] = {"name": service.name, "log_level": "INFO"}
        inputs: list[dict[str, str]] = []
        providers: dict[str, dict[str, dict[str, object]]] = {}
        if self.webdav is not None:
            inputs.append({"storage_provider": "webdav.dcache", "path": service.input})
            providers["webdav"] = {
                "dcache": {
                    "hostname": self.webdav.hostname,
                    "login": self.webdav.login,
                    "password": self.webdav.password,
                }
            }
        for store in self.object_stores:
            inputs.append({"storage_provider": f"{store.provider}.{store.id}", "path": store.bucket})
            entry: dict[str, object] = {
                "access_key": store.access_key,
                "secret_key": store.secret_key,
                "region": store.region,
            }
            if store.provider == "minio":
                entry.update(endpoint=store.endpoint, verify=store.endpoint.startswith("https"))
            providers.setdefault(store.provider, {})[store.id] = entry
        if inputs:
            config["input"] = inputs
            config["storage_providers"] = providers
        return config

    def _run(self, job: Job) -> None:
        job.start = time.time()
        job.status = "Running"
        try:
            ok, log = self._execute(job)
        except Exception as exc:  # the runner's own failure fails the job, never the emulator
            ok, log = False, f"sandbox runner error: {type(exc).__name__}: {exc}\n"
            logger.warning("job %s failed: %s", job.name, exc)
        job.log = log
        job.finish = time.time()
        job.status = "Succeeded" if ok else "Failed"
        with self._lock:
            if ok:
                self.totals.succeeded += 1
            else:
                self.totals.failed += 1
            self.totals.by_service[job.service] = self.totals.by_service.get(job.service, 0) + 1

    def _execute(self, job: Job) -> tuple[bool, str]:
        service = self.services.get(job.service)
        if service is None:
            return False, f"no script for service {job.service!r}\n"
        with tempfile.TemporaryDirectory(prefix=f"oscar-{job.service}-") as job_dir:
            os.makedirs(os.path.join(job_dir, "output"))
            config = yaml.safe_dump(self.function_config(service)).encode()
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": job_dir,
                "LANG": "C.UTF-8",
                "EVENT": job.event.decode("utf-8", errors="replace"),
                "FUNCTION_CONFIG": base64.b64encode(config).decode(),
                "SCRIPT": base64.b64encode(_WRAPPER.encode()).decode(),
                "JOB_UUID": job.name,
                "OSCAR_SERVICE_NAME": job.service,
                "DCNIOS_USER_SCRIPT": service.script,
                "DCNIOS_JOB_DIR": job_dir,
            }
            if self.webdav is not None:
                env["REQUESTS_CA_BUNDLE"] = self.webdav.ca_bundle
            for store in self.object_stores:
                if store.provider == "s3":
                    env["AWS_ENDPOINT_URL_S3"] = store.endpoint
            supervisor = shlex.join([sys.executable, "-m", "faassupervisor.supervisor"])
            # Its own session: a timeout kills the shell, the supervisor and the script together,
            # as Kubernetes kills the pod, instead of orphaning them in a deleted directory.
            process = subprocess.Popen(  # noqa: S603 - OSCAR's own command line, our interpreter
                ["/bin/sh", "-c", f"echo $EVENT | {supervisor}"],
                env=env,
                cwd=job_dir,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            try:
                out, err = process.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                return False, f"job timed out after {self.timeout:g} s\n"
            log = out.decode(errors="replace") + err.decode(errors="replace")
            if process.returncode != 0:
                return False, log + f"supervisor exited with status {process.returncode}\n"
            self._script_status(job, service, job_dir)
            try:
                self._collect(service, os.path.join(job_dir, "output"))
            except OSError as exc:  # the sandbox's own problem: the job itself succeeded
                logger.warning("%s: outputs not collected: %s", job.name, exc)
                log += f"sandbox: outputs not collected: {exc}\n"
            return True, log

    def _script_status(self, job: Job, service: ScriptService, job_dir: str) -> None:
        try:
            with open(os.path.join(job_dir, "script-status"), encoding="ascii") as handle:
                status = int(handle.read().strip() or 0)
        except (OSError, ValueError):
            return
        if status != 0:
            # OSCAR's supervisor does not check this; the job still ends Succeeded there.
            try:
                with open(os.path.join(job_dir, "script-stderr"), encoding="utf-8", errors="replace") as err:
                    tail = (err.read().strip().splitlines() or ["(no stderr)"])[-1]
            except OSError:
                tail = "(no stderr)"
            logger.warning("%s: script %s exited %d: %s", job.name, service.script, status, tail)
            with self._lock:
                self.totals.script_errors += 1

    def _collect(self, service: ScriptService, produced: str) -> int:
        """The stand-in for the supervisor's upload (storage/__init__.py ``upload_output``:
        ``<output path>/<name relative to $TMP_OUTPUT_DIR>``)."""
        if service.output is not None and self.dcache_root is not None:
            target = os.path.join(self.dcache_root, service.output.lstrip("/"))
        else:
            target = os.path.join(self.output_dir, service.name)
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
