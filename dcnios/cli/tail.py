"""`dcnios tail`: print a topic's records as JSON lines, decoded from either wire format."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, Message, TopicPartition

from dcnios.cli._common import EXIT_OK, StopFlag, add_common, load_spec_arg
from dcnios.codec import SCHEMA_HEADER, StorageEventCodec
from dcnios.errors import CodecError, KafkaError
from dcnios.kafka import consumer_config
from dcnios.storage_event import V1_FIELDS

__all__ = ["record_json", "register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tail",
        help="print a topic's records as JSON lines (StorageEvent Avro, JSON, or base64)",
        description="Read a topic without joining a group or committing anything.",
    )
    p.add_argument("topic")
    add_common(p, bootstrap=True)
    p.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest record (default: new ones)"
    )
    p.add_argument("--max", type=int, metavar="N", help="stop after N records")
    p.add_argument("--idle-exit", type=float, metavar="SECONDS", help="stop after this long without a record")
    p.set_defaults(run=run)


def _text(raw: bytes | str | None) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode()


def record_json(msg: Message, codec: StorageEventCodec) -> dict[str, Any]:
    """One record as a JSON-ready dict; the value decoded as far as it can be."""
    raw_headers = msg.headers() or []
    headers = list(raw_headers.items()) if isinstance(raw_headers, dict) else raw_headers
    value = msg.value()
    out: dict[str, Any] = {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp": msg.timestamp()[1],
        "key": _text(msg.key()),
        "headers": {k: _text(v.encode() if isinstance(v, str) else v) for k, v in headers},
    }
    is_event = any(k == SCHEMA_HEADER for k, _ in headers) or (codec.confluent and value and value[0] == 0)
    if is_event:
        try:
            event = codec.decode(value, headers, msg.topic() or "")
            datum = event.to_avro()
            if not event.extended:  # a dCache record: its v1 fields, as before v2
                datum = {k: datum[k] for k in V1_FIELDS}
            elif datum["original"] is not None:  # the notification: text if it is, else base64
                datum["original"] = _text(datum["original"])
            out["value"] = datum
            return out
        except CodecError as exc:
            out["decode_error"] = str(exc)
    if value is None:
        out["value"] = None
        return out
    try:
        out["value"] = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        out["value"] = _text(value)
    return out


def run(args: argparse.Namespace) -> int:
    spec = load_spec_arg(args.config, args.bootstrap)
    codec = StorageEventCodec(spec.kafka.schema_registry)
    # A throw-away group id: tail never commits, so it never disturbs a real group.
    conf = consumer_config(spec.kafka, f"dcnios-tail-{uuid.uuid4().hex[:8]}")
    consumer = Consumer(conf)
    stop = StopFlag().install()
    try:
        try:
            metadata = consumer.list_topics(args.topic, timeout=10)
        except KafkaException as exc:
            raise KafkaError(f"cannot reach {spec.kafka.bootstrap_servers}: {exc.args[0].str()}") from exc
        topic_md = metadata.topics.get(args.topic)
        if topic_md is None or topic_md.error is not None or not topic_md.partitions:
            raise KafkaError(f"topic {args.topic!r} does not exist")
        start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
        consumer.assign([TopicPartition(args.topic, p, start) for p in sorted(topic_md.partitions)])
        seen = 0
        last = time.monotonic()
        while not stop.is_set() and (args.max is None or seen < args.max):
            msg = consumer.poll(0.2)
            if msg is None:
                if args.idle_exit is not None and time.monotonic() - last > args.idle_exit:
                    break
                continue
            if (err := msg.error()) is not None:
                raise KafkaError(f"{args.topic}: {err.str()}")
            sys.stdout.write(json.dumps(record_json(msg, codec), ensure_ascii=False) + "\n")
            sys.stdout.flush()
            seen += 1
            last = time.monotonic()
    finally:
        consumer.close()
    return EXIT_OK
