"""`dcnios topics`: create every topic the spec names (idempotent)."""

from __future__ import annotations

import argparse
import sys

from dcnios.cli._common import EXIT_OK, add_common, load_spec_arg
from dcnios.kafka import ensure_topics
from dcnios.topics import topic_plan

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "topics",
        help="create every topic the spec names (sources, routes, DLQs, internal); idempotent",
        description="Create missing topics with the spec's partitions; existing topics are left as they are.",
    )
    add_common(p, bootstrap=True)
    p.add_argument("--dry-run", action="store_true", help="list the topics without creating them")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    spec = load_spec_arg(args.config, args.bootstrap)
    plans = topic_plan(spec)
    if args.dry_run:
        for plan in plans:
            sys.stdout.write(f"{plan.name}\t{plan.partitions} partitions\t{plan.purpose}\n")
        return EXIT_OK
    result = ensure_topics(spec.kafka, plans)
    for plan in plans:
        sys.stdout.write(f"{result[plan.name]:8} {plan.name} ({plan.partitions} partitions) {plan.purpose}\n")
    return EXIT_OK
