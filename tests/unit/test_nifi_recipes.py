"""NiFi recipes offline: every variant validates, the validator catches what NiFi would not, and
what the flow does with a record is what dcnios-consumer does: the same body, or the same dead letter.

The NiFi processors are emulated here from their source (RouteOnAttribute and UpdateAttribute with
the Expression Language functions the recipes use; AvroReader with a schema text or the Confluent
wire format; the Jolt operations and functions of the recipe's chain; JsonRecordSetWriter, which
writes the writer schema's field order, compact, one object per line, escaping like Jackson), and
the record follows the flow's own connections. The settings the emulation reads come from the
generated flow itself, so a wrong route, schema, spec or writer option in the recipe fails the
comparison.
"""

from __future__ import annotations

import copy
import datetime
import io
import json
import re
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcnios.codec import StorageEventCodec
from dcnios.consumers.record import body_for, unstageable_reason
from dcnios.deploy.recipe import Recipe, rate_parameters, render
from dcnios.deploy.validate import unknown_keys, validate_flow
from dcnios.errors import ConfigError
from dcnios.inotify import MASK_ORDER
from dcnios.spec import PipelineSpec, Rate, parse_spec
from dcnios.storage_event import StorageEvent

BASE = """\
kafka: {bootstrap_servers: "k:9092"%(kafka)s}
consumers:
  - name: grayify
    topic: dcache.events
    oscar: {endpoint: "https://oscar.example.org", service: grayify, token: "%(token)s",
            input_path: "%(input_path)s", nested_names: %(nested)s}
    payload: %(payload)s
    rate: 20/s
nifi:
  endpoint: https://nifi.example.org:8443/nifi-api
  auth: {username: admin, password: admin-password-12}
  version: %(version)s
  consumers: [grayify]
%(nifi)s"""
TOKEN = "cd" * 32
SECURITY = {
    "plain": ("", ""),
    "sasl_ssl": (
        ", security_protocol: SASL_SSL,"
        ' sasl: {mechanism: SCRAM-SHA-512, username: u, password: "kafka-secret"}',
        "  kafka_truststore: {path: /opt/nifi/ts.p12, password: ts-secret}\n",
    ),
    "registry": (', schema_registry: {url: "https://registry:8081"}', ""),
}


def spec_for(
    version: int,
    payload: str = "dcache",
    security: str = "plain",
    *,
    nested: bool = False,
    input_path: str = "/data",
) -> PipelineSpec:
    kafka, nifi = SECURITY[security]
    text = BASE % {
        "kafka": kafka,
        "token": TOKEN,
        "payload": payload,
        "version": version,
        "nifi": nifi,
        "nested": "true" if nested else "false",
        "input_path": input_path,
    }
    return parse_spec(text)


def recipe_for(
    version: int, payload: str = "dcache", security: str = "plain", *, nested: bool = False
) -> Recipe:
    spec = spec_for(version, payload, security, nested=nested)
    return render(spec, spec.consumers[0], version=version, partitions=6, authorization=f"Bearer {TOKEN}")


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("payload", ["dcache", "record"])
@pytest.mark.parametrize("security", sorted(SECURITY))
def test_every_variant_validates(version: int, payload: str, security: str) -> None:
    recipe = recipe_for(version, payload, security)
    assert validate_flow(recipe.flow, recipe.parameters, version) == []
    flow = json.dumps(recipe.flow)
    for secret in (TOKEN, "kafka-secret", "ts-secret"):
        assert secret not in flow  # secrets only ever travel as sensitive parameters
    sensitive = {p.name for p in recipe.parameters if p.sensitive}
    assert "oscar_authorization" in sensitive
    if security == "sasl_ssl":
        assert {"kafka_sasl_password", "kafka_truststore_password"} <= sensitive


def test_nothing_that_could_lose_an_event_is_auto_terminated() -> None:
    for version in (1, 2):
        procs = {p["identifier"]: p for p in recipe_for(version).flow["flowContents"]["processors"]}
        assert set(procs["invoke"]["autoTerminatedRelationships"]) == {"Original", "Response"}
        assert procs["invoke"]["retriedRelationships"] == ["Retry", "Failure"]
        assert procs["invoke"]["retryCount"] == 7  # max_attempts 8
        assert procs["dead-letter"]["autoTerminatedRelationships"] == ["success"]
        assert procs["rate"]["autoTerminatedRelationships"] == []
        assert procs["consume"]["concurrentlySchedulableTaskCount"] == 6
        assert procs["consume"]["properties"].get("auto.offset.reset") == "earliest"


