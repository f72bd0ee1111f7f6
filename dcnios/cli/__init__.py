"""The ``dcnios`` command. Each subcommand lives in its own module with ``register``/``run``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from dcnios import __version__
from dcnios.cli import (
    broker,
    control,
    dlq,
    doctor,
    k8s,
    nifi,
    replay,
    runs,
    sandbox,
    schema,
    status,
    tail,
    topics,
    up,
    validate,
    workflow,
)
from dcnios.cli._common import parser_class, run_main

__all__ = ["build_parser", "main"]

_SUBCOMMANDS = (
    up,
    status,
    doctor,
    validate,
    schema,
    topics,
    tail,
    broker,
    control,
    replay,
    dlq,
    nifi,
    k8s,
    sandbox,
    workflow,
    runs,
)


def build_parser() -> argparse.ArgumentParser:
    parser = parser_class()(
        prog="dcnios",
        description="dCache storage events -> Kafka -> OSCAR serverless jobs, with nothing lost.",
        epilog="Exit codes: 0 ok, 1 runtime failure, 2 usage or config error. "
        "Run 'dcnios COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"dcnios {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module in _SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run_main(parser, argv, lambda args: int(args.run(args)))
