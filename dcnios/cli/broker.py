"""`dcnios broker`: run the embedded Kafka-protocol broker until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import sys

from dcnios.broker import EmbeddedBroker
from dcnios.cli._common import EXIT_OK, StopFlag, add_common

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "broker",
        help="start the embedded broker (Tansu, in-memory) and print its bootstrap address",
        description="Start Tansu on 127.0.0.1, wait until it answers metadata requests, and run "
        "until Ctrl-C or SIGTERM. Data lives in memory only.",
    )
    p.add_argument("--port", type=int, default=9092, help="listener port (default 9092; 0 picks a free one)")
    add_common(p, config=False)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    stop = StopFlag().install()
    with EmbeddedBroker(port=args.port or None) as broker:
        sys.stdout.write(f"bootstrap: {broker.bootstrap}\n")
        sys.stdout.write(
            f"  dcnios topics -c SPEC --bootstrap {broker.bootstrap}\n"
            f"  dcnios tail TOPIC -c SPEC --bootstrap {broker.bootstrap} --from-beginning\n"
        )
        sys.stdout.flush()
        while not stop.wait(0.5):
            if not broker.alive():
                sys.stderr.write("BrokerError: the embedded broker exited unexpectedly\n")
                return 1
    return EXIT_OK