def test_property_names_follow_the_major_version() -> None:
    v1 = recipe_for(1).flow["flowContents"]["processors"]
    v2 = recipe_for(2).flow["flowContents"]["processors"]
    invoke1 = next(p for p in v1 if p["identifier"] == "invoke")["properties"]
    invoke2 = next(p for p in v2 if p["identifier"] == "invoke")["properties"]
    assert "Remote URL" in invoke1 and "HTTP URL" not in invoke1
    assert "HTTP URL" in invoke2 and "Remote URL" not in invoke2
    assert "Rate Exceeded Strategy" not in next(p for p in v1 if p["identifier"] == "rate")["properties"]


def _problems(mutate: Any, version: int = 2) -> list[str]:
    recipe = recipe_for(version)
    flow = copy.deepcopy(recipe.flow)
    params = list(recipe.parameters)
    params = mutate(flow, params) or params
    return validate_flow(flow, params, version)


def _proc(flow: dict[str, Any], ident: str) -> dict[str, Any]:
    return next(p for p in flow["flowContents"]["processors"] if p["identifier"] == ident)


def test_the_validator_catches_what_nifi_would_drop_or_refuse() -> None:
    def typo(flow: dict[str, Any], _: Any) -> None:
        _proc(flow, "rate")["propertys"] = {}

    assert any("propertys: unknown key for VersionedProcessor" in p for p in _problems(typo))

    def old_name(flow: dict[str, Any], _: Any) -> None:
        _proc(flow, "invoke")["properties"]["Remote URL"] = "#{oscar_url}"

    assert any("property 'Remote URL' does not exist in NiFi 2.x" in p for p in _problems(old_name))

    def bad_enum(flow: dict[str, Any], _: Any) -> None:
        _proc(flow, "rate")["scheduledState"] = "STARTED"

    assert any("nipyapi RegisteredFlowSnapshot model" in p for p in _problems(bad_enum))

    def unrouted(flow: dict[str, Any], _: Any) -> None:
        conns = flow["flowContents"]["connections"]
        flow["flowContents"]["connections"] = [c for c in conns if c["identifier"] != "invoke-dlq"]

    problems = _problems(unrouted)
    assert any("relationship 'No Retry' is neither connected nor auto-terminated" in p for p in problems)

    def missing_param(flow: dict[str, Any], params: list[Any]) -> list[Any]:
        return [p for p in params if p.name != "max_rate"]

    assert any("#{max_rate}, which is not created" in p for p in _problems(missing_param))

    def insensitive(flow: dict[str, Any], params: list[Any]) -> list[Any]:
        return [replace(p, sensitive=False) if p.name == "oscar_authorization" else p for p in params]

    assert any("#{oscar_authorization} is not sensitive" in p for p in _problems(insensitive))

    def literal_secret(flow: dict[str, Any], _: Any) -> None:
        _proc(flow, "invoke")["properties"]["Authorization"] = "Bearer #{oscar_authorization}"

    assert any("must be exactly one #{parameter}" in p for p in _problems(literal_secret))

    def dangling_service(flow: dict[str, Any], _: Any) -> None:
        _proc(flow, "consume")["properties"]["Kafka Connection Service"] = "nope"

    assert any("names no controller service in this flow ('nope')" in p for p in _problems(dangling_service))

    def no_tasks(flow: dict[str, Any], _: Any) -> None:
        _proc(flow, "consume")["concurrentlySchedulableTaskCount"] = 0

    assert any("at least 1" in p for p in _problems(no_tasks))

    def no_yield(flow: dict[str, Any], _: Any) -> None:
        del _proc(flow, "consume")["yieldDuration"]

    assert any("missing yieldDuration" in p for p in _problems(no_yield))

    def event_driven(flow: dict[str, Any], _: Any) -> None:
        _proc(flow, "rate")["schedulingStrategy"] = "EVENT_DRIVEN"

    assert any("EVENT_DRIVEN" in p for p in _problems(event_driven))

    def unbound(flow: dict[str, Any], _: Any) -> None:
        flow["parameterContexts"] = {}

    assert any("is not a key of parameterContexts" in p for p in _problems(unbound))


