"""`dcnios up`: the whole spec on this machine, with a live view (or log lines when not a TTY)."""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Final

from dcnios.cli._common import EXIT_FAILURE, EXIT_OK, StopFlag, add_common, load_spec_arg
from dcnios.cli._detach import READY_MARK, detach
from dcnios.cli._detach import stop as stop_background
from dcnios.consumers.workflows.state import FINAL_RUN_STATES
from dcnios.errors import ConfigError
from dcnios.stack import Stack

__all__ = ["register"]

logger = logging.getLogger(__name__)

READY_TIMEOUT: Final = 60.0
_RECENT_LINES: Final = 8


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "up",
        help="run the whole spec locally: embedded broker, sandbox stand-ins, producers, consumers",
        description="Start everything the spec needs in one supervised process: the embedded broker "
        "when kafka.bootstrap_servers is absent, the topics, the sandbox dCache and OSCAR when the "
        "spec has a sandbox block, one producer per source and one consumer per consumer entry "
        "(NiFi-routed ones are skipped). A failed runner is restarted with backoff. Ctrl-C or SIGTERM "
        "stops producers first, then consumers (drained and committed), then the rest.",
        epilog="Example: dcnios up -c examples/demo.yaml --seed 24 --once",
    )
    add_common(p, bootstrap=True)
    p.add_argument(
        "--seed",
        type=int,
        metavar="N",
        default=0,
        help="once running, write N sample files into sandbox.dcache.root (something to watch)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="with --seed: wait until every sample file was processed, print a summary, exit "
        "(0 when nothing was lost and every job succeeded)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        metavar="S",
        help="how long --once, --detach and --stop wait (default 180)",
    )
    p.add_argument("--plain", action="store_true", help="log lines instead of the live view")
    p.add_argument(
        "--interval", type=float, default=5.0, metavar="S", help="seconds between plain status lines"
    )
    p.add_argument("--broker-port", type=int, metavar="P", help="port of the embedded broker (default: free)")
    p.add_argument("--metrics-port", type=int, metavar="P", help="serve every runner's /metrics here")
    background = p.add_mutually_exclusive_group()
    background.add_argument(
        "--detach",
        action="store_true",
        help="run in the background and return once the pipeline is up (within --timeout); "
        "pid and log go to .dcnios/ next to the spec",
    )
    background.add_argument(
        "--stop",
        action="store_true",
        help="stop the background run of this spec in order, waiting up to --timeout",
    )
    p.set_defaults(run=run)


# -- seeding and accounting ----------------------------------------------------------------------
def seed_files(root: str, count: int) -> list[str]:
    """Write ``count`` small CSV files into ``root``; returns their names."""
    stamp = time.strftime("%H%M%S")
    rng = random.Random()  # noqa: S311 - sample data, not secrets
    names = []
    for i in range(count):
        name = f"sample-{stamp}-{i:03d}.csv"
        rows = [f"{j},{rng.uniform(-40, 40):.3f},{rng.randint(0, 1000)}" for j in range(rng.randint(5, 50))]
        with open(os.path.join(root, name), "w", encoding="utf-8") as handle:
            handle.write("reading,temperature,counts\n" + "\n".join(rows) + "\n")
        names.append(name)
    return names


