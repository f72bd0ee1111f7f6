"""The pipeline spec as frozen, typed objects. Field docs feed ``dcnios schema``."""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from dcnios.inotify import DEFAULT_EVENTS, EVENT_FLAGS, IN_ISDIR
from dcnios.secrets import (
    CONTROL_CHARACTER,
    Secret,
    has_control_character,
    is_secret_setting,
    read_secret_file,
)
from dcnios.spec._build import Duration, Rate, spec_field
from dcnios.spec.workflow import WorkflowSpec, graph_problems

if TYPE_CHECKING:
    from dcnios.topics import TopicPlan

__all__ = [
    "AnySourceSpec",
    "ConsumerFilter",
    "ConsumerSpec",
    "DCacheAuth",
    "KafkaSpec",
    "NifiAuth",
    "NifiSpec",
    "NifiTruststore",
    "OscarSpec",
    "PipelineSpec",
    "RegistrySpec",
    "RetrySpec",
    "RouteSpec",
    "RucioSourceSpec",
    "S3NotificationsSourceSpec",
    "SandboxDCacheSpec",
    "SandboxOscarSpec",
    "SandboxServiceSpec",
    "SandboxSpec",
    "SaslSpec",
    "SourceSpec",
    "SqsSpec",
    "SslSpec",
    "StompSpec",
    "TopicDefaults",
    "TopicReaders",
    "UpstreamTopicSpec",
    "WebhookSpec",
    "source_kinds",
]

