"""`dcnios up --detach` and `--stop`: one background `dcnios up` per spec, found by a pid file.

The pid file and the log live next to the spec, in ``.dcnios/``, named after the spec file, so two
specs in one directory run side by side and ``--stop`` needs nothing but ``-c FILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from dcnios.cli._common import EXIT_FAILURE, EXIT_OK
from dcnios.errors import ConfigError

__all__ = ["Background", "detach", "stop"]

logger = logging.getLogger(__name__)

#: What the foreground `dcnios up` logs once every runner is ready (see up.run).
READY_MARK: Final = "pipeline up:"
_LAUNCH: Final = "import sys; from dcnios.cli import main; sys.exit(main(sys.argv[1:]))"


@dataclass(frozen=True)
class Background:
    """Where the background run of one spec keeps its pid and its log."""

    spec: str

    @property
    def directory(self) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(self.spec)), ".dcnios")

    @property
    def pid_file(self) -> str:
        return os.path.join(self.directory, f"{self._stem}.up.pid")

    @property
    def log_file(self) -> str:
        return os.path.join(self.directory, f"{self._stem}.up.log")

    @property
    def _stem(self) -> str:
        return os.path.splitext(os.path.basename(self.spec))[0]

    def running_pid(self) -> int | None:
        """The pid of this spec's background run, or None (a stale pid file is removed)."""
        try:
            with open(self.pid_file, encoding="utf-8") as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError):
            return None
        if _is_our_up(pid, self.spec):
            return pid
        # The process is gone, or the pid was reused by an unrelated process: never signal that.
        _remove(self.pid_file)
        return None


def _is_our_up(pid: int, spec: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = [a.decode("utf-8", "replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return False
    return "up" in argv and os.path.abspath(spec) in argv


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def detach(args: argparse.Namespace, forwarded: Sequence[str]) -> int:
    """Start `dcnios up` in the background and return once it is up (or has failed)."""
    where = Background(args.config)
    pid = where.running_pid()
    if pid is not None:
        raise ConfigError(
            f"--detach: {args.config} is already running in the background (pid {pid}); "
            f"stop it with: dcnios up -c {args.config} --stop"
        )
    os.makedirs(where.directory, exist_ok=True)
    # -P: the working directory stays off sys.path (a checkout's ./dcnios would shadow the install).
    argv = [
        sys.executable,
        "-P",
        "-c",
        _LAUNCH,
        "up",
        "-c",
        os.path.abspath(args.config),
        "--plain",
        *forwarded,
    ]
    with open(where.log_file, "ab") as log:
        start = log.tell()
        # A session of its own: the terminal's Ctrl-C and hang-up do not reach it.
        child = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    with open(where.pid_file, "w", encoding="utf-8") as handle:
        handle.write(f"{child.pid}\n")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if READY_MARK in _read_from(where.log_file, start):
            sys.stdout.write(
                f"dcnios up running in the background (pid {child.pid})\n"
                f"  log:  {where.log_file}\n"
                f"  stop: dcnios up -c {args.config} --stop\n"
            )
            return EXIT_OK
        if child.poll() is not None:
            _remove(where.pid_file)
            logger.error(
                "the background dcnios up exited with status %d before it was up; its log (%s) ends:\n%s",
                child.returncode,
                where.log_file,
                _tail(_read_from(where.log_file, start)),
            )
            return EXIT_FAILURE
        time.sleep(0.2)
    logger.error(
        "the background dcnios up (pid %d) is not up after %.0fs; it keeps trying. Log: %s; "
        "stop it with: dcnios up -c %s --stop",
        child.pid,
        args.timeout,
        where.log_file,
        args.config,
    )
    return EXIT_FAILURE


def stop(args: argparse.Namespace) -> int:
    """Stop this spec's background run in order (SIGTERM) and wait for it to exit."""
    where = Background(args.config)
    pid = where.running_pid()
    if pid is None:
        sys.stdout.write(f"{args.config}: no background dcnios up is running\n")
        return EXIT_OK
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not _is_our_up(pid, args.config):
            _remove(where.pid_file)
            sys.stdout.write(f"stopped dcnios up (pid {pid}); log: {where.log_file}\n")
            return EXIT_OK
        time.sleep(0.2)
    logger.error(
        "dcnios up (pid %d) is still stopping after %.0fs (consumers drain in-flight calls); "
        "run --stop again to stop it at once (a second SIGTERM)",
        pid,
        args.timeout,
    )
    return EXIT_FAILURE


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
