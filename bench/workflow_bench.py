"""Workflows: runs per second, and what orchestration adds per step, against a ceiling from the same run.

The graph is calibrate → (thumbnails, features) → report: four steps, four jobs a run, one
fan-out and one join, outputs listed from dCache between steps. OSCAR's emulator ends each job
at once and "uploads" one output into the dCache emulator (as the supervisor would), so what is
timed is dcnios: state writes, calls, job following, output listings, joins.

The ceiling, measured in the same run against the same emulator: the same jobs, each run's
posted by a thread of its own wave after wave (calibrate; thumbnails + features; report), each
wave followed through the job listing at the same poll interval, with no Kafka, no state and no
listing of outputs. Overhead per step = (workflow seconds - ceiling seconds) / jobs.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import Result

from dcnios.consumers.jobs import JobWatch
from dcnios.consumers.oscar import Attempt, OscarInvoker
from dcnios.consumers.workflows.scheduler import Orchestrator
from dcnios.kafka import ensure_topics
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.sandbox.oscar import Job, OscarEmulator
from dcnios.sandbox.records import produce_sample_events
from dcnios.spec import Duration, PipelineSpec, load_spec
from dcnios.topics import topic_plan

STEPS = 4
POLL = "100ms"
GRAPH = """\
      - {name: calibrate, service: calib, concurrency: 64}
      - {name: thumbnails, service: thumbs, after: [calibrate], concurrency: 64}
      - {name: features, service: feat, after: [calibrate], concurrency: 64}
      - {name: report, service: report, after: [thumbnails, features], concurrency: 64}
"""


class _Pods:
    """Each job ends at once with one output in its service's dCache output directory."""

    def __init__(self, oscar: OscarEmulator, dcache: DCacheEmulator) -> None:
        self.oscar, self.dcache = oscar, dcache

    def __call__(self, job: Job) -> None:
        self.dcache.upload(f"/out/{job.service}/{job.name}_out.dat", 10)
        now = time.time()
        job.status, job.start, job.finish = "Succeeded", now, now


def _spec(tmp: Path, bootstrap: str, oscar: OscarEmulator, dcache: DCacheEmulator, prefix: str) -> Path:
    path = tmp / f"{prefix}.yaml"
    path.write_text(
        f"""\
kafka: {{bootstrap_servers: "{bootstrap}", internal_prefix: {prefix}, topic_defaults: {{partitions: 4}}}}
sources:
  - {{name: store, endpoint: "{dcache.endpoint}", auth: {{username: alice, password: secret}},
     paths: [/data/in], topic: {prefix}.events}}
consumers:
  - name: trig
    topic: {prefix}.events
    concurrency: 64
    oscar: {{endpoint: "{oscar.endpoint}", service: calib, username: oscar, password: oscar123,
             job_id: deterministic, input_path: /in, pending_poll_interval: {POLL}}}
    librdkafka: {{session.timeout.ms: '6000', heartbeat.interval.ms: '500'}}
workflows:
  - name: beam
    trigger: {{consumer: trig}}
    storage: store
    group: {prefix}-wf
    poll_interval: {POLL}
    steps:
{GRAPH}"""
    )
    return path


def _value(metric: Any, sample: str = "") -> float:
    """A sample of one labelled metric, as the registry exposes it (``_sum`` of a histogram)."""
    for family in metric.collect():
        for found in family.samples:
            if found.name.endswith(sample or "_total") or (not sample and found.name == family.name):
                return float(found.value)
    return 0.0


