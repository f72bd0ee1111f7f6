"""``dcnios-consumer``: one member of a consumer group that invokes an OSCAR service."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from dcnios.cli._common import (
    EXIT_OK,
    StopFlag,
    add_common,
    consumer_arg,
    limit_malloc_arenas,
    load_spec_arg,
    parser_class,
    run_main,
)
from dcnios.metrics import ConsumerMetrics, serve_metrics

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = parser_class()(
        prog="dcnios-consumer",
        description="Run one member of consumers[NAME]'s group: invoke OSCAR for each record, at least "
        "once, in per-key order, at the group's rate. Start more processes to scale out.",
        epilog="SIGTERM/SIGINT stop fetching, drain in-flight calls (drain_timeout), commit and exit 0.",
    )
    add_common(parser, bootstrap=True)
    parser.add_argument("--consumer", metavar="NAME", required=True, help="which consumers[] entry to run")
    parser.add_argument(
        "--metrics-port", type=int, metavar="P", help="serve /metrics and /healthz on this port"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    from dcnios.consumers.run import ConsumerRunner

    spec = load_spec_arg(args.config, args.bootstrap)
    consumer = consumer_arg(spec, args.consumer, "--consumer")
    if spec.nifi is not None and consumer.name in spec.nifi.consumers:
        logger.warning(
            "%s is listed under nifi.consumers; running it here too doubles the invocations", consumer.name
        )
    stop = StopFlag().install()
    metrics = ConsumerMetrics()
    runner = ConsumerRunner(spec, consumer, stop=stop.event, metrics=metrics)
    if args.metrics_port is not None:
        serve_metrics(metrics.registry, args.metrics_port, runner.health)
        logger.info("metrics on http://127.0.0.1:%d/metrics, health on /healthz", args.metrics_port)
    runner.run()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    limit_malloc_arenas()
    return run_main(build_parser(), argv, _run)