@dataclass
class Accounting:
    """Which sample files reached a finished job, from the sandbox OSCAR's job records."""

    seeded: list[str]
    #: Failed jobs a file may have before it is settled: a tracked consumer runs a failed job
    #: again (retry.max_attempts), an untracked one never learns that it failed.
    attempts: int = 1
    jobs_by_file: dict[str, list[str]] = field(default_factory=dict)
    dead_letters: int = 0

    #: With workflows: each seeded file's run state ("" until its run started).
    runs_by_file: dict[str, str] = field(default_factory=dict)

    def update(self, stack: Stack) -> None:
        self.dead_letters = int(stack.metric("dcnios_consumer_dead_letters_total"))
        if stack.spec.workflows:
            runs = {os.path.basename(str(r.trigger.get("path"))): r.status for r in stack.workflow_runs()}
            self.runs_by_file = {name: runs.get(name, "") for name in self.seeded}
        self.jobs_by_file = {name: [] for name in self.seeded}
        for service in stack.oscar.services.values():
            for job in list(service.jobs.values()):
                try:
                    name = json.loads(job.event)["event"]["name"]
                except (ValueError, KeyError, TypeError):
                    continue
                if name in self.jobs_by_file and job.status in ("Succeeded", "Failed"):
                    self.jobs_by_file[name].append(job.status)

    @property
    def done(self) -> bool:
        if self.runs_by_file:
            return all(state in FINAL_RUN_STATES for state in self.runs_by_file.values())
        states = [self.jobs_by_file.get(n, []) for n in self.seeded]
        if not all(self._settled(s) for s in states):
            return False
        # A file whose last attempt failed is settled once its record is in the DLQ.
        given_up = sum(1 for s in states if "Succeeded" not in s)
        return self.attempts == 1 or self.dead_letters >= given_up

    def _settled(self, states: list[str]) -> bool:
        return "Succeeded" in states or states.count("Failed") >= self.attempts

    def summary(self, stack: Stack) -> dict[str, Any]:
        if self.runs_by_file:
            return self._runs_summary(stack)
        processed = [n for n in self.seeded if "Succeeded" in self.jobs_by_file.get(n, [])]
        jobs = sum(len(v) for v in self.jobs_by_file.values())
        totals = stack.jobs.totals
        return {
            "files_seeded": len(self.seeded),
            "events_published": stack.events_published(),
            "jobs_run": jobs,
            "jobs_failed": sum(v.count("Failed") for v in self.jobs_by_file.values()),
            "script_errors": totals.script_errors,
            "outputs_written": totals.outputs,
            # A retry after a failed job is not a duplicate; a second successful job is.
            "duplicates": sum(max(0, v.count("Succeeded") - 1) for v in self.jobs_by_file.values()),
            "dead_letters": int(stack.metric("dcnios_consumer_dead_letters_total")),
            "lost": len(self.seeded) - len(processed),
            "missing": [n for n in self.seeded if n not in processed],
        }

    def _runs_summary(self, stack: Stack) -> dict[str, Any]:
        done = [n for n, state in self.runs_by_file.items() if state == "succeeded"]
        totals = stack.jobs.totals
        return {
            "files_seeded": len(self.seeded),
            "runs_succeeded": len(done),
            "runs_failed": sum(1 for s in self.runs_by_file.values() if s in ("failed", "cancelled")),
            "jobs_run": totals.succeeded + totals.failed,
            "jobs_failed": totals.failed,
            "script_errors": totals.script_errors,
            "outputs_written": totals.outputs,
            "lost": len(self.seeded) - len(done),
            "missing": [n for n in self.seeded if n not in done],
        }


