"""`dcnios rate|pause|resume`: change a consumer group at runtime through the control topic."""

from __future__ import annotations

import argparse
import sys

from dcnios.cli._common import EXIT_OK, add_common, consumer_arg, load_spec_arg
from dcnios.control import write_control
from dcnios.errors import ConfigError
from dcnios.spec import PipelineSpec

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rate",
        help="set a consumer group's rate at runtime (every member within 1 s)",
        description="Write the group's new rate to the control topic. 'spec' goes back to "
        "the spec's rate; 'unlimited' removes the limit.",
    )
    p.add_argument("name", help="consumer name")
    p.add_argument("rate", help="'<number>/s|/m|/h', 'unlimited' or 'spec'")
    add_common(p, bootstrap=True)
    p.set_defaults(run=run_rate)
    for verb, paused in (("pause", True), ("resume", False)):
        q = sub.add_parser(
            verb,
            help=f"{verb} a consumer group's invocations at runtime",
            description=f"{verb.capitalize()} every member of the group within 1 s.",
        )
        q.add_argument("name", help="consumer name")
        add_common(q, bootstrap=True)
        q.set_defaults(run=run_pause, paused=paused)


def _check(spec: PipelineSpec, name: str) -> None:
    consumer_arg(spec, name)


def run_rate(args: argparse.Namespace) -> int:
    spec = load_spec_arg(args.config, args.bootstrap)
    _check(spec, args.name)
    try:
        write_control(spec.kafka, args.name, rate=args.rate.strip())
    except ValueError as exc:
        raise ConfigError(f"rate: {exc}, 'unlimited' or 'spec'") from None
    sys.stdout.write(f"{args.name}: rate {args.rate}\n")
    return EXIT_OK


def run_pause(args: argparse.Namespace) -> int:
    spec = load_spec_arg(args.config, args.bootstrap)
    _check(spec, args.name)
    write_control(spec.kafka, args.name, paused=args.paused)
    sys.stdout.write(f"{args.name}: {'paused' if args.paused else 'resumed'}\n")
    return EXIT_OK