def test_unknown_keys_walks_nested_models() -> None:
    flow = recipe_for(2).flow
    flow["flowContents"]["connections"][0]["source"]["kind"] = "x"
    assert unknown_keys(flow) == [
        "$.flowContents.connections[0].source.kind: unknown key for ConnectableComponent (NiFi would drop it)"
    ]


def test_ssl_needs_a_nifi_trust_store() -> None:
    kafka = ', security_protocol: SSL, ssl: {ca_location: "/etc/ca.pem"}'
    text = BASE % {
        "kafka": kafka,
        "token": TOKEN,
        "payload": "dcache",
        "version": 2,
        "nifi": "",
        "nested": "false",
        "input_path": "/data",
    }
    spec = parse_spec(text.replace('ca_location: "/etc/ca.pem"', 'ca_location: "' + __file__ + '"'))
    with pytest.raises(
        ConfigError, match=r"nifi\.kafka_truststore: required when kafka\.security_protocol is SSL"
    ):
        render(spec, spec.consumers[0], version=2, partitions=1, authorization="Bearer x")


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ("20/s", ("20", "1 sec")),
        ("0.5/s", ("30", "1 min")),
        ("90/m", ("90", "1 min")),
        ("1/h", ("1", "1 hour")),
    ],
)
def test_rates_become_whole_counts(rate: str, expected: tuple[str, str]) -> None:
    assert rate_parameters(Rate.parse(rate)) == expected
    assert rate_parameters(None) == ("1000000", "1 sec")


def test_catalog_names_are_nifi_2_11_descriptors() -> None:
    """The offline validator's 2.x table and the emulator's facts (read separately from NiFi's
    source) agree for the default target, 2.11.0: no invalid name passes, no real one is refused."""
    from dcnios.deploy.catalog import COMPONENTS as CATALOG
    from dcnios.deploy.recipe import _DEFAULT_NIFI_VERSION
    from dcnios.sandbox.nifi_components import COMPONENTS as FACTS
    from dcnios.sandbox.nifi_components import nifi_version

    release = nifi_version(_DEFAULT_NIFI_VERSION[2])
    for (type_, version), known in CATALOG.items():
        if version != 2:
            continue
        facts = FACTS[type_]
        real = {d.name for d in facts.descriptors if d.exists(release)}
        assert known.properties == real, type_
        services = {d.name for d in facts.descriptors if d.exists(release) and d.service}
        assert known.service_properties == services, type_
        for name in known.dynamic:
            assert facts.dynamic is not None and facts.dynamic(name, "x", release) is None, (type_, name)


def test_dcache_payload_needs_an_input_path_nifi_can_carry() -> None:
    spec = spec_for(2, input_path="/da'ta")
    with pytest.raises(ConfigError, match=r"oscar.input_path: \"/da'ta\" has \"'\", which the NiFi route"):
        render(spec, spec.consumers[0], version=2, partitions=1, authorization="Bearer x")
    text = BASE % {
        "kafka": "",
        "token": TOKEN,
        "payload": "dcache",
        "version": 2,
        "nifi": "",
        "nested": "false",
        "input_path": "/data",
    }
    spec = parse_spec(
        text.replace(f'token: "{TOKEN}",', "username: u, password: p,").replace('input_path: "/data", ', "")
    )
    assert spec.consumers[0].oscar.input_path is None
    with pytest.raises(ConfigError, match=r"oscar\.input_path: needed to route payload: dcache through NiFi"):
        render(spec, spec.consumers[0], version=2, partitions=1, authorization="Bearer x")
    # The deployer reads it from the service, as dcnios-consumer does, and passes it on.
    recipe = render(spec, spec.consumers[0], version=2, partitions=1, authorization="x", input_path="/srv/in")
    route = next(p for p in recipe.flow["flowContents"]["processors"] if p["identifier"] == "stageable")
    assert route["properties"]["stageable"] == "${kafka.key:matches('/srv/in/(?!.*  )[^/]+')}"