Problems = Iterator[tuple[str, str]]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
#: Kafka refuses longer topic names (kafka.common.internals.Topic.MAX_NAME_LENGTH).
MAX_TOPIC_LENGTH = 249
_TOPIC_NAME = re.compile(rf"^[A-Za-z0-9._-]{{1,{MAX_TOPIC_LENGTH}}}$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MASKS = (*EVENT_FLAGS, IN_ISDIR)


def _url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"expected an http(s) URL, got {value!r}"
    return None


def _topic(value: str) -> str | None:
    if not _TOPIC_NAME.match(value) or value in (".", ".."):
        return f"expected a Kafka topic name ([A-Za-z0-9._-], at most 249 characters), got {value!r}"
    return None


def _name(value: str) -> str | None:
    if not _NAME.match(value):
        return f"expected a lower-case DNS label ([a-z0-9-], at most 63 characters), got {value!r}"
    return None


def _principals(values: tuple[str, ...]) -> str | None:
    for value in values:
        if problem := _name(value):
            return problem
    if len(set(values)) != len(values):
        return "names a principal twice"
    return None


def _port(value: int) -> str | None:
    return None if 0 < value < 65536 else f"expected a TCP port (1-65535), got {value!r}"


def _positive(value: float) -> str | None:
    return None if value > 0 else f"expected a positive number, got {value!r}"


def _frame_size(value: int) -> str | None:
    return None if 4096 <= value <= 64 << 20 else "must be between 4096 and 67108864 bytes"


def _abs_path(value: str) -> str | None:
    return _abs_paths((value,))


def _abs_paths(values: tuple[str, ...]) -> str | None:
    bad = [v for v in values if not v.startswith("/") or (len(v) > 1 and v.endswith("/"))]
    if bad:
        return f"expected absolute dCache paths without a trailing '/', got {bad[0]!r}"
    return None


def _masks(values: tuple[str, ...]) -> str | None:
    bad = [v for v in values if v not in _MASKS]
    if bad:
        return f"unknown event mask {bad[0]!r}; valid masks are {', '.join(_MASKS)}"
    return None


def _servers(value: str) -> str | None:
    for server in value.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            return f"expected host:port[,host:port...], got {value!r}"
    return None


#: librdkafka settings that the spec renders from a field of its own, which gives them a *_file form.
_SPEC_HOMES = MappingProxyType(
    {"sasl.password": "kafka.sasl.password", "ssl.key.password": "kafka.ssl.key_password"}
)


def _passthrough(settings: Mapping[str, str | Secret]) -> Problems:
    for key in settings:
        if (home := _SPEC_HOMES.get(key.lower())) is not None:
            yield f"librdkafka.{key}", f"put secrets in {home} (or its *_file form), not here"


def _secret_file(path: str | None, key: str) -> Problems:
    """A secret file read at run time is checked as one read at load time is (see Builder)."""
    if path is None:
        return
    try:
        text = read_secret_file(os.path.expanduser(path))
    except ValueError as exc:
        yield key, f"cannot read secret file {path!r}: {exc}"
        return
    if has_control_character(text):
        yield key, f"secret file {path!r} {CONTROL_CHARACTER}"


def _file_exists(path: str | None, key: str) -> Problems:
    if path is not None and not os.path.exists(os.path.expanduser(path)):
        yield key, f"file not found: {path!r}"


# -- kafka --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SaslSpec:
    mechanism: SaslMechanism = spec_field("PLAIN", doc="SASL mechanism")
    username: str | None = spec_field(None, doc="SASL user name")
    password: Secret | None = spec_field(None, doc="SASL password (or password_file)")

    def validate(self) -> Problems:
        if self.mechanism != "OAUTHBEARER" and (self.username is None or self.password is None):
            yield "", f"{self.mechanism} needs username and password"


@dataclass(frozen=True, slots=True)
class SslSpec:
    ca_location: str | None = spec_field(None, doc="CA bundle (PEM) that signed the brokers' certificates")
    certificate_location: str | None = spec_field(None, doc="client certificate (PEM), for mTLS")
    key_location: str | None = spec_field(None, doc="client private key (PEM), for mTLS")
    key_password: Secret | None = spec_field(None, doc="password of the private key")
    verify_hostname: bool = spec_field(True, doc="check the broker's host name against its certificate")

    def validate(self) -> Problems:
        if (self.certificate_location is None) != (self.key_location is None):
            yield "", "certificate_location and key_location go together"
        yield from _file_exists(self.ca_location, "ca_location")
        yield from _file_exists(self.certificate_location, "certificate_location")
        yield from _file_exists(self.key_location, "key_location")


@dataclass(frozen=True, slots=True)
class RegistrySpec:
    url: str = spec_field(doc="Confluent Schema Registry URL; values then use the Confluent wire format")
    username: str | None = spec_field(None, doc="basic-auth user")
    password: Secret | None = spec_field(None, doc="basic-auth password")
    ca_location: str | None = spec_field(None, doc="CA bundle for the registry's TLS certificate")

    def validate(self) -> Problems:
        if not self.url.startswith("mock://") and (problem := _url(self.url)):
            yield "url", problem


@dataclass(frozen=True, slots=True)
class TopicDefaults:
    partitions: int = spec_field(12, doc="partitions of topics dcnios creates", check=_positive)
    replication_factor: int = spec_field(
        1, doc="replication factor of topics dcnios creates", check=_positive
    )


@dataclass(frozen=True, slots=True)
class KafkaSpec:
    bootstrap_servers: str | None = spec_field(
        None, doc="host:port list; absent means the embedded broker (dcnios up)", check=_servers
    )
    security_protocol: SecurityProtocol = spec_field("PLAINTEXT", doc="how clients talk to the brokers")
    sasl: SaslSpec | None = spec_field(None, doc="SASL settings (SASL_PLAINTEXT, SASL_SSL)")
    ssl: SslSpec | None = spec_field(None, doc="TLS settings (SSL, SASL_SSL)")
    schema_registry: RegistrySpec | None = spec_field(None, doc="Confluent Schema Registry (optional)")
    topic_defaults: TopicDefaults = spec_field(TopicDefaults(), doc="settings for created topics")
    internal_prefix: str = spec_field(
        "dcnios", doc="prefix of internal topics (<prefix>.checkpoints, .control, .gaps)", check=_topic
    )
    client_id: str = spec_field("dcnios", doc="client.id sent to the brokers")
    librdkafka: Mapping[str, str | Secret] = spec_field(
        MappingProxyType({}),
        doc="extra librdkafka settings; the keys above win over these (passwords, secrets and "
        "private keys among them are masked)",
        secret_entries=is_secret_setting,
    )

    def validate(self) -> Problems:
        uses_sasl = self.security_protocol.startswith("SASL")
        if uses_sasl and self.sasl is None:
            yield "sasl", f"is required with security_protocol {self.security_protocol}"
        if not uses_sasl and self.sasl is not None:
            yield "sasl", f"is set, but security_protocol {self.security_protocol} does not use SASL"
        if self.ssl is not None and not self.security_protocol.endswith("SSL"):
            yield "ssl", f"is set, but security_protocol {self.security_protocol} does not use TLS"
        yield from _passthrough(self.librdkafka)


# -- sources ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DCacheAuth:
    username: str | None = spec_field(None, doc="Basic auth user")
    password: Secret | None = spec_field(None, doc="Basic auth password (or password_file)")
    token: Secret | None = spec_field(None, doc="bearer token (macaroon, SciToken, OIDC)", secret_file=False)
    token_file: str | None = spec_field(None, doc="file holding a bearer token; re-read on 401")
    cert: str | None = spec_field(None, doc="X.509 client certificate or proxy (PEM)")
    key: str | None = spec_field(None, doc="private key of cert (omit for a proxy holding both)")

    def validate(self) -> Problems:
        kinds = [
            name
            for name, present in (
                ("username/password", self.username is not None or self.password is not None),
                ("token", self.token is not None),
                ("token_file", self.token_file is not None),
                ("cert", self.cert is not None),
            )
            if present
        ]
        if len(kinds) != 1:
            yield "", f"give exactly one of username/password, token, token_file, cert; got {kinds or 'none'}"
        if (self.username is None) != (self.password is None):
            yield "", "username and password go together"
        if self.key is not None and self.cert is None:
            yield "key", "needs cert"
        yield from _secret_file(self.token_file, "token_file")
        yield from _file_exists(self.cert, "cert")
        yield from _file_exists(self.key, "key")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    match: str = spec_field(
        doc="glob on the full path; ** crosses directories", examples=("/data/in/raw/**",)
    )
    topic: str = spec_field(doc="topic for matching records", check=_topic)
    readers: tuple[str, ...] | None = spec_field(
        None,
        doc="principals (Kafka user names, e.g. a consumer's principal) allowed to read this "
        "subtree's topic; absent: not restricted. `dcnios k8s` renders the ACLs from it",
        check=_principals,
    )


@dataclass(frozen=True, slots=True)
class SourceSpec:
    name: str = spec_field(doc="unique source name (DNS label)", check=_name)
    endpoint: str = spec_field(doc="dCache REST API root, e.g. https://host:3880/api/v1", check=_url)
    paths: tuple[str, ...] = spec_field(doc="directories to watch", check=_abs_paths)
    topic: str = spec_field(doc="topic for the records", check=_topic)
    type: Literal["dcache"] = spec_field("dcache", doc="source kind")
    auth: DCacheAuth | None = spec_field(None, doc="credentials; absent means anonymous")
    ca_bundle: str | None = spec_field(None, doc="CA bundle for the frontend's certificate")
    recursive: bool = spec_field(False, doc="watch sub-directories too (one subscription per directory)")
    events: tuple[str, ...] = spec_field(DEFAULT_EVENTS, doc="masks that become records", check=_masks)
    directories: bool = spec_field(False, doc="also publish events about directories (IN_ISDIR)")
    routes: tuple[RouteSpec, ...] = spec_field((), doc="first matching glob picks the topic")
    readers: tuple[str, ...] | None = spec_field(
        None,
        doc="principals allowed to read `topic` (paths no route matches); absent: not restricted",
        check=_principals,
    )
    client_id: str | None = spec_field(None, doc="channel client-id; default dcnios-<name>")
    channel_timeout: Duration = spec_field(
        Duration(3600), doc="how long dCache keeps the channel while disconnected", check=_positive
    )
    reconcile: bool = spec_field(True, doc="after a gap, list the directories and publish what was missed")
    backfill: bool = spec_field(
        False,
        doc=(
            "at the first start, publish the files already in the watched directories; by default "
            "they are indexed as handled, and only files written in the last minute are published"
        ),
    )
    reconnect_backoff: Duration = spec_field(Duration(0.5), doc="first reconnect delay", check=_positive)
    reconnect_backoff_max: Duration = spec_field(Duration(30), doc="largest reconnect delay", check=_positive)
    request_timeout: Duration = spec_field(
        Duration(30), doc="timeout of non-streaming calls", check=_positive
    )
    max_frame: int = spec_field(
        1 << 20,
        doc="largest SSE frame in bytes; a longer one goes to <topic>.invalid (its first 64 KiB)",
        check=_frame_size,
    )
    heartbeat: Duration = spec_field(
        Duration(10),
        doc=(
            "period of the metronome subscribed on the channel (dCache sends no keep-alive); "
            "a stream silent for 3 periods is reconnected; 0 turns it off"
        ),
    )

    @staticmethod
    def derive_defaults(values: dict[str, Any]) -> dict[str, Any]:
        values.setdefault("client_id", f"dcnios-{values['name']}")
        return values

    def validate(self) -> Problems:
        yield from _file_exists(self.ca_bundle, "ca_bundle")
        if not self.events:
            yield "events", "must name at least one mask"
        if self.reconnect_backoff_max < self.reconnect_backoff:
            yield "reconnect_backoff_max", "must not be smaller than reconnect_backoff"
        if not self.paths:
            yield "paths", "must name at least one directory"
        if self.backfill and not self.reconcile:
            yield "backfill", "needs reconcile: true (a backfill lists against the published-files index)"
        if self.endpoint.endswith("/"):
            yield "endpoint", "drop the trailing '/'"
        if self.heartbeat and not 0.001 <= self.heartbeat <= 300:
            # dCache's metronome takes a delay of 1e-6 s to 300 s (Metronome.java).
            yield "heartbeat", "must be 0 (off) or between 1ms and 300s (dCache's metronome limits)"

    def topic_for(self, path: str) -> str:
        """The topic a record with this full path goes to: the first matching route, else ``topic``."""
        for route in self.routes:
            if glob_match(route.match, path):
                return route.topic
        return self.topic


def _host(value: str) -> str | None:
    return (
        None if value and not any(c in value for c in "/ ") else f"expected a host name or IP, got {value!r}"
    )


def _event_globs(values: tuple[str, ...]) -> str | None:
    bad = [v for v in values if not v.startswith("s3:")]
    if bad:
        return f"S3 event names start with 's3:' (Ceph's too; dcnios adds it), got {bad[0]!r}"
    return None


@dataclass(frozen=True, slots=True)
class UpstreamTopicSpec:
    topic: str = spec_field(
        doc="the Kafka topic the object store writes its notifications to (MinIO notify_kafka, RGW "
        "kafka:// push endpoint), on the cluster of `kafka`",
        check=_topic,
    )
    group: str | None = spec_field(None, doc="consumer group reading it; default dcnios-source-<name>")


@dataclass(frozen=True, slots=True)
class WebhookSpec:
    host: str = spec_field(
        "127.0.0.1", doc="address to listen on (0.0.0.0 to accept other hosts)", check=_host
    )
    port: int = spec_field(8470, doc="TCP port", check=_port)
    path: str = spec_field("/", doc="URL path the object store posts to")
    token: Secret | None = spec_field(
        None, doc="bearer token the object store must send (MinIO's auth_token); absent: none asked"
    )
    max_body: int = spec_field(
        1 << 20,
        doc="largest body in bytes; a longer one is answered 200 and its head goes to <topic>.invalid",
        check=_frame_size,
    )
    ack_timeout: Duration = spec_field(
        Duration(30),
        doc="how long a request waits for Kafka's acknowledgement before it is answered 503 (the "
        "object store retries)",
        check=_positive,
    )

    def validate(self) -> Problems:
        if not self.path.startswith("/"):
            yield "path", f"expected an absolute URL path, got {self.path!r}"


@dataclass(frozen=True, slots=True)
class SqsSpec:
    queue_url: str = spec_field(
        doc="the SQS queue S3 sends the bucket's notifications to",
        check=_url,
        examples=("https://sqs.eu-west-1.amazonaws.com/123456789012/oscar-in",),
    )
    region: str | None = spec_field(None, doc="AWS region; default: boto3's (AWS_REGION, ~/.aws/config)")
    endpoint: str | None = spec_field(
        None, doc="SQS endpoint URL, for an SQS-compatible service; default: AWS's", check=_url
    )
    access_key_id: str | None = spec_field(None, doc="AWS access key id; default: boto3's credential chain")
    secret_access_key: Secret | None = spec_field(
        None, doc="AWS secret access key (or secret_access_key_file)"
    )
    ca_bundle: str | None = spec_field(None, doc="CA bundle for the endpoint's certificate")
    wait_time: Duration = spec_field(
        Duration(5),
        doc="long-poll wait of one ReceiveMessage (at most 20 s, SQS's limit); a stop waits for the "
        "poll under way, so longer means fewer requests and a slower stop",
    )
    max_messages: int = spec_field(10, doc="messages per ReceiveMessage (1-10, SQS's limit)", check=_positive)
    visibility_timeout: Duration | None = spec_field(
        None,
        doc="how long a received message stays hidden before SQS hands it out again (if dcnios has "
        "not deleted it after Kafka's acknowledgement); default: the queue's",
    )

    def validate(self) -> Problems:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            yield "", "access_key_id and secret_access_key go together"
        if self.wait_time > 20:
            yield "wait_time", "SQS waits at most 20s"
        if self.max_messages > 10:
            yield "max_messages", "SQS hands out at most 10 messages at once"
        yield from _file_exists(self.ca_bundle, "ca_bundle")


@dataclass(frozen=True, slots=True)
class S3NotificationsSourceSpec:
    """Bucket notifications of an S3 object store (MinIO, Ceph RGW, AWS) become records."""

    name: str = spec_field(doc="unique source name (DNS label)", check=_name)
    type: Literal["s3-notifications"] = spec_field(doc="source kind")
    format: Literal["minio", "ceph", "aws"] = spec_field(
        doc="who writes the notifications: minio (eventSource minio:s3), ceph (RGW, ceph:s3), aws (via SQS)"
    )
    topic: str = spec_field(doc="topic for the records", check=_topic)
    kafka: UpstreamTopicSpec | None = spec_field(
        None, doc="read the notifications from a Kafka topic the object store writes (minio, ceph)"
    )
    webhook: WebhookSpec | None = spec_field(
        None, doc="serve an HTTP endpoint the object store posts its notifications to (minio, ceph)"
    )
    sqs: SqsSpec | None = spec_field(None, doc="read the notifications from an SQS queue (aws)")
    events: tuple[str, ...] = spec_field(
        ("s3:ObjectCreated:*",),
        doc="globs on the event name (with the s3: prefix, Ceph's too) that become records; "
        "other events are acknowledged and counted as skipped",
        check=_event_globs,
    )
    storage_provider: str | None = spec_field(
        None,
        doc="format ceph: the id of the OSCAR service's MinIO storage provider whose endpoint is the "
        "RGW (storage_providers.minio.<id>); the body names it so the supervisor stages from there. "
        "Absent: the cluster's default MinIO",
        check=_name,
    )
    routes: tuple[RouteSpec, ...] = spec_field(
        (), doc="first matching glob on the full path (bucket/key) picks the topic"
    )
    readers: tuple[str, ...] | None = spec_field(
        None,
        doc="principals allowed to read `topic` (paths no route matches); absent: not restricted",
        check=_principals,
    )

    @staticmethod
    def derive_defaults(values: dict[str, Any]) -> dict[str, Any]:
        upstream = values.get("kafka")
        if isinstance(upstream, UpstreamTopicSpec) and upstream.group is None:
            values["kafka"] = replace(upstream, group=f"dcnios-source-{values['name']}")
        return values

    def validate(self) -> Problems:
        given = [k for k in ("kafka", "webhook", "sqs") if getattr(self, k) is not None]
        if len(given) != 1:
            yield "", f"give exactly one of kafka, webhook, sqs; got {', '.join(given) or 'none'}"
        if self.format == "aws" and given and given != ["sqs"]:
            yield given[0], "format aws reads an SQS queue (sqs:): S3 sends notifications to SQS, not here"
        if self.format != "aws" and self.sqs is not None:
            yield "sqs", f"is for format aws; {self.format} writes to a Kafka topic (kafka:) or a webhook"
        if self.storage_provider is not None and self.format != "ceph":
            yield (
                "storage_provider",
                "applies to format ceph (the supervisor stages MinIO and AWS events itself)",
            )
        if not self.events:
            yield "events", "must name at least one event name glob"
        if self.kafka is not None and self.kafka.topic in (self.topic, *(r.topic for r in self.routes)):
            yield "kafka.topic", "must differ from the topics this source writes"

    def topic_for(self, path: str) -> str:
        """The topic a record with this full path goes to: the first matching route, else ``topic``."""
        for route in self.routes:
            if glob_match(route.match, path):
                return route.topic
        return self.topic


def _brokers(values: tuple[str, ...]) -> str | None:
    if not values:
        return "must name at least one broker (host:port)"
    for value in values:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in value:
            return f"expected host:port (Hermes's brokers and port), got {value!r}"
    return None


def _event_types(values: tuple[str, ...]) -> str | None:
    bad = [v for v in values if v != v.lower()]
    if bad:
        return f"Hermes sends event types in lower case (transfer-done, close), got {bad[0]!r}"
    return None


@dataclass(frozen=True, slots=True)
class StompSpec:
    brokers: tuple[str, ...] = spec_field(
        doc="host:port of the STOMP brokers Hermes sends to (its [messaging-hermes] brokers, with "
        "port for TLS or nonssl_port); each is tried in turn",
        check=_brokers,
        examples=(["rucio-mq.example.org:61614"],),
    )
    destination: str = spec_field(
        doc="the queue Hermes sends to ([messaging-hermes] destination), e.g. /queue/events; a queue "
        "keeps messages while dcnios is down, a topic does not",
        examples=("/queue/events",),
    )
    vhost: str | None = spec_field(
        None, doc="virtual host (RabbitMQ; [messaging-hermes] broker_virtual_host); absent: the broker's"
    )
    username: str | None = spec_field(None, doc="STOMP login")
    password: Secret | None = spec_field(None, doc="STOMP passcode (or password_file)")
    tls: bool = spec_field(True, doc="connect with TLS (STOMP over TLS, usually port 61614)")
    ca_bundle: str | None = spec_field(
        None, doc="CA bundle for the brokers' certificates; absent: the system's CAs"
    )
    verify: bool = spec_field(
        True, doc="verify the brokers' certificate and host name (turn off only for a throwaway test)"
    )
    cert: str | None = spec_field(None, doc="client certificate (PEM), for brokers that authenticate by it")
    key: str | None = spec_field(None, doc="private key of cert")
    prefetch: int = spec_field(
        256, doc="unacknowledged messages the broker may hand over at once", check=_positive
    )
    heartbeat: Duration = spec_field(
        Duration(10), doc="STOMP heart-beat period both ways; a silent connection is reconnected"
    )
    max_message: int = spec_field(
        512 << 10,
        doc="largest message body in bytes; a longer one goes to <topic>.invalid (its first 64 KiB) "
        "and is acknowledged, so it cannot block the queue (the record must fit Kafka's "
        "message.max.bytes, 1 MiB by default)",
        check=_frame_size,
    )
    reconnect_backoff: Duration = spec_field(Duration(0.5), doc="first reconnect delay", check=_positive)
    reconnect_backoff_max: Duration = spec_field(Duration(30), doc="largest reconnect delay", check=_positive)

    def validate(self) -> Problems:
        if not self.destination.strip():
            yield "destination", "must name a queue or topic"
        if (self.username is None) != (self.password is None):
            yield "", "username and password go together"
        if (self.cert is None) != (self.key is None) and self.key is not None:
            yield "key", "needs cert"
        if not self.tls:
            for key in ("ca_bundle", "cert", "key"):
                if getattr(self, key) is not None:
                    yield key, "is set, but tls is false"
        yield from _file_exists(self.ca_bundle, "ca_bundle")
        yield from _file_exists(self.cert, "cert")
        yield from _file_exists(self.key, "key")
        if self.reconnect_backoff_max < self.reconnect_backoff:
            yield "reconnect_backoff_max", "must not be smaller than reconnect_backoff"


@dataclass(frozen=True, slots=True)
class RucioSourceSpec:
    """Rucio's messages (Hermes over STOMP) that name a DID become records keyed ``scope:name``."""

    name: str = spec_field(doc="unique source name (DNS label)", check=_name)
    type: Literal["rucio"] = spec_field(doc="source kind")
    topic: str = spec_field(doc="topic for the records", check=_topic)
    stomp: StompSpec = spec_field(doc="the STOMP broker and destination Hermes sends to")
    events: tuple[str, ...] = spec_field(
        ("close",),
        doc="globs on the event type that become records (close, transfer-done, rule_ok, "
        "datasetlock_ok, ...); other messages are acknowledged and counted as skipped",
        check=_event_types,
    )
    scopes: tuple[str, ...] = spec_field((), doc="globs on the DID's scope (empty: all)")
    names: tuple[str, ...] = spec_field((), doc="globs on the DID's name (empty: all)")
    rses: tuple[str, ...] = spec_field(
        (),
        doc="globs on the RSE the message names (transfer-*: dst-rse; datasetlock_ok: rse); empty: "
        "all, messages without an RSE included",
    )
    routes: tuple[RouteSpec, ...] = spec_field((), doc="first matching glob on scope:name picks the topic")
    readers: tuple[str, ...] | None = spec_field(
        None,
        doc="principals allowed to read `topic` (DIDs no route matches); absent: not restricted",
        check=_principals,
    )

    def validate(self) -> Problems:
        if not self.events:
            yield "events", "must name at least one event type glob"

    def topic_for(self, path: str) -> str:
        """The topic a record with this DID (scope:name) goes to: the first matching route, else ``topic``."""
        for route in self.routes:
            if glob_match(route.match, path):
                return route.topic
        return self.topic


#: Every kind of source a spec may name, told apart by its ``type`` key (default ``dcache``). A new
#: kind is a frozen dataclass with a ``type: Literal[...]`` field, ``topic``, ``routes``, ``readers``
#: and ``topic_for``, added here (its runner: dcnios/producers/sources.py).
AnySourceSpec = SourceSpec | S3NotificationsSourceSpec | RucioSourceSpec


def source_kinds() -> tuple[type, ...]:
    """The source dataclasses, in the order of ``AnySourceSpec``."""
    return typing.get_args(AnySourceSpec)


# -- consumers ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ConsumerFilter:
    paths: tuple[str, ...] = spec_field(
        (), doc="globs on the full path (/dir/file, bucket/key, scope:name) to invoke for (empty: all)"
    )
    events: tuple[str, ...] = spec_field(
        (), doc="dCache masks to invoke for (empty: all); records of other kinds have no mask", check=_masks
    )
    event_names: tuple[str, ...] = spec_field(
        (),
        doc="globs on the event name of S3 and Rucio records (s3:ObjectCreated:*, transfer-done) "
        "(empty: all); dCache records have none",
        examples=(["s3:ObjectCreated:*"],),
    )

    def accepts(self, path: str, mask: tuple[str, ...] | list[str], event_name: str | None = None) -> bool:
        if self.paths and not any(glob_match(p, path) for p in self.paths):
            return False
        if self.events and not any(m in self.events for m in mask):
            return False
        return not self.event_names or (
            event_name is not None and any(fnmatchcase(event_name, g) for g in self.event_names)
        )


@dataclass(frozen=True, slots=True)
class OscarSpec:
    endpoint: str = spec_field(doc="OSCAR cluster URL", check=_url)
    service: str = spec_field(doc="service name", check=_name)
    token: Secret | None = spec_field(None, doc="service token (64 hex)")
    username: str | None = spec_field(None, doc="cluster user, to fetch the service token")
    password: Secret | None = spec_field(None, doc="cluster password")
    oidc_token: Secret | None = spec_field(None, doc="OIDC access token, to fetch the service token")
    ca_bundle: str | None = spec_field(None, doc="CA bundle for OSCAR's certificate")
    mode: Literal["async", "sync"] = spec_field("async", doc="async: POST /job; sync: POST /run")
    timeout: Duration = spec_field(Duration(30), doc="read timeout of one invocation", check=_positive)
    connect_timeout: Duration = spec_field(Duration(5), doc="connect timeout", check=_positive)
    job_id: Literal["random", "deterministic"] = spec_field(
        "random", doc="deterministic: X-Delegated-Job-ID from the event (OSCAR >= 4.1), so replays add no job"
    )
    max_pending_jobs: int | None = spec_field(
        None, doc="hold invocations while Pending+Running jobs reach this", check=_positive
    )
    pending_poll_interval: Duration = spec_field(Duration(2), doc="how often to poll job states")
    input_path: str | None = spec_field(
        None,
        doc="the service's webdav input path (dCache directory); absent: read from the service definition",
        check=_abs_path,
    )
    nested_names: bool = spec_field(
        False,
        doc="payload dcache: send files below sub-directories of the input path as relative names; "
        "faas-supervisor <= 2.0.1 fails on them, so by default they go to the DLQ",
    )
    track_jobs: bool | None = spec_field(
        None,
        doc="follow each job to Succeeded/Failed before committing (needs job_id: deterministic and "
        "username/password); absent: on when both are given",
    )
    job_timeout: Duration = spec_field(
        Duration(6 * 3600),
        doc="tracking: a job not ended this long after its call counts as failed and is deleted "
        "(a pod that never pulls its image or is never scheduled stays Pending for good)",
        check=_positive,
    )
    health_probe_max: Duration = spec_field(
        Duration(60), doc="largest delay between /health probes while OSCAR is down", check=_positive
    )

    @property
    def tracking(self) -> bool:
        """Whether jobs are followed to their end (see ``track_jobs``)."""
        if self.track_jobs is not None:
            return self.track_jobs
        return self.job_id == "deterministic" and self.username is not None and self.mode == "async"

    def validate(self) -> Problems:
        kinds = [
            k
            for k, present in (
                ("token", self.token is not None),
                ("username/password", self.username is not None or self.password is not None),
                ("oidc_token", self.oidc_token is not None),
            )
            if present
        ]
        if len(kinds) != 1:
            yield "", f"give exactly one of token, username/password, oidc_token; got {kinds or 'none'}"
        if (self.username is None) != (self.password is None):
            yield "", "username and password go together"
        # With an OIDC token OSCAR lists only jobs labelled with that token's owner, and jobs posted
        # with the service token carry no owner label (oscar-api.md §3.3): only Basic sees them.
        if self.max_pending_jobs is not None and self.username is None:
            yield (
                "max_pending_jobs",
                "needs username/password: GET /system/logs with an OIDC token or a "
                "service token does not list the jobs dcnios creates",
            )
        if self.track_jobs:
            if self.job_id != "deterministic":
                yield (
                    "track_jobs",
                    "needs job_id: deterministic (OSCAR >= 4.1): with random ids OSCAR "
                    "returns no job name to follow",
                )
            if self.mode != "async":
                yield "track_jobs", "applies to mode: async only (/run answers with the result)"
            if self.username is None:
                yield (
                    "track_jobs",
                    "needs username/password: GET /system/logs with an OIDC token or a "
                    "service token does not list the jobs dcnios creates",
                )
        yield from _file_exists(self.ca_bundle, "ca_bundle")


@dataclass(frozen=True, slots=True)
class RetrySpec:
    max_attempts: int = spec_field(8, doc="attempts before the record goes to the DLQ", check=_positive)
    initial_backoff: Duration = spec_field(Duration(1), doc="first retry delay", check=_positive)
    max_backoff: Duration = spec_field(Duration(300), doc="largest retry delay", check=_positive)


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    name: str = spec_field(doc="unique consumer name (DNS label)", check=_name)
    topic: str = spec_field(doc="topic to consume", check=_topic)
    oscar: OscarSpec = spec_field(doc="the OSCAR service to invoke")
    group: str | None = spec_field(None, doc="consumer group; default dcnios-<name>")
    filter: ConsumerFilter = spec_field(ConsumerFilter(), doc="which records to invoke for")
    payload: Literal["native", "dcache", "record", "raw"] = spec_field(
        "native",
        doc="native: what the supervisor stages, per record kind (the byte-exact dCache event JSON, "
        "the S3 Records[] notification as received, Ceph's translated to one the supervisor knows, "
        "the Rucio message); dcache: native for dCache records only (others go to the DLQ); record: "
        "the whole record as JSON; raw: the topic holds no dcnios records (another system fills "
        "it) and each value is sent unchanged",
    )
    rate: Rate | None = spec_field(None, doc="invocations per second for the whole group; absent: unlimited")
    concurrency: int = spec_field(16, doc="invocations in flight per process", check=_positive)
    ordering: Literal["key", "partition", "none"] = spec_field(
        "key", doc="key: same path in order; partition: one at a time per partition; none"
    )
    retry: RetrySpec = spec_field(RetrySpec(), doc="retry policy")
    dead_letter_topic: str | None = spec_field(None, doc="failed records; default <topic>.dlq", check=_topic)
    dedup_window: Duration = spec_field(
        Duration(600), doc="drop replays of an event seen this recently (0 disables)"
    )
    drain_timeout: Duration = spec_field(Duration(30), doc="how long shutdown waits for in-flight calls")
    librdkafka: Mapping[str, str | Secret] = spec_field(
        MappingProxyType({}),
        doc="extra librdkafka settings of this group's members (e.g. session.timeout.ms)",
        secret_entries=is_secret_setting,
    )
    principal: str | None = spec_field(
        None,
        doc="the Kafka user this consumer authenticates as (the KafkaUser `dcnios k8s` renders); "
        "checked against the readers of its topic; default dcnios-<name>",
        check=_name,
    )

    @property
    def needs_input_path_without_it(self) -> bool:
        """dCache bodies need the service's webdav input path, which a service token cannot read."""
        return self.oscar.input_path is None and self.oscar.token is not None

    @property
    def dcache_bodies(self) -> bool:
        """Whether dCache records get the dCache envelope (and so the service's input path)."""
        return self.payload in ("native", "dcache")

    @staticmethod
    def derive_defaults(values: dict[str, Any]) -> dict[str, Any]:
        values.setdefault("group", f"dcnios-{values['name']}")
        values.setdefault("principal", f"dcnios-{values['name']}")
        values.setdefault("dead_letter_topic", f"{values['topic']}.dlq")
        return values

    def validate(self) -> Problems:
        yield from _passthrough(self.librdkafka)
        if self.dead_letter_topic == self.topic:
            yield "dead_letter_topic", "must differ from topic"
        if self.payload == "dcache" and self.needs_input_path_without_it:
            # The supervisor stages <input path>/<event.name>: without the input path the file's
            # name relative to it cannot be computed, and a service token cannot read the service.
            yield (
                "oscar.input_path",
                "needed for payload: dcache with a service token (the service's "
                "webdav input path), or give username/password to read it from the service",
            )


# -- nifi ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NifiAuth:
    username: str | None = spec_field(None, doc="single-user login name")
    password: Secret | None = spec_field(None, doc="single-user password")
    token: Secret | None = spec_field(None, doc="bearer token")
    cert: str | None = spec_field(None, doc="client certificate (PEM)")
    key: str | None = spec_field(None, doc="client key (PEM)")

    def validate(self) -> Problems:
        kinds = [
            k
            for k, p in (
                ("username/password", self.username is not None or self.password is not None),
                ("token", self.token is not None),
                ("cert", self.cert is not None),
            )
            if p
        ]
        if len(kinds) != 1:
            yield "", f"give exactly one of username/password, token, cert; got {kinds or 'none'}"
        if (self.username is None) != (self.password is None):
            yield "", "username and password go together"


@dataclass(frozen=True, slots=True)
class NifiTruststore:
    path: str = spec_field(doc="trust store file on the NiFi hosts (NiFi cannot read PEM here)")
    type: Literal["PKCS12", "JKS", "BCFKS"] = spec_field("PKCS12", doc="trust store format")
    password: Secret | None = spec_field(None, doc="trust store password (or password_file)")


@dataclass(frozen=True, slots=True)
class NifiSpec:
    endpoint: str = spec_field(doc="NiFi REST root, e.g. https://host:8443/nifi-api", check=_url)
    auth: NifiAuth | None = spec_field(None, doc="credentials")
    ca_bundle: str | None = spec_field(None, doc="CA bundle for NiFi's certificate")
    version: Literal[1, 2] = spec_field(2, doc="NiFi major version")
    consumers: tuple[str, ...] = spec_field((), doc="consumers deployed as NiFi process groups")
    kafka_truststore: NifiTruststore | None = spec_field(
        None, doc="how NiFi trusts the brokers when kafka.security_protocol is SSL or SASL_SSL"
    )
    poll_timeout: Duration = spec_field(
        Duration(60), doc="how long to wait for NiFi's asynchronous requests", check=_positive
    )


# -- sandbox (dcnios up / make demo) ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SandboxDCacheSpec:
    root: str = spec_field(doc="local directory served as the dCache namespace root (relative to this file)")
    password: Secret = spec_field(doc="the sandbox user's password (or password_file)")
    port: int = spec_field(3880, doc="port of the events API and the WebDAV door", check=_port)
    username: str = spec_field("demo", doc="the one user the sandbox knows")


@dataclass(frozen=True, slots=True)
class SandboxServiceSpec:
    name: str = spec_field(doc="service name (what consumers[].oscar.service names)", check=_name)
    script: str = spec_field(doc="script run for each job (relative to this file)")
    input: str = spec_field("/", doc="dCache directory the job's input file is read from (FDL input path)")
    output: str | None = spec_field(
        None,
        doc="dCache directory (under sandbox.dcache.root) the job's outputs are uploaded to, as "
        "the FDL's webdav.dcache output; absent: collected in sandbox.oscar.output/<service>",
        check=_abs_path,
    )


@dataclass(frozen=True, slots=True)
class SandboxOscarSpec:
    services: tuple[SandboxServiceSpec, ...] = spec_field(doc="services whose jobs run for real")
    output: str = spec_field(doc="directory collecting each job's outputs (relative to this file)")
    password: Secret = spec_field(doc="cluster admin password (or password_file)")
    port: int = spec_field(8080, doc="port of the OSCAR API", check=_port)
    username: str = spec_field("oscar", doc="cluster admin user (Basic auth; fetches service tokens)")
    workers: int = spec_field(4, doc="jobs run at once", check=_positive)
    job_timeout: Duration = spec_field(
        Duration(300), doc="a job's script is killed after this", check=_positive
    )


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    dcache: SandboxDCacheSpec | None = spec_field(None, doc="a dCache stand-in over a local directory")
    oscar: SandboxOscarSpec | None = spec_field(None, doc="an OSCAR stand-in that runs scripts")


# -- the whole pipeline -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TopicReaders:
    """Who may read a restricted topic, and the spec key that grants it."""

    principals: frozenset[str]
    origin: str


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    kafka: KafkaSpec = spec_field(KafkaSpec(), doc="the Kafka cluster")
    sources: tuple[AnySourceSpec, ...] = spec_field(
        (), doc="event sources; `type` picks the kind: dcache (default), s3-notifications, rucio"
    )
    consumers: tuple[ConsumerSpec, ...] = spec_field((), doc="OSCAR consumers")
    nifi: NifiSpec | None = spec_field(None, doc="NiFi deployment of some consumers")
    sandbox: SandboxSpec | None = spec_field(
        None, doc="local stand-ins `dcnios up` starts (never needed in production)"
    )
    workflows: tuple[WorkflowSpec, ...] = spec_field(
        (), doc="graphs of OSCAR services, one run per triggering event (`dcnios workflow run`)"
    )

    def validate(self) -> Problems:
        yield from _unique("sources", [s.name for s in self.sources])
        yield from _unique("consumers", [c.name for c in self.consumers])
        yield from _unique("workflows", [w.name for w in self.workflows])
        yield from self._workflows()
        names = {c.name for c in self.consumers}
        if self.nifi is not None:
            for i, name in enumerate(self.nifi.consumers):
                if name not in names:
                    hint = f"; consumers are {', '.join(sorted(names))}" if names else ""
                    yield f"nifi.consumers[{i}]", f"no consumer named {name!r}{hint}"
        yield from self._derived_topics()
        yield from self._authorised_readers()
        for i, consumer in enumerate(self.consumers):
            if consumer.payload == "native" and consumer.needs_input_path_without_it:
                kinds = self.topic_kinds(consumer.topic)
                if "dcache" in kinds:
                    yield (
                        f"consumers[{i}].oscar.input_path",
                        "needed for payload: native on a topic a dcache source writes, with a service "
                        "token (the service's webdav input path), or give username/password to read "
                        "it from the service",
                    )

    def _workflows(self) -> Problems:
        consumers = {c.name: c for c in self.consumers}
        sources = {s.name for s in self.sources}
        dcache = {s.name for s in self.dcache_sources}
        sandbox = self.sandbox.oscar if self.sandbox is not None else None
        services = {s.name for s in sandbox.services} if sandbox is not None else None
        for i, workflow in enumerate(self.workflows):
            at = f"workflows[{i}]"
            trigger = consumers.get(workflow.trigger.consumer)
            if trigger is None:
                hint = f"; consumers are {', '.join(sorted(consumers))}" if consumers else ""
                yield f"{at}.trigger.consumer", f"no consumer named {workflow.trigger.consumer!r}{hint}"
            elif trigger.oscar.username is None:
                yield (
                    f"{at}.trigger.consumer",
                    f"consumer {trigger.name!r} has no oscar username/password: a workflow follows every "
                    "job through GET /system/logs, which lists dcnios's jobs only for Basic auth",
                )
            if workflow.storage is not None and workflow.storage not in sources:
                yield f"{at}.storage", f"no source named {workflow.storage!r}"
            elif workflow.storage is not None and workflow.storage not in dcache:
                yield (
                    f"{at}.storage",
                    f"source {workflow.storage!r} is not a dcache source: outputs are listed through "
                    "dCache's namespace API",
                )
            chained = [j for j, s in enumerate(workflow.steps) if s.after]
            if chained and workflow.storage is None:
                yield (
                    f"{at}.steps[{chained[0]}].after",
                    "a step after another needs the workflow's `storage` (the source whose dCache "
                    "lists its parent's outputs)",
                )
            if services is not None:
                for j, step in enumerate(workflow.steps):
                    if step.service not in services:
                        known = ", ".join(sorted(services))
                        yield (
                            f"{at}.steps[{j}].service",
                            f"unknown service {step.service!r}; the sandbox runs {known}",
                        )
            accepted = trigger.filter.paths if trigger is not None else ()
            for rel, message in graph_problems(workflow.steps, accepted):
                yield f"{at}.{rel}", message

    def workflow(self, name: str) -> WorkflowSpec:
        for workflow in self.workflows:
            if workflow.name == name:
                return workflow
        raise KeyError(name)

    def topic_readers(self) -> dict[str, TopicReaders]:
        """Each restricted topic a source writes: who may read it, and the key that says so.

        A topic no ``readers`` names is absent: anyone the cluster lets in may read it.
        """
        out: dict[str, TopicReaders] = {}
        for i, source in enumerate(self.sources):
            grants = [(source.topic, source.readers, f"sources[{i}].readers")]
            grants += [
                (r.topic, r.readers, f"sources[{i}].routes[{j}].readers") for j, r in enumerate(source.routes)
            ]
            for topic, readers, origin in grants:
                if readers is not None:
                    out.setdefault(topic, TopicReaders(frozenset(readers), origin))
        return out

    def _authorised_readers(self) -> Problems:
        restricted = self.topic_readers()
        # One topic, one set of readers: a subtree routed to a topic that another subtree with
        # other readers (or none) also uses would hand its events to those readers.
        for i, source in enumerate(self.sources):
            grants = [(source.topic, source.readers, f"sources[{i}]")]
            grants += [(r.topic, r.readers, f"sources[{i}].routes[{j}]") for j, r in enumerate(source.routes)]
            for topic, readers, at in grants:
                known = restricted.get(topic)
                if known is None or (readers is not None and frozenset(readers) == known.principals):
                    continue
                yield (
                    f"{at}.readers",
                    f"topic {topic!r} is restricted to {', '.join(sorted(known.principals)) or 'nobody'} "
                    f"by {known.origin}; every subtree routed to one topic must name the same readers",
                )
        for i, consumer in enumerate(self.consumers):
            grant = restricted.get(consumer.topic)
            if grant is not None and consumer.principal not in grant.principals:
                allowed = ", ".join(sorted(grant.principals)) or "nobody"
                yield (
                    f"consumers[{i}].topic",
                    f"principal {consumer.principal!r} may not read {consumer.topic!r} (readers: {allowed}, "
                    f"from {grant.origin}); add it there or set consumers[{i}].principal",
                )

    def _derived_topics(self) -> Problems:
        # Names derive from the spec in dcnios.topics only, so that no suffix is missed here;
        # a given name longer than Kafka allows fails its field check before this runs.
        from dcnios.topics import topic_plan

        too_long: dict[str, TopicPlan] = {}  # one problem a key: the longest name it derives
        for plan in topic_plan(self):
            known = too_long.get(plan.origin)
            if len(plan.name) > MAX_TOPIC_LENGTH and (known is None or len(plan.name) > len(known.name)):
                too_long[plan.origin] = plan
        for origin, plan in too_long.items():
            yield (
                origin,
                f"derives the topic {plan.name[:40]}... ({plan.purpose}), {len(plan.name)} characters "
                f"long; Kafka allows {MAX_TOPIC_LENGTH}",
            )

    def source(self, name: str) -> AnySourceSpec:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)

    @property
    def dcache_sources(self) -> tuple[SourceSpec, ...]:
        """The ``type: dcache`` sources (what the dCache producer, doctor and reconcile know)."""
        return tuple(s for s in self.sources if isinstance(s, SourceSpec))

    def dcache_source(self, name: str) -> SourceSpec:
        source = self.source(name)
        if not isinstance(source, SourceSpec):
            raise KeyError(f"{name} is a {source.type} source, not a dcache one")
        return source

    def topic_kinds(self, topic: str) -> frozenset[str]:
        """The ``type`` of every source of this spec that writes ``topic`` (directly or by a route)."""
        return frozenset(
            s.type for s in self.sources if topic == s.topic or any(r.topic == topic for r in s.routes)
        )

    def consumer(self, name: str) -> ConsumerSpec:
        for consumer in self.consumers:
            if consumer.name == name:
                return consumer
        raise KeyError(name)

    def with_bootstrap(self, bootstrap: str) -> PipelineSpec:
        return replace(self, kafka=replace(self.kafka, bootstrap_servers=bootstrap))


def _unique(key: str, names: list[str]) -> Problems:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            yield f"{key}[{i}].name", f"duplicate name {name!r}"
        seen.add(name)


_GLOB_CACHE: dict[str, re.Pattern[str]] = {}


def glob_match(pattern: str, path: str) -> bool:
    """Path glob: ``*`` and ``?`` stay within one directory, ``**`` crosses directories."""
    compiled = _GLOB_CACHE.get(pattern)
    if compiled is None:
        parts = re.split(r"(\*\*/?|\*|\?)", pattern)
        regex = ""
        for part in parts:
            if part in ("**", "**/"):
                regex += "(?:.*/)?" if part == "**/" else ".*"
            elif part == "*":
                regex += "[^/]*"
            elif part == "?":
                regex += "[^/]"
            else:
                regex += re.escape(part)
        compiled = _GLOB_CACHE.setdefault(pattern, re.compile(f"^{regex}$"))
    return compiled.match(path) is not None
