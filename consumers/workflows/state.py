"""A run's state and every change to it. Pure: no I/O, and the clock is passed in.

A run is a set of steps, each a set of items (one item, or one per mapped output of its
parent), each item a series of OSCAR jobs (attempts). The orchestrator persists the run (the
whole of it, as JSON, keyed by run id) after each change, and before any call that depends on
it: an item's job name is written before its job is created, and a failed job is written before
the next attempt, so a restarted orchestrator asks for the same jobs and follows them ("already
exists") instead of creating new ones.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from dcnios.consumers.workflows.graph import Graph
from dcnios.spec import glob_match

__all__ = [
    "FINAL_RUN_STATES",
    "Item",
    "Run",
    "StepRun",
    "advance",
    "cancel_run",
    "fail_run",
    "item_failed_again",
    "item_succeeded",
    "new_run",
    "retry_run",
    "run_from_json",
    "run_id_for",
    "run_to_json",
    "start_item",
    "step_job_name",
]

RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
WAITING: Final = "waiting"
SKIPPED: Final = "skipped"
READY: Final = "ready"
FINAL_RUN_STATES: Final = frozenset({SUCCEEDED, FAILED, CANCELLED})
#: What a step is after: it either produced outputs, or it was never meant to run for this file.
_PARENT_DONE: Final = frozenset({SUCCEEDED, SKIPPED})
#: Output files are named ``<job name>_<name>``: the job name is the pod's $JOB_UUID, and a
#: DNS label never holds "_", so the prefix ends where the name begins.
OUTPUT_SEPARATOR: Final = "_"


@dataclass(slots=True)
class Item:
    """One unit of a step: its inputs (storage references), its current job and how it went."""

    key: str
    inputs: list[dict[str, str]]
    status: str = READY  # ready | running | succeeded | failed | cancelled
    attempt: int = 0  # the job number; never reused, also across `dcnios runs retry`
    tries: int = 0  # jobs counted against retry.max_attempts since the last retry of the run
    job: str | None = None
    outputs: list[dict[str, str]] | None = None  # {"path", "name"} once listed
    error: str = ""
    log_tail: str = ""
    ready_at: float = 0.0
    not_before: float = 0.0
    submitted_at: float | None = None
    finished_at: float | None = None


@dataclass(slots=True)
class StepRun:
    status: str = WAITING  # waiting | running | succeeded | failed | cancelled | skipped
    items: dict[str, Item] = field(default_factory=dict)


@dataclass(slots=True)
class Run:
    id: str
    workflow: str
    trigger: dict[str, Any]  # path, source, event_id, topic, partition, offset
    created: float
    updated: float
    steps: dict[str, StepRun]
    status: str = RUNNING  # running | succeeded | failed | cancelled
    error: str = ""
    failed_step: str | None = None
    log_tail: str = ""
    retries: int = 0  # `dcnios runs retry` so far
    finished: float | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_RUN_STATES

    @property
    def partition(self) -> int:
        return int(self.trigger.get("partition", 0))

    def items(self) -> list[tuple[str, Item]]:
        return [(name, item) for name, step in self.steps.items() for item in step.items.values()]

    def jobs(self) -> int:
        return sum(i.attempt for _, i in self.items())


def run_id_for(workflow: str, source: str, dedup: str) -> str:
    """The same for every delivery of one event: (workflow, source, the event's dedup key)."""
    return hashlib.sha256(f"{workflow}\0{source}\0{dedup}".encode()).hexdigest()[:24]


def step_job_name(service: str, run: str, step: str, item: str, attempt: int) -> str:
    """A DNS-1123 label (<= 63 characters) per (run, step, item, attempt)."""
    digest = hashlib.sha256(f"{step}\0{item}".encode()).hexdigest()[:12]
    return f"{service[:16].rstrip('-')}-{run[:16]}-{digest}-{attempt}"


# -- transitions ------------------------------------------------------------------------------
def new_run(graph: Graph, run_id: str, trigger: dict[str, Any], now: float) -> Run:
    """A run for a triggering file: start steps whose ``match`` accepts it get their one item."""
    path = str(trigger["path"])
    steps = {name: StepRun() for name in graph.order}
    for name in graph.starts:
        step = graph.steps[name]
        if step.match and not any(glob_match(g, path) for g in step.match):
            steps[name].status = SKIPPED
            continue
        steps[name].status = RUNNING
        steps[name].items[""] = Item("", [{"step": "trigger", "path": path}], ready_at=now, not_before=now)
    run = Run(run_id, graph.spec.name, dict(trigger), now, now, steps)
    advance(run, graph, now)
    return run


def advance(run: Run, graph: Graph, now: float) -> bool:
    """Everything that follows from the items' states: steps released (joins), mapped, done,
    skipped; join timeouts; the run's end. True when something changed."""
    if run.final:
        return False
    changed = False
    for name in graph.order:
        step, spec = run.steps[name], graph.steps[name]
        if step.status == WAITING:
            parents = [run.steps[p] for p in spec.after]
            live = [p for p in spec.after if run.steps[p].status != SKIPPED]
            if not live:
                step.status, changed = SKIPPED, True
                continue
            succeeded_jobs = sum(
                1 for p in live for i in run.steps[p].items.values() if i.status == SUCCEEDED
            )
            if spec.join == "all":
                released = all(p.status in _PARENT_DONE for p in parents)
            else:
                released = succeeded_jobs >= (spec.join_count or 1)
                if not released and all(p.status in _PARENT_DONE for p in parents):
                    fail_run(
                        run,
                        name,
                        None,
                        f"join {spec.join}: only {succeeded_jobs} parent jobs succeeded",
                        "",
                        now=now,
                    )
                    return True
            if released:
                _release(run, graph, name, now)
                changed = True
            elif spec.join_timeout is not None and now - run.created >= spec.join_timeout:
                error = f"join {spec.join} not satisfied within {spec.join_timeout:g}s"
                fail_run(run, name, None, error, "", now=now)
                return True
        if step.status == RUNNING and all(i.status == SUCCEEDED for i in step.items.values()):
            step.status, changed = SUCCEEDED, True
    if all(s.status in _PARENT_DONE for s in run.steps.values()):
        run.status, run.finished, changed = SUCCEEDED, now, True
    if changed:
        run.updated = now
    return changed


def _release(run: Run, graph: Graph, name: str, now: float) -> None:
    """A step whose join is satisfied gets its items: inputs are the parents' outputs, as
    storage references, one item per matching output for a split-map step."""
    spec, step = graph.steps[name], run.steps[name]
    inputs = [
        {"step": parent, "path": out["path"], "name": out["name"]}
        for parent in spec.after
        for item in run.steps[parent].items.values()
        if item.status == SUCCEEDED
        for out in item.outputs or ()
    ]
    step.status = RUNNING
    if spec.each is None:
        step.items[""] = Item("", inputs, ready_at=now, not_before=now)
        return
    for ref in inputs:
        if fnmatch.fnmatchcase(ref["name"], spec.each):
            step.items[ref["path"]] = Item(ref["path"], [ref], ready_at=now, not_before=now)
    if not step.items:
        step.status = SUCCEEDED  # nothing to map: the step is done, its children get no inputs


def start_item(run: Run, graph: Graph, step: str, key: str, now: float) -> str:
    """The next job of an item: its name is fixed here, before the job is asked for."""
    item = run.steps[step].items[key]
    item.attempt += 1
    item.tries += 1
    item.status = RUNNING
    item.job = step_job_name(graph.steps[step].service, run.id, step, key, item.attempt)
    item.submitted_at = now
    run.updated = now
    return item.job


def item_succeeded(run: Run, step: str, key: str, outputs: list[dict[str, str]], now: float) -> None:
    item = run.steps[step].items[key]
    item.status, item.outputs, item.finished_at = SUCCEEDED, outputs, now
    item.error = item.log_tail = ""
    run.updated = now


def item_failed_again(run: Run, step: str, key: str, error: str, *, not_before: float, now: float) -> None:
    """The job failed and another one will be tried from ``not_before``."""
    item = run.steps[step].items[key]
    item.status, item.error, item.not_before = READY, error, not_before
    run.updated = now


def fail_run(
    run: Run, step: str, key: str | None, error: str, log_tail: str, *, now: float
) -> list[tuple[str, str]]:
    """The run fails with this step's error; every other job under way is to be cancelled.

    Returns (step, job) of each job to delete.
    """
    if key is not None:
        item = run.steps[step].items[key]
        item.status, item.error, item.log_tail, item.finished_at = FAILED, error, log_tail, now
    run.steps[step].status = FAILED
    run.status, run.error, run.failed_step, run.log_tail = FAILED, error, step, log_tail
    run.finished = run.updated = now
    return _stop_everything(run)


def cancel_run(run: Run, now: float) -> list[tuple[str, str]]:
    """``dcnios runs cancel``: returns (step, job) of each job to delete."""
    if run.final:
        return []
    run.status, run.finished, run.updated = CANCELLED, now, now
    run.error = run.error or "cancelled by `dcnios runs cancel`"
    return _stop_everything(run)


def _stop_everything(run: Run) -> list[tuple[str, str]]:
    doomed: list[tuple[str, str]] = []
    for name, step in run.steps.items():
        for item in step.items.values():
            if item.status == RUNNING and item.job is not None:
                doomed.append((name, item.job))
            elif item.status == READY:
                item.job = None  # no job under way: a retry starts the next one
            if item.status in (READY, RUNNING):
                item.status = CANCELLED
        if step.status in (WAITING, RUNNING):
            step.status = CANCELLED
    return doomed


def retry_run(run: Run, now: float) -> bool:
    """``dcnios runs retry``: a failed or cancelled run resumes from its failed step(s).

    Items that succeeded stay done; the others get a fresh budget of tries. A failed item's next
    job has a new number (OSCAR keeps a failed job's name); a cancelled item asks for its job
    again under the same name: deleted, it is created anew; created after the delete (the call
    was under way), it is followed. Either way no second job does the same work.
    """
    if run.status not in (FAILED, CANCELLED):
        return False
    for step in run.steps.values():
        for item in step.items.values():
            if item.status == FAILED or (item.status == CANCELLED and item.job is None):
                item.status, item.tries, item.not_before, item.error = READY, 0, now, ""
            elif item.status == CANCELLED:
                item.status, item.tries, item.error = RUNNING, 1, ""
        if step.status in (FAILED, CANCELLED):
            step.status = RUNNING if step.items else WAITING
    run.status, run.error, run.failed_step, run.log_tail, run.finished = RUNNING, "", None, "", None
    run.retries += 1
    run.updated = now
    return True


# -- the wire format --------------------------------------------------------------------------
def run_to_json(run: Run) -> bytes:
    return json.dumps(asdict(run), separators=(",", ":"), sort_keys=True).encode()


def run_from_json(data: bytes) -> Run:
    """Raises ValueError on anything that is not a run record."""
    try:
        raw = json.loads(data)
        steps = {
            name: StepRun(s["status"], {k: Item(**i) for k, i in s["items"].items()})
            for name, s in raw.pop("steps").items()
        }
        return Run(steps=steps, **raw)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a run record: {exc}") from exc


def item_outputs(job: str, names: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Of (path, file name) in a step's output directory, the outputs of ``job``."""
    prefix = job + OUTPUT_SEPARATOR
    return [
        {"path": path, "name": name[len(prefix) :]} for path, name in sorted(names) if name.startswith(prefix)
    ]