def test_deploy_nifi_without_the_nifi_extra_says_what_to_install(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from dcnios.cli import main
    from dcnios.cli import nifi as nifi_cli

    path = tmp_path / "spec.yaml"
    path.write_text(
        BASE
        % {
            "kafka": "",
            "token": TOKEN,
            "payload": "dcache",
            "version": 2,
            "nifi": "",
            "nested": "false",
            "input_path": "/data",
        }
    )
    monkeypatch.setattr(nifi_cli, "_partitions", lambda spec: lambda topic: 1)  # no Kafka probe
    monkeypatch.setitem(sys.modules, "nipyapi", None)  # what `import nipyapi` meets without the extra
    assert main(["deploy-nifi", "-c", str(path), "--print-flow", "grayify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ExtraMissingError: ") and "pip install 'dcnios[nifi]'" in err
    assert "Traceback" not in err


# -- what the flow does with one record -------------------------------------------------------------
@dataclass(frozen=True)
class Invoked:
    body: bytes


@dataclass(frozen=True)
class DeadLettered:
    value: bytes
    headers: dict[str, str]


def _service(recipe: Recipe, ident: str) -> dict[str, Any]:
    return next(s for s in recipe.flow["flowContents"]["controllerServices"] if s["identifier"] == ident)


def _prop(props: dict[str, Any], *names: str) -> Any:
    """The value under the first of ``names`` present: the 2.x name, then the 1.x one."""
    return props[next(n for n in names if n in props)]


def _nifi_json(value: Any) -> str:
    """Jackson's compact output, written out again here: quote, backslash and control characters
    escaped (short forms for \\b \\t \\n \\f \\r, else \\u00XX in upper case), the rest raw."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(_nifi_json(v) for v in value) + "]"
    short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    return '"' + "".join(short.get(c) or (f"\\u{ord(c):04X}" if ord(c) < 32 else c) for c in value) + '"'


def _write_record(record: dict[str, Any], schema: dict[str, Any], suppress_nulls: bool) -> str:
    fields = []
    for field in schema["fields"]:
        value = record.get(field["name"])
        if value is None and suppress_nulls:
            continue
        ftype = field["type"]
        if isinstance(ftype, dict) and ftype.get("type") == "record":
            fields.append(f'"{field["name"]}":{_write_record(value, ftype, suppress_nulls)}')
        else:
            fields.append(f'"{field["name"]}":{_nifi_json(value)}')
    return "{" + ",".join(fields) + "}"


# NiFi Expression Language, the part the recipes use (nifi-commons/nifi-expression-language):
# literals as AttributeExpressionLexer.g lexes them and StringLiteralEvaluator unescapes them,
# attribute references, and the functions matches, startsWith and ifElse.
def _el_literal(text: str, pos: int) -> tuple[str, int]:
    quote, pos, lexed = text[pos], pos + 1, []
    while text[pos] != quote:
        if text[pos] == "\\":
            nxt = text[pos + 1]
            lexed.append(
                {'"': '"', "'": "'", "r": "\r", "n": "\n", "t": "\t", "\\": "\\\\"}.get(nxt, "\\" + nxt)
            )
            pos += 2
        else:
            lexed.append(text[pos])
            pos += 1
    raw, out, backslash = "".join(lexed), [], False
    for c in raw:
        if backslash:
            out.append({"n": "\n", "r": "\r", "\\": "\\", "t": "\\t"}.get(c, "\\" + c))
            backslash = False
        elif c == "\\":
            backslash = True
        else:
            out.append(c)
    return "".join(out), pos + 1


def _el_expression(expr: str, attrs: dict[str, str]) -> str | bool | None:
    match = re.match(r"[^$:{}()\[\],;/*' \t\r\n]+", expr)
    assert match, expr
    subject: str | bool | None = attrs.get(match.group(0))
    pos = match.end()
    while pos < len(expr):
        call = re.compile(r":(\w+)\(").match(expr, pos)
        assert call, expr[pos:]
        pos, args = call.end(), []
        while expr[pos] != ")":
            if expr[pos] in "'\"":
                arg, pos = _el_literal(expr, pos)
                args.append(arg)
            else:
                assert expr[pos] in ", ", expr[pos:]
                pos += 1
        pos += 1
        name = call.group(1)
        if name == "matches":  # MatchesEvaluator: Pattern.matches, false for a null subject
            subject = isinstance(subject, str) and re.fullmatch(args[0], subject) is not None
        elif name == "startsWith":  # StartsWithEvaluator
            subject = isinstance(subject, str) and subject.startswith(args[0])
        elif name == "ifElse":  # IfElseEvaluator
            subject = args[0] if subject is True else args[1]
        else:
            raise AssertionError(f"{name}: not emulated")
    return subject


def _el(text: str, attrs: dict[str, str]) -> str:
    """A property value: literal text with ``${...}`` expressions (Query.extractExpressionRanges)."""
    out, pos = [], 0
    while (start := text.find("${", pos)) >= 0:
        out.append(text[pos:start])
        end, depth = start + 2, 1
        while depth:
            if text[end] in "'\"":
                _, end = _el_literal(text, end)
                continue
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        value = _el_expression(text[start + 2 : end - 1], attrs)
        out.append("" if value is None else str(value).lower() if isinstance(value, bool) else value)
        pos = end
    return "".join(out) + text[pos:]


# Jolt (jolt-community 1.2.0 in NiFi 2.9+, bazaarvoice 0.1.8 before and in 1.x; the same code for
# what is used here): a chain of literal-key shift and modify-overwrite-beta operations.
def _utf16(text: str) -> bytes:
    return text.encode("utf-16-le")


def _jolt_function(expression: str, root: dict[str, Any]) -> Any:
    """``=name(args)`` (ModifierLeafSpec): None when the function returns Optional.empty."""
    call = re.fullmatch(r"=(\w+)\((.*)\)", expression)
    assert call, expression
    args: list[Any] = []
    for arg in re.findall(r"@\(1,[^)]*\)|[^,]+", call.group(2)):
        if lookup := re.fullmatch(r"@\(1,(.*)\)", arg):  # a sibling of the key being written
            args.append(root.get(lookup.group(1)))
        elif re.fullmatch(r"-?\d+", arg):  # FunctionArg.forLiteral: Objects.toNumber tries int first
            args.append(int(arg))
        else:
            raise AssertionError(f"literal {arg!r}: not emulated")
    name = call.group(1)
    if name == "size":  # Objects.size: a String's length() counts UTF-16 code units
        (value,) = args
        return len(_utf16(value)) // 2 if isinstance(value, str) else None
    if name == "substring":  # Strings.substring: String.substring(start, end), or empty
        text, start, end = args
        if not (isinstance(text, str) and isinstance(start, int) and isinstance(end, int)):
            return None
        units = _utf16(text)
        if start >= end or start < 0 or end < 1 or end > len(units) // 2:
            return None
        return units[2 * start : 2 * end].decode("utf-16-le")
    raise AssertionError(f"{name}: not emulated")


def _jolt_chain(operations: list[dict[str, Any]], record: dict[str, Any]) -> dict[str, Any]:
    data = dict(record)
    for operation in operations:
        spec = operation["spec"]
        if operation["operation"] == "modify-overwrite-beta":
            for key, expression in spec.items():  # OVERWRITR writes whenever the function gives a value
                value = _jolt_function(expression, data)
                if value is not None:
                    data[key] = value
        elif operation["operation"] == "shift":
            out: dict[str, Any] = {}
            for key, dest in spec.items():
                assert not re.search(r"[*&@$#\[]", key + dest), "only literal keys are emulated"
                if key not in data:
                    continue
                *parents, leaf = dest.split(".")
                node = out
                for parent in parents:
                    node = node.setdefault(parent, {})
                node[leaf] = data[key]  # ShiftrTraversr sets a null as any other value
            data = out
        else:
            raise AssertionError(f"{operation['operation']}: not emulated")
    return data


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _read(recipe: Recipe, reader_id: str, content: bytes, registry_schema: str | None) -> tuple[Any, Any]:
    props = _service(recipe, reader_id)["properties"]
    strategy = _prop(props, "Schema Access Strategy", "schema-access-strategy")
    if strategy in ("schema-reference-reader", "confluent-encoded"):
        if strategy == "schema-reference-reader":
            ref = _service(recipe, props["Schema Reference Reader"])
            assert ref["type"].endswith("ConfluentEncodedSchemaReferenceReader")
        assert content[0] == 0  # magic byte, then a 4-byte schema id
        schema_text, payload = registry_schema, content[5:]
    else:
        assert strategy == "schema-text-property"
        schema_text, payload = _prop(props, "Schema Text", "schema-text"), content
    assert schema_text is not None
    schema = json.loads(schema_text)
    record = fastavro.schemaless_reader(io.BytesIO(payload), fastavro.parse_schema(schema))
    assert isinstance(record, dict)
    for key, item in list(record.items()):
        if isinstance(item, datetime.datetime):  # timestamp-millis: the writer has no Timestamp Format
            record[key] = (item - _EPOCH) // datetime.timedelta(milliseconds=1)  # exact, no float
    return record, schema


def _write(recipe: Recipe, writer_id: str, record: dict[str, Any], inherited: Any) -> bytes:
    props = _service(recipe, writer_id)["properties"]
    assert _prop(props, "Output Grouping", "output-grouping") == "output-oneline"
    assert props["Pretty Print JSON"] == "false"
    if _prop(props, "Schema Access Strategy", "schema-access-strategy") == "inherit-record-schema":
        schema = inherited
    else:
        schema = json.loads(_prop(props, "Schema Text", "schema-text"))
    suppress = _prop(props, "Suppress Null Values", "suppress-nulls") == "always-suppress"
    return _write_record(record, schema, suppress).encode()


def _run_flow(
    recipe: Recipe, key: bytes, value: bytes, registry_schema: str | None = None
) -> Invoked | DeadLettered:
    """Follow one Kafka record through the generated flow's processors and connections."""
    contents = recipe.flow["flowContents"]
    procs = {p["identifier"]: p for p in contents["processors"]}
    attrs = {
        "kafka.key": key.decode(),
        "kafka.topic": "dcache.events",
        "kafka.partition": "3",
        "kafka.offset": "17",
    }
    content, current, relationship = value, "consume", "success"
    for _ in range(len(procs)):
        (nxt,) = [
            c["destination"]["id"]
            for c in contents["connections"]
            if c["source"]["id"] == current and relationship in c["selectedRelationships"]
        ]
        proc = procs[nxt]
        kind, props = proc["type"].rsplit(".", 1)[-1], proc["properties"]
        relationship = "success"
        if kind == "RouteOnAttribute":
            assert props["Routing Strategy"] == "Route to Property name"
            matched = [n for n, v in props.items() if n != "Routing Strategy" and _el(v, attrs) == "true"]
            assert len(matched) <= 1  # more would clone the FlowFile
            relationship = matched[0] if matched else "unmatched"
        elif kind == "UpdateAttribute":
            attrs.update({n: _el(v, attrs) for n, v in props.items()})
        elif kind in ("JoltTransformRecord", "ConvertRecord"):
            record, schema = _read(
                recipe,
                _prop(props, "Record Reader", "jolt-record-record-reader", "record-reader"),
                content,
                registry_schema,
            )
            if kind == "JoltTransformRecord":
                assert _prop(props, "Jolt Transform", "jolt-record-transform") == "jolt-transform-chain"
                record = _jolt_chain(
                    json.loads(_prop(props, "Jolt Specification", "jolt-record-spec")), record
                )
            writer = _prop(props, "Record Writer", "jolt-record-record-writer", "record-writer")
            content = _write(recipe, writer, record, schema)
        elif kind == "InvokeHTTP":
            return Invoked(content)
        elif kind.startswith("PublishKafka"):
            pattern = _prop(props, "FlowFile Attribute Header Pattern", "attribute-name-regex")
            return DeadLettered(content, {n: v for n, v in attrs.items() if re.fullmatch(pattern, n)})
        else:
            assert kind == "ControlRate", kind
        current = nxt
    raise AssertionError("the flow loops")


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
segment = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), min_size=1)
direct = segment.map(lambda s: "/data/" + s)
paths = st.one_of(
    direct,  # directly in the input directory (twice: the case that is invoked)
    direct,
    st.lists(segment, min_size=2, max_size=3).map(lambda parts: "/data/" + "/".join(parts)),  # below it
    text.map(lambda s: "/data" + s),  # "/data", "/data/", "/database/x", "/data//x", ...
    text.map(lambda s: "/other/" + s),
)
events = st.builds(
    StorageEvent,
    source=st.just("src"),
    path=paths,
    name=st.one_of(st.none(), text),
    mask=st.lists(st.sampled_from(MASK_ORDER), min_size=1, max_size=3, unique=True).map(tuple),
    cookie=st.one_of(st.none(), text),
    is_dir=st.booleans(),
    channel=st.just("ch"),
    event_id=st.one_of(st.none(), st.integers(min_value=0, max_value=2**62)),
    subscription=text.map(
        lambda s: "https://dcache:3880/api/v1/events/channels/c/subscriptions/inotify/" + s
    ),
    observed_at=st.integers(min_value=0, max_value=2**42),
    synthetic=st.booleans(),
    gap=st.one_of(st.none(), st.just("EVENT_LOSS")),
)