def _wait(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``check()``, looked at every 10 ms."""
    started = time.perf_counter()
    deadline = started + timeout
    while not check() and time.perf_counter() < deadline:
        time.sleep(0.01)
    if not check():
        raise RuntimeError("the benchmark did not finish in time")
    return time.perf_counter() - started


#: The graph's dependency waves: a wave's jobs can only start once the wave before has ended.
WAVES = (("calib",), ("thumbs", "feat"), ("report",))
_BARE = b'{"bare": true}'


def _call(invokers: dict[str, OscarInvoker]) -> Callable[[tuple[str, str]], Attempt]:
    def call(job: tuple[str, str]) -> Attempt:
        return invokers[job[0]].invoke(_BARE, {"X-Delegated-Job-ID": job[1]})

    return call


def _bare_chains(spec: PipelineSpec, runs: int) -> float:
    """The ceiling: each run's jobs posted wave after wave by a thread of its own (64 at a time),
    each wave followed through the job listing at the same poll interval, with no Kafka, no state
    and no output listing: the least time these runs can take against this OSCAR."""
    cs = spec.consumer("trig")
    invokers = {s: OscarInvoker(replace(cs.oscar, service=s), 64) for w in WAVES for s in w}
    listings = {s: JobWatch(inv, interval=1.0) for s, inv in invokers.items()}
    poll = float(Duration.parse(POLL))
    call = _call(invokers)

    def chain(run: int) -> None:
        for wave in WAVES:
            names = [(s, f"bare-{s}-{run}") for s in wave]
            for job in names:
                for _ in range(5):  # a reset connection is asked again, under the same job name
                    attempt = call(job)
                    if attempt.ok or attempt.exists:
                        break
                else:
                    raise RuntimeError(f"bare job call for {job} kept failing: {attempt.error}")
            while not all(
                listings[s].listing().get(name, {}).get("status") == "Succeeded" for s, name in names
            ):
                time.sleep(poll)

    started = time.perf_counter()
    with ThreadPoolExecutor(64) as pool:
        list(pool.map(chain, range(runs)))
    return time.perf_counter() - started


def run(bootstrap: str, quick: bool) -> list[Result]:
    runs = 20 if quick else 200
    jobs = runs * STEPS
    prefix = f"bwf-{uuid.uuid4().hex[:6]}"
    with (
        tempfile.TemporaryDirectory() as tmp,
        OscarEmulator(job_duration=None) as oscar,
        DCacheEmulator() as dcache,
    ):
        oscar.executor = _Pods(oscar, dcache)
        for service in ("calib", "thumbs", "feat", "report"):
            dcache.mkdir(f"/out/{service}")
            oscar.add_service(
                service,
                input_path="/data/in",
                output=[{"storage_provider": "webdav.dcache", "path": f"/out/{service}"}],
            )
        spec = load_spec(_spec(Path(tmp), bootstrap, oscar, dcache, prefix))
        ensure_topics(spec.kafka, topic_plan(spec))

        ceiling_s = _bare_chains(spec, runs)

        stop = threading.Event()
        orchestrator = Orchestrator(spec, spec.workflows[0], stop=stop)
        thread = threading.Thread(target=orchestrator.run, daemon=True)
        thread.start()
        orchestrator.ready.wait(60)
        produce_sample_events(bootstrap, f"{prefix}.events", [f"r{i}.raw" for i in range(runs)])

        def finished() -> bool:
            return _value(orchestrator.metrics.runs_ended.labels("beam", "succeeded")) >= runs

        workflow_s = _wait(finished, 600)
        mean_created = _value(orchestrator.metrics.overhead.labels("beam"), "_sum") / jobs
        stop.set()
        thread.join(60)
    per_step_ms = (workflow_s - ceiling_s) / jobs * 1000
    params = {"runs": runs, "steps_per_run": STEPS, "poll": POLL, "concurrency": 64}
    return [
        Result(
            "workflow",
            "runs/s (4 steps: fan-out, join)",
            runs / workflow_s,
            "runs/s",
            runs / ceiling_s,
            "bare job chains, same jobs",
            parameters=params,
        ),
        Result(
            "workflow",
            "orchestration overhead per step",
            per_step_ms,
            "ms",
            workflow_s / jobs * 1000,
            "workflow ms per job",
            parameters={**params, "ready_to_job_created_ms": round(mean_created * 1000, 2)},
        ),
    ]
