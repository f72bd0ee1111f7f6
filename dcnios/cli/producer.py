"""``dcnios-producer``: storage events → Avro records on Kafka, one thread per source (dCache SSE,
S3 bucket notifications, and every other kind a spec names)."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence

from dcnios.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    StopFlag,
    add_common,
    limit_malloc_arenas,
    load_spec_arg,
    parser_class,
    run_main,
)
from dcnios.errors import ConfigError
from dcnios.metrics import ProducerMetrics, serve_metrics

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = parser_class()(
        prog="dcnios-producer",
        description="Follow storage events (dCache SSE, S3 bucket notifications from a Kafka topic, a "
        "webhook or SQS) and publish them as Avro records on Kafka. At least once: a dCache checkpoint "
        "advances, and an upstream message is acknowledged, only past acknowledged records.",
        epilog="SIGTERM/SIGINT flush, write the checkpoint and exit 0; a second signal stops at once.",
    )
    add_common(parser, bootstrap=True)
    parser.add_argument("--source", metavar="NAME", help="run only this source (default: every source)")
    parser.add_argument(
        "--metrics-port", type=int, metavar="P", help="serve Prometheus /metrics on this port"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    from dcnios.producers.relay import RelayRunner
    from dcnios.producers.run import SourceRunner
    from dcnios.producers.sources import runner_for

    spec = load_spec_arg(args.config, args.bootstrap)
    sources = [s for s in spec.sources if args.source in (None, s.name)]
    if not sources:
        names = ", ".join(s.name for s in spec.sources) or "none"
        raise ConfigError(f"--source: no source named {args.source!r} (sources: {names})")
    stop = StopFlag().install()
    metrics = ProducerMetrics()
    if args.metrics_port is not None:
        serve_metrics(metrics.registry, args.metrics_port)
        logger.info("metrics on http://127.0.0.1:%d/metrics", args.metrics_port)
    failures: list[BaseException] = []

    def work(runner: SourceRunner | RelayRunner) -> None:
        try:
            runner.run()
        except BaseException as exc:  # reported below; the other sources stop too
            failures.append(exc)
            logger.error("%s: %s: %s", runner.source.name, type(exc).__name__, exc, exc_info=args.debug)
            stop.event.set()

    runners = [runner_for(spec, s, stop=stop.event, metrics=metrics) for s in sources]
    threads = [threading.Thread(target=work, args=(r,), name=f"source-{r.source.name}") for r in runners]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(0.2)
    if failures:
        exc = failures[0]
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        return EXIT_FAILURE
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    limit_malloc_arenas()
    return run_main(build_parser(), argv, _run)
