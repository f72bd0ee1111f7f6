"""One step's calls: its policy, driver and job follower, and the body each of its jobs gets.

A step job is carried like a consumer's record, by ``RecordDriver`` (concurrency slot, breaker,
rate, Retry-After, call retries under the same job name) and ``RecordPolicy`` (what a failed
call or job leads to), with a consumer spec derived from the trigger consumer and the step. The
only difference: the job name comes from the run's state (run, step, item, attempt), not from
the event.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace

from dcnios.consumers.breaker import CircuitBreaker
from dcnios.consumers.calls import OscarCalls
from dcnios.consumers.driver import RecordDriver
from dcnios.consumers.jobs import JobWatch
from dcnios.consumers.oscar import OscarInvoker
from dcnios.consumers.ratelimit import RateLimiter
from dcnios.consumers.record import DeadLetter, Prepared, RecordPolicy, input_path_for
from dcnios.consumers.workflows.state import Item, Run
from dcnios.errors import OscarError
from dcnios.spec import ConsumerSpec, RetrySpec, StepSpec, WorkflowSpec
from dcnios.storage_event import StorageEvent

__all__ = ["Service", "StepCall", "StepPolicy", "StepRuntime", "reference_body", "step_consumer"]

DCACHE_PROVIDER = "webdav.dcache"


@dataclass(frozen=True, slots=True)
class StepCall(Prepared):
    """A step job's body, for the trigger's event (its trace), under the name the run chose."""

    job: str


class StepPolicy(RecordPolicy):
    def job_for(self, prepared: Prepared, job_try: int) -> str | None:
        assert isinstance(prepared, StepCall), "a step's calls carry their job name"
        return prepared.job


def step_consumer(trigger: ConsumerSpec, workflow: WorkflowSpec, step: StepSpec) -> ConsumerSpec:
    """The trigger consumer's cluster and credentials, with the step's service, retry, rate and
    concurrency; jobs always named by the run and followed to their end."""
    oscar = replace(
        trigger.oscar,
        service=step.service,
        job_id="deterministic",
        track_jobs=True,
        max_pending_jobs=None,
        input_path=trigger.oscar.input_path if step.service == trigger.oscar.service else None,
    )
    retry = RetrySpec(step.retry.max_attempts, step.retry.initial_backoff, step.retry.max_backoff)
    return replace(
        trigger,
        name=f"{workflow.name}.{step.name}",
        oscar=oscar,
        rate=step.rate,
        concurrency=step.concurrency,
        retry=retry,
    )


@dataclass
class Service:
    """What steps running one service share: the blocking client and the job listing poller."""

    invoker: OscarInvoker
    watch: JobWatch
    definition: dict[str, object]

    @classmethod
    def connect(cls, cs: ConsumerSpec, interval: float) -> Service:
        """Reads the service definition: an unknown service fails here, before any run starts.

        Raises:
            OscarError: the service does not exist, or OSCAR refuses the credentials.
        """
        invoker = OscarInvoker(cs.oscar, cs.concurrency)
        definition = invoker.service_definition()
        watch = JobWatch(invoker, interval=interval, deadline=float(cs.oscar.job_timeout))
        return cls(invoker, watch, definition)

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(
            target=self.watch.run, args=(stop,), daemon=True, name=f"jobs-{self.invoker.spec.service}"
        )
        thread.start()
        return thread

    def output_path(self) -> str | None:
        """The first webdav.dcache output of the service (where its supervisor uploads)."""
        for entry in self.definition.get("output") or ():  # type: ignore[attr-defined]
            if isinstance(entry, dict) and entry.get("storage_provider") == DCACHE_PROVIDER:
                path = entry.get("path")
                if isinstance(path, str):
                    return "/" + path.strip("/")
        return None


class StepRuntime:
    def __init__(
        self,
        spec: StepSpec,
        cs: ConsumerSpec,
        service: Service,
        *,
        start: bool,
        stop: threading.Event,
        breaker: CircuitBreaker,
        limiter_rate: float | None,
    ) -> None:
        self.spec = spec
        self.cs = cs
        self.service = service
        self.output_path = spec.output_path or service.output_path()
        # The start step sends the triggering event as the trigger consumer would (its payload,
        # native by default): a dCache event needs the service's webdav.dcache input path.
        input_path = input_path_for(cs, service.invoker.input_path) if start else None
        self.policy = StepPolicy(cs, input_path=input_path, tracking=True)
        self.calls = OscarCalls(service.invoker, concurrency=cs.concurrency)
        self.driver = RecordDriver(
            self.policy,
            self.calls,
            stop=stop,
            breaker=breaker,
            limiter=RateLimiter(limiter_rate),
            watch=service.watch,
        )

    def call(self, run: Run, event: StorageEvent, item: Item) -> StepCall | DeadLetter:
        """What the item's current job is sent: the triggering file's dCache event for a start
        step (staged by the supervisor), else references to its inputs."""
        assert item.job is not None
        if not self.spec.after:
            prepared = self.policy.prepare(event)
            if isinstance(prepared, DeadLetter):
                return prepared
            return StepCall(event, prepared.body, item.job)
        return StepCall(event, reference_body(run, self.spec.name, item), item.job)


def reference_body(run: Run, step: str, item: Item) -> bytes:
    """The job's input as storage references, never copies: faas-supervisor writes any JSON it
    does not recognise as a storage event to $INPUT_FILE_PATH (events/unknown.py), so the script
    reads this document and fetches what it needs. No top-level ``event`` key: that would read as
    a delegated event (events/__init__.py ``_is_delegated_event``)."""
    document = {
        "dcnios_workflow": {
            "workflow": run.workflow,
            "run": run.id,
            "step": step,
            "item": item.key,
            "trigger": run.trigger.get("path"),
            "inputs": [
                {"step": ref["step"], "storage_provider": DCACHE_PROVIDER, "path": ref["path"]}
                for ref in item.inputs
            ],
        }
    }
    return json.dumps(document, separators=(",", ":")).encode()


def service_problem(exc: OscarError, at: str, service: str) -> str:
    if exc.status == 404:
        return f"{at}: OSCAR has no service {service!r}"
    return f"{at}: cannot read service {service!r}: {exc}"