# -- the view ------------------------------------------------------------------------------------
class _Recent(logging.Handler):
    """Keeps the last notable log lines (warnings, rate and control changes) for the live view."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=_RECENT_LINES)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING or "control:" in message:
            self.lines.append(f"{time.strftime('%H:%M:%S')} {record.levelname.lower()}: {message}")


@dataclass
class _Rates:
    """Per-second rates from successive counter readings."""

    last: dict[str, tuple[float, float]] = field(default_factory=dict)

    def rate(self, key: str, value: float) -> float:
        now = time.monotonic()
        before = self.last.get(key)
        self.last[key] = (now, value)
        if before is None or now - before[0] <= 0:
            return 0.0
        return max(0.0, (value - before[1]) / (now - before[0]))


def _rate_text(value: float) -> str:
    return "unlimited" if value < 0 else f"{value:g}/s"


def snapshot(stack: Stack, rates: _Rates) -> dict[str, Any]:
    m = stack.metric
    sources = []
    for c in stack.iter_components("source"):
        records = m("dcnios_producer_records_total", source=c.name)
        sources.append(
            {
                "name": c.name,
                "state": _state(c),
                "events_per_s": rates.rate(f"s:{c.name}", records),
                "records": int(records),
                "last_event_id": int(m("dcnios_producer_last_event_id", source=c.name)),
                "gaps": int(m("dcnios_producer_gaps_total", source=c.name)),
                "restarts": c.restarts,
            }
        )
    consumers = []
    for c in stack.iter_components("consumer"):
        ok = m("dcnios_consumer_invocations_total", consumer=c.name)
        consumers.append(
            {
                "name": c.name,
                "state": _state(c),
                "invocations_per_s": rates.rate(f"c:{c.name}", ok),
                "invocations": int(ok),
                "in_flight": int(m("dcnios_consumer_in_flight", consumer=c.name)),
                "lag": int(m("dcnios_consumer_lag", consumer=c.name)),
                "rate_limit": _rate_text(m("dcnios_consumer_group_rate_limit", consumer=c.name)),
                "paused": bool(m("dcnios_consumer_paused", consumer=c.name)),
                "retries": int(m("dcnios_consumer_retries_total", consumer=c.name)),
                "dlq": int(m("dcnios_consumer_dead_letters_total", consumer=c.name)),
                "oscar_down": bool(m("dcnios_consumer_oscar_down", consumer=c.name)),
                "jobs_running": int(m("dcnios_consumer_followed_jobs", consumer=c.name)),
                "jobs_failed": int(m("dcnios_consumer_jobs_total", consumer=c.name, state="Failed")),
                "restarts": c.restarts,
            }
        )
    jobs = None
    if stack.jobs is not None:
        t = stack.jobs.totals
        jobs = {
            "succeeded": t.succeeded,
            "failed": t.failed,
            "script_errors": t.script_errors,
            "outputs": t.outputs,
        }
    return {"sources": sources, "consumers": consumers, "sandbox_jobs": jobs}


def _consumer_state(c: dict[str, Any]) -> str:
    if c["oscar_down"]:
        return "OSCAR down: calls held"
    return "paused" if c["paused"] else str(c["state"])


def _state(component: Any) -> str:
    if component.last_error and not component.ready:
        return f"restarting ({component.restarts}): {component.last_error}"[:80]
    return "running" if component.ready else "starting"


def _render(snap: dict[str, Any], recent: list[str]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    sources = Table(title="sources (dCache → Kafka)", expand=True, title_justify="left")
    for col in ("source", "state", "events/s", "records", "last id", "gaps", "restarts"):
        sources.add_column(col, justify="left" if col in ("source", "state") else "right")
    for s in snap["sources"]:
        sources.add_row(
            s["name"],
            s["state"],
            f"{s['events_per_s']:.1f}",
            str(s["records"]),
            str(s["last_event_id"]),
            str(s["gaps"]),
            str(s["restarts"]),
        )
    consumers = Table(title="consumers (Kafka → OSCAR)", expand=True, title_justify="left")
    for col in (
        "consumer",
        "state",
        "calls/s",
        "calls",
        "in flight",
        "jobs running",
        "jobs failed",
        "lag",
        "rate",
        "retries",
        "DLQ",
    ):
        consumers.add_column(col, justify="left" if col in ("consumer", "state", "rate") else "right")
    for c in snap["consumers"]:
        consumers.add_row(
            c["name"],
            _consumer_state(c),
            f"{c['invocations_per_s']:.1f}",
            str(c["invocations"]),
            str(c["in_flight"]),
            str(c["jobs_running"]),
            str(c["jobs_failed"]),
            str(c["lag"]),
            c["rate_limit"],
            str(c["retries"]),
            str(c["dlq"]),
        )
    parts: list[Any] = [sources, consumers]
    if snap["sandbox_jobs"] is not None:
        j = snap["sandbox_jobs"]
        parts.append(
            Text(
                f"sandbox OSCAR jobs: {j['succeeded']} succeeded, {j['failed']} failed, "
                f"{j['script_errors']} script errors, {j['outputs']} outputs collected"
            )
        )
    parts.append(Text("\n".join(recent) or "(no warnings)", style="dim"))
    parts.append(Text("Ctrl-C stops everything in order.", style="dim"))
    return Group(*parts)


def _plain_line(snap: dict[str, Any]) -> str:
    bits = [
        f"source {s['name']}: {s['state']}, {s['events_per_s']:.1f} ev/s, {s['records']} records, "
        f"last id {s['last_event_id']}, {s['gaps']} gaps"
        for s in snap["sources"]
    ]
    bits += [
        f"consumer {c['name']}: {_consumer_state(c)}, "
        f"{c['invocations_per_s']:.1f} calls/s, {c['in_flight']} in flight, "
        f"{c['jobs_running']} jobs running, {c['jobs_failed']} failed, lag {c['lag']}, "
        f"rate {c['rate_limit']}, {c['retries']} retries, {c['dlq']} DLQ"
        for c in snap["consumers"]
    ]
    return "; ".join(bits)


# -- the command ---------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    if args.stop:
        return stop_background(args)
    if args.detach:
        if args.once:
            raise ConfigError("--detach cannot be combined with --once (which waits in the foreground)")
        load_spec_arg(args.config, args.bootstrap)  # a bad spec fails here, not in the background
        return detach(args, _forwarded(args))
    if args.once and args.seed <= 0:
        raise ConfigError("--once needs --seed N (the files whose processing it waits for)")
    spec = load_spec_arg(args.config, args.bootstrap)
    if args.seed and (spec.sandbox is None or spec.sandbox.dcache is None or spec.sandbox.oscar is None):
        raise ConfigError("--seed: the spec needs sandbox.dcache and sandbox.oscar to seed and count files")
    live = not args.plain and not args.once and sys.stdout.isatty()
    recent = _Recent()
    logging.getLogger().addHandler(recent)
    stop = StopFlag().install()
    stack = Stack(spec, base_dir=os.path.dirname(os.path.abspath(args.config)), broker_port=args.broker_port)
    stack.start()
    try:
        if stack.skipped:
            logger.info("skipped (NiFi-routed): %s", ", ".join(stack.skipped))
        if args.metrics_port is not None:
            from dcnios.metrics import serve_metrics

            serve_metrics(stack.registry, args.metrics_port)
        if not stack.wait_ready(READY_TIMEOUT, stop.event):
            if stop.is_set():
                return EXIT_OK
            late = [
                f"{c.kind} {c.name}: {c.last_error or 'not ready'}" for c in stack.components if not c.ready
            ]
            logger.error("not ready after %.0fs: %s", READY_TIMEOUT, "; ".join(late))
            return EXIT_FAILURE
        logger.info("%s %s", READY_MARK, _plain_line(snapshot(stack, _Rates())))
        accounting = None
        if args.seed:
            assert spec.sandbox is not None and spec.sandbox.dcache is not None
            root = os.path.normpath(os.path.join(stack.base_dir, spec.sandbox.dcache.root))
            tracked = [c.retry.max_attempts for c in spec.consumers if c.oscar.tracking]
            accounting = Accounting(seed_files(root, args.seed), attempts=max(tracked, default=1))
            logger.info(
                "wrote %d sample files into %s; drop more files there to process them", args.seed, root
            )
        if args.once:
            assert accounting is not None
            return _run_once(stack, accounting, stop, args.timeout)
        if live:
            _live(stack, stop, recent)
        else:
            _plain(stack, stop, args.interval)
        return EXIT_OK
    finally:
        logger.info("stopping: producers, then consumers, then the rest")
        stack.stop()


def _forwarded(args: argparse.Namespace) -> list[str]:
    """The flags the background run keeps. INFO at least: --detach waits for its "pipeline up" line."""
    flags = ["--log-level", "DEBUG" if args.debug or args.log_level == "DEBUG" else "INFO"]
    for flag, value in (
        ("--bootstrap", args.bootstrap),
        ("--broker-port", args.broker_port),
        ("--metrics-port", args.metrics_port),
    ):
        if value is not None:
            flags += [flag, str(value)]
    if args.seed:
        flags += ["--seed", str(args.seed)]
    return [*flags, "--interval", str(args.interval)]


def _run_once(stack: Stack, accounting: Accounting, stop: StopFlag, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    rates = _Rates()
    next_line = 0.0
    while time.monotonic() < deadline and not stop.is_set():
        accounting.update(stack)
        if accounting.done:
            break
        if time.monotonic() >= next_line:
            logger.info("%s", _plain_line(snapshot(stack, rates)))
            next_line = time.monotonic() + 2
        stop.wait(0.2)
    accounting.update(stack)
    summary = accounting.summary(stack)
    width = max(len(k) for k in summary)
    lines = [
        f"  {k.replace('_', ' '):<{width}}  {v if k != 'missing' else ', '.join(v) or '-'}"
        for k, v in summary.items()
    ]
    sys.stdout.write("summary:\n" + "\n".join(lines) + "\n")
    sys.stdout.flush()
    ok = summary["lost"] == 0 and summary["jobs_failed"] == 0 and summary["script_errors"] == 0
    if not ok:
        logger.error("not everything was processed: see the summary above")
    return EXIT_OK if ok else EXIT_FAILURE


def _plain(stack: Stack, stop: StopFlag, interval: float) -> None:
    rates = _Rates()
    while not stop.wait(interval):
        logger.info("%s", _plain_line(snapshot(stack, rates)))


def _live(stack: Stack, stop: StopFlag, recent: _Recent) -> None:
    from rich.live import Live

    # The live view owns the terminal: stderr log lines would tear it, so they go to the panel.
    root = logging.getLogger()
    streams = [h for h in root.handlers if type(h) is logging.StreamHandler]
    for handler in streams:
        root.removeHandler(handler)
    rates = _Rates()
    try:
        with Live(_render(snapshot(stack, rates), list(recent.lines)), refresh_per_second=4) as view:
            while not stop.wait(1.0):
                view.update(_render(snapshot(stack, rates), list(recent.lines)))
    finally:
        for handler in streams:
            root.addHandler(handler)
