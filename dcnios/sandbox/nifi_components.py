"""What a NiFi 2.x instance knows of the components the dcnios recipes use: property descriptors,
allowable values, dynamic-property rules and the ``migrateProperties`` run on import.

Every entry was read from apache/nifi's source at the release tags (rel/nifi-2.0.0 … 2.11.0, and
main at 60319e26 for the "2.12" entries); the file each list comes from is named above it.
``EB/`` stands for ``nifi-extension-bundles/``. The emulator (``dcnios.sandbox.nifi``) applies
these; ``dcnios.deploy.catalog`` is written separately, so the tests check one against the other.

Not emulated (refused loudly instead of guessed): the migrations that create a controller service
(AvroReader/JsonRecordSetWriter ``confluent-encoded``, InvokeHTTP ``Proxy Host``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "COMPONENTS",
    "ComponentFacts",
    "Descriptor",
    "UnemulatedMigration",
    "nifi_version",
    "unsupported_property",
]

Version = tuple[int, int]
_LAST: Final[Version] = (2, 10**6)


def nifi_version(text: str) -> Version:
    """``"2.11.0"`` → (2, 11); a ``-SNAPSHOT`` suffix is ignored."""
    major, _, rest = text.partition(".")
    minor = re.match(r"\d+", rest)
    return int(major), int(minor.group(0)) if minor else 0


class UnemulatedMigration(ValueError):
    """A migrateProperties step that creates a controller service, which the emulator does not do."""


@dataclass(frozen=True)
class Descriptor:
    name: str
    since: Version = (2, 0)
    until: Version = _LAST  # the last minor release that has it
    service: bool = False  # identifiesControllerService
    allowed: tuple[str, ...] = ()  # allowableValues, in declaration order (NiFi's message lists them so)

    def exists(self, version: Version) -> bool:
        return self.since <= version <= self.until


#: (name, value, version) -> explanation when the dynamic property is invalid, else None
DynamicRule = Callable[[str, str, Version], str | None]
Migration = Callable[[dict[str, Any], Version], None]
#: (properties, version) -> [(subject, explanation)] of customValidate
CustomValidation = Callable[[Mapping[str, Any], Version], list[tuple[str, str]]]


@dataclass(frozen=True)
class ComponentFacts:
    descriptors: tuple[Descriptor, ...]
    #: None: the component does not override getSupportedDynamicPropertyDescriptor
    dynamic: DynamicRule | None = None
    migrate: Migration | None = None
    custom: CustomValidation | None = None

    def descriptor(self, name: str, version: Version) -> Descriptor | None:
        return next((d for d in self.descriptors if d.name == name and d.exists(version)), None)


def _d(names: str, *, since: Version = (2, 0), until: Version = _LAST) -> list[Descriptor]:
    return [Descriptor(n.strip(), since, until) for n in names.split("|") if n.strip()]


def _rename(props: dict[str, Any], old: str, new: str) -> None:
    # FW/nifi-framework-components/.../migration/StandardPropertyConfiguration.java renameProperty:
    # acts only when the old name is present; raw and effective values move together.
    if old in props and old != new:
        props[new] = props.pop(old)


_V27: Final[Version] = (2, 7)


# -- Kafka ----------------------------------------------------------------------------------------
# Kafka client keys the emulator accepts as Kafka3ConnectionService dynamic properties: only those
# whose string literal was read in apache/kafka clients/src/main/java/org/apache/kafka/clients/
# consumer/ConsumerConfig.java (at 0025adef). NiFi accepts every public static String of
# ConsumerConfig, ProducerConfig, CommonClientConfigs, SaslConfigs and SslConfigs
# (EB/nifi-kafka-bundle/nifi-kafka-shared/.../StandardKafkaPropertyNameProvider.java); keys outside
# this subset are refused here although NiFi would accept them.
_KAFKA_CLIENT_KEYS: Final = frozenset(
    {
        "max.poll.records",
        "group.protocol",
        "group.remote.assignor",
        "enable.auto.commit",
        "auto.commit.interval.ms",
        "partition.assignment.strategy",
        "auto.offset.reset",
        "fetch.min.bytes",
        "fetch.max.bytes",
        "fetch.max.wait.ms",
        "max.partition.fetch.bytes",
        "check.crcs",
        "key.deserializer",
        "value.deserializer",
        "interceptor.classes",
        "exclude.internal.topics",
        "isolation.level",
        "allow.auto.create.topics",
    }
)


def _kafka_dynamic(name: str, _value: str, version: Version) -> str | None:
    # 2.0-2.3: @DynamicProperty only, no getSupportedDynamicPropertyDescriptor override (NIFI-14271
    # added it in 2.4.0): every unknown name gets the INVALID descriptor.
    if version < (2, 4):
        return unsupported_property(name)
    # EB/nifi-kafka-bundle/nifi-kafka-shared/src/main/java/org/apache/nifi/kafka/shared/validation/
    # DynamicPropertyValidator.java (sasl_extension_ from 2.7.0, SaslExtensionUtil.java)
    if name.startswith("partitions") or (version >= _V27 and name.startswith("sasl_extension_")):
        return None
    if name in _KAFKA_CLIENT_KEYS:
        return None
    if version >= _V27:
        return "must be a known Kafka client configuration property or a SASL extension property"
    return "must be a known Kafka client configuration property"


def unsupported_property(name: str) -> str:
    # nifi-api src/main/java/org/apache/nifi/components/Validator.java, Validator.INVALID
    return f"'{name}' is not a supported property or has no Validator associated with it"


_TRUE_FALSE: Final = ("true", "false")

# 2.0.0-2.4.x: EB/nifi-kafka-bundle/nifi-kafka-3-service/src/main/java/org/apache/nifi/kafka/service/
# Kafka3ConnectionService.java; 2.5.0+: EB/nifi-kafka-bundle/nifi-kafka-service-shared/src/main/java/
# org/apache/nifi/kafka/service/Kafka3ConnectionService.java with EB/nifi-kafka-bundle/
# nifi-kafka-shared/src/main/java/org/apache/nifi/kafka/shared/component/KafkaClientComponent.java
_KAFKA3: Final = ComponentFacts(
    (
        *_d("bootstrap.servers|security.protocol|sasl.mechanism|sasl.username|sasl.password"),
        Descriptor("oauth2-access-token-provider-service", since=(2, 5), service=True),
        Descriptor("kerberos-user-service", since=(2, 2), service=True),
        Descriptor("sasl.kerberos.service.name", since=(2, 2)),
        Descriptor("SSL Context Service", service=True),
        *_d("isolation.level|max.poll.records|default.api.timeout.ms|max.block.ms|ack.wait.time"),
    ),
    dynamic=_kafka_dynamic,
)

# EB/nifi-kafka-bundle/nifi-kafka-processors/src/main/java/org/apache/nifi/kafka/processors/ConsumeKafka.java
# (allowable values: AutoOffsetReset.java in nifi-kafka-service-api, consumer/ProcessingStrategy.java,
# nifi-kafka-shared/.../property/KeyEncoding.java)
_CONSUME_KAFKA: Final = ComponentFacts(
    (
        Descriptor("Kafka Connection Service", service=True),
        Descriptor("Group ID"),
        Descriptor("Topic Format", allowed=("names", "pattern")),
        Descriptor("Topics"),
        Descriptor("auto.offset.reset", allowed=("earliest", "latest", "none")),
        Descriptor("Commit Offsets", allowed=_TRUE_FALSE),
        Descriptor("Max Uncommitted Size", since=(2, 5)),
        Descriptor("Max Uncommitted Time"),
        Descriptor("Header Name Pattern"),
        Descriptor("Header Format", since=(2, 11)),
        Descriptor("Header Encoding"),
        Descriptor("Processing Strategy", allowed=("FLOW_FILE", "DEMARCATOR", "RECORD")),
        Descriptor("Header Name Prefix", since=(2, 8)),
        Descriptor("Record Reader", service=True),
        Descriptor("Record Writer", service=True),
        Descriptor("Output Strategy"),
        Descriptor("Key Attribute Encoding", allowed=("utf-8", "hex", "do-not-add")),
        Descriptor("Key Format"),
        Descriptor("Key Record Reader", service=True),
        Descriptor("Message Demarcator"),
        Descriptor("Separate By Key"),
        Descriptor("Schema Conflict Resolution", since=(2, 12)),
    )
)

# EB/nifi-kafka-bundle/nifi-kafka-processors/src/main/java/org/apache/nifi/kafka/processors/PublishKafka.java
_PUBLISH_KAFKA: Final = ComponentFacts(
    (
        Descriptor("Kafka Connection Service", service=True),
        *_d("Topic Name|Failure Strategy|acks|compression.type|max.request.size|Transactions Enabled"),
        *_d("Transactional ID Prefix|partitioner.class|partition|Message Demarcator"),
        Descriptor("Record Reader", service=True),
        Descriptor("Record Writer", service=True),
        *_d("Publish Strategy|Message Key Field|FlowFile Attribute Header Pattern|Header Encoding|Kafka Key"),
        Descriptor("Kafka Key Attribute Encoding"),
        Descriptor("Record Key Writer", service=True),
        Descriptor("Record Metadata Strategy"),
    )
)


# -- SSL ------------------------------------------------------------------------------------------
def _migrate_ssl(props: dict[str, Any], version: Version) -> None:
    # StandardSSLContextService.migrateProperties, then StandardRestrictedSSLContextService's (2.7.0+)
    if version >= _V27:
        _rename(props, "key-password", "Key Password")
        _rename(props, "SSL Protocol", "TLS Protocol")


# EB/nifi-standard-services/nifi-ssl-context-bundle/nifi-ssl-context-service/src/main/java/org/apache/
# nifi/ssl/StandardRestrictedSSLContextService.java (and StandardSSLContextService.java)
_SSL: Final = ComponentFacts(
    (
        *_d("Keystore Filename|Keystore Password"),
        Descriptor("key-password", until=(2, 6)),
        Descriptor("Key Password", since=_V27),
        *_d("Keystore Type|Truststore Filename|Truststore Password|Truststore Type"),
        Descriptor("SSL Protocol", until=(2, 6)),
        Descriptor("TLS Protocol", since=_V27),
    ),
    migrate=_migrate_ssl,
)


# -- record services ------------------------------------------------------------------------------
# EB/nifi-extension-utils/nifi-record-utils/nifi-avro-record-utils/src/main/java/org/apache/nifi/schema/
# access/SchemaAccessUtils.java (OLD_*_PROPERTY_NAME) and .../serialization/SchemaRegistryService.java
_SCHEMA_RENAMES: Final = (
    ("schema-access-strategy", "Schema Access Strategy"),
    ("schema-registry", "Schema Registry"),
    ("schema-name", "Schema Name"),
    ("schema-branch", "Schema Branch"),
    ("schema-version", "Schema Version"),
    ("schema-text", "Schema Text"),
    ("schema-reference-reader", "Schema Reference Reader"),
)


def _migrate_schema_registry_service(props: dict[str, Any], version: Version) -> None:
    # SchemaRegistryService.migrateProperties reads the strategy under the name current in that
    # release, before renaming: from 2.7.0 an old-named confluent-encoded is renamed and stays invalid.
    current = "Schema Access Strategy" if version >= _V27 else "schema-access-strategy"
    if props.get(current) == "confluent-encoded":
        raise UnemulatedMigration(
            f"{current}=confluent-encoded: NiFi would create a ConfluentEncodedSchemaReferenceReader"
        )
    if version >= _V27:
        for old, new in _SCHEMA_RENAMES:
            _rename(props, old, new)


def _schema_descriptors(*, reader: bool) -> list[Descriptor]:
    # 2.0-2.6 names, then the 2.7.0 renames (NIFI-15018 f73153df5c4)
    strategy = (
        ("schema-name", "schema-text-property", "schema-reference-reader", "embedded-avro-schema")
        if reader
        else ("inherit-record-schema", "schema-name", "schema-text-property")
    )
    old = [
        Descriptor("schema-access-strategy", until=(2, 6)),
        Descriptor("schema-registry", until=(2, 6), service=True),
        *_d("schema-name|schema-version|schema-branch|schema-text", until=(2, 6)),
        Descriptor("schema-reference-reader", until=(2, 6), service=True),
    ]
    new = [
        Descriptor("Schema Access Strategy", since=_V27, allowed=strategy),
        Descriptor("Schema Registry", since=_V27, service=True),
        *_d("Schema Name|Schema Version|Schema Branch|Schema Text", since=_V27),
        Descriptor("Schema Reference Reader", since=_V27, service=True),
    ]
    return old + new


def _migrate_avro_reader(props: dict[str, Any], version: Version) -> None:
    _migrate_schema_registry_service(props, version)
    if version >= _V27:  # AvroReader.migrateProperties
        _rename(props, "cache-size", "Cache Size")


# EB/nifi-standard-services/nifi-record-serialization-services-bundle/nifi-record-serialization-services/
# src/main/java/org/apache/nifi/avro/AvroReader.java, with SchemaRegistryService.java and
# SchemaAccessUtils.java (allowable values: SchemaRegistryService strategies + EMBEDDED_AVRO_SCHEMA);
# "confluent-encoded" is only OBSOLETE_CONFLUENT_ENCODED_STRATEGY, never allowable in 2.x.
_AVRO_READER: Final = ComponentFacts(
    (
        *_schema_descriptors(reader=True),
        Descriptor("cache-size", until=(2, 6)),
        Descriptor("Cache Size", since=_V27),
        Descriptor("Fast Reader Enabled", since=(2, 8)),
    ),
    migrate=_migrate_avro_reader,
)


def _migrate_json_writer(props: dict[str, Any], version: Version) -> None:
    _migrate_schema_registry_service(props, version)
    # SchemaRegistryRecordSetWriter.migrateProperties
    props.pop("schema-protocol-version", None)
    if props.get("Schema Write Strategy") == "confluent-encoded":
        raise UnemulatedMigration(
            "Schema Write Strategy=confluent-encoded: NiFi would create a "
            "ConfluentEncodedSchemaReferenceWriter"
        )
    if version >= _V27:
        _rename(props, "schema-cache", "Schema Cache")
    # JsonRecordSetWriter.migrateProperties: flows from before the property keep their old output
    props.setdefault("Allow Scientific Notation", "true")
    if version >= _V27:
        for old, new in (
            ("suppress-nulls", "Suppress Null Values"),
            ("output-grouping", "Output Grouping"),
            ("compression-format", "Compression Format"),
            ("compression-level", "Compression Level"),
        ):
            _rename(props, old, new)


# EB/nifi-standard-services/nifi-record-serialization-services-bundle/nifi-record-serialization-services/
# src/main/java/org/apache/nifi/json/JsonRecordSetWriter.java, its parent serialization/
# DateTimeTextRecordSetWriter.java, EB/nifi-extension-utils/nifi-record-utils/nifi-avro-record-utils/
# src/main/java/org/apache/nifi/serialization/SchemaRegistryRecordSetWriter.java (write strategies)
_JSON_WRITER: Final = ComponentFacts(
    (
        Descriptor(
            "Schema Write Strategy",
            allowed=("no-schema", "schema-name", "full-schema-attribute", "schema-reference-writer"),
        ),
        Descriptor("schema-cache", until=(2, 6), service=True),
        Descriptor("Schema Cache", since=_V27, service=True),
        Descriptor("Schema Reference Writer", service=True),
        *_schema_descriptors(reader=False),
        *_d("Date Format|Time Format|Timestamp Format"),
        Descriptor("Pretty Print JSON", allowed=_TRUE_FALSE),
        Descriptor("suppress-nulls", until=(2, 6)),
        Descriptor(
            "Suppress Null Values",
            since=_V27,
            allowed=("never-suppress", "always-suppress", "suppress-missing"),
        ),
        Descriptor("Allow Scientific Notation", allowed=_TRUE_FALSE),
        *_d("output-grouping|compression-format|compression-level", until=(2, 6)),
        Descriptor("Output Grouping", since=_V27, allowed=("output-array", "output-oneline")),
        Descriptor(
            "Compression Format",
            since=_V27,
            allowed=("none", "gzip", "bzip2", "xz-lzma2", "snappy", "snappy framed", "zstd"),
        ),
        Descriptor("Compression Level", since=_V27),
        Descriptor("Serialized JSON Input Handling", since=(2, 10)),
        Descriptor("Timestamp Representation", since=(2, 12)),
    ),
    migrate=_migrate_json_writer,
)


def _migrate_confluent_registry(props: dict[str, Any], version: Version) -> None:
    if version >= _V27:  # ConfluentSchemaRegistry.migrateProperties (NIFI-14989 a61b38d4f08)
        for old, new in (
            ("url", "Schema Registry URLs"),
            ("ssl-context", "SSL Context Service"),
            ("cache-size", "Cache Size"),
            ("cache-expiration", "Cache Expiration"),
            ("timeout", "Communications Timeout"),
            ("authentication-type", "Authentication Type"),
            ("username", "Username"),
            ("password", "Password"),
        ):
            _rename(props, old, new)


def _request_header_only(name: str, _value: str, _version: Version) -> str | None:
    # ConfluentSchemaRegistry.java REQUEST_HEADER_VALIDATOR
    prefix = "request.header."
    if name.startswith(prefix) and len(name) > len(prefix):
        return None
    return "Dynamic property names must be of format 'request.header.*'"


# EB/nifi-confluent-platform-bundle/nifi-confluent-schema-registry-service/src/main/java/org/apache/nifi/
# confluent/schemaregistry/ConfluentSchemaRegistry.java
_CONFLUENT_REGISTRY: Final = ComponentFacts(
    (
        Descriptor("url", until=(2, 6)),
        Descriptor("ssl-context", until=(2, 6), service=True),
        *_d("timeout|cache-size|cache-expiration|authentication-type|username|password", until=(2, 6)),
        Descriptor("Schema Registry URLs", since=_V27),
        Descriptor("SSL Context Service", since=_V27, service=True),
        *_d("Communications Timeout|Cache Size|Cache Expiration|Authentication Type", since=_V27),
        *_d("Username|Password", since=_V27),
    ),
    dynamic=_request_header_only,
    migrate=_migrate_confluent_registry,
)

# EB/nifi-confluent-platform-bundle/nifi-confluent-schema-registry-service/src/main/java/org/apache/nifi/
# confluent/schemaregistry/ConfluentEncodedSchemaReferenceReader.java: no property descriptors
_CONFLUENT_REFERENCE_READER: Final = ComponentFacts(())


# -- standard processors --------------------------------------------------------------------------
def _migrate_record_processor(props: dict[str, Any], _version: Version) -> None:
    # AbstractRecordProcessor.migrateProperties, every 2.x release
    _rename(props, "record-reader", "Record Reader")
    _rename(props, "record-writer", "Record Writer")
    _rename(props, "include-zero-record-flowfiles", "Include Zero Record FlowFiles")


# EB/nifi-standard-bundle/nifi-standard-processors/src/main/java/org/apache/nifi/processors/standard/
# ConvertRecord.java and AbstractRecordProcessor.java
_CONVERT_RECORD: Final = ComponentFacts(
    (
        Descriptor("Record Reader", service=True),
        Descriptor("Record Writer", service=True),
        Descriptor("Include Zero Record FlowFiles"),
    ),
    migrate=_migrate_record_processor,
)

# EB/nifi-standard-bundle/nifi-standard-processors/src/main/java/org/apache/nifi/processors/standard/
# ControlRate.java (Rate Exceeded Strategy: HOLD_FLOWFILE, ROUTE_TO_RATE_EXCEEDED)
_CONTROL_RATE: Final = ComponentFacts(
    (
        *_d("Rate Control Criteria|Time Duration|Maximum Rate|Maximum Data Rate|Maximum FlowFile Rate"),
        Descriptor("Rate Exceeded Strategy", allowed=("Hold FlowFile", "Route to 'rate exceeded'")),
        *_d("Rate Controlled Attribute|Grouping Attribute"),
    )
)

_INVOKE_HTTP_RENAMES: Final = (
    ("Read Timeout", "Socket Read Timeout"),
    ("Remote URL", "HTTP URL"),
    ("disable-http2", "HTTP/2 Disabled"),
    ("idle-timeout", "Socket Idle Timeout"),
    ("max-idle-connections", "Socket Idle Connections"),
    ("oauth2-access-token-provider", "Request OAuth2 Access Token Provider"),
    ("Basic Authentication Username", "Request Username"),
    ("Basic Authentication Password", "Request Password"),
    ("Digest Authentication", "Request Digest Authentication Enabled"),
    ('Penalize on "No Retry"', "Request Failure Penalization Enabled"),
    ("send-message-body", "Request Body Enabled"),
    ("form-body-form-name", "Request Multipart Form-Data Name"),
    ("set-form-filename", "Request Multipart Form-Data Filename Enabled"),
    ("Use Chunked Encoding", "Request Chunked Transfer-Encoding Enabled"),
    ("Content-Encoding", "Request Content-Encoding"),
    ("Content-Type", "Request Content-Type"),
    ("Include Date Header", "Request Date Header Enabled"),
    ("Attributes to Send", "Request Header Attributes Pattern"),
    ("Useragent", "Request User-Agent"),
    ("Put Response Body In Attribute", "Response Body Attribute Name"),
    ("Max Length To Put In Attribute", "Response Body Attribute Size"),
    ("ignore-response-content", "Response Body Ignored"),
    ("use-etag", "Response Cache Enabled"),
    ("etag-max-cache-size", "Response Cache Size"),
    ("cookie-strategy", "Response Cookie Strategy"),
    ("Always Output Response", "Response Generation Required"),
    ("flow-file-naming-strategy", "Response FlowFile Naming Strategy"),
    ("Add Response Headers to Request", "Response Header Request Attributes Enabled"),
    ("Follow Redirects", "Response Redirects Enabled"),
)


def _migrate_invoke_http(props: dict[str, Any], version: Version) -> None:
    # InvokeHTTP.migrateProperties
    if props.get("Proxy Host") is not None:
        raise UnemulatedMigration("Proxy Host: NiFi would create a StandardProxyConfigurationService")
    props.pop("Proxy Type", None)
    for old, new in _INVOKE_HTTP_RENAMES:
        _rename(props, old, new)
    if version >= _V27:  # EB/nifi-extension-utils/nifi-migration-utils/.../ProxyServiceMigration.java
        _rename(props, "proxy-configuration-service", "Proxy Configuration Service")


def _invoke_http_dynamic(name: str, _value: str, _version: Version) -> str | None:
    # InvokeHTTP.getSupportedDynamicPropertyDescriptor: every name is a request header, except that
    # a name starting with post:form must match FORM_DATA_NAME_PARAMETER_PATTERN or gets none.
    if name.startswith("post:form") and not re.fullmatch(r"post:form:.*", name, re.DOTALL):
        return unsupported_property(name)
    return None


# EB/nifi-standard-bundle/nifi-standard-processors/src/main/java/org/apache/nifi/processors/standard/
# InvokeHTTP.java; the proxy descriptor from EB/nifi-standard-services/nifi-proxy-configuration-api/
# src/main/java/org/apache/nifi/proxy/ProxyConfigurationService.java
_INVOKE_HTTP: Final = ComponentFacts(
    (
        *_d("HTTP Method|HTTP URL|HTTP/2 Disabled"),
        Descriptor("SSL Context Service", service=True),
        *_d("Connection Timeout|Socket Read Timeout|Socket Write Timeout|Socket Idle Timeout"),
        Descriptor("Socket Idle Connections"),
        Descriptor("proxy-configuration-service", until=(2, 6), service=True),
        Descriptor("Proxy Configuration Service", since=_V27, service=True),
        Descriptor("Request OAuth2 Access Token Provider", service=True),
        Descriptor("OAuth2 Access Token Refresh Strategy", since=(2, 4)),
        *_d("Request Username|Request Password|Request Digest Authentication Enabled"),
        *_d("Request Failure Penalization Enabled|Request Body Enabled|Request Multipart Form-Data Name"),
        *_d("Request Multipart Form-Data Filename Enabled|Request Chunked Transfer-Encoding Enabled"),
        *_d("Request Content-Encoding|Request Content-Type|Request Date Header Enabled"),
        *_d("Request Header Attributes Pattern|Request User-Agent|Response Body Attribute Name"),
        *_d("Response Body Attribute Size|Response Body Ignored|Response Cache Enabled|Response Cache Size"),
        *_d("Response Cookie Strategy|Response Generation Required|Response FlowFile Naming Strategy"),
        Descriptor("Response Header Request Attributes Enabled"),
        Descriptor("Response Header Request Attributes Prefix", since=(2, 1)),
        Descriptor("Response Redirects Enabled"),
    ),
    dynamic=_invoke_http_dynamic,
    migrate=_migrate_invoke_http,
)


def _any_name(_name: str, _value: str, _version: Version) -> None:
    return None


# EB/nifi-standard-bundle/nifi-standard-processors/src/main/java/org/apache/nifi/processors/standard/
# RouteOnAttribute.java: each dynamic property (a Boolean Expression Language value) is a relationship
_ROUTE_ON_ATTRIBUTE: Final = ComponentFacts(
    (
        Descriptor(
            "Routing Strategy",
            allowed=(
                "Route to Property name",
                "Route to 'match' if all match",
                "Route to 'match' if any matches",
            ),
        ),
    ),
    dynamic=_any_name,
)


def _migrate_update_attribute(props: dict[str, Any], version: Version) -> None:
    if version >= _V27:  # UpdateAttribute.migrateProperties
        _rename(props, "canonical-value-lookup-cache-size", "Cache Value Lookup Cache Size")


# EB/nifi-update-attribute-bundle/nifi-update-attribute-processor/src/main/java/org/apache/nifi/processors/
# attributes/UpdateAttribute.java: each dynamic property names the attribute it sets
_UPDATE_ATTRIBUTE: Final = ComponentFacts(
    (
        Descriptor("Delete Attributes Expression"),
        Descriptor("Store State", allowed=("Do not store state", "Store state locally")),
        Descriptor("Stateful Variables Initial Value"),
        Descriptor("canonical-value-lookup-cache-size", until=(2, 6)),
        Descriptor("Cache Value Lookup Cache Size", since=_V27),
    ),
    dynamic=_any_name,
    migrate=_migrate_update_attribute,
)


def _migrate_jolt_record(props: dict[str, Any], version: Version) -> None:
    # JoltTransformRecord.migrateProperties (2.7.0+, NIFI-15101). The transform names renamed in
    # NIFI-12554 (jolt-record-transform, jolt-record-spec, ...) have no migration in any 2.x.
    if version >= _V27:
        _rename(props, "jolt-record-record-reader", "Record Reader")
        _rename(props, "jolt-record-record-writer", "Record Writer")


_JOLT_SPEC: Final = "Jolt Specification"


def _jolt_custom_validate(props: Mapping[str, Any], _version: Version) -> list[tuple[str, str]]:
    """AbstractJoltTransform.customValidate for a literal spec, as far as the spec's JSON shape goes.

    The transform is built from the spec (EB/nifi-jolt-bundle/nifi-jolt-utils/.../TransformFactory.java):
    Shiftr refuses a non-object spec, Chainr a non-array one (messages from Jolt's Shiftr constructor
    and TransformFactory.getChainrJoltTransformations). Other shapes, and a spec that is not JSON,
    are not checked here.
    """
    transform = props.get("Jolt Transform", "jolt-transform-chain")
    spec_text = props.get(_JOLT_SPEC)
    if not spec_text:
        if transform == "jolt-transform-sort":
            return []
        return [(_JOLT_SPEC, "'Jolt Specification' must be set, or the Transformation must be 'Sort'")]
    if "${" in spec_text or "#{" in spec_text:
        return []
    try:
        spec = json.loads(spec_text)
    except ValueError:
        return []
    # Only the two shapes whose Java class is certain: Jackson reads an array as an ArrayList.
    if transform == "jolt-transform-shift" and isinstance(spec, list):
        return [(_JOLT_SPEC, "Specification not valid: Shiftr expected a spec of Map type, got ArrayList")]
    if transform == "jolt-transform-chain" and isinstance(spec, dict):
        return [
            (
                _JOLT_SPEC,
                "Specification not valid: JOLT Chainr expects a JSON array of objects - Malformed spec.",
            )
        ]
    return []


# EB/nifi-jolt-bundle/nifi-jolt-processors/src/main/java/org/apache/nifi/processors/jolt/
# JoltTransformRecord.java and AbstractJoltTransform.java; Jolt Transform values from
# EB/nifi-jolt-bundle/nifi-jolt-utils/src/main/java/org/apache/nifi/jolt/util/JoltTransformStrategy.java
_JOLT_RECORD: Final = ComponentFacts(
    (
        Descriptor(
            "Jolt Transform",
            allowed=(
                "jolt-transform-shift",
                "jolt-transform-chain",
                "jolt-transform-default",
                "jolt-transform-remove",
                "jolt-transform-card",
                "jolt-transform-sort",
                "jolt-transform-custom",
                "jolt-transform-modify-default",
                "jolt-transform-modify-overwrite",
                "jolt-transform-modify-define",
            ),
        ),
        *_d(
            "Jolt Specification|Custom Transformation Class Name|Custom Module Directory|Transform Cache Size"
        ),
        Descriptor("jolt-record-record-reader", until=(2, 6), service=True),
        Descriptor("jolt-record-record-writer", until=(2, 6), service=True),
        Descriptor("Record Reader", since=_V27, service=True),
        Descriptor("Record Writer", since=_V27, service=True),
    ),
    migrate=_migrate_jolt_record,
    custom=_jolt_custom_validate,
)

_CONFLUENT: Final = "org.apache.nifi.confluent.schemaregistry."
COMPONENTS: Final[Mapping[str, ComponentFacts]] = {
    "org.apache.nifi.kafka.service.Kafka3ConnectionService": _KAFKA3,
    "org.apache.nifi.kafka.processors.ConsumeKafka": _CONSUME_KAFKA,
    "org.apache.nifi.kafka.processors.PublishKafka": _PUBLISH_KAFKA,
    "org.apache.nifi.ssl.StandardRestrictedSSLContextService": _SSL,
    "org.apache.nifi.avro.AvroReader": _AVRO_READER,
    "org.apache.nifi.json.JsonRecordSetWriter": _JSON_WRITER,
    _CONFLUENT + "ConfluentSchemaRegistry": _CONFLUENT_REGISTRY,
    _CONFLUENT + "ConfluentEncodedSchemaReferenceReader": _CONFLUENT_REFERENCE_READER,
    "org.apache.nifi.processors.standard.ConvertRecord": _CONVERT_RECORD,
    "org.apache.nifi.processors.standard.ControlRate": _CONTROL_RATE,
    "org.apache.nifi.processors.standard.InvokeHTTP": _INVOKE_HTTP,
    "org.apache.nifi.processors.standard.RouteOnAttribute": _ROUTE_ON_ATTRIBUTE,
    "org.apache.nifi.processors.attributes.UpdateAttribute": _UPDATE_ATTRIBUTE,
    "org.apache.nifi.processors.jolt.JoltTransformRecord": _JOLT_RECORD,
}
