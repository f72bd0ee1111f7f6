"""What every dcnios command shares: logging, error reporting, exit codes, stop signals."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Final

from dcnios.errors import ConfigError, DcniosError
from dcnios.spec import ConsumerSpec, PipelineSpec, load_spec

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "StopFlag",
    "add_common",
    "configure_logging",
    "consumer_arg",
    "limit_malloc_arenas",
    "load_spec_arg",
    "run_main",
]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
logger = logging.getLogger(__name__)


def add_common(
    parser: argparse.ArgumentParser, *, config: bool = True, required: bool = True, bootstrap: bool = False
) -> None:
    """The flags every command shares; ``bootstrap`` adds ``--bootstrap`` for commands that talk to Kafka."""
    if config:
        parser.add_argument("-c", "--config", metavar="FILE", required=required, help="pipeline spec (YAML)")
    if bootstrap:
        parser.add_argument("--bootstrap", metavar="HOST:PORT", help="override kafka.bootstrap_servers")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and DEBUG logs")


_M_ARENA_MAX: Final = -8  # glibc mallopt() parameter


def limit_malloc_arenas(arenas: int = 1) -> None:
    """Cap glibc's malloc arenas before any thread starts.

    glibc gives each thread (librdkafka's and ours) its own arena; in a long-running process with
    a dozen threads the fragmented arenas more than double the RSS (104-115 MB instead of 48 MB
    after 30k events in the producer benchmark, where even two arenas were not enough). Every
    thread but the run loop mostly waits, so one arena costs little. Does nothing without glibc.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return  # the user chose
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas)


def configure_logging(level: str, debug: bool) -> None:
    if logging.getLogger().handlers:
        return  # an embedding application configured logging already
    logging.basicConfig(
        level=logging.DEBUG if debug else getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def load_spec_arg(path: str, bootstrap: str | None = None) -> PipelineSpec:
    spec = load_spec(path)
    return spec.with_bootstrap(bootstrap) if bootstrap else spec


def consumer_arg(spec: PipelineSpec, name: str, option: str = "") -> ConsumerSpec:
    """``spec.consumer(name)``, or a ConfigError listing the consumers there are."""
    try:
        return spec.consumer(name)
    except KeyError:
        names = ", ".join(c.name for c in spec.consumers) or "none"
        where = f"{option}: " if option else ""
        raise ConfigError(f"{where}no consumer named {name!r} (consumers: {names})") from None


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise _Usage(message)


def parser_class() -> type[argparse.ArgumentParser]:
    return _Parser


def run_main(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    dispatch: Callable[[argparse.Namespace], int],
) -> int:
    """Parse, run, and turn errors into ``ErrorType: message`` with the right exit code."""
    try:
        args = parser.parse_args(argv)
    except _Usage as exc:
        sys.stderr.write(f"UsageError: {exc}\n")
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    debug = bool(getattr(args, "debug", False))
    configure_logging(getattr(args, "log_level", "INFO"), debug)
    try:
        return dispatch(args)
    except ConfigError as exc:
        _report(exc, debug)
        return EXIT_USAGE
    except DcniosError as exc:
        _report(exc, debug)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: still no traceback without --debug
        _report(exc, debug)
        return EXIT_FAILURE


def _report(exc: BaseException, debug: bool) -> None:
    if debug:
        logger.error("%s", type(exc).__name__, exc_info=exc)
    sys.stderr.write(f"{type(exc).__name__}: {exc}\n")


class StopFlag:
    """SIGINT/SIGTERM set the flag; a second signal hard-stops with exit status 130."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, object] = {}

    def install(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set():
            logger.warning("second %s: stopping now", signal.Signals(signum).name)
            # SystemExit would wait for every worker thread, and one stuck in a call would keep
            # the process alive: at once means without them. Nothing acknowledged is lost by it
            # (offsets and checkpoints only ever pass what is done); unfinished work is redone.
            logging.shutdown()
            os._exit(130)
        logger.info("%s: stopping (send it again to stop at once)", signal.Signals(signum).name)
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)