def _expect(
    outcome: Invoked | DeadLettered, event: StorageEvent, payload: str, value: bytes, nested: bool
) -> None:
    """NiFi does what dcnios-consumer does: the same body, or the same dead letter."""
    body = body_for(event, payload, "/data", nested=nested)
    if body is not None:
        assert outcome == Invoked(body)
        return
    assert isinstance(outcome, DeadLettered)
    assert outcome.value == value  # the record as consumed, so `dcnios dlq replay` can read it
    assert outcome.headers["dcnios-reason"] == "unstageable"
    assert outcome.headers["dcnios-error"] == unstageable_reason(event.path, "/data", nested=nested)
    assert outcome.headers["dcnios-consumer"] == "grayify"
    assert (outcome.headers["dcnios-topic"], outcome.headers["dcnios-offset"]) == ("dcache.events", "17")


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(("payload", "nested"), [("dcache", False), ("dcache", True), ("record", False)])
@settings(max_examples=40, deadline=None)
@given(event=events)
def test_nifi_sends_the_same_body_as_dcnios_consumer(
    version: int, payload: str, nested: bool, event: StorageEvent
) -> None:
    recipe = recipe_for(version, payload, nested=nested)
    value, _ = StorageEventCodec().encode(event, "dcache.events")
    _expect(_run_flow(recipe, event.key, value), event, payload, value, nested)


