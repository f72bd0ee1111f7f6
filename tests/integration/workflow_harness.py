"""Helpers for workflow tests: OSCAR's emulator running step jobs that upload outputs to dCache's.

A job's "pod" here is an executor of the OSCAR emulator: it moves the job Pending → Running →
Succeeded/Failed and, as faas-supervisor's upload does (storage/__init__.py ``upload_output``:
``<output path>/<name>``), puts each output in the service's output directory of the dCache
emulator, named ``<job>_<name>`` as workflow steps write them. Which outputs a service writes,
and which jobs fail, is the test's choice.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from producer_harness import Running, run_in_thread

from dcnios.consumers.workflows.scheduler import Orchestrator
from dcnios.consumers.workflows.state import Run
from dcnios.consumers.workflows.store import read_runs
from dcnios.kafka import ensure_topics
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.sandbox.oscar import Job, OscarEmulator
from dcnios.spec import PipelineSpec, load_spec
from dcnios.topics import runs_topic, topic_plan

Outputs = Callable[[Job], list[str]]
Failure = Callable[[Job], str | None]


@dataclass
class Cluster:
    oscar: OscarEmulator
    dcache: DCacheEmulator
    outputs: dict[str, Outputs] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    duration: float = 0.05

    def add(self, service: str, outputs: Outputs | None = None, *, input_path: str | None = None) -> None:
        out = f"/out/{service}"
        self.dcache.mkdir(out)
        self.oscar.add_service(
            service,
            input_path=input_path,
            output=[{"storage_provider": "webdav.dcache", "path": out}],
        )
        self.outputs[service] = outputs or (lambda _job: ["out.txt"])

    def execute(self, job: Job) -> None:
        threading.Timer(self.duration, self._finish, args=(job,)).start()

    def _finish(self, job: Job) -> None:
        with self.oscar.lock:
            if self.oscar.services[job.service].jobs.get(job.name) is not job or job.status != "Pending":
                return  # deleted (cancelled) meanwhile
            job.status, job.start = "Running", time.time()
        fail = self.failures.get(job.service)
        error = fail(job) if fail is not None else None
        if error is None:
            for name in self.outputs[job.service](job):
                self.dcache.upload(f"/out/{job.service}/{job.name}_{name}", 10)
        with self.oscar.lock:
            if self.oscar.services[job.service].jobs.get(job.name) is not job:
                return
            job.log = error or "done\n"
            job.status, job.finish = ("Failed" if error else "Succeeded"), time.time()

    def jobs(self, service: str) -> list[Job]:
        return self.oscar.jobs(service)

    def bodies(self, service: str) -> list[dict[str, object]]:
        return [json.loads(c.body) for c in self.oscar.job_calls(service)]


@contextmanager
def cluster() -> Iterator[Cluster]:
    with OscarEmulator(job_duration=None) as oscar, DCacheEmulator() as dcache:
        made = Cluster(oscar, dcache)
        oscar.executor = made.execute
        yield made


def workflow_spec(
    tmp_path: Path,
    bootstrap: str,
    made: Cluster,
    prefix: str,
    steps: str,
    *,
    partitions: int = 2,
    session_ms: int = 3000,
) -> PipelineSpec:
    """``session_ms``: a Tansu group's first join takes about half of it; a killed member is
    evicted after all of it."""
    text = f"""\
kafka:
  bootstrap_servers: "{bootstrap}"
  internal_prefix: {prefix}
  topic_defaults: {{partitions: {partitions}}}
sources:
  - name: store
    endpoint: "{made.dcache.endpoint}"
    auth: {{username: alice, password: secret}}
    paths: [/data/in]
    topic: {prefix}.events
consumers:
  - name: trig
    topic: {prefix}.events
    oscar: {{endpoint: "{made.oscar.endpoint}", service: calib, username: oscar, password: oscar123,
             job_id: deterministic, input_path: /data/in, timeout: 2s, connect_timeout: 2s}}
    librdkafka: {{session.timeout.ms: '{session_ms}', heartbeat.interval.ms: '300'}}
workflows:
  - name: beam
    trigger: {{consumer: trig}}
    storage: store
    group: {prefix}-wf
    poll_interval: 100ms
    steps:
{steps}"""
    path = tmp_path / f"{prefix}.yaml"
    path.write_text(text)
    spec = load_spec(path)
    ensure_topics(spec.kafka, topic_plan(spec))
    return spec


def start(spec: PipelineSpec) -> Running[Orchestrator]:
    stop = threading.Event()
    return run_in_thread(Orchestrator(spec, spec.workflows[0], stop=stop), stop)


def runs(spec: PipelineSpec) -> dict[str, Run]:
    return read_runs(spec.kafka, runs_topic(spec.kafka, spec.workflows[0].name))


def wait_runs(
    spec: PipelineSpec,
    count: int,
    state: str,
    timeout: float = 60,
    orchestrator: Orchestrator | None = None,
) -> dict[str, Run]:
    """Wait for ``count`` runs in ``state``, then return the runs as the state topic has them.

    With an in-process ``orchestrator`` its memory is watched (cheap); the answer is still read
    from the topic, so what is asserted is what a restart would find.
    """
    deadline = time.monotonic() + timeout
    found: dict[str, Run] = {}
    while time.monotonic() < deadline:
        if orchestrator is not None:
            known = [r for rs in list(orchestrator.runs.values()) for r in list(rs.values())]
            if sum(1 for r in known if r.status == state) < count:
                time.sleep(0.05)
                continue
        found = runs(spec)
        if sum(1 for r in found.values() if r.status == state) >= count:
            return found
        time.sleep(0.3)
    states = {r.id: (r.status, r.error) for r in found.values()}
    raise AssertionError(f"expected {count} runs {state}, got {states}")
