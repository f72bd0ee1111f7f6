"""`dcnios dlq replay NAME`: send a consumer's dead letters back through its OSCAR service."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from dcnios.cli._common import EXIT_FAILURE, EXIT_OK, StopFlag, add_common, load_spec_arg
from dcnios.codec import StorageEventCodec
from dcnios.consumers.oscar import Attempt, OscarInvoker, job_id_for, payload_for, traceparent_for
from dcnios.errors import CodecError, ConfigError, KafkaError
from dcnios.kafka import consumer_config
from dcnios.spec import ConsumerSpec
from dcnios.storage_event import StorageEvent

__all__ = ["register"]

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
    try:
        cs = spec.consumer(args.name)
    except KeyError:
        raise ConfigError(f"no consumer named {args.name!r}") from None
    assert cs.dead_letter_topic is not None
    stop = StopFlag().install()
    codec = StorageEventCodec(spec.kafka.schema_registry)
    invoker = OscarInvoker(cs.oscar, 1)
    consumer = Consumer(consumer_config(spec.kafka, f"{cs.group}-dlq-replay", **cs.librdkafka))
    _assign_from_committed(consumer, cs.dead_letter_topic)
    replayed = skipped = 0
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
                event = codec.decode(msg.value(), msg.headers(), cs.topic)
            except CodecError as exc:
                logger.warning("%s: poison record, not replayable (%s); it stays in the DLQ", where, exc)
                skipped += 1
                _commit(consumer, msg)
                continue
            attempt = _replay_one(invoker, cs, event, stop.event)
            if not attempt.ok:
                sys.stderr.write(f"OscarError: {where} ({event.path}) failed again: {attempt.error}\n")
                return EXIT_FAILURE
            _commit(consumer, msg)
            replayed += 1
            sys.stderr.write(f"\rreplayed {replayed}" + (f"/{args.max}" if args.max else "") + " ")
    finally:
        consumer.close()
    sys.stderr.write("\n")
    sys.stdout.write(f"{args.name}: replayed {replayed} dead letters; {skipped} poison records skipped\n")
    return EXIT_OK


def _replay_one(
    invoker: OscarInvoker, cs: ConsumerSpec, event: StorageEvent, stop: threading.Event
) -> Attempt:
    """One record, with the consumer's retry policy."""
    headers = {"traceparent": traceparent_for(event)}
    if cs.oscar.job_id == "deterministic":
        headers["X-Delegated-Job-ID"] = job_id_for(event, cs.oscar.service)
    delay = float(cs.retry.initial_backoff)
    for attempt_no in range(1, cs.retry.max_attempts + 1):
        attempt = invoker.invoke(payload_for(event, cs.payload), headers)
        if attempt.ok or not attempt.retryable or attempt_no == cs.retry.max_attempts or stop.wait(delay):
            return attempt
        delay = min(delay * 2, float(cs.retry.max_backoff))
    raise AssertionError("max_attempts is at least 1")


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
