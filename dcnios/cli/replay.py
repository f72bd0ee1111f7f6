"""`dcnios replay NAME --from TIME`: re-invoke a time window of a consumer's records."""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime
from typing import Any

from dcnios.cli._common import EXIT_FAILURE, EXIT_OK, StopFlag, add_common, consumer_arg, load_spec_arg
from dcnios.consumers.replay import replay_window
from dcnios.errors import ConfigError

__all__ = ["parse_time", "register"]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="re-invoke a consumer's service for the records of a time window (own group)",
        description="Re-drive the records a consumer's topic received between --from and --to "
        "(Kafka timestamps) whose path matches --path, into the consumer's OSCAR service. It runs "
        "in group <group>-replay, so the live group is not disturbed; the consumer's filter, rate, "
        "concurrency, retry policy and job tracking apply, and an event present twice is invoked once. "
        "Job ids carry a new generation (the replay's start time), so OSCAR runs every job again "
        "instead of answering 'already exists'.",
        epilog="TIME: ISO 8601 (2026-11-22T10:00:00Z; without a zone it is local time), 'now', or "
        "an age such as 90m, 2h, 1d.",
    )
    p.add_argument("name", help="consumer name")
    add_common(p, bootstrap=True)
    p.add_argument("--from", dest="start", required=True, metavar="TIME", help="window start")
    p.add_argument("--to", dest="end", default="now", metavar="TIME", help="window end (default now)")
    p.add_argument("--path", metavar="GLOB", help="only paths matching this glob (** crosses directories)")
    p.set_defaults(run=run)


def parse_time(text: str, *, now: float | None = None, option: str = "--from") -> int:
    """Epoch milliseconds from an ISO time, 'now', or an age like '2h'."""
    now = time.time() if now is None else now
    value = text.strip()
    if value == "now":
        return int(now * 1000)
    match = _RELATIVE.match(value)
    if match:
        return int((now - float(match.group(1)) * _UNIT[match.group(2)]) * 1000)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{option}: expected an ISO 8601 time, 'now' or an age like 2h, got {text!r}"
        ) from None
    return int(parsed.timestamp() * 1000)


def run(args: argparse.Namespace) -> int:

    spec = load_spec_arg(args.config, args.bootstrap)
    cs = consumer_arg(spec, args.name)
    start_ms = parse_time(args.start, option="--from")
    end_ms = parse_time(args.end, option="--to")
    if end_ms < start_ms:
        raise ConfigError(f"--to ({args.end}) is before --from ({args.start})")
    stop = StopFlag().install()
    with _progress_bar() as progress:
        result = replay_window(
            spec, cs, start_ms, end_ms, path_glob=args.path, stop=stop.event, progress=progress
        )
    sys.stdout.write(
        f"{cs.name}: {result.invoked} invoked, {result.filtered} filtered out, {result.duplicates} "
        f"duplicates skipped, {result.poison} poison, {len(result.failed)} failed "
        f"(of {result.scanned} records in the window; job generation {result.generation})\n"
    )
    for failure in result.failed:
        sys.stderr.write(f"OscarError: {failure}\n")
    return EXIT_FAILURE if result.failed else EXIT_OK


class _progress_bar:
    """A rich progress bar on a terminal; nothing otherwise (the summary line still comes)."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _progress_bar:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self._bar = Progress(console=Console(stderr=True), transient=True)
            self._bar.start()
        return self

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            return
        if self._task is None:
            self._task = self._bar.add_task("replaying", total=total)
        self._bar.update(self._task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
