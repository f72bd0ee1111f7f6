"""Kafka plumbing: librdkafka settings rendered in one place, admin, and a latched producer."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # exported at runtime, missing from the stubs
    AdminClient,
    ClusterMetadata,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from dcnios.errors import ConfigError, DeliveryError, KafkaError
from dcnios.secrets import MASK, Secret, is_secret_setting
from dcnios.spec import KafkaSpec
from dcnios.topics import TopicPlan

__all__ = [
    "REPORT_BYTES",
    "DeliveryReport",
    "LatchedProducer",
    "OutHeaders",
    "RdConf",
    "admin_client",
    "client_config",
    "cluster_metadata",
    "consumer_config",
    "ensure_topics",
    "masked_config",
    "prepare_internal_topics",
    "producer_config",
    "read_compacted",
    "truncated",
]

logger = logging.getLogger(__name__)

#: Settings that switch TLS checks off, and what that lets through. librdkafka reads a boolean
#: false as "false", "f" or "0" in any case.
_INSECURE: Final = {
    "enable.ssl.certificate.verification": (
        ("false", "f", "0"),
        "the brokers' certificates are not verified: anyone on the path can read and alter the stream",
    ),
    "ssl.endpoint.identification.algorithm": (
        ("none",),
        "the brokers' host names are not checked against their certificates",
    ),
}
_warned: set[str] = set()
#: What a caller of ``produce(on_delivery=...)`` gets: ``(token, message)``.
ProduceCallback = Callable[[Any, Message], None]
#: What confluent-kafka calls per record: ``(error or None, message)``.
DeliveryReport = Callable[[Any, Message], None]
#: librdkafka settings, as confluent-kafka's constructors type them.
RdConf = dict[str, str | int | float | bool]
OutHeaders = list[tuple[str, str | bytes | None]]


def client_config(kafka: KafkaSpec) -> RdConf:
    """librdkafka settings shared by every client. Spec keys win over ``kafka.librdkafka``."""
    if kafka.bootstrap_servers is None:
        raise ConfigError("kafka.bootstrap_servers: is required here (only `dcnios up` starts a broker)")
    conf: RdConf = _revealed(kafka.librdkafka)
    conf["bootstrap.servers"] = kafka.bootstrap_servers
    conf["client.id"] = kafka.client_id
    conf["security.protocol"] = kafka.security_protocol
    if kafka.sasl is not None:
        conf["sasl.mechanism"] = kafka.sasl.mechanism
        if kafka.sasl.username is not None:
            conf["sasl.username"] = kafka.sasl.username
        if kafka.sasl.password is not None:
            conf["sasl.password"] = kafka.sasl.password.reveal()
    if kafka.ssl is not None:
        ssl = kafka.ssl
        for key, value in (
            ("ssl.ca.location", ssl.ca_location),
            ("ssl.certificate.location", ssl.certificate_location),
            ("ssl.key.location", ssl.key_location),
        ):
            if value is not None:
                conf[key] = value
        if ssl.key_password is not None:
            conf["ssl.key.password"] = ssl.key_password.reveal()
        conf["ssl.endpoint.identification.algorithm"] = "https" if ssl.verify_hostname else "none"
    return _warn_insecure(conf)


def _revealed(settings: Mapping[str, str | Secret]) -> RdConf:
    return {k: v.reveal() if isinstance(v, Secret) else v for k, v in settings.items()}


def _warn_insecure(conf: RdConf) -> RdConf:
    """Log, once a process, each setting of ``conf`` that turns a TLS check off."""
    for key, (off, consequence) in _INSECURE.items():
        value = conf.get(key)
        if value is not None and str(value).lower() in off and key not in _warned:
            _warned.add(key)
            logger.warning("kafka: %s=%s: %s", key, value, consequence)
    return conf


def producer_config(kafka: KafkaSpec, **overrides: str | Secret) -> RdConf:
    """Idempotent, acks=all: a retried batch is never written twice, nothing acked is lost."""
    conf = client_config(kafka)
    conf.update(
        {
            "enable.idempotence": "true",
            "acks": "all",
            "linger.ms": "5",
            "compression.type": "lz4",
            # Bounded local queue: produce() blocks (BufferError → poll) instead of growing memory.
            "queue.buffering.max.kbytes": "8192",
        }
    )
    # A record not acknowledged within a minute means the broker side is broken (a broker that
    # lost its state no longer knows the idempotent producer id, and the batch is retried
    # forever): fail, so the runner restarts from its checkpoint with a new producer. The default
    # of 5 minutes would stall the pipeline that long. kafka.librdkafka may set another value.
    conf.setdefault("message.timeout.ms", "60000")
    conf.update(_revealed(overrides))
    return _warn_insecure(conf)


def consumer_config(kafka: KafkaSpec, group: str, **overrides: str | Secret) -> RdConf:
    """Manual commits; a new group starts from the earliest offset so that nothing is skipped."""
    conf = client_config(kafka)
    conf.update(
        {
            "group.id": group,
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "auto.offset.reset": "earliest",
            # After a pause/resume the fetcher starts over; a short wait keeps invokers fed.
            "fetch.wait.max.ms": "100",
        }
    )
    conf.update(_revealed(overrides))
    return _warn_insecure(conf)


#: The most of a record's value a report keeps (``<topic>.invalid``, the DLQ): the broker and the
#: producer refuse a record over ``message.max.bytes`` (about 1 MB by default), and a refused
#: report would stop the process or leave its record neither done nor reported.
REPORT_BYTES: Final = 512 << 10


def truncated(value: bytes | None, limit: int = REPORT_BYTES) -> tuple[bytes | None, OutHeaders]:
    """``value`` cut to ``limit`` bytes, with headers that say so (``dcnios-truncated`` and the
    original ``dcnios-size``); unchanged, with no headers, when it fits."""
    if value is None or len(value) <= limit:
        return value, []
    return value[:limit], [("dcnios-truncated", b"true"), ("dcnios-size", str(len(value)).encode())]


def masked_config(conf: RdConf) -> RdConf:
    """The same settings with secrets replaced, for logs."""
    return {k: (MASK if is_secret_setting(k, v) else v) for k, v in conf.items()}


def admin_client(kafka: KafkaSpec) -> AdminClient:
    return AdminClient(client_config(kafka))


def _where(kafka: KafkaSpec) -> str:
    """The broker as the spec names it, and how it is reached (never a secret)."""
    how: str = kafka.security_protocol
    if kafka.sasl is not None:
        how += f", SASL {kafka.sasl.mechanism}"
    return f"{kafka.bootstrap_servers} ({how})"


def cluster_metadata(
    kafka: KafkaSpec, admin: AdminClient | None = None, timeout: float = 10.0
) -> ClusterMetadata:
    """The cluster's topics and brokers; the first call every runner makes.

    Raises:
        KafkaError: the broker cannot be reached, naming the address, the protocol and why.
    """
    admin = admin or admin_client(kafka)
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        err = exc.args[0]
        reason = err.str() if hasattr(err, "str") else str(err)
        raise KafkaError(
            f"cannot reach the Kafka broker at {_where(kafka)} within {timeout:.0f}s: {reason}; "
            "check kafka.bootstrap_servers, the network and kafka.security_protocol"
        ) from exc


def prepare_internal_topics(kafka: KafkaSpec, plans: Iterable[TopicPlan], timeout: float = 10.0) -> None:
    """The compacted one-partition topics a runner reads at its start (the checkpoints, the
    control topic, a source's published-files index): created when missing, checked otherwise.

    A broker that auto-creates topics gives them its ``num.partitions`` and its cleanup policy.
    Readers of partition 0 would then miss every key hashed elsewhere (a source or consumer that
    never starts, or a checkpoint silently not found), and a delete policy drops checkpoints and
    index entries after the retention time.

    Raises:
        KafkaError: the broker cannot be reached, or a topic exists with other settings.
    """
    wanted = list(plans)
    admin = admin_client(kafka)
    topics = cluster_metadata(kafka, admin, timeout).topics
    missing = [p for p in wanted if p.name not in topics]
    if missing:
        ensure_topics(kafka, missing, timeout)
    problems = []
    present = [p for p in wanted if p.name in topics]
    for plan in present:
        partitions = len(topics[plan.name].partitions)
        if partitions != plan.partitions:
            problems.append(f"{plan.name} has {partitions} partitions, not {plan.partitions}")
    checked = [p for p in present if "cleanup.policy" in p.config]
    if checked:
        resources = [ConfigResource(ResourceType.TOPIC, p.name) for p in checked]
        futures = admin.describe_configs(resources, request_timeout=timeout)
        for plan, resource in zip(checked, resources, strict=True):
            try:
                entries = futures[resource].result(timeout=timeout)
            except KafkaException as exc:
                logger.warning("cannot read the configuration of %s: %s", plan.name, exc.args[0])
                continue
            # No entry: the broker's default, which is delete unless the broker says otherwise.
            entry = entries.get("cleanup.policy")
            policy = entry.value if entry is not None else "delete"
            if plan.config["cleanup.policy"] not in (policy or "").split(","):
                problems.append(
                    f"{plan.name} has cleanup.policy={policy}, not {plan.config['cleanup.policy']}"
                )
    if problems:
        raise KafkaError(
            "internal topics exist with the wrong settings (a broker that auto-creates topics makes "
            f"them so): {'; '.join(problems)}. Delete them and run `dcnios topics -c SPEC`, which "
            "creates them right (their contents are rebuilt: checkpoints restart from a full repair)"
        )


def ensure_topics(kafka: KafkaSpec, plans: Iterable[TopicPlan], timeout: float = 30.0) -> dict[str, str]:
    """Create missing topics. Returns ``{name: "created" | "exists"}``; idempotent.

    Raises:
        KafkaError: a topic could not be created, naming it and the broker's reason.
    """
    plans = list(plans)
    admin = admin_client(kafka)
    existing = set(cluster_metadata(kafka, admin, timeout).topics)
    result = {p.name: "exists" for p in plans if p.name in existing}
    new = [
        NewTopic(p.name, p.partitions, p.replication_factor, config=dict(p.config))
        for p in plans
        if p.name not in existing
    ]
    if not new:
        return result
    failures = []
    for name, future in admin.create_topics(new, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
            result[name] = "created"
            logger.info("created topic %s", name)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() == RdKafkaError.TOPIC_ALREADY_EXISTS:
                result[name] = "exists"
            else:
                failures.append(f"{name}: {err.str()}")
    if failures:
        raise KafkaError("cannot create topics: " + "; ".join(failures))
    return {p.name: result[p.name] for p in plans}


class LatchedProducer:
    """A confluent-kafka Producer whose first delivery error is latched and re-raised.

    ``produce`` raises the latched error, so no record is silently lost behind a failed one.
    ``on_delivery`` callbacks (per record) run on the thread that calls ``poll``; callers poll
    once per batch of records, not after each one (a poll costs more than a produce).
    """

    def __init__(self, conf: RdConf) -> None:
        self._producer = Producer(dict(conf))
        self._error: DeliveryError | None = None
        self._lock = threading.Lock()

    def delivery(self, callback: ProduceCallback | None, token: Any) -> DeliveryReport:
        """The delivery report for ``produce(delivered=...)``: latches an error, else calls
        ``callback(token, msg)``. Made once and shared by many records (a chunk's), because a
        closure per record is a measurable share of the producer's hot path."""

        def done(err: Any, msg: Message) -> None:
            if err is not None:
                with self._lock:
                    if self._error is None:
                        self._error = DeliveryError(
                            f"delivery to {msg.topic()} failed: {err.str()}",
                            topic=msg.topic(),
                            code=err.name(),
                        )
                logger.error("delivery to %s[%s] failed: %s", msg.topic(), msg.partition(), err.str())
                return
            if callback is not None:
                callback(token, msg)

        return done

    def raise_latched(self) -> None:
        with self._lock:
            if self._error is not None:
                raise self._error

    def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: OutHeaders | None = None,
        on_delivery: ProduceCallback | None = None,
        token: Any = None,
        delivered: DeliveryReport | None = None,
    ) -> None:
        """``on_delivery(token, msg)`` per record, or ``delivered`` from ``delivery()``, shared."""
        self.raise_latched()
        report = delivered if delivered is not None else self.delivery(on_delivery, token)
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=report)
                break
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self._producer.poll(0.1)
                self.raise_latched()

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)
        self.raise_latched()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every delivery report; raise if any record was not acknowledged."""
        remaining = self._producer.flush(timeout)
        self.raise_latched()
        if remaining:
            raise DeliveryError(f"{remaining} records not acknowledged within {timeout:.0f}s")

    def __len__(self) -> int:
        return len(self._producer)


#: How long reading a compacted topic may go without a record before it counts as a broker fault.
READ_COMPACTED_TIMEOUT: Final = 30.0


def read_compacted(
    kafka: KafkaSpec,
    topic: str,
    producer: LatchedProducer,
    on_record: Callable[[bytes | None, bytes | None, int], None],
    *,
    probe_key: bytes,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Hand every record of partition 0 of ``topic`` to ``on_record(key, value, offset)``, up to now.

    "Now" is a probe record written first and read back (read-your-write), because a broker's
    high watermark cannot be trusted to mark the end (Tansu under-reports it). The probe is
    not handed over. Returns the number of records read; ``progress`` is told every 100,000.
    """
    probe = uuid.uuid4().hex.encode()
    producer.produce(topic, probe, key=probe_key)
    producer.flush()
    # A small prefetch: a million-record index read at start must not cost librdkafka's 64 MB queue.
    conf = consumer_config(
        kafka, f"dcnios-reader-{uuid.uuid4().hex[:8]}", **{"queued.max.messages.kbytes": "4096"}
    )
    consumer = Consumer(conf)
    count = 0
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + READ_COMPACTED_TIMEOUT
        while time.monotonic() < deadline:
            batch = consumer.consume(10_000, 0.05)
            if batch:
                deadline = time.monotonic() + READ_COMPACTED_TIMEOUT
            for msg in batch:
                if (err := msg.error()) is not None:
                    raise KafkaError(f"reading {topic}: {err.str()}")
                key, value = msg.key(), msg.value()
                if key == probe_key:
                    if value == probe:
                        return count
                    continue
                count += 1
                on_record(key, value, msg.offset() or 0)
                if progress is not None and count % 100_000 == 0:
                    progress(count)
        raise KafkaError(
            f"reading {topic}: no record for {READ_COMPACTED_TIMEOUT:.0f}s and the probe did not come back"
        )
    finally:
        consumer.close()
