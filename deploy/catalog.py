"""What dcnios knows of the NiFi components its recipes use, per major version.

From shared/reference/nifi-deploy.md §2.2 to §2.4 (property *names*, not display names), plus the
record services' long-standing names, which NiFi 2.x still accepts (and migrates where it renamed
them). The offline validator checks generated flows against this table, because NiFi itself
silently turns an unknown property name into a dynamic property (for InvokeHTTP: a request header).
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

COMPONENTS: Final = {
    (c.type, v): c
    for c in (
        _c(
            "org.apache.nifi.kafka.processors.ConsumeKafka",
            "nifi-kafka-nar",
            "Kafka Connection Service|Group ID|Topic Format|Topics|auto.offset.reset|Commit Offsets|"
            "Max Uncommitted Time|Max Uncommitted Size|Processing Strategy|Message Demarcator|"
            "Separate By Key|"
            "Header Name Pattern|Header Encoding|Header Format|Key Attribute Encoding|Record Reader|"
            "Record Writer|Output Strategy",
            "success|parse failure",
            services="Kafka Connection Service|Record Reader|Record Writer",
            versions=(2,),
        ),
        _c(
            "org.apache.nifi.kafka.processors.PublishKafka",
            "nifi-kafka-nar",
            "Kafka Connection Service|Topic Name|Failure Strategy|acks|compression.type|max.request.size|"
            "Transactions Enabled|Transactional ID Prefix|partitioner.class|partition|Message Demarcator|"
            "Kafka Key|FlowFile Attribute Header Pattern|Record Reader|Record Writer|Publish Strategy",
            "success|failure",
            services="Kafka Connection Service|Record Reader|Record Writer",
            versions=(2,),
        ),
        _c(
            "org.apache.nifi.kafka.service.Kafka3ConnectionService",
            "nifi-kafka-3-service-nar",
            "bootstrap.servers|security.protocol|sasl.mechanism|sasl.username|sasl.password|"
            "SSL Context Service|isolation.level|max.poll.records|default.api.timeout.ms|max.block.ms|"
            "ack.wait.time",
            services="SSL Context Service",
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
            "HTTP Method|HTTP URL|Request Content-Type|Connection Timeout|Socket Read Timeout|"
            "Socket Write Timeout|Socket Idle Timeout|Socket Idle Connections|HTTP/2 Disabled|"
            "SSL Context Service|Request Username|Request Password|Request OAuth2 Access Token Provider|"
            "Request Body Enabled|Request Failure Penalization Enabled|Request Date Header Enabled|"
            "Request Header Attributes Pattern|Response Generation Required|Response Body Ignored|"
            "Response Redirects Enabled",
            "Original|Response|Retry|No Retry|Failure",
            services="SSL Context Service|Request OAuth2 Access Token Provider",
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
            "jolt-record-record-reader|jolt-record-record-writer|jolt-record-transform|jolt-record-spec|"
            "jolt-record-custom-class|jolt-record-custom-modules|jolt-record-transform-cache-size",
            "success|failure|original",
            services="jolt-record-record-reader|jolt-record-record-writer",
        ),
        _c(
            "org.apache.nifi.processors.standard.ConvertRecord",
            "nifi-standard-nar",
            "record-reader|record-writer|include-zero-record-flowfiles",
            "success|failure",
            services="record-reader|record-writer",
        ),
        _c(
            "org.apache.nifi.avro.AvroReader",
            _RECORD_SERVICES,
            "schema-access-strategy|schema-registry|schema-name|schema-version|schema-branch|schema-text|"
            "cache-size",
            services="schema-registry",
        ),
        _c(
            "org.apache.nifi.json.JsonRecordSetWriter",
            _RECORD_SERVICES,
            "Schema Write Strategy|schema-cache|schema-access-strategy|schema-registry|schema-name|"
            "schema-version|schema-branch|schema-text|Date Format|Time Format|Timestamp Format|"
            "Pretty Print JSON|suppress-nulls|output-grouping|compression-format|compression-level",
            services="schema-registry|schema-cache",
        ),
        _c(
            "org.apache.nifi.confluent.schemaregistry.ConfluentSchemaRegistry",
            "nifi-confluent-platform-nar",
            "url|ssl-context|cache-size|cache-expiration|timeout|authentication-type|username|password",
            services="ssl-context",
            sensitive="password",
        ),
        _c(
            "org.apache.nifi.ssl.StandardRestrictedSSLContextService",
            "nifi-ssl-context-service-nar",
            "Keystore Filename|Keystore Password|key-password|Keystore Type|Truststore Filename|"
            "Truststore Password|Truststore Type|SSL Protocol",
            sensitive="Keystore Password|key-password|Truststore Password",
        ),
    )
    for v in c.versions
}


def component(type_: str, version: int) -> Component | None:
    return COMPONENTS.get((type_, version))
