"""`dcnios dlq replay NAME`: send a consumer's dead letters back through its OSCAR service."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from dcnios.cli._common import EXIT_FAILURE, EXIT_OK, StopFlag, add_common, consumer_arg, load_spec_arg
from dcnios.codec import StorageEventCodec
from dcnios.consumers.oscar import OscarInvoker
from dcnios.consumers.record import DeadLetter, RecordReader
from dcnios.consumers.replay import Replayer
from dcnios.errors import CodecError, KafkaError
from dcnios.kafka import consumer_config

__all__ = ["register"]

#: Dead-letter reasons that a replay cannot change: the file cannot be staged, or the endpoint
#: redirects. They are reported and stepped over.
_PERMANENT = frozenset({"unstageable", "config"})

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dlq", help="work with a consumer's dead-letter topic", description="Dead-letter topic tools."
    )
    verbs = p.add_subparsers(title="verbs", metavar="VERB", required=True)
    r = verbs.add_parser(
        "replay",
        help="re-invoke a consumer's dead letters (own group; stops when caught up)",
        description="Read the consumer's dead_letter_topic in group <group>-dlq-replay and "
        "invoke its OSCAR service for each record, with the consumer's retry policy. "
        "Progress is committed, so a second run continues where the first stopped.",
    )
    r.add_argument("name", help="consumer name")
    add_common(r, bootstrap=True)
    r.add_argument("--max", type=int, metavar="N", help="replay at most N records")
    r.add_argument(
        "--idle-exit", type=float, default=3.0, metavar="S", help="stop after S seconds with nothing new"
    )
    r.set_defaults(run=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    spec = load_spec_arg(args.config, args.bootstrap)
    cs = consumer_arg(spec, args.name)
    assert cs.dead_letter_topic is not None
    stop = StopFlag().install()
    reader = RecordReader(cs, StorageEventCodec(spec.kafka.schema_registry))
    replayer = Replayer(cs, OscarInvoker(cs.oscar, 1))
    consumer = Consumer(consumer_config(spec.kafka, f"{cs.group}-dlq-replay", **cs.librdkafka))
    _assign_from_committed(consumer, cs.dead_letter_topic)
    replayed = skipped = unstageable = 0
    last = time.monotonic()
    try:
        while not stop.is_set() and (args.max is None or replayed < args.max):
            msg = consumer.poll(0.2)
            if msg is None:
                if time.monotonic() - last > args.idle_exit:
                    break
                continue
            if (err := msg.error()) is not None:
                raise KafkaError(f"{cs.dead_letter_topic}: {err.str()}")
            last = time.monotonic()
            where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
            try:
                event = reader.read(msg)
            except CodecError as exc:
                logger.warning("%s: poison record, not replayable (%s); it stays in the DLQ", where, exc)
                skipped += 1
                _commit(consumer, msg)
                continue
            decision = replayer.run(event, stop.event)
            last = time.monotonic()
            if decision is None:
                break  # stopped: this dead letter stays uncommitted
            if isinstance(decision, DeadLetter) and decision.reason in _PERMANENT:
                # No retry can stage this file or fix the endpoint: step over it, or every later
                # run would stop here.
                logger.warning("%s (%s): skipped, %s: %s", where, event.path, decision.reason, decision.error)
                unstageable += 1
                _commit(consumer, msg)
                continue
            if isinstance(decision, DeadLetter):
                sys.stderr.write(f"OscarError: {where} ({event.path}) failed again: {decision.error}\n")
                return EXIT_FAILURE
            _commit(consumer, msg)
            replayed += 1
            sys.stderr.write(f"\rreplayed {replayed}" + (f"/{args.max}" if args.max else "") + " ")
    finally:
        replayer.close()
        consumer.close()
    sys.stderr.write("\n")
    sys.stdout.write(
        f"{args.name}: replayed {replayed} dead letters; {skipped} poison records and "
        f"{unstageable} that cannot be staged or sent (unstageable, config) skipped\n"
    )
    return EXIT_OK


def _assign_from_committed(consumer: Consumer, topic: str) -> None:
    """Read every partition from the replay group's committed offsets, without joining the group
    (a join takes about half the session timeout, and one replayer needs no rebalancing)."""
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise KafkaError(f"dead-letter topic {topic!r} does not exist (run `dcnios topics`)")
    committed = consumer.committed([TopicPartition(topic, p) for p in metadata.partitions], timeout=10)
    consumer.assign(
        [
            TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
            for tp in committed
        ]
    )


def _commit(consumer: Consumer, msg: Message) -> None:
    consumer.commit(message=msg, asynchronous=False)
