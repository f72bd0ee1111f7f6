"""What an operator asks of a running deployment: ``dcnios status``.

Everything here is read from Kafka, so it works against any deployment, not only ``dcnios up``:
checkpoints and gaps per source; committed offsets, lag, control state and DLQ depth per
consumer. End offsets are read past the reported high watermark, because a broker may
under-report it (Tansu does after idempotent batches): the lag shown is the lag that exists.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from confluent_kafka import Consumer, KafkaException, TopicPartition

from dcnios.consumers.oscar import OscarInvoker
from dcnios.errors import KafkaError
from dcnios.kafka import LatchedProducer, admin_client, cluster_metadata, consumer_config, producer_config
from dcnios.producers.upstream_sqs import sqs_client
from dcnios.spec import (
    AnySourceSpec,
    KafkaSpec,
    PipelineSpec,
    RucioSourceSpec,
    S3NotificationsSourceSpec,
    SourceSpec,
)
from dcnios.topics import gaps_topic, invalid_topic

__all__ = [
    "ConsumerStatus",
    "PartitionLag",
    "SourceStatus",
    "partition_extents",
    "pipeline_status",
]

_READ_TIMEOUT: Final = 15.0


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None  # None: the group has committed nothing here
    end: int
    lag: int


@dataclass(frozen=True)
class SourceStatus:
    name: str
    topic: str
    checkpoint_event_id: int | None
    checkpoint_channel: str | None
    checkpoint_age_s: float | None
    gaps: int
    last_gap: dict[str, Any] | None
    type: str = "dcache"
    #: A relayed source's upstream (``kafka topic minio.events``, ``sqs <url>``, ``webhook <url>``).
    upstream: str | None = None
    #: Messages the upstream holds that are not relayed yet (a Kafka topic's lag for the source's
    #: group, an SQS queue's visible + in-flight messages); None where it cannot be known.
    upstream_waiting: int | None = None
    #: Records in ``<topic>.invalid`` (bad input reported there).
    invalid: int = 0


@dataclass(frozen=True)
class ConsumerStatus:
    name: str
    group: str
    topic: str
    group_state: str
    members: list[dict[str, Any]]
    lag: int
    partitions: list[PartitionLag]
    rate: str
    rate_source: str  # "spec" | "control"
    paused: bool
    dead_letter_topic: str
    dlq_depth: int
    nifi: bool = False
    #: GET /health of the consumer's OSCAR: what its circuit breaker probes before calls resume.
    oscar: str = "-"
    notes: list[str] = field(default_factory=list)


def _reader(kafka: KafkaSpec, group: str | None = None) -> Consumer:
    """A consumer that never joins its group: it only assigns partitions and reads offsets."""
    conf = consumer_config(kafka, group or f"dcnios-status-{uuid.uuid4().hex[:8]}")
    conf["enable.partition.eof"] = "true"
    return Consumer(conf)


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise KafkaError(f"topic {topic!r} does not exist (run `dcnios topics`)")
    return sorted(metadata.partitions)


def partition_extents(kafka: KafkaSpec, topic: str) -> dict[int, tuple[int, int]]:
    """``{partition: (first offset, end offset)}``, with the end read, not taken on trust."""
    consumer = _reader(kafka)
    try:
        return _extents(consumer, topic)
    finally:
        consumer.close()


def _extents(consumer: Consumer, topic: str) -> dict[int, tuple[int, int]]:
    result: dict[int, tuple[int, int]] = {}
    assign = []
    for p in _partitions(consumer, topic):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        result[p] = (max(low, 0), max(high, 0))
        assign.append(TopicPartition(topic, p, max(high, low, 0)))
    consumer.assign(assign)
    waiting = set(result)
    deadline = time.monotonic() + _READ_TIMEOUT
    while waiting and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        partition = msg.partition()
        assert partition is not None
        err = msg.error()
        if err is not None:
            if err.code() == -191:  # _PARTITION_EOF: the real end of this partition
                waiting.discard(partition)
                continue
            raise KafkaError(f"reading {topic}[{partition}]: {err.str()}")
        offset = msg.offset()
        assert offset is not None
        low, end = result[partition]
        result[partition] = (low, max(end, offset + 1))
    if waiting:
        raise KafkaError(f"reading {topic}: partitions {sorted(waiting)} did not reach their end in time")
    consumer.unassign()
    return result


def _read_all(kafka: KafkaSpec, topic: str) -> Iterable[tuple[bytes | None, bytes | None]]:
    consumer = _reader(kafka)
    try:
        extents = _extents(consumer, topic)
        todo = {p for p, (low, end) in extents.items() if end > low}
        consumer.assign([TopicPartition(topic, p, extents[p][0]) for p in todo])
        deadline = time.monotonic() + _READ_TIMEOUT
        while todo and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                if msg is not None and msg.error().code() == -191:  # type: ignore[union-attr]
                    todo.discard(msg.partition() or 0)
                continue
            offset, p = msg.offset(), msg.partition()
            assert offset is not None and p is not None
            key, value = msg.key(), msg.value()
            yield (key if isinstance(key, bytes) else None, value if isinstance(value, bytes) else None)
            if offset + 1 >= extents[p][1]:
                todo.discard(p)
    finally:
        consumer.close()


def _source_statuses(spec: PipelineSpec) -> list[SourceStatus]:
    from dcnios.producers.checkpoint import CheckpointStore

    gaps: dict[str, list[dict[str, Any]]] = {}
    for key, value in _read_all(spec.kafka, gaps_topic(spec.kafka)):
        try:
            record = json.loads(value or b"")
        except ValueError:
            continue
        gaps.setdefault((key or b"").decode("utf-8", "replace"), []).append(record)
    producer = LatchedProducer(producer_config(spec.kafka))
    store = CheckpointStore(spec.kafka, producer)
    now_ms = time.time() * 1000
    result = []
    for source in spec.sources:
        if not isinstance(source, SourceSpec):
            result.append(_relayed_status(spec, source))
            continue
        checkpoint = store.load(source.name)
        mine = gaps.get(source.name, [])
        result.append(
            SourceStatus(
                name=source.name,
                topic=source.topic,
                checkpoint_event_id=checkpoint.last_event_id if checkpoint else None,
                checkpoint_channel=checkpoint.channel if checkpoint else None,
                checkpoint_age_s=round((now_ms - checkpoint.updated_ms) / 1000, 1)
                if checkpoint and checkpoint.updated_ms
                else None,
                gaps=len(mine),
                last_gap=mine[-1] if mine else None,
                invalid=_depth(spec.kafka, invalid_topic(source.topic)),
            )
        )
    producer.flush(10)
    return result


def _depth(kafka: KafkaSpec, topic: str) -> int:
    return sum(end - low for low, end in partition_extents(kafka, topic).values())


def _relayed_status(spec: PipelineSpec, source: AnySourceSpec) -> SourceStatus:
    upstream, waiting = _upstream(spec, source)
    return SourceStatus(
        name=source.name,
        topic=source.topic,
        checkpoint_event_id=None,
        checkpoint_channel=None,
        checkpoint_age_s=None,
        gaps=0,
        last_gap=None,
        type=source.type,
        upstream=upstream,
        upstream_waiting=waiting,
        invalid=_depth(spec.kafka, invalid_topic(source.topic)),
    )


def _upstream(spec: PipelineSpec, source: AnySourceSpec) -> tuple[str, int | None]:
    """What a relayed source reads, and how much of it waits to be relayed."""
    if isinstance(source, S3NotificationsSourceSpec):
        if source.kafka is not None and source.kafka.group is not None:
            return f"kafka topic {source.kafka.topic}", _group_lag(
                spec.kafka, source.kafka.group, source.kafka.topic
            )
        if source.sqs is not None:
            return f"sqs {source.sqs.queue_url}", _sqs_waiting(source)
        if source.webhook is not None:
            w = source.webhook
            return f"webhook http://{w.host}:{w.port}{w.path}", None
    if isinstance(source, RucioSourceSpec):
        # STOMP has no way to ask how many messages a queue holds (RabbitMQ's management API and
        # ActiveMQ's JMX do, outside STOMP): not known here.
        return f"stomp {source.stomp.destination} on {','.join(source.stomp.brokers)}", None
    return source.type, None


def _group_lag(kafka: KafkaSpec, group: str, topic: str) -> int | None:
    reader = _reader(kafka, group)
    try:
        extents = _extents(reader, topic)
        committed = reader.committed([TopicPartition(topic, p) for p in extents], timeout=10)
    except KafkaException:
        return None
    finally:
        reader.close()
    return sum(
        max(0, extents[tp.partition][1] - (tp.offset if tp.offset >= 0 else extents[tp.partition][0]))
        for tp in committed
    )


def _sqs_waiting(source: S3NotificationsSourceSpec) -> int | None:
    assert source.sqs is not None
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    try:
        attrs = sqs_client(source.sqs).get_queue_attributes(
            QueueUrl=source.sqs.queue_url, AttributeNames=names
        )
    except Exception:  # botocore's errors and connection failures alike: status reports, never fails
        return None
    return sum(int(attrs["Attributes"].get(n, 0)) for n in names)


def _control_state(kafka: KafkaSpec, consumer: str) -> tuple[Any, bool]:
    from dcnios.control import ControlFollower

    follower = ControlFollower(kafka, consumer, lambda _state: None).start()
    try:
        caught_up = follower.caught_up.wait(_READ_TIMEOUT)
    finally:
        follower.stop()
    return follower.state, caught_up


def _members(kafka: KafkaSpec, group: str) -> tuple[str, list[dict[str, Any]]]:
    admin = admin_client(kafka)
    try:
        described = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except KafkaException as exc:
        return f"unknown ({exc.args[0].str()})", []
    members = [
        {
            "client_id": m.client_id,
            "host": m.host,
            "partitions": sorted(
                tp.partition for tp in (m.assignment.topic_partitions if m.assignment else [])
            ),
        }
        for m in described.members
    ]
    return str(described.state).rpartition(".")[2].lower(), members


def _consumer_statuses(spec: PipelineSpec) -> list[ConsumerStatus]:
    nifi = set(spec.nifi.consumers) if spec.nifi is not None else set()
    result = []
    for cs in spec.consumers:
        assert cs.group is not None and cs.dead_letter_topic is not None
        reader = _reader(spec.kafka, cs.group)
        try:
            extents = _extents(reader, cs.topic)
            committed = reader.committed([TopicPartition(cs.topic, p) for p in extents], timeout=10)
        finally:
            reader.close()
        partitions = []
        for tp in committed:
            low, end = extents[tp.partition]
            position = tp.offset if tp.offset >= 0 else None
            partitions.append(PartitionLag(tp.partition, position, end, max(0, end - (position or low))))
        dlq = partition_extents(spec.kafka, cs.dead_letter_topic)
        state, caught_up = _control_state(spec.kafka, cs.name)
        notes = [] if caught_up else ["the control topic did not answer; rate and pause are the spec's"]
        group_state, members = _members(spec.kafka, cs.group)
        if not members:
            notes.append("the broker lists no members (Tansu never does; a real Kafka does)")
        rate = state.rate if state.rate_set else cs.rate
        result.append(
            ConsumerStatus(
                name=cs.name,
                group=cs.group,
                topic=cs.topic,
                group_state=group_state,
                members=members,
                lag=sum(p.lag for p in partitions),
                partitions=partitions,
                rate=str(rate) if rate is not None else "unlimited",
                rate_source="control" if state.rate_set else "spec",
                paused=state.paused,
                dead_letter_topic=cs.dead_letter_topic,
                dlq_depth=sum(end - low for low, end in dlq.values()),
                nifi=cs.name in nifi,
                oscar="up" if OscarInvoker(cs.oscar, 1).healthy() else "down (GET /health fails)",
                notes=notes,
            )
        )
    return result


def pipeline_status(spec: PipelineSpec) -> dict[str, Any]:
    """The whole status as JSON-ready data (what ``dcnios status --json`` prints)."""
    cluster_metadata(spec.kafka)  # an unreachable broker is named, not a raw KafkaException
    return {
        "kafka": spec.kafka.bootstrap_servers,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources": [asdict(s) for s in _source_statuses(spec)],
        "consumers": [asdict(c) for c in _consumer_statuses(spec)],
    }
