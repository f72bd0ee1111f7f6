"""What dcnios knows of the NiFi components its recipes use, per major version.

Property *names* (not display names). The 2.x entries hold NiFi 2.11.0's names (the default
target, ``recipe._DEFAULT_NIFI_VERSION``), read from NiFi's source; most of them date from the
renames of NiFi 2.7.0, the oldest 2.x release the 2.x recipe supports. NiFi 2.x does not accept
the older names as such: its migrateProperties renames some on import (a renamed service
reference then keeps its versioned id and names no service), and others, such as
JoltTransformRecord's ``jolt-record-spec``, not at all. The 1.x entries hold NiFi 1.x names. The
offline validator checks generated flows against this table, because NiFi turns an unknown name
into an INVALID property, or, where a component accepts dynamic properties, into one of those
(for InvokeHTTP: a request header).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = ["COMPONENTS", "Component", "component"]


@dataclass(frozen=True)
class Component:
    type: str
    artifact: str
    properties: frozenset[str]
    relationships: frozenset[str] = frozenset()
    #: properties whose value is a controller service's identifier
    service_properties: frozenset[str] = frozenset()
    #: sensitive properties (the value must be exactly ``#{param}``)
    sensitive: frozenset[str] = frozenset()
    #: dynamic properties this component may carry (InvokeHTTP: request headers)
    dynamic: frozenset[str] = field(default_factory=frozenset)
    versions: frozenset[int] = frozenset({1, 2})


def _c(
    type_: str,
    artifact: str,
    properties: str,
    relationships: str = "",
    *,
    services: str = "",
    sensitive: str = "",
    dynamic: str = "",
    versions: tuple[int, ...] = (1, 2),
) -> Component:
    def split(text: str) -> frozenset[str]:
        return frozenset(part.strip() for part in text.split("|") if part.strip())

    return Component(
        type_,
        artifact,
        split(properties),
        split(relationships),
        split(services),
        split(sensitive),
        split(dynamic),
        frozenset(versions),
    )


_KAFKA_1_SECURITY: Final = (
    "security.protocol|sasl.mechanism|sasl.username|sasl.password|ssl.context.service|kerberos-user-service"
)
_RECORD_SERVICES: Final = "nifi-record-serialization-services-nar"
_CONFLUENT: Final = "nifi-confluent-platform-nar"
#: the route's relationship and the attributes it sets on a dead letter (nifi_recipes/)
_STAGEABLE: Final = "stageable"
_DLQ_ATTRIBUTES: Final = (
    "dcnios-reason|dcnios-error|dcnios-attempts|dcnios-topic|dcnios-partition|dcnios-offset|dcnios-consumer"
)

COMPONENTS: Final = {
    (c.type, v): c
    for c in (
        _c(
            "org.apache.nifi.kafka.processors.ConsumeKafka",
            "nifi-kafka-nar",
            "Kafka Connection Service|Group ID|Topic Format|Topics|auto.offset.reset|Commit Offsets|"
            "Max Uncommitted Size|Max Uncommitted Time|Header Name Pattern|Header Format|Header Encoding|"
            "Processing Strategy|Header Name Prefix|Record Reader|Record Writer|Output Strategy|"
            "Key Attribute Encoding|Key Format|Key Record Reader|Message Demarcator|Separate By Key",
            "success|parse failure",
            services="Kafka Connection Service|Record Reader|Record Writer|Key Record Reader",
            versions=(2,),
        ),
        _c(
            "org.apache.nifi.kafka.processors.PublishKafka",
            "nifi-kafka-nar",
            "Kafka Connection Service|Topic Name|Failure Strategy|acks|compression.type|max.request.size|"
            "Transactions Enabled|Transactional ID Prefix|partitioner.class|partition|Message Demarcator|"
            "Record Reader|Record Writer|Publish Strategy|Message Key Field|"
            "FlowFile Attribute Header Pattern|Header Encoding|Kafka Key|Kafka Key Attribute Encoding|"
            "Record Key Writer|Record Metadata Strategy",
            "success|failure",
            services="Kafka Connection Service|Record Reader|Record Writer|Record Key Writer",
            versions=(2,),
        ),
        _c(
            "org.apache.nifi.kafka.service.Kafka3ConnectionService",
            "nifi-kafka-3-service-nar",
            "bootstrap.servers|security.protocol|sasl.mechanism|sasl.username|sasl.password|"
            "oauth2-access-token-provider-service|kerberos-user-service|sasl.kerberos.service.name|"
            "SSL Context Service|isolation.level|max.poll.records|default.api.timeout.ms|max.block.ms|"
            "ack.wait.time",
            services="SSL Context Service|kerberos-user-service|oauth2-access-token-provider-service",
            sensitive="sasl.password",
            versions=(2,),
        ),
        _c(
            "org.apache.nifi.processors.kafka.pubsub.ConsumeKafka_2_6",
            "nifi-kafka-2-6-nar",
            "bootstrap.servers|topic|topic_type|group.id|auto.offset.reset|Commit Offsets|"
            "max-uncommit-offset-wait|honor-transactions|message-demarcator|separate-by-key|max.poll.records|"
            "Communications Timeout|key-attribute-encoding|header-name-regex|" + _KAFKA_1_SECURITY,
            "success",
            services="ssl.context.service|kerberos-user-service",
            sensitive="sasl.password",
            versions=(1,),
        ),
        _c(
            "org.apache.nifi.processors.kafka.pubsub.PublishKafka_2_6",
            "nifi-kafka-2-6-nar",
            "bootstrap.servers|topic|use-transactions|transactional-id-prefix|acks|Failure Strategy|"
            "kafka-key|"
            "message-demarcator|compression.type|attribute-name-regex|" + _KAFKA_1_SECURITY,
            "success|failure",
            services="ssl.context.service|kerberos-user-service",
            sensitive="sasl.password",
            versions=(1,),
        ),
        _c(
            "org.apache.nifi.processors.standard.ControlRate",
            "nifi-standard-nar",
            "Rate Control Criteria|Maximum Rate|Maximum Data Rate|Maximum FlowFile Rate|"
            "Rate Controlled Attribute|Time Duration|Grouping Attribute",
            "success|failure",
            versions=(1,),
        ),
        _c(
            "org.apache.nifi.processors.standard.ControlRate",
            "nifi-standard-nar",
            "Rate Control Criteria|Maximum Rate|Maximum Data Rate|Maximum FlowFile Rate|"
            "Rate Controlled Attribute|Time Duration|Grouping Attribute|Rate Exceeded Strategy",
            "success|failure|rate exceeded",
            versions=(2,),
        ),
        _c(
            "org.apache.nifi.processors.standard.InvokeHTTP",
            "nifi-standard-nar",
            "HTTP Method|HTTP URL|HTTP/2 Disabled|SSL Context Service|Connection Timeout|Socket Read Timeout|"
            "Socket Write Timeout|Socket Idle Timeout|Socket Idle Connections|Proxy Configuration Service|"
            "Request OAuth2 Access Token Provider|OAuth2 Access Token Refresh Strategy|Request Username|"
            "Request Password|Request Digest Authentication Enabled|Request Failure Penalization Enabled|"
            "Request Body Enabled|Request Multipart Form-Data Name|"
            "Request Multipart Form-Data Filename Enabled|"
            "Request Chunked Transfer-Encoding Enabled|Request Content-Encoding|Request Content-Type|"
            "Request Date Header Enabled|Request Header Attributes Pattern|Request User-Agent|"
            "Response Body Attribute Name|Response Body Attribute Size|Response Body Ignored|"
            "Response Cache Enabled|Response Cache Size|Response Cookie Strategy|"
            "Response Generation Required|"
            "Response FlowFile Naming Strategy|Response Header Request Attributes Enabled|"
            "Response Header Request Attributes Prefix|Response Redirects Enabled",
            "Original|Response|Retry|No Retry|Failure",
            services="SSL Context Service|Proxy Configuration Service|Request OAuth2 Access Token Provider",
            sensitive="Request Password|Authorization",
            dynamic="Authorization|traceparent",
            versions=(2,),
        ),
        _c(
            "org.apache.nifi.processors.standard.InvokeHTTP",
            "nifi-standard-nar",
            "HTTP Method|Remote URL|Content-Type|Connection Timeout|Read Timeout|Socket Write Timeout|"
            "idle-timeout|max-idle-connections|disable-http2|SSL Context Service|"
            "Basic Authentication Username|Basic Authentication Password|oauth2-access-token-provider|"
            'send-message-body|Penalize on "No Retry"|Include Date Header|Attributes to Send|'
            "Always Output Response|ignore-response-content|Follow Redirects",
            "Original|Response|Retry|No Retry|Failure",
            services="SSL Context Service|oauth2-access-token-provider",
            sensitive="Basic Authentication Password|Authorization",
            dynamic="Authorization|traceparent",
            versions=(1,),
        ),
        _c(
            "org.apache.nifi.processors.jolt.JoltTransformRecord",
            "nifi-jolt-nar",
            "Jolt Transform|Jolt Specification|Custom Transformation Class Name|Custom Module Directory|"
            "Transform Cache Size|Record Reader|Record Writer",
            "success|failure|original",
            services="Record Reader|Record Writer",
            versions=(2,),
        ),
        _c(
            "org.apache.nifi.processors.jolt.record.JoltTransformRecord",
            "nifi-jolt-record-nar",
            "jolt-record-record-reader|jolt-record-record-writer|jolt-record-transform|jolt-record-spec|"
            "jolt-record-custom-class|jolt-record-custom-modules|jolt-record-transform-cache-size",
            "success|failure|original",
            services="jolt-record-record-reader|jolt-record-record-writer",
            versions=(1,),
        ),
        _c(
            "org.apache.nifi.processors.standard.ConvertRecord",
            "nifi-standard-nar",
            "Record Reader|Record Writer|Include Zero Record FlowFiles",
            "success|failure",
            services="Record Reader|Record Writer",
            versions=(2,),
        ),
        _c(
            "org.apache.nifi.processors.standard.ConvertRecord",
            "nifi-standard-nar",
            "record-reader|record-writer|include-zero-record-flowfiles",
            "success|failure",
            services="record-reader|record-writer",
            versions=(1,),
        ),
        _c(
            "org.apache.nifi.processors.standard.RouteOnAttribute",
            "nifi-standard-nar",
            "Routing Strategy",
            # each dynamic property is a relationship; the recipes define one
            "unmatched|" + _STAGEABLE,
            dynamic=_STAGEABLE,
        ),
        _c(
            "org.apache.nifi.processors.attributes.UpdateAttribute",
            "nifi-update-attribute-nar",
            "Delete Attributes Expression|Store State|Stateful Variables Initial Value|"
            "Cache Value Lookup Cache Size",
            "success",
            dynamic=_DLQ_ATTRIBUTES,
            versions=(2,),
        ),
        _c(
            "org.apache.nifi.processors.attributes.UpdateAttribute",
            "nifi-update-attribute-nar",
            "Delete Attributes Expression|Store State|Stateful Variables Initial Value|"
            "canonical-value-lookup-cache-size",
            "success",
            dynamic=_DLQ_ATTRIBUTES,
            versions=(1,),
        ),
        _c(
            "org.apache.nifi.avro.AvroReader",
            _RECORD_SERVICES,
            "Schema Access Strategy|Schema Registry|Schema Name|Schema Version|Schema Branch|Schema Text|"
            "Schema Reference Reader|Cache Size|Fast Reader Enabled",
            services="Schema Registry|Schema Reference Reader",
            versions=(2,),
        ),
        _c(
            "org.apache.nifi.avro.AvroReader",
            _RECORD_SERVICES,
            "schema-access-strategy|schema-registry|schema-name|schema-version|schema-branch|schema-text|"
            "cache-size",
            services="schema-registry",
            versions=(1,),
        ),
        _c(
            "org.apache.nifi.json.JsonRecordSetWriter",
            _RECORD_SERVICES,
            "Schema Write Strategy|Schema Cache|Schema Reference Writer|Schema Access Strategy|"
            "Schema Registry|Schema Name|Schema Version|Schema Branch|Schema Text|Schema Reference Reader|"
            "Date Format|Time Format|Timestamp Format|Pretty Print JSON|Suppress Null Values|"
            "Allow Scientific Notation|Output Grouping|Compression Format|Compression Level|"
            "Serialized JSON Input Handling",
            services="Schema Cache|Schema Reference Writer|Schema Registry|Schema Reference Reader",
            versions=(2,),
        ),
        _c(
            "org.apache.nifi.json.JsonRecordSetWriter",
            _RECORD_SERVICES,
            "Schema Write Strategy|schema-cache|schema-access-strategy|schema-registry|schema-name|"
            "schema-version|schema-branch|schema-text|Date Format|Time Format|Timestamp Format|"
            "Pretty Print JSON|suppress-nulls|output-grouping|compression-format|compression-level",
            services="schema-registry|schema-cache",
            versions=(1,),
        ),
        _c(
            "org.apache.nifi.confluent.schemaregistry.ConfluentSchemaRegistry",
            _CONFLUENT,
            "Schema Registry URLs|SSL Context Service|Communications Timeout|Cache Size|Cache Expiration|"
            "Authentication Type|Username|Password",
            services="SSL Context Service",
            sensitive="Password",
            versions=(2,),
        ),
        _c(
            "org.apache.nifi.confluent.schemaregistry.ConfluentSchemaRegistry",
            _CONFLUENT,
            "url|ssl-context|cache-size|cache-expiration|timeout|authentication-type|username|password",
            services="ssl-context",
            sensitive="password",
            versions=(1,),
        ),
        # Reads the schema id of Confluent's wire format; it has no properties.
        _c(
            "org.apache.nifi.confluent.schemaregistry.ConfluentEncodedSchemaReferenceReader",
            _CONFLUENT,
            "",
            versions=(2,),
        ),
        _c(
            "org.apache.nifi.ssl.StandardRestrictedSSLContextService",
            "nifi-ssl-context-service-nar",
            "Keystore Filename|Keystore Password|Key Password|Keystore Type|Truststore Filename|"
            "Truststore Password|Truststore Type|TLS Protocol",
            sensitive="Keystore Password|Key Password|Truststore Password",
            versions=(2,),
        ),
        _c(
            "org.apache.nifi.ssl.StandardRestrictedSSLContextService",
            "nifi-ssl-context-service-nar",
            "Keystore Filename|Keystore Password|key-password|Keystore Type|Truststore Filename|"
            "Truststore Password|Truststore Type|SSL Protocol",
            sensitive="Keystore Password|key-password|Truststore Password",
            versions=(1,),
        ),
    )
    for v in c.versions
}


def component(type_: str, version: int) -> Component | None:
    return COMPONENTS.get((type_, version))
