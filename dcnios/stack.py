"""Everything a spec needs on one machine, supervised: ``dcnios up``.

Start order: embedded broker (when ``kafka.bootstrap_servers`` is absent) → topics → sandbox OSCAR
→ sandbox dCache → consumers → producers. Stop order is the reverse of the data flow: producers
first (they flush and checkpoint), then consumers (they drain and commit), then the stand-ins, then
the broker. A runner that fails is restarted with backoff; each restart is counted and shown.
"""

from __future__ import annotations

import errno
import functools
import gc
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry

from dcnios.broker import EMBEDDED_CONSUMER_SETTINGS, EmbeddedBroker
from dcnios.errors import ConfigError
from dcnios.kafka import ensure_topics
from dcnios.metrics import ConsumerMetrics, ProducerMetrics
from dcnios.spec import AnySourceSpec, ConsumerSpec, PipelineSpec
from dcnios.topics import topic_plan

__all__ = ["ComponentState", "Stack"]

logger = logging.getLogger(__name__)

RESTART_BACKOFF: Final = 1.0
RESTART_BACKOFF_MAX: Final = 30.0


class _Runner(Protocol):
    ready: threading.Event

    def run(self) -> None: ...


@dataclass
class ComponentState:
    """One supervised runner (a source's producer or a consumer group member)."""

    kind: str  # "source" | "consumer"
    name: str
    factory: Callable[[threading.Event], _Runner]
    stop: threading.Event = field(default_factory=threading.Event)
    runner: _Runner | None = None
    thread: threading.Thread | None = None
    restarts: int = 0
    last_error: str | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def ready(self) -> bool:
        return self.runner is not None and self.runner.ready.is_set()

    def supervise(self) -> None:
        backoff = RESTART_BACKOFF
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.runner = self.factory(self.stop)
                self.runner.run()
            except Exception as exc:  # the supervisor's job: report, back off, start again
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.error("%s %s failed: %s; restarting in %.0fs", self.kind, self.name, exc, backoff)
            else:
                if not self.stop.is_set():
                    self.last_error = "stopped unexpectedly"
                    logger.error("%s %s stopped by itself; restarting", self.kind, self.name)
            if self.stop.is_set():
                break
            self.restarts += 1
            if time.monotonic() - started > 60:
                backoff = RESTART_BACKOFF
            self.stop.wait(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
        self.finished.set()


def _sandbox_path(base_dir: str, path: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def _bind_error(key: str, port: int, exc: OSError) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"{key}: port {port} is already in use (pick another, or stop what holds it)")
    return ConfigError(f"{key}: cannot listen on port {port}: {exc.strerror}")


class Stack:
    """The broker, the stand-ins and every runner of one spec. ``start()`` then ``stop()``."""

    def __init__(self, spec: PipelineSpec, *, base_dir: str = ".", broker_port: int | None = None) -> None:
        self.spec = spec
        self.base_dir = base_dir
        self.broker_port = broker_port
        self.registry = CollectorRegistry()
        self.producer_metrics = ProducerMetrics(self.registry)
        self.consumer_metrics = ConsumerMetrics(self.registry)
        self.components: list[ComponentState] = []
        self.skipped: list[str] = []
        self.broker: Any = None
        self.dcache: Any = None
        self.oscar: Any = None
        self.jobs: Any = None  # the sandbox JobRunner, when sandbox.oscar is set
        self._door_pki: Any = None  # the sandbox WebDAV door's throwaway CA
        self._watcher: Any = None
        self._started: list[Callable[[], None]] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start everything, or undo what was started and raise with the reason."""
        try:
            self._check_sandbox_paths()
            self._start_broker()
            result = ensure_topics(self.spec.kafka, topic_plan(self.spec))
            created = [t for t, r in result.items() if r == "created"]
            if created:
                logger.info("created topics: %s", ", ".join(created))
            self._start_dcache()  # first: the sandbox OSCAR's jobs stage from its WebDAV door
            self._start_oscar()
            self._start_runners()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Producers, then consumers, then stand-ins, then the broker. Idempotent."""
        for kind in ("source", "consumer"):
            group = [c for c in self.components if c.kind == kind]
            for component in group:
                component.stop.set()
            for component in group:
                if component.thread is not None:
                    component.thread.join()
                component.runner = None
        # Destroy the runners' librdkafka handles now, while the broker still answers them.
        gc.collect()
        while self._started:
            undo = self._started.pop()
            try:
                undo()
            except Exception as exc:  # keep stopping the rest
                logger.warning("while stopping: %s", exc)

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- views -------------------------------------------------------------------------------
    def all_ready(self) -> bool:
        return all(c.ready for c in self.components)

    def wait_ready(self, timeout: float, stop: threading.Event | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.all_ready():
                return True
            if stop is not None and stop.wait(0.1):
                return False
            time.sleep(0.05)
        return self.all_ready()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def events_published(self) -> int:
        """Records the producers wrote to event topics (not gap or .invalid records)."""
        from dcnios.topics import gaps_topic

        total = self.metric("dcnios_producer_records_total")
        return int(total - self.metric("dcnios_producer_records_total", topic=gaps_topic(self.spec.kafka)))

    def iter_components(self, kind: str) -> Iterator[ComponentState]:
        return (c for c in self.components if c.kind == kind)

    # -- pieces ------------------------------------------------------------------------------
    def _check_sandbox_paths(self) -> None:
        sandbox = self.spec.sandbox
        if sandbox is None:
            return
        if sandbox.dcache is not None:
            root = _sandbox_path(self.base_dir, sandbox.dcache.root)
            if not os.path.isdir(root):
                raise ConfigError(f"sandbox.dcache.root: directory not found: {root}")
        if sandbox.oscar is not None:
            for i, service in enumerate(sandbox.oscar.services):
                script = _sandbox_path(self.base_dir, service.script)
                if not os.path.isfile(script):
                    raise ConfigError(f"sandbox.oscar.services[{i}].script: file not found: {script}")
            output = _sandbox_path(self.base_dir, sandbox.oscar.output)
            try:
                os.makedirs(output, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"sandbox.oscar.output: cannot create {output}: {exc.strerror}") from exc

    def _start_broker(self) -> None:
        if self.spec.kafka.bootstrap_servers is not None:
            return
        self.broker = EmbeddedBroker(self.broker_port).start()
        # Everything was flushed and committed before this runs; Tansu keeps nothing on disk,
        # and it waits for idle client connections, so do not wait long for it.
        self._started.append(lambda: self.broker.stop(timeout=1.0))
        self.spec = self.spec.with_bootstrap(self.broker.bootstrap)

    def _start_oscar(self) -> None:
        sandbox = self.spec.sandbox
        if sandbox is None or sandbox.oscar is None:
            return
        from dcnios.sandbox.oscar import OscarEmulator
        from dcnios.sandbox.supervisor import JobRunner, ScriptService, WebdavDoor

        spec = sandbox.oscar
        webdav = None
        if self.dcache is not None and sandbox.dcache is not None:
            door = self.dcache.webdav_door
            assert door is not None and self._door_pki is not None
            webdav = WebdavDoor(
                door, sandbox.dcache.username, sandbox.dcache.password.reveal(), str(self._door_pki.ca)
            )
        self.jobs = JobRunner(
            {
                s.name: ScriptService(s.name, _sandbox_path(self.base_dir, s.script), s.input)
                for s in spec.services
            },
            _sandbox_path(self.base_dir, spec.output),
            webdav=webdav,
            workers=spec.workers,
            timeout=float(spec.job_timeout),
        )
        self._started.append(self.jobs.shutdown)
        try:
            self.oscar = OscarEmulator(
                admin=(spec.username, spec.password.reveal()), port=spec.port, executor=self.jobs
            )
        except OSError as exc:
            raise _bind_error("sandbox.oscar.port", spec.port, exc) from exc
        for service in spec.services:
            self.oscar.add_service(service.name, input_path=service.input)
        self.oscar.start()
        self._started.append(self.oscar.stop)
        logger.info("sandbox OSCAR on %s (services: %s)", self.oscar.endpoint, ", ".join(self.jobs.services))

    def _start_dcache(self) -> None:
        sandbox = self.spec.sandbox
        if sandbox is None or sandbox.dcache is None:
            return
        from dcnios.sandbox.dcache import DCacheEmulator
        from dcnios.sandbox.localfs import DirectoryEvents
        from dcnios.sandbox.tls import make_pki

        spec = sandbox.dcache
        root = _sandbox_path(self.base_dir, spec.root)
        # The WebDAV door speaks HTTPS (OSCAR's supervisor only does https://), with a CA made
        # for this run and trusted by the sandbox's jobs only.
        pki_dir = tempfile.mkdtemp(prefix="dcnios-door-")
        self._started.append(functools.partial(shutil.rmtree, pki_dir, ignore_errors=True))
        self._door_pki = make_pki(Path(pki_dir), "127.0.0.1")
        try:
            self.dcache = DCacheEmulator(
                {spec.username: spec.password.reveal()},
                port=spec.port,
                files_root=root,
                webdav_tls=(str(self._door_pki.cert), str(self._door_pki.key)),
            )
        except OSError as exc:
            raise _bind_error("sandbox.dcache.port", spec.port, exc) from exc
        self.dcache.start()
        self._started.append(self.dcache.stop)
        self._watcher = DirectoryEvents(self.dcache, root).start()
        self._started.append(self._watcher.stop)
        logger.info("sandbox dCache on %s over %s", self.dcache.endpoint, root)

    def _consumer_runner(self, consumer: ConsumerSpec, stop: threading.Event) -> _Runner:
        from dcnios.consumers.run import ConsumerRunner

        given = {**self.spec.kafka.librdkafka, **consumer.librdkafka}
        embedded = EMBEDDED_CONSUMER_SETTINGS if self.broker is not None else {}
        extra = {k: v for k, v in embedded.items() if k not in given}
        return ConsumerRunner(
            self.spec, consumer, stop=stop, metrics=self.consumer_metrics, extra_config=extra
        )

    def _source_runner(self, source: AnySourceSpec, stop: threading.Event) -> _Runner:
        from dcnios.producers.sources import runner_for

        embedded = EMBEDDED_CONSUMER_SETTINGS if self.broker is not None else {}
        given = self.spec.kafka.librdkafka
        settings = {k: v for k, v in embedded.items() if k not in given}
        return runner_for(
            self.spec, source, stop=stop, metrics=self.producer_metrics, consumer_settings=settings
        )

    def _start_runners(self) -> None:
        spec = self.spec
        nifi = set(spec.nifi.consumers) if spec.nifi is not None else set()
        for consumer in spec.consumers:
            if consumer.name in nifi:
                self.skipped.append(consumer.name)
                logger.info(
                    "consumer %s is routed through NiFi (dcnios deploy-nifi); not run here", consumer.name
                )
                continue
            self.components.append(
                ComponentState(
                    "consumer",
                    consumer.name,
                    functools.partial(self._consumer_runner, consumer),
                )
            )
        for source in spec.sources:
            self.components.append(
                ComponentState(
                    "source",
                    source.name,
                    functools.partial(self._source_runner, source),
                )
            )
        for component in self.components:
            component.thread = threading.Thread(
                target=component.supervise, name=f"{component.kind}-{component.name}", daemon=True
            )
            component.thread.start()
