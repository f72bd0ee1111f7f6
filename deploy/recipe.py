"""A consumer's NiFi process group: the flow-definition template from nifi_recipes/, filled in.

Templates hold every variant; ``$when`` marks the parts that depend on the spec (``ssl``, ``sasl``,
``registry``, ``dcache``/``record`` payload). ``"{{key}}"`` as a whole string becomes the typed
value (``None`` removes the property); inside a longer string it is text. Settings that change at
runtime or are secret are NiFi parameters (``#{name}``), never literal values in the flow.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from dcnios.consumers.record import unstageable_reason
from dcnios.errors import ConfigError
from dcnios.spec import ConsumerSpec, PipelineSpec, Rate

__all__ = [
    "ENVELOPE_SCHEMA",
    "MARKER",
    "Parameter",
    "Recipe",
    "jolt_spec",
    "load_template",
    "rate_parameters",
    "render",
    "stageable_expression",
    "unstageable_error",
]

MARKER: Final = "managed by dcnios"
_NAMESPACE: Final = uuid.UUID("8f3f6d4e-2b7a-4c55-9a8e-5c0f1d2e3a4b")
_DEFAULT_NIFI_VERSION: Final = {1: "1.28.1", 2: "2.11.0"}
_SSL_PROTOCOLS: Final = ("SSL", "SASL_SSL")
_SASL_PROTOCOLS: Final = ("SASL_PLAINTEXT", "SASL_SSL")
#: NiFi's largest practical ControlRate: "unlimited" still passes through the processor.
_UNLIMITED: Final = ("1000000", "1 sec")

#: The dCache SSE ``data`` object as an Avro record: the writer's field order is the order
#: JsonRecordSetWriter writes, which must be Jackson's (name, cookie, mask; then subscription).
ENVELOPE_SCHEMA: Final = {
    "type": "record",
    "name": "DCacheEvent",
    "namespace": "dcnios.nifi",
    "fields": [
        {
            "name": "event",
            "type": {
                "type": "record",
                "name": "Inotify",
                "fields": [
                    {"name": "name", "type": ["null", "string"], "default": None},
                    {"name": "cookie", "type": ["null", "string"], "default": None},
                    {"name": "mask", "type": {"type": "array", "items": "string"}},
                ],
            },
        },
        {"name": "subscription", "type": "string"},
    ],
}
#: Characters of an input path that NiFi's Expression Language cannot carry reliably in the
#: route's string literals: quotes and backslashes (Query.findEndQuoteChar miscounts a second
#: escaped quote), braces (``${``/``#{`` start an expression or a parameter), control characters.
_EL_UNSAFE: Final = re.compile(r"""['"\\{}\x00-\x1f\x7f]""")
_REGEX_SPECIAL: Final = frozenset(".^$*+?()[]|")


def jolt_spec(input_path: str) -> list[dict[str, Any]]:
    """StorageEvent → envelope, ``event.name`` being the path relative to ``input_path``.

    Only records the route passed (directly in the input directory, or below it with
    ``nested_names``) reach this spec. Jolt's ``size`` and ``substring`` work on a Java String, so
    the start index counts UTF-16 code units. Jolt applies literal keys in HashMap order, so the
    output key order comes from the writer schema, not from this spec.
    """
    start = _utf16_length(input_path.rstrip("/")) + 1
    return [
        {"operation": "modify-overwrite-beta", "spec": {"pathLength": "=size(@(1,path))"}},
        {
            "operation": "modify-overwrite-beta",
            "spec": {"relativeName": f"=substring(@(1,path),{start},@(1,pathLength))"},
        },
        {
            "operation": "shift",
            "spec": {
                "relativeName": "event.name",
                "cookie": "event.cookie",
                "mask": "event.mask",
                "subscription": "subscription",
            },
        },
    ]


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def stageable_expression(input_path: str, *, nested: bool) -> str:
    """RouteOnAttribute's test (Expression Language) that the supervisor can stage the record's file.

    The Kafka key is the file's full path (``StorageEvent.key``; ConsumeKafka puts it in
    ``kafka.key``), so the record is routed without being parsed and reaches the dead-letter topic
    as it came. ``matches`` is Java's whole-string ``Pattern.matches``; the same rule as
    ``staged_name``: below ``<input path>/``, a non-empty name, no ``/`` in it unless ``nested``,
    and no run of spaces (which OSCAR's ``echo $EVENT`` would collapse).
    """
    base = "".join("\\" + c if c in _REGEX_SPECIAL else c for c in input_path.rstrip("/"))
    pattern = f"(?s){base}/(?!.*  ).+" if nested else f"{base}/(?!.*  )[^/]+"
    return "${kafka.key:matches('" + pattern + "')}"


def unstageable_error(input_path: str) -> str:
    """UpdateAttribute's ``dcnios-error`` (Expression Language): ``unstageable_reason``'s text.

    Three fragments, exactly one non-empty: outside the input path, a run of spaces, or below a
    sub-directory; each text follows ``${kafka.key}``, as the consumer's follows the path.
    """
    base = input_path.rstrip("/")
    regex = "".join("\\" + c if c in _REGEX_SPECIAL else c for c in base)
    inside = base + "/x"
    texts = {
        "outside": unstageable_reason("", input_path),
        "spaces": unstageable_reason(inside + "  y", input_path).removeprefix(inside + "  y"),
        "below": unstageable_reason(inside + "/y", input_path).removeprefix(inside + "/y"),
    }
    for text in texts.values():
        # Double-quoted literals: the texts contain apostrophes, never a double quote or backslash.
        assert '"' not in text and "\\" not in text and "${" not in text, text
    return (
        "${kafka.key}"
        f"${{kafka.key:matches('(?s){regex}/.*'):ifElse('', \"{texts['outside']}\")}}"
        f"${{kafka.key:matches('(?s){regex}/.*  .*'):ifElse(\"{texts['spaces']}\", '')}}"
        f"${{kafka.key:matches('(?s){regex}/(?!.*  ).*'):ifElse(\"{texts['below']}\", '')}}"
    )


@dataclass(frozen=True)
class Parameter:
    name: str
    value: str
    sensitive: bool = False

    def __repr__(self) -> str:
        shown = "***" if self.sensitive else repr(self.value)
        return f"Parameter({self.name!r}, {shown}, sensitive={self.sensitive})"


@dataclass(frozen=True)
class Recipe:
    consumer: str
    version: int
    group_name: str
    context_name: str
    flow: dict[str, Any]
    parameters: tuple[Parameter, ...]

    @property
    def flow_digest(self) -> str:
        return _digest(json.dumps(self.flow, sort_keys=True))

    @property
    def parameters_digest(self) -> str:
        return _digest(json.dumps([(p.name, p.value, p.sensitive) for p in self.parameters], sort_keys=True))

    def marker(self) -> str:
        """The group's comments: how a later run recognises its own group and what it deployed."""
        digests = f"flow={self.flow_digest}; parameters={self.parameters_digest}"
        return f"{MARKER}; consumer={self.consumer}; {digests}"

    def flow_json(self) -> bytes:
        return json.dumps(self.flow, indent=1).encode()

    def parameter(self, name: str) -> Parameter:
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        raise KeyError(name)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_template(version: int) -> dict[str, Any]:
    text = resources.files("dcnios.nifi_recipes").joinpath(f"consumer-v{version}.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _avro_schema_text() -> str:
    # AvroReader's schema text is the writer's schema, and a dCache record (all NiFi carries) is
    # written with v1 in plain mode (dcnios/codec.py); with a registry the reader asks the registry.
    text = resources.files("dcnios.schemas").joinpath("storage_event.v1.avsc").read_text("utf-8")
    return json.dumps(json.loads(text), separators=(",", ":"))


def rate_parameters(rate: Rate | None) -> tuple[str, str]:
    """ControlRate takes a whole count per duration: pick the unit that keeps the count whole."""
    if rate is None:
        return _UNLIMITED
    per_second = rate.per_second
    for seconds, unit in ((1, "1 sec"), (60, "1 min"), (3600, "1 hour"), (86400, "1 day")):
        count = per_second * seconds
        if abs(count - round(count)) < 1e-9 and round(count) >= 1:
            return str(round(count)), unit
    return str(max(1, round(per_second * 86400))), "1 day"


def _duration(seconds: float) -> str:
    return f"{seconds:g} secs"


def render(
    spec: PipelineSpec,
    consumer: ConsumerSpec,
    *,
    version: int,
    partitions: int,
    authorization: str,
    nifi_version: str | None = None,
    input_path: str | None = None,
) -> Recipe:
    """The flow definition and parameters of ``consumer``'s process group.

    ``authorization`` is the whole ``Authorization`` header value (``Bearer <token>``); it only
    ever travels as a sensitive parameter. ``input_path`` is the OSCAR service's input directory
    (default: ``oscar.input_path``), needed for ``payload: dcache``.
    """
    input_path = input_path or consumer.oscar.input_path
    kinds = spec.topic_kinds(consumer.topic) - {"dcache"}
    if consumer.payload == "raw" or kinds:
        # The recipe's flow decodes StorageEvent records and rebuilds dCache envelopes only.
        what = (
            "payload: raw" if consumer.payload == "raw" else f"records of {', '.join(sorted(kinds))} sources"
        )
        raise ConfigError(
            f"consumer {consumer.name}: the NiFi recipe carries dCache records only, not {what}; "
            "run it as a dcnios-consumer (leave it out of nifi.consumers)"
        )
    if consumer.dcache_bodies:
        input_path = _checked_input_path(consumer, input_path)
    kafka = spec.kafka
    ssl = kafka.security_protocol in _SSL_PROTOCOLS
    sasl = kafka.security_protocol in _SASL_PROTOCOLS
    registry = kafka.schema_registry is not None
    conditions = {"ssl": ssl, "sasl": sasl, "registry": registry, "dcache": consumer.dcache_bodies}
    conditions["record"] = not conditions["dcache"]
    group_name = f"dcnios-{consumer.name}"
    values: dict[str, Any] = {
        "group_id": str(uuid.uuid5(_NAMESPACE, f"{group_name}/group")),
        "group_name": group_name,
        "context_name": group_name,
        "name": consumer.name,
        "marker": MARKER,
        "nifi_version": nifi_version or _DEFAULT_NIFI_VERSION[version],
        "consume_tasks": max(1, partitions),
        "invoke_tasks": max(1, consumer.concurrency),
        "retry_count": max(0, consumer.retry.max_attempts - 1),
        "max_backoff": _duration(float(consumer.retry.max_backoff)),
        "reader_id": "avro-reader-registry" if registry else "avro-reader",
        "avro_schema": _avro_schema_text(),
        "envelope_schema": json.dumps(ENVELOPE_SCHEMA, separators=(",", ":")),
        "jolt_spec": json.dumps(jolt_spec(input_path or "/"), separators=(",", ":")),
        "stageable": stageable_expression(input_path or "/", nested=consumer.oscar.nested_names),
        "unstageable_error": unstageable_error(input_path or "/"),
        "sasl_mechanism": "#{kafka_sasl_mechanism}" if sasl else None,
        "sasl_username": "#{kafka_sasl_username}" if sasl else None,
        "sasl_password": "#{kafka_sasl_password}" if sasl else None,
        "ssl_service": "kafka-ssl" if ssl else None,
        # The consumer derives traceparent from the event; NiFi has no such function, so none is sent.
        "traceparent": None,
    }
    flow = _fill(load_template(version), values, conditions)
    _mark_sensitive_kafka_properties(flow)
    parameters = _parameters(spec, consumer, sasl=sasl, ssl=ssl, authorization=authorization)
    flow["parameterContexts"] = {
        group_name: {"name": group_name, "parameters": [], "inheritedParameterContexts": []}
    }
    return Recipe(consumer.name, version, group_name, group_name, flow, parameters)


def _checked_input_path(consumer: ConsumerSpec, input_path: str | None) -> str:
    if input_path is None:
        raise ConfigError(
            f"consumer {consumer.name}: oscar.input_path: needed to route payload: dcache through NiFi "
            "(event.name is the file's path relative to the service's input directory)"
        )
    if bad := _EL_UNSAFE.search(input_path):
        raise ConfigError(
            f"consumer {consumer.name}: oscar.input_path: {input_path!r} has {bad.group(0)!r}, which the "
            "NiFi route cannot carry in an Expression Language literal (quotes, backslashes, braces and "
            "control characters are not supported)"
        )
    return input_path


def _parameters(
    spec: PipelineSpec, consumer: ConsumerSpec, *, sasl: bool, ssl: bool, authorization: str
) -> tuple[Parameter, ...]:
    kafka, oscar = spec.kafka, consumer.oscar
    assert kafka.bootstrap_servers is not None and consumer.group and consumer.dead_letter_topic
    max_rate, duration = rate_parameters(consumer.rate)
    kind = "job" if oscar.mode == "async" else "run"
    params = [
        Parameter("kafka_bootstrap", kafka.bootstrap_servers),
        Parameter("kafka_security_protocol", kafka.security_protocol),
        Parameter("kafka_group_id", consumer.group),
        Parameter("kafka_topic", consumer.topic),
        Parameter("dead_letter_topic", consumer.dead_letter_topic),
        Parameter("max_rate", max_rate),
        Parameter("rate_duration", duration),
        Parameter("oscar_url", f"{oscar.endpoint.rstrip('/')}/{kind}/{oscar.service}"),
        Parameter("oscar_connect_timeout", _duration(float(oscar.connect_timeout))),
        Parameter("oscar_read_timeout", _duration(float(oscar.timeout))),
        Parameter("oscar_authorization", authorization, sensitive=True),
    ]
    if sasl:
        if kafka.sasl is None or kafka.sasl.username is None or kafka.sasl.password is None:
            raise ConfigError("kafka.sasl: username and password are needed to route consumers through NiFi")
        params += [
            Parameter("kafka_sasl_mechanism", kafka.sasl.mechanism),
            Parameter("kafka_sasl_username", kafka.sasl.username),
            Parameter("kafka_sasl_password", kafka.sasl.password.reveal(), sensitive=True),
        ]
    if ssl:
        assert spec.nifi is not None
        store = spec.nifi.kafka_truststore
        if store is None:
            raise ConfigError(
                "nifi.kafka_truststore: required when kafka.security_protocol is "
                f"{kafka.security_protocol} (NiFi reads PKCS12/JKS trust stores, not PEM files)"
            )
        params += [
            Parameter("kafka_truststore", store.path),
            Parameter("kafka_truststore_type", store.type),
            Parameter(
                "kafka_truststore_password", store.password.reveal() if store.password else "", sensitive=True
            ),
        ]
    if kafka.schema_registry is not None:
        params.append(Parameter("schema_registry_url", kafka.schema_registry.url))
    return tuple(params)


_SENSITIVE_KAFKA: Final = ("sasl.password", "Truststore Password")


def _mark_sensitive_kafka_properties(flow: dict[str, Any]) -> None:
    """Sensitive properties must be declared so, or NiFi refuses the sensitive parameter."""
    contents = flow["flowContents"]
    for component in [*contents["controllerServices"], *contents["processors"]]:
        for name in _SENSITIVE_KAFKA:
            if name in component["properties"]:
                component["propertyDescriptors"][name] = {
                    "name": name,
                    "displayName": name,
                    "identifiesControllerService": False,
                    "sensitive": True,
                    "dynamic": False,
                }


def _fill(node: Any, values: Mapping[str, Any], conditions: Mapping[str, bool]) -> Any:
    if isinstance(node, dict):
        when = node.get("$when")
        if when is not None and not _holds(when, conditions):
            return _DROP
        out = {}
        for key, value in node.items():
            if key == "$when":
                continue
            filled = _fill(value, values, conditions)
            if filled is not _DROP and filled is not None:
                out[key] = filled
            elif filled is None and not _is_placeholder(value):
                out[key] = None
        return out
    if isinstance(node, list):
        items = [_fill(item, values, conditions) for item in node]
        return [item for item in items if item is not _DROP]
    if isinstance(node, str) and "{{" in node:
        if _is_placeholder(node):
            return values[node[2:-2]]
        text = node
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", str(value))
        return text
    return node


def _is_placeholder(value: Any) -> bool:
    return (
        isinstance(value, str) and value.startswith("{{") and value.endswith("}}") and value.count("{{") == 1
    )


def _holds(condition: str, conditions: Mapping[str, bool]) -> bool:
    negate = condition.startswith("!")
    result = conditions[condition.lstrip("!")]
    return not result if negate else result


_DROP: Final = object()
