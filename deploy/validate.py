"""Offline checks of a generated flow definition (reference §5): what NiFi would drop or refuse.

Three layers: nipyapi 1.8.1's models (types and enums), a strict walk that reports every key the
models do not know (NiFi drops such keys silently), and semantic checks (mandatory fields,
relationships, service references, parameters and their sensitivity, version-specific names).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Final

from dcnios.deploy.catalog import component
from dcnios.deploy.recipe import Parameter
from dcnios.errors import ExtraMissingError

__all__ = ["NIFI_EXTRA_HINT", "unknown_keys", "validate_flow"]

NIFI_EXTRA_HINT: Final = (
    "checking a NiFi flow before upload needs the 'nifi' extra (nipyapi): pip install 'dcnios[nifi]'"
)

_PARAM_REF: Final = re.compile(r"#\{([^}]*)\}")
_PROCESSOR_FIELDS: Final = (
    "identifier",
    "type",
    "bundle",
    "name",
    "position",
    "properties",
    "propertyDescriptors",
    "schedulingStrategy",
    "schedulingPeriod",
    "executionNode",
    "bulletinLevel",
    "runDurationMillis",
    "concurrentlySchedulableTaskCount",
    "penaltyDuration",
    "yieldDuration",
    "scheduledState",
)
_SERVICE_FIELDS: Final = ("identifier", "type", "bundle", "name", "properties", "propertyDescriptors")
_CONNECTION_FIELDS: Final = (
    "identifier",
    "source",
    "destination",
    "selectedRelationships",
    "backPressureObjectThreshold",
    "backPressureDataSizeThreshold",
    "flowFileExpiration",
    "labelIndex",
    "zIndex",
    "bends",
)
_STRATEGIES: Final = {
    1: ("TIMER_DRIVEN", "CRON_DRIVEN", "EVENT_DRIVEN", "PRIMARY_NODE_ONLY"),
    2: ("TIMER_DRIVEN", "CRON_DRIVEN"),
}


def _models() -> Any:
    try:
        import nipyapi
    except ImportError as exc:
        raise ExtraMissingError(f"{NIFI_EXTRA_HINT} ({exc})") from exc

    if nipyapi.config.nifi_config.api_client is None:
        # The deserialiser needs a client object; none of its network settings are used here.
        nipyapi.config.nifi_config.api_client = nipyapi.nifi.ApiClient()
    return nipyapi


def _model_errors(flow: dict[str, Any]) -> list[str]:
    nipyapi = _models()
    try:
        nipyapi.utils.load(json.dumps(flow), dto=("nifi", "RegisteredFlowSnapshot"))
    except (ValueError, TypeError) as exc:
        return [f"$: nipyapi RegisteredFlowSnapshot model: {exc}"]
    return []


def unknown_keys(obj: Any, typ: str = "RegisteredFlowSnapshot", path: str = "$") -> list[str]:
    """Every key that the NiFi 2.x models (nipyapi 1.8.1) do not define, with its JSON path."""
    models = _models().nifi.models
    out: list[str] = []
    if obj is None:
        return out
    if m := re.match(r"list\[(.*)\]$", typ):
        for i, item in enumerate(obj):
            out += unknown_keys(item, m.group(1), f"{path}[{i}]")
    elif m := re.match(r"dict\(([^,]*), (.*)\)$", typ):
        for key, item in obj.items():
            out += unknown_keys(item, m.group(2), f"{path}.{key}")
    elif (cls := getattr(models, typ, None)) is not None and isinstance(obj, dict):
        by_json = {j: a for a, j in cls.attribute_map.items()}
        for key, item in obj.items():
            if key not in by_json:
                out.append(f"{path}.{key}: unknown key for {typ} (NiFi would drop it)")
            else:
                out += unknown_keys(item, cls.swagger_types[by_json[key]], f"{path}.{key}")
    return out


def validate_flow(flow: dict[str, Any], parameters: Iterable[Parameter], version: int) -> list[str]:
    """Every problem found, each naming the component and the field; empty when the flow is sound."""
    problems = _model_errors(flow) + unknown_keys(flow)
    params = {p.name: p for p in parameters}
    contents = flow.get("flowContents", {})
    if version == 2 and "variables" in contents:
        problems.append("$.flowContents.variables: NiFi 2.x has no variables; use parameters")
    context = contents.get("parameterContextName")
    contexts = flow.get("parameterContexts") or {}
    if context not in contexts:
        problems.append(f"$.flowContents.parameterContextName: {context!r} is not a key of parameterContexts")
    for key, ctx in contexts.items():
        if ctx.get("name") != key or ctx.get("parameters") is None:
            problems.append(
                f"$.parameterContexts.{key}: name must equal the key and parameters must be a list"
            )
    services = {s.get("identifier"): s for s in contents.get("controllerServices", [])}
    processors = {p.get("identifier"): p for p in contents.get("processors", [])}
    ids = [*services, *processors, *(c.get("identifier") for c in contents.get("connections", []))]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"identifier {dup!r} is used more than once")
    for sid, service in services.items():
        where = f"controller service {service.get('name')!r} ({sid})"
        problems += [f"{where}: missing {f}" for f in _SERVICE_FIELDS if service.get(f) is None]
        problems += _component_problems(service, where, version, services, params)
    for pid, processor in processors.items():
        where = f"processor {processor.get('name')!r} ({pid})"
        problems += [f"{where}: missing {f}" for f in _PROCESSOR_FIELDS if processor.get(f) is None]
        if (processor.get("concurrentlySchedulableTaskCount") or 0) < 1:
            problems.append(f"{where}: concurrentlySchedulableTaskCount must be at least 1")
        if processor.get("schedulingStrategy") not in _STRATEGIES[version]:
            problems.append(
                f"{where}: schedulingStrategy {processor.get('schedulingStrategy')!r} not in NiFi {version}.x"
            )
        if processor.get("scheduledState") != "ENABLED":
            problems.append(
                f"{where}: scheduledState must be ENABLED (DISABLED processors are never started)"
            )
        problems += _component_problems(processor, where, version, services, params)
    problems += _connection_problems(contents.get("connections", []), processors)
    return problems


def _component_problems(
    comp: dict[str, Any],
    where: str,
    version: int,
    services: dict[str, Any],
    params: dict[str, Parameter],
) -> list[str]:
    problems: list[str] = []
    known = component(comp.get("type", ""), version)
    if known is None:
        return [f"{where}: type {comp.get('type')!r} is not known for NiFi {version}.x"]
    bundle = comp.get("bundle") or {}
    if bundle.get("artifact") != known.artifact or bundle.get("group") != "org.apache.nifi":
        problems.append(f"{where}: bundle must be org.apache.nifi:{known.artifact}, got {bundle}")
    descriptors = comp.get("propertyDescriptors") or {}
    for name, value in (comp.get("properties") or {}).items():
        dynamic = name not in known.properties
        if dynamic and name not in known.dynamic:
            problems.append(f"{where}: property {name!r} does not exist in NiFi {version}.x")
            continue
        sensitive = name in known.sensitive or bool(descriptors.get(name, {}).get("sensitive"))
        if name in known.sensitive and not descriptors.get(name, {}).get("sensitive") and dynamic:
            problems.append(f"{where}: dynamic property {name!r} must be declared sensitive")
        if name in known.service_properties and value not in services:
            problems.append(
                f"{where}: property {name!r} names no controller service in this flow ({value!r})"
            )
        problems += _parameter_problems(where, name, value, sensitive, params)
    return problems


def _parameter_problems(
    where: str, name: str, value: Any, sensitive: bool, params: dict[str, Parameter]
) -> list[str]:
    text = value if isinstance(value, str) else ""
    refs = _PARAM_REF.findall(text)
    problems = []
    for ref in refs:
        param = params.get(ref)
        if param is None:
            problems.append(
                f"{where}: property {name!r} references parameter #{{{ref}}}, which is not created"
            )
        elif param.sensitive != sensitive:
            state = "sensitive" if param.sensitive else "not sensitive"
            problems.append(
                f"{where}: property {name!r}: parameter #{{{ref}}} is {state}, the property is not"
            )
    if sensitive and value is not None and not re.fullmatch(r"#\{[^}]*\}", text):
        problems.append(f"{where}: sensitive property {name!r} must be exactly one #{{parameter}}")
    return problems


def _connection_problems(connections: list[dict[str, Any]], processors: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    routed: dict[str, set[str]] = {pid: set() for pid in processors}
    for conn in connections:
        where = f"connection {conn.get('identifier')!r}"
        problems += [f"{where}: missing {f}" for f in _CONNECTION_FIELDS if conn.get(f) is None]
        for end in ("source", "destination"):
            ref = conn.get(end) or {}
            if ref.get("id") not in processors or ref.get("type") != "PROCESSOR":
                problems.append(f"{where}: {end} {ref.get('id')!r} is not a processor of this group")
        source = (conn.get("source") or {}).get("id")
        if source in routed:
            routed[source].update(conn.get("selectedRelationships") or [])
    for pid, processor in processors.items():
        for version in (1, 2):
            known = component(processor.get("type", ""), version)
            if known is not None:
                break
        if known is None:
            continue
        auto = set(processor.get("autoTerminatedRelationships") or [])
        optional = {"parse failure", "rate exceeded"}  # exist only with options the recipes do not set
        for relationship in sorted(known.relationships - optional):
            if relationship not in auto and relationship not in routed[pid]:
                problems.append(
                    f"processor {processor.get('name')!r} ({pid}): relationship {relationship!r} is neither "
                    "connected nor auto-terminated (NiFi marks it INVALID)"
                )
        for relationship in sorted((auto | routed[pid]) - known.relationships):
            problems.append(f"processor {processor.get('name')!r} ({pid}): no relationship {relationship!r}")
    return problems