@pytest.mark.parametrize("version", [1, 2])
def test_same_body_with_the_confluent_wire_format(version: int) -> None:
    from dcnios.spec import RegistrySpec

    recipe = recipe_for(version, "dcache", "registry")
    codec = StorageEventCodec(RegistrySpec(url="mock://nifi-recipe-test"))
    # What the registry serves for the id in the header: the schema the codec registered.
    registered = resources.files("dcnios.schemas").joinpath("storage_event.avsc").read_text()
    for path, cookie in (
        ("/data/a.png", None),
        ('/data/ünï "q"\u0001.dat', "c0"),
        ("/data/sub/b.png", None),
        ("/elsewhere/c.png", "c1"),
    ):
        event = StorageEvent(
            "src", path, path.rsplit("/", 1)[1], ("IN_MOVED_TO",), cookie, False, "ch", 3, "https://d/s/1", 5
        )
        value, _ = codec.encode(event, "dcache.events")
        assert value[0] == 0 and int.from_bytes(value[1:5], "big") > 0
        _expect(_run_flow(recipe, event.key, value, registered), event, "dcache", value, nested=False)


def test_envelope_matches_a_recorded_dcache_frame() -> None:
    event = StorageEvent(
        "src",
        "/data/image2.jpg",
        "image2.jpg",
        ("IN_CLOSE_WRITE",),
        "AAEC",
        False,
        "ch",
        7,
        "https://prometheus.desy.de:3880/api/v1/events/channels/ch/subscriptions/inotify/AAB",
        0,
    )
    value, _ = StorageEventCodec().encode(event, "t")
    assert _run_flow(recipe_for(2), event.key, value) == Invoked(
        b'{"event":{"name":"image2.jpg","cookie":"AAEC","mask":["IN_CLOSE_WRITE"]},'
        b'"subscription":"https://prometheus.desy.de:3880/api/v1/events/channels/ch/subscriptions/inotify/AAB"}'
    )


def test_the_relative_name_counts_java_string_units() -> None:
    # Jolt's substring works on UTF-16 code units: an input path outside the BMP moves the start.
    spec = spec_for(2, input_path="/d\U0001f600ta")
    recipe = render(spec, spec.consumers[0], version=2, partitions=1, authorization="Bearer x")
    event = StorageEvent(
        "src", "/d\U0001f600ta/x\U0001f600.png", "n", ("IN_MOVED_TO",), None, False, "ch", 1, "s", 0
    )
    value, _ = StorageEventCodec().encode(event, "t")
    expected = body_for(event, "dcache", "/d\U0001f600ta")
    assert expected is not None and b'"name":"x\xf0\x9f\x98\x80.png"' in expected
    assert _run_flow(recipe, event.key, value) == Invoked(expected)
