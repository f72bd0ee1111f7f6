"""The orchestrator: one member of a workflow's consumer group, on one event loop.

It subscribes to the trigger consumer's topic in the workflow's group. Owning partition p of it
means owning partition p of the runs topic: on assignment the member reads that partition to
its end (its probe comes back), resumes every run there that has not ended, and only then
starts runs for the trigger records of p. A trigger record is committed once its run's first
state is acknowledged, so a record is never lost and never starts two runs (the run id derives
from the event; a redelivered record finds its run).

Each run is a task that applies ``state.advance`` and starts a task per step item; an item task
fixes its job's name in the state (written and acknowledged) before it asks OSCAR for the job,
then follows the job through the ``RecordDriver`` like a consumer's record. A restart therefore
asks for the same job again, OSCAR answers "already exists", and the job is followed: no job is
created twice.

Blocking Kafka calls (poll, the runs-topic reader, commits) run in a worker thread; rebalance
callbacks run there too and hand over to the loop with ``run_coroutine_threadsafe``, which is
free meanwhile (it only awaits the worker).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any, Final

from confluent_kafka import Consumer, Message, TopicPartition

from dcnios.aio import loop_factory
from dcnios.codec import StorageEventCodec
from dcnios.consumers.breaker import CircuitBreaker
from dcnios.consumers.record import DeadLetter, Progress, Retry
from dcnios.consumers.tracking import OffsetTracker
from dcnios.consumers.workflows.graph import Graph
from dcnios.consumers.workflows.outputs import OutputLister
from dcnios.consumers.workflows.state import (
    READY,
    RUNNING,
    Run,
    advance,
    cancel_run,
    fail_run,
    item_failed_again,
    item_succeeded,
    new_run,
    retry_run,
    run_id_for,
    start_item,
)
from dcnios.consumers.workflows.steps import Service, StepRuntime, service_problem, step_consumer
from dcnios.consumers.workflows.store import Command, RunStore, parse_record
from dcnios.errors import (
    CodecError,
    ConfigError,
    ConfigProblem,
    DCacheError,
    DcniosError,
    KafkaError,
    OscarError,
)
from dcnios.kafka import (
    admin_client,
    cluster_metadata,
    consumer_config,
    prepare_internal_topics,
    truncated,
)
from dcnios.metrics import WorkflowMetrics
from dcnios.spec import PipelineSpec, SourceSpec, WorkflowSpec
from dcnios.storage_event import StorageEvent, dedup_key
from dcnios.topics import TopicPlan, runs_topic

__all__ = ["Orchestrator"]

logger = logging.getLogger(__name__)

_POLL: Final = 0.05
_COMMIT_INTERVAL: Final = 1.0
_REVOKE_WAIT: Final = 10.0
_WAKE_EVERY: Final = 1.0  # join timeouts and retry delays are looked at this often


class Orchestrator:
    """``run()`` blocks until ``stop`` is set (or a crash); start several to scale out."""

    def __init__(
        self,
        spec: PipelineSpec,
        workflow: WorkflowSpec,
        *,
        stop: threading.Event,
        metrics: WorkflowMetrics | None = None,
        lister: OutputLister | None = None,
        extra_config: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.workflow = workflow
        self.graph = Graph.of(workflow)
        self.trigger = spec.consumer(workflow.trigger.consumer)
        self.topic = runs_topic(spec.kafka, workflow.name)
        self.stop = threading.Event()
        self._caller_stop = stop
        self.metrics = metrics or WorkflowMetrics()
        self.codec = StorageEventCodec(spec.kafka.schema_registry)
        self.ready = threading.Event()
        self.tracker = OffsetTracker()
        self.breaker = CircuitBreaker()
        self._lister = lister
        self._extra = extra_config or {}
        self._crashed: BaseException | None = None
        self._background_stop = threading.Event()
        self.steps: dict[str, StepRuntime] = {}
        self.services: dict[str, Service] = {}
        # Loop-only state below.
        self.runs: dict[int, dict[str, Run]] = {}
        self._loaded: set[int] = set()
        self._probes: dict[int, bytes] = {}
        self._early: dict[int, list[Message]] = defaultdict(list)
        self._commands: dict[int, dict[bytes, Command]] = defaultdict(dict)
        self._drives: dict[str, asyncio.Task[None]] = {}
        self._items: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self._wakers: dict[str, asyncio.Event] = {}
        self._ended: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.store: RunStore | None = None

    # -- start -----------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        owned = sum(len(r) for r in self.runs.values())
        return self._crashed is None and not self.stop.is_set(), {
            "partitions": sorted(self.runs),
            "runs": owned,
            "ready": self.ready.is_set(),
        }

    def _connect(self) -> None:
        """Every step's service exists and has what the step needs, before anything starts."""
        problems: list[str] = []
        index = self.spec.workflows.index(self.workflow)
        interval = float(self.workflow.poll_interval)
        for j, step in enumerate(self.workflow.steps):
            at = f"workflows[{index}].steps[{j}]"
            cs = step_consumer(self.trigger, self.workflow, step)
            service = self.services.get(step.service)
            if service is None:
                try:
                    service = self.services[step.service] = Service.connect(cs, interval)
                except OscarError as exc:
                    problems.append(service_problem(exc, f"{at}.service", step.service))
                    continue
            try:
                runtime = StepRuntime(
                    step,
                    cs,
                    service,
                    start=not step.after,
                    stop=self.stop,
                    breaker=self.breaker,
                    limiter_rate=step.rate.per_second if step.rate else None,
                )
            except OscarError as exc:
                problems.append(f"{at}.service: {exc}")
                continue
            if self.graph.children[step.name] and runtime.output_path is None:
                problems.append(
                    f"{at}.output_path: service {step.service!r} has no webdav.dcache output, so "
                    "the outputs its children read cannot be listed; give output_path"
                )
            self.steps[step.name] = runtime
        if any(self.graph.children.values()) and self._lister is None:
            storage = self.workflow.storage
            assert storage is not None, "the spec requires storage when a step has children"
            source = self.spec.source(storage)
            assert isinstance(source, SourceSpec), "the spec requires a dcache storage source"
            self._lister = OutputLister(source)
        if problems:
            raise ConfigError([ConfigProblem("", p) for p in problems])

    def _prepare_topics(self) -> None:
        """The runs topic has as many partitions as the trigger topic (a run lives with its
        trigger's partition), compacted."""
        kafka = self.spec.kafka
        topics = cluster_metadata(kafka, admin_client(kafka), 10).topics
        trigger = topics.get(self.trigger.topic)
        if trigger is None:
            raise KafkaError(f"the trigger topic {self.trigger.topic} does not exist: run `dcnios topics`")
        count = len(trigger.partitions)
        existing = topics.get(self.topic)
        if existing is not None and len(existing.partitions) != count:
            raise KafkaError(
                f"{self.topic} has {len(existing.partitions)} partitions but {self.trigger.topic} has "
                f"{count}: a run lives in its trigger's partition; recreate {self.topic} with {count}"
            )
        rf = kafka.topic_defaults.replication_factor
        plan = TopicPlan(self.topic, count, rf, "run state", {"cleanup.policy": "compact"})
        prepare_internal_topics(kafka, [plan])

    def run(self) -> None:
        threading.Thread(target=self._follow_caller_stop, daemon=True, name="stop").start()
        self._prepare_topics()
        self._connect()
        threads = [service.start(self._background_stop) for service in self.services.values()]
        self.store = RunStore(self.spec.kafka, self.topic)
        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                runner.run(self._serve())
        finally:
            self._background_stop.set()
            for thread in threads:
                thread.join(5)
            self.store.close()
        if self._crashed is not None:
            raise DcniosError(f"workflow {self.workflow.name}: stopped by an error: {self._crashed!r}") from (
                self._crashed
            )

    def _follow_caller_stop(self) -> None:
        while not self.stop.wait(0.1):
            if self._caller_stop.is_set():
                self.stop.set()

    # -- the loop --------------------------------------------------------------------------
    async def _serve(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        assert self.store is not None
        store = self.store
        conf = consumer_config(
            self.spec.kafka,
            self.workflow.group or f"dcnios-wf-{self.workflow.name}",
            **self.trigger.librdkafka,
        )
        conf.update(self._extra)
        consumer = Consumer(conf)
        first = next(iter(self.steps.values()))
        background = [
            loop.create_task(store.pump(self.stop.is_set)),
            loop.create_task(
                first.driver.probe_while_open(max_delay=float(self.trigger.oscar.health_probe_max))
            ),
            loop.create_task(self._gauges()),
        ]
        consumer.subscribe(
            [self.trigger.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        last_commit = time.monotonic()
        try:
            while not self.stop.is_set():
                trigger_msgs, state_msgs = await asyncio.to_thread(self._kafka_turn, consumer)
                self._apply_state(state_msgs)
                for msg in trigger_msgs:
                    self._admit(msg)
                if time.monotonic() - last_commit >= _COMMIT_INTERVAL:
                    await asyncio.to_thread(self._commit, consumer, None)
                    last_commit = time.monotonic()
        finally:
            self.stop.set()
            tasks = [*self._tasks, *background]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for runtime in self.steps.values():
                await runtime.calls.close()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._commit, consumer, None)
            await asyncio.to_thread(consumer.close)

    def _kafka_turn(self, consumer: Consumer) -> tuple[list[Message], list[Message]]:
        """In the worker thread: trigger records (rebalance callbacks run in here), then what the
        runs topic has for the partitions this member owns."""
        assert self.store is not None
        msgs: list[Message] = []
        first = consumer.poll(_POLL)
        if first is not None:
            msgs = [first, *consumer.consume(500, 0)]
        for msg in msgs:
            if (err := msg.error()) is not None and err.fatal():
                raise KafkaError(f"{self.trigger.topic}: {err.str()}")
        state = self.store.read(0 if msgs else _POLL)
        return [m for m in msgs if m.error() is None], state

    def _commit(self, consumer: Consumer, only: set[int] | None) -> None:
        positions = self.tracker.to_commit()
        if only is not None:
            positions = {k: v for k, v in positions.items() if k[1] in only}
        if not positions:
            return
        offsets = [TopicPartition(t, p, pos) for (t, p), pos in positions.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # confluent_kafka.KafkaException: not fatal, committed again later
            logger.warning("%s: commit failed: %s", self.workflow.name, exc)
            return
        self.tracker.committed(positions)

    # -- ownership (called in the worker thread by poll) -----------------------------------
    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_loop(self._assigned([tp.partition for tp in partitions]))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        owned = [tp.partition for tp in partitions]
        self._on_loop(self._revoked(owned))
        self._commit(consumer, set(owned))
        for p in owned:
            self.tracker.forget(self.trigger.topic, p)
        assert self.store is not None
        self.store.unfollow(owned)

    def _on_loop(self, work: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        try:
            future.result(_REVOKE_WAIT + 5)
        except Exception as exc:
            self._crash(exc)

    async def _assigned(self, partitions: list[int]) -> None:
        assert self.store is not None
        store = self.store
        for p in partitions:
            self.runs[p] = {}
            self._loaded.discard(p)
        self.ready.clear()
        await asyncio.to_thread(store.follow, partitions)
        for p in partitions:
            self._probes[p] = await asyncio.to_thread(store.probe, p)
        logger.info("%s: owns partitions %s; reading their runs", self.workflow.name, partitions)

    async def _revoked(self, partitions: list[int]) -> None:
        for p in partitions:
            self._loaded.discard(p)
        gone = {p for p in partitions if p in self.runs}
        ids = {run_id for p in gone for run_id in self.runs[p]}
        tasks = [t for run_id, t in self._drives.items() if run_id in ids]
        tasks += [t for key, t in self._items.items() if key[0] in ids]
        if tasks:
            await asyncio.wait(tasks, timeout=_REVOKE_WAIT)
        for p in gone:
            for run_id in self.runs.pop(p):
                self._wakers.pop(run_id, None)
                self._drives.pop(run_id, None)
                self._ended.discard(run_id)
            for key in [k for k in self._items if k[0] in ids]:
                del self._items[key]
            self._early.pop(p, None)
            self._commands.pop(p, None)
        logger.info("%s: gave up partitions %s", self.workflow.name, sorted(gone))

    def _stale(self, run: Run) -> bool:
        return self.stop.is_set() or run.partition not in self._loaded

    # -- the runs topic --------------------------------------------------------------------
    def _apply_state(self, msgs: list[Message]) -> None:
        assert self.store is not None
        for msg in msgs:
            p = msg.partition() or 0
            if p not in self.runs:
                continue
            if RunStore.is_probe(msg, self.store.member):
                if msg.value() == self._probes.get(p) and p not in self._loaded:
                    self._partition_loaded(p)
                continue
            key, value = msg.key(), msg.value()
            if value is None and key is not None:
                self._commands[p].pop(key, None)  # a command answered
                continue
            try:
                found = parse_record(key, value)
            except ValueError as exc:
                logger.warning("%s: %s[%d]@%d: %s", self.workflow.name, self.topic, p, msg.offset(), exc)
                continue
            if isinstance(found, Run) and p not in self._loaded:
                self.runs[p][found.id] = found
            elif isinstance(found, Command):
                if p in self._loaded:
                    self._spawn(self._command(p, found))
                else:
                    self._commands[p][found.key] = found

    def _partition_loaded(self, p: int) -> None:
        self._loaded.add(p)
        runs = self.runs[p]
        resumed = [r for r in runs.values() if not r.final]
        logger.info(
            "%s: partition %d: %d runs known, %d resumed", self.workflow.name, p, len(runs), len(resumed)
        )
        for run in runs.values():
            if run.final:
                self._ended.add(run.id)
        for run in resumed:
            self._start_drive(run)
        for command in self._commands.pop(p, {}).values():
            self._spawn(self._command(p, command))
        for msg in self._early.pop(p, []):
            self._admit(msg)
        if self._loaded >= set(self.runs):
            self.ready.set()

    async def _command(self, p: int, command: Command) -> None:
        assert self.store is not None
        run = self.runs.get(p, {}).get(command.run)
        now = time.time()
        if run is None:
            logger.warning("%s: %s for unknown run %s", self.workflow.name, command.action, command.run)
        elif command.action == "cancel":
            doomed = cancel_run(run, now)
            if doomed or run.final:
                await self.store.write(run)
                self._run_ended(run)
                await self._delete_jobs(doomed)
                self._wake(run)
        elif command.action == "retry" and retry_run(run, now):
            self._ended.discard(run.id)
            await self.store.write(run)
            logger.info("%s: run %s retried from its failed step", self.workflow.name, run.id)
            self._start_drive(run)
        await self.store.clear_command(p, command.key)

    # -- trigger records -------------------------------------------------------------------
    def _admit(self, msg: Message) -> None:
        topic, p, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        if p not in self.runs:
            return  # revoked meanwhile: the next owner reads it again
        if p not in self._loaded:
            self._early[p].append(msg)
            return
        self.tracker.add(topic, p, offset)
        try:
            event = self.codec.decode(msg.value(), msg.headers(), topic)
        except CodecError as exc:
            logger.error("%s: poison record %s[%d]@%d: %s", self.workflow.name, topic, p, offset, exc)
            self._spawn(self._dead_letter(msg, str(exc)))
            return
        if not self.trigger.filter.accepts(event.path, event.mask, event.event_name):
            self.tracker.done(topic, p, offset)
            return
        run_id = run_id_for(self.workflow.name, event.source, dedup_key(event))
        if run_id in self.runs[p]:
            self.tracker.done(topic, p, offset)  # a redelivery: its run exists
            return
        trigger = {
            "path": event.path,
            "source": event.source,
            "event_id": event.event_id,
            "topic": topic,
            "partition": p,
            "offset": offset,
            "event": _event_json(event),
        }
        run = new_run(self.graph, run_id, trigger, time.time())
        self.runs[p][run_id] = run
        self._spawn(self._start(run, topic, offset))

    async def _start(self, run: Run, topic: str, offset: int) -> None:
        assert self.store is not None
        await self.store.write(run)
        self.tracker.done(topic, run.partition, offset)
        self.metrics.runs_started.labels(self.workflow.name).inc()
        logger.info("%s: run %s started by %s", self.workflow.name, run.id, run.trigger["path"])
        if run.final:
            self._run_ended(run)
        else:
            self._start_drive(run)

    async def _dead_letter(self, msg: Message, error: str) -> None:
        assert self.store is not None and self.trigger.dead_letter_topic is not None
        raw = msg.headers() or []
        headers: list[tuple[str, str | bytes | None]] = (
            list(raw.items()) if isinstance(raw, dict) else list(raw)
        )
        headers += [
            ("dcnios-error", error.encode("utf-8", "replace")[:2000]),
            ("dcnios-reason", b"poison"),
            ("dcnios-topic", (msg.topic() or "").encode()),
            ("dcnios-partition", str(msg.partition()).encode()),
            ("dcnios-offset", str(msg.offset()).encode()),
            ("dcnios-consumer", f"workflow {self.workflow.name}".encode()),
        ]
        value, cut = truncated(msg.value())
        await self.store.produce(self.trigger.dead_letter_topic, msg.key(), value, headers=headers + cut)
        self.tracker.done(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)

    # -- runs ------------------------------------------------------------------------------
    def _start_drive(self, run: Run) -> None:
        task = self._drives.get(run.id)
        if task is None or task.done():
            self._drives[run.id] = self._spawn(self._drive(run))

    def _wake(self, run: Run) -> None:
        waker = self._wakers.get(run.id)
        if waker is not None:
            waker.set()

    async def _drive(self, run: Run) -> None:
        assert self.store is not None
        waker = self._wakers.setdefault(run.id, asyncio.Event())
        while not self._stale(run):
            if advance(run, self.graph, time.time()):
                await self.store.write(run)
            if run.final:
                self._run_ended(run)
                return
            for step, item in run.items():
                key = (run.id, step, item.key)
                task = self._items.get(key)
                if item.status in (READY, RUNNING) and (task is None or task.done()):
                    self._items[key] = self._spawn(self._item(run, step, item.key))
            waker.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waker.wait(), _WAKE_EVERY)

    def _run_ended(self, run: Run) -> None:
        if run.id in self._ended:
            return
        self._ended.add(run.id)
        self.metrics.runs_ended.labels(self.workflow.name, run.status).inc()
        log = logger.info if run.status == "succeeded" else logger.warning
        log(
            "%s: run %s %s%s",
            self.workflow.name,
            run.id,
            run.status,
            f" at step {run.failed_step}: {run.error}" if run.failed_step else "",
        )

    async def _item(self, run: Run, step: str, key: str) -> None:
        """One step item, job after job, until it succeeded or failed the run."""
        assert self.store is not None
        runtime = self.steps[step]

        def stale() -> bool:
            return self._stale(run) or run.final

        event = _trigger_event(run)
        item = run.steps[step].items[key]

        def moved(job: str | None) -> bool:
            """Whether the run went on without this task while it waited (failed, cancelled,
            revoked): what it learnt then must not be written over what happened since."""
            return stale() or item.status != RUNNING or item.job != job

        while not stale():
            if item.status == READY:
                delay = item.not_before - time.time()
                if delay > 0 and not await runtime.driver.sleep(delay, stale):
                    return
                start_item(run, self.graph, step, key, time.time())
                await self.store.write(run)  # the job's name is durable before the job exists
                if stale():
                    return
            elif item.status != RUNNING:
                return
            call = runtime.call(run, event, item)
            if isinstance(call, DeadLetter):
                await self._fail(run, step, key, call.error, "")
                return
            progress = Progress(attempt=max(item.tries, 1), job_try=item.attempt)
            job = item.job
            decision = await runtime.driver.decide(call, progress, stale=stale)
            if decision is None or moved(job):
                return
            if isinstance(decision, DeadLetter):
                await self._fail(run, step, key, decision.error, decision.log_tail)
                return
            self.metrics.overhead.labels(self.workflow.name).observe(
                max(0.0, time.time() - max(item.ready_at, item.not_before)) if item.tries == 1 else 0.0
            )
            assert job is not None
            end = await runtime.driver.job_end(job, stale)
            if end is None or moved(job):
                return
            if end.succeeded:
                outputs = await self._outputs(runtime, job, stale)
                if outputs is None or moved(job):
                    return
                now = time.time()
                item_succeeded(run, step, key, outputs, now)
                advance(run, self.graph, now)
                await self.store.write(run)
                self.metrics.step_jobs.labels(self.workflow.name, step, "succeeded").inc()
                self.metrics.step_latency.labels(self.workflow.name, step).observe(now - item.ready_at)
                self._wake(run)
                return
            self.metrics.step_jobs.labels(self.workflow.name, step, "failed").inc()
            after = runtime.policy.after_job(end, item.tries)
            if isinstance(after, Retry):
                now = time.time()
                logger.warning(
                    "%s: run %s step %s: %s; job %d of %d in %.1fs",
                    self.workflow.name,
                    run.id,
                    step,
                    after.error,
                    item.tries + 1,
                    runtime.spec.retry.max_attempts,
                    after.delay,
                )
                item_failed_again(run, step, key, after.error, not_before=now + after.delay, now=now)
                await self.store.write(run)
                continue
            assert isinstance(after, DeadLetter)
            await self._fail(run, step, key, after.error, after.log_tail)
            return

    async def _outputs(
        self, runtime: StepRuntime, job: str, stale: Callable[[], bool]
    ) -> list[dict[str, str]] | None:
        """The job's outputs, when a step runs after this one; asked again while dCache fails."""
        if not self.graph.children[runtime.spec.name]:
            return []
        assert self._lister is not None and runtime.output_path is not None
        delay = 1.0
        while True:
            try:
                return await asyncio.to_thread(self._lister.outputs, runtime.output_path, job)
            except DCacheError as exc:
                logger.warning("%s: listing the outputs of %s failed: %s", self.workflow.name, job, exc)
            if not await runtime.driver.sleep(delay, stale):
                return None
            delay = min(delay * 2, 60.0)

    async def _fail(self, run: Run, step: str, key: str, error: str, log_tail: str) -> None:
        assert self.store is not None
        if run.final:
            return
        doomed = fail_run(run, step, key, error, log_tail, now=time.time())
        await self.store.write(run)
        self._run_ended(run)
        await self._delete_jobs(doomed)
        self._wake(run)

    async def _delete_jobs(self, doomed: list[tuple[str, str]]) -> None:
        """Cancel jobs under way: ``DELETE /system/logs/{service}/{job}``."""
        for step, job in doomed:
            invoker = self.steps[step].service.invoker
            try:
                await asyncio.to_thread(invoker.delete_job, job)
                self.metrics.step_jobs.labels(self.workflow.name, step, "cancelled").inc()
            except OscarError as exc:
                logger.warning("%s: job %s could not be deleted: %s", self.workflow.name, job, exc)

    # -- housekeeping ----------------------------------------------------------------------
    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._crash(exc)

    def _crash(self, exc: BaseException) -> None:
        if self._crashed is None:
            logger.error("%s: stopping on an unexpected error", self.workflow.name, exc_info=exc)
            self._crashed = exc
        self.stop.set()

    async def _gauges(self) -> None:
        name = self.workflow.name
        while not self.stop.is_set():
            counts = dict.fromkeys(WorkflowMetrics.RUN_STATES, 0)
            for runs in self.runs.values():
                for run in runs.values():
                    counts[run.status] = counts.get(run.status, 0) + 1
            for state, count in counts.items():
                self.metrics.runs.labels(name, state).set(count)
            await asyncio.sleep(1.0)


def _event_json(event: StorageEvent) -> dict[str, Any]:
    """The event as the run state's JSON keeps it: an S3 or Rucio event's original notification
    (bytes, what its native body is) as base64."""
    raw = event.to_avro()
    if raw.get("original") is not None:
        raw["original"] = base64.b64encode(raw["original"]).decode("ascii")
    return raw


def _trigger_event(run: Run) -> StorageEvent:
    raw = dict(run.trigger["event"])
    raw["mask"] = tuple(raw.get("mask") or ())
    if isinstance(raw.get("original"), str):
        raw["original"] = base64.b64decode(raw["original"])
    return StorageEvent(**raw)
