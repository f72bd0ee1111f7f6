"""An emulator of the NiFi REST API parts ``dcnios deploy-nifi`` uses, from shared/reference/nifi-deploy.md.

Faithful where the reference is specific (section numbers refer to it):
* tokens only over HTTPS (409 over HTTP), bad credentials → 400, missing token → 401; a request
  that carries the ``__Secure-Authorization-Bearer`` cookie on POST/PUT/DELETE without
  ``Request-Token`` → 403 (the CSRF trap, §1.2);
* revisions: accepted when ``version`` matches or ``clientId`` is the last writer's; otherwise
  400 "...is not the most up-to-date revision"; creation needs version 0 (§1.1);
* multipart upload with groupName/positionX/positionY/clientId; unknown JSON keys ignored;
  components arrive STOPPED and DISABLED; unknown types become "(Missing)" ghosts with
  ``extensionMissing``; the parameter context is bound by name, adding only missing parameters
  (§1.5);
* validation: a processor referencing a disabled service or a missing parameter is INVALID;
  the bulk enable silently skips invalid services (2.x, §1.6);
* on 2.x, the components' real property descriptors (``dcnios.sandbox.nifi_components``, read from
  NiFi's source per release): on upload, service references are translated only under names whose
  descriptor identifies a controller service, then migrateProperties renames run; an unknown name
  makes the component INVALID unless its dynamic-property rule accepts it, and so does a value
  outside a covered enum's allowable values (1.x components are not checked this way);
* parameter-context update requests stop and restart the processors that use a changed
  parameter; sensitive values read back masked; flipping sensitivity is refused (§1.4);
* 409 for changing a running processor, binding a context while running, deleting a group with
  running processors, queued FlowFiles or enabled services; drop requests empty queues (§1.9).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from dcnios.sandbox.nifi_components import COMPONENTS, UnemulatedMigration, nifi_version
from dcnios.sandbox.nifi_components import unsupported_property as _unsupported

__all__ = ["NifiEmulator"]

logger = logging.getLogger(__name__)

_API: Final = "/nifi-api"
_MASK: Final = "********"
_PARAM: Final = re.compile(r"#\{([^}]*)\}")
_SHARED_TYPES: Final = {
    "org.apache.nifi.processors.standard.ControlRate",
    "org.apache.nifi.processors.standard.InvokeHTTP",
    "org.apache.nifi.processors.standard.ConvertRecord",
    "org.apache.nifi.processors.standard.RouteOnAttribute",
    "org.apache.nifi.processors.attributes.UpdateAttribute",
    "org.apache.nifi.avro.AvroReader",
    "org.apache.nifi.json.JsonRecordSetWriter",
    "org.apache.nifi.confluent.schemaregistry.ConfluentSchemaRegistry",
    "org.apache.nifi.ssl.StandardRestrictedSSLContextService",
}
#: Types a stock NiFi of each major version has (enough for the recipes and a ghost test).
KNOWN_TYPES: Final = {
    2: _SHARED_TYPES
    | {
        "org.apache.nifi.kafka.processors.ConsumeKafka",
        "org.apache.nifi.kafka.processors.PublishKafka",
        "org.apache.nifi.kafka.service.Kafka3ConnectionService",
        "org.apache.nifi.confluent.schemaregistry.ConfluentEncodedSchemaReferenceReader",
        "org.apache.nifi.processors.jolt.JoltTransformRecord",
    },
    1: _SHARED_TYPES
    | {
        "org.apache.nifi.processors.kafka.pubsub.ConsumeKafka_2_6",
        "org.apache.nifi.processors.kafka.pubsub.PublishKafka_2_6",
        # 1.x ships it in nifi-jolt-record-nar, package ...jolt.record (nifi-nar-bundles/
        # nifi-jolt-record-bundle/nifi-jolt-record-processors/.../jolt/record/JoltTransformRecord.java)
        "org.apache.nifi.processors.jolt.record.JoltTransformRecord",
    },
}
#: 1.x: the names under which a service reference is translated and checked (2.x: the descriptors)
_SERVICE_PROPERTIES: Final = {
    "Kafka Connection Service",
    "SSL Context Service",
    "ssl.context.service",
    "record-reader",
    "record-writer",
    "jolt-record-record-reader",
    "jolt-record-record-writer",
    "schema-registry",
}


class _Conflict(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Revisioned:
    id: str
    version: int = 0
    last_client: str | None = None

    def revision(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version}
        if self.last_client:
            out["clientId"] = self.last_client
        return out

    def check(self, revision: dict[str, Any] | None) -> None:
        revision = revision or {}
        client = revision.get("clientId")
        if revision.get("version") == self.version or (client and client == self.last_client):
            return
        raise _Conflict(
            400,
            f"[{revision.get('version')}, {client}, {self.id}] is not the most up-to-date revision. "
            "This component appears to have been modified",
        )

    def bump(self, revision: dict[str, Any] | None) -> None:
        self.version += 1
        self.last_client = (revision or {}).get("clientId") or self.last_client


@dataclass
class _Service(_Revisioned):
    name: str = ""
    type: str = ""
    group: str = ""
    versioned_id: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    state: str = "DISABLED"
    missing: bool = False
    pending: str | None = None  # the state ENABLING/DISABLING turns into
    seen_pending: bool = False  # one read shows ENABLING/DISABLING before the change lands


@dataclass
class _Processor(_Revisioned):
    name: str = ""
    type: str = ""
    group: str = ""
    versioned_id: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    relationships_auto: list[str] = field(default_factory=list)
    state: str = "STOPPED"
    missing: bool = False
    restarts: int = 0


@dataclass
class _Connection(_Revisioned):
    group: str = ""
    source: str = ""
    destination: str = ""
    relationships: list[str] = field(default_factory=list)
    threshold: int = 10000
    queued: int = 0


@dataclass
class _Group(_Revisioned):
    name: str = ""
    comments: str = ""
    context: str | None = None


@dataclass
class _Context(_Revisioned):
    name: str = ""
    parameters: dict[str, tuple[str | None, bool]] = field(default_factory=dict)  # name -> (value, sensitive)


class NifiEmulator:
    """A NiFi on 127.0.0.1. ``tls=(cert_file, key_file)`` serves HTTPS and turns on authentication."""

    def __init__(
        self,
        *,
        version: str = "2.11.0",
        users: dict[str, str] | None = None,
        tls: tuple[str, str] | None = None,
        port: int = 0,
    ) -> None:
        self.version = version
        self.major = int(version.split(".", 1)[0])
        self.release = nifi_version(version)
        self.users = users if users is not None else {"admin": "admin-password-12"}
        self.secured = tls is not None
        self.tokens: set[str] = set()
        self.lock = threading.RLock()
        self.root = "root-" + uuid.uuid4().hex[:8]
        self.groups: dict[str, _Group] = {}
        self.processors: dict[str, _Processor] = {}
        self.services: dict[str, _Service] = {}
        self.connections: dict[str, _Connection] = {}
        self.contexts: dict[str, _Context] = {}
        self.update_requests: dict[str, dict[str, Any]] = {}
        self.drop_requests: dict[str, dict[str, Any]] = {}
        #: (method, path) of every call, in order, for sequence assertions
        self.calls: list[tuple[str, str]] = []
        self.uploads: list[dict[str, str]] = []
        #: a hook deciding one call's fate: (method, path) -> (status, message) or None
        self.fault: Callable[[str, str], tuple[int, str] | None] | None = None
        #: types this NiFi pretends not to have (ghost components)
        self.missing_types: set[str] = set()
        #: processor names that stay INVALID with this reason (for example a bad Kafka setting)
        self.invalid: dict[str, str] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        self._server.daemon_threads = True
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        scheme = "https" if self.secured else "http"
        return f"{scheme}://{'localhost' if self.secured else host!s}:{port}{_API}"

    def start(self) -> NifiEmulator:
        threading.Thread(target=self._server.serve_forever, daemon=True, name="nifi-emu").start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> NifiEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test hooks ----------------------------------------------------------------------------
    def group_named(self, name: str) -> _Group | None:
        with self.lock:
            return next((g for g in self.groups.values() if g.name == name), None)

    def enqueue(self, group_name: str, count: int) -> None:
        """Put ``count`` FlowFiles in the group's first connection (work NiFi holds)."""
        with self.lock:
            group = self.group_named(group_name)
            assert group is not None
            conn = next(c for c in self.connections.values() if c.group == group.id)
            conn.queued += count

    def context_values(self, name: str) -> dict[str, str | None]:
        with self.lock:
            ctx = next(c for c in self.contexts.values() if c.name == name)
            return {k: v for k, (v, _) in ctx.parameters.items()}

    # -- model helpers -------------------------------------------------------------------------
    def group_processors(self, gid: str) -> list[_Processor]:
        return [p for p in self.processors.values() if p.group == gid]

    def group_services(self, gid: str) -> list[_Service]:
        return [s for s in self.services.values() if s.group == gid]

    def settle_services(self) -> None:
        for svc in self.services.values():
            if svc.pending is not None and svc.seen_pending:
                svc.state, svc.pending, svc.seen_pending = svc.pending, None, False
            elif svc.pending is not None:
                svc.seen_pending = True

    def drain(self) -> None:
        """Queues empty into running destinations (what NiFi does between two reads)."""
        for conn in self.connections.values():
            dest = self.processors.get(conn.destination)
            if conn.queued and dest is not None and dest.state == "RUNNING":
                conn.queued = 0

    def validation(self, proc: _Processor | _Service) -> list[str]:
        errors = []
        if proc.missing:
            return [f"Missing {'Processor' if isinstance(proc, _Processor) else 'Controller Service'}"]
        if isinstance(proc, _Processor) and proc.name in self.invalid:
            errors.append(self.invalid[proc.name])
        group = self.groups.get(proc.group)
        ctx = self.contexts.get(group.context) if group and group.context else None
        for key, value in proc.properties.items():
            for ref in _PARAM.findall(str(value)):
                if ctx is None:
                    errors.append(
                        f"'{key}' references Parameter '{ref}' but the Process Group has no Parameter Context"
                    )
                elif ref not in ctx.parameters:
                    errors.append(f"'{key}' references Parameter '{ref}', which does not exist")
            if self.major == 2:
                errors += self._descriptor_errors(proc, key, value)
            elif key in _SERVICE_PROPERTIES and isinstance(proc, _Processor):
                errors += self._service_reference_errors(key, value)
        facts = COMPONENTS.get(proc.type) if self.major == 2 else None
        if facts is not None and facts.custom is not None:
            # ValidationResult.toString without an input (nifi-api ValidationResult.java)
            errors += [
                f"'{subject}' is invalid because {why}"
                for subject, why in facts.custom(proc.properties, self.release)
            ]
        return errors

    def _service_reference_errors(self, key: str, value: Any) -> list[str]:
        svc = self.services.get(str(value))
        if svc is None:
            return [f"'{key}' is invalid because Controller Service with ID {value} does not exist"]
        if svc.state != "ENABLED":
            return [f"'{key}' validated against '{value}' is invalid because Controller Service is disabled"]
        return []

    def _descriptor_errors(self, comp: _Processor | _Service, key: str, value: Any) -> list[str]:
        """PropertyDescriptor.validate for one property (nifi-api PropertyDescriptor.java)."""
        facts = COMPONENTS.get(comp.type)
        if facts is None:  # a type the recipes do not use: nothing known to check
            return []
        text = "" if value is None else str(value)
        descriptor = facts.descriptor(key, self.release)
        if descriptor is None:
            # AbstractConfigurableComponent.getPropertyDescriptor: without a dynamic descriptor the
            # property gets Validator.INVALID; the value is kept.
            why = facts.dynamic(key, text, self.release) if facts.dynamic else _unsupported(key)
            return [] if why is None else [f"'{key}' validated against '{text}' is invalid because {why}"]
        # NiFi checks a parameter's value; the emulator checks literal values only.
        if descriptor.allowed and "#{" not in text and text not in descriptor.allowed:
            allowed = ", ".join(descriptor.allowed)  # ConstrainedSetValidator
            return [
                f"'{key}' validated against '{text}' is invalid because "
                f"Given value not found in allowed set '{allowed}'"
            ]
        if descriptor.service and isinstance(comp, _Processor):
            return self._service_reference_errors(key, value)
        return []

    def processor_entity(self, proc: _Processor) -> dict[str, Any]:
        errors = self.validation(proc)
        return {
            "id": proc.id,
            "revision": proc.revision(),
            "component": {
                "id": proc.id,
                "name": proc.name,
                "type": proc.type,
                "parentGroupId": proc.group,
                "versionedComponentId": proc.versioned_id,
                "state": proc.state,
                "extensionMissing": proc.missing,
                "validationStatus": "INVALID" if errors else "VALID",
                "validationErrors": errors,
                "config": {
                    "properties": {
                        k: (_MASK if k == "Authorization" else v) for k, v in proc.properties.items()
                    },
                    "autoTerminatedRelationships": proc.relationships_auto,
                },
            },
        }

    def service_entity(self, svc: _Service) -> dict[str, Any]:
        errors = self.validation(svc)
        return {
            "id": svc.id,
            "revision": svc.revision(),
            "component": {
                "id": svc.id,
                "name": svc.name,
                "type": svc.type,
                "parentGroupId": svc.group,
                "versionedComponentId": svc.versioned_id,
                "state": svc.state,
                "extensionMissing": svc.missing,
                "validationStatus": "INVALID" if errors else "VALID",
                "validationErrors": errors,
            },
        }

    def group_entity(self, group: _Group) -> dict[str, Any]:
        procs = self.group_processors(group.id)
        queued = sum(c.queued for c in self.connections.values() if c.group == group.id)
        return {
            "id": group.id,
            "revision": group.revision(),
            "component": {
                "id": group.id,
                "name": group.name,
                "comments": group.comments,
                "parentGroupId": self.root,
                "parameterContext": {"id": group.context} if group.context else None,
                "runningCount": sum(p.state == "RUNNING" for p in procs),
                "stoppedCount": sum(p.state == "STOPPED" for p in procs),
            },
            "status": {"aggregateSnapshot": {"activeThreadCount": 0, "flowFilesQueued": queued}},
        }

    def connection_entity(self, conn: _Connection) -> dict[str, Any]:
        src, dst = self.processors[conn.source], self.processors[conn.destination]
        percent = int(100 * conn.queued / conn.threshold) if conn.threshold else 0
        return {
            "id": conn.id,
            "revision": conn.revision(),
            "component": {
                "id": conn.id,
                "source": {"id": src.id, "name": src.name, "type": "PROCESSOR"},
                "destination": {"id": dst.id, "name": dst.name, "type": "PROCESSOR"},
                "selectedRelationships": conn.relationships,
                "backPressureObjectThreshold": conn.threshold,
            },
            "status": {
                "aggregateSnapshot": {
                    "flowFilesQueued": conn.queued,
                    "percentUseCount": percent,
                    "percentUseBytes": 0,
                }
            },
        }

    def context_entity(self, ctx: _Context) -> dict[str, Any]:
        return {
            "id": ctx.id,
            "revision": ctx.revision(),
            "component": {
                "id": ctx.id,
                "name": ctx.name,
                "parameters": [
                    {"parameter": {"name": k, "sensitive": s, "value": _MASK if s and v is not None else v}}
                    for k, (v, s) in sorted(ctx.parameters.items())
                ],
                "boundProcessGroups": [{"id": g.id} for g in self.groups.values() if g.context == ctx.id],
            },
        }

    # -- operations ----------------------------------------------------------------------------
    def _imported_properties(
        self, raw: dict[str, Any], ids: dict[str, str], installed: bool
    ) -> dict[str, Any]:
        """A versioned component's properties as the new instance holds them."""
        props: dict[str, Any] = dict(raw.get("properties") or {})
        if self.major != 2:
            return {k: ids.get(v, v) if k in _SERVICE_PROPERTIES else v for k, v in props.items()}
        facts = COMPONENTS.get(raw["type"]) if installed else None
        declared = {
            name
            for name, d in (raw.get("propertyDescriptors") or {}).items()
            if isinstance(d, dict) and d.get("identifiesControllerService")
        }

        def references_service(name: str) -> bool:
            # StandardVersionedComponentSynchronizer.populatePropertiesMap: a versioned service id
            # becomes the instance id only under a name whose current descriptor identifies a
            # service, or that the flow's propertyDescriptors declares so; and it runs before
            # migrateProperties, so an old name that is renamed keeps the versioned id.
            descriptor = facts.descriptor(name, self.release) if facts else None
            return (descriptor is not None and descriptor.service) or name in declared

        props = {
            k: ids.get(v, v) if references_service(k) and isinstance(v, str) else v for k, v in props.items()
        }
        if facts is not None and facts.migrate is not None:
            try:
                facts.migrate(props, self.release)
            except UnemulatedMigration as exc:
                raise _Conflict(501, f"emulator: migration not emulated for {raw['name']}: {exc}") from exc
        return props

    def upload(self, fields: dict[str, str], flow: dict[str, Any]) -> dict[str, Any]:
        for required in ("groupName", "positionX", "positionY", "clientId"):
            if not fields.get(required):
                raise _Conflict(400, f"{required} is required")
        contents = flow.get("flowContents") or {}
        gid = str(uuid.uuid4())
        known = KNOWN_TYPES[self.major] - self.missing_types
        raws = [*contents.get("controllerServices", []), *contents.get("processors", [])]
        # StandardProcessGroup generates instance ids from the versioned ids; any will do here.
        ids = {raw["identifier"]: str(uuid.uuid5(uuid.UUID(int=0), raw["identifier"] + gid)) for raw in raws}
        # Everything that can refuse the upload runs before the group exists.
        imported = {
            raw["identifier"]: self._imported_properties(raw, ids, raw["type"] in known) for raw in raws
        }
        group = _Group(gid, name=fields["groupName"], comments=contents.get("comments", ""))
        group.bump({"clientId": fields["clientId"]})
        self.groups[group.id] = group
        for raw in contents.get("controllerServices", []):
            sid = ids[raw["identifier"]]
            missing = raw["type"] not in known
            self.services[sid] = _Service(
                sid,
                name=("(Missing) " if missing else "") + raw["name"],
                type=raw["type"],
                group=group.id,
                versioned_id=raw["identifier"],
                properties=imported[raw["identifier"]],
                missing=missing,
            )
        for raw in contents.get("processors", []):
            pid = ids[raw["identifier"]]
            missing = raw["type"] not in known
            self.processors[pid] = _Processor(
                pid,
                name=raw["name"],
                type=raw["type"],
                group=group.id,
                versioned_id=raw["identifier"],
                properties=imported[raw["identifier"]],
                relationships_auto=list(raw.get("autoTerminatedRelationships") or []),
                missing=missing,
            )
        for raw in contents.get("connections", []):
            cid = str(uuid.uuid4())
            self.connections[cid] = _Connection(
                cid,
                group=group.id,
                source=ids[raw["source"]["id"]],
                destination=ids[raw["destination"]["id"]],
                relationships=list(raw.get("selectedRelationships") or []),
                threshold=int(raw.get("backPressureObjectThreshold") or 10000),
            )
        name = contents.get("parameterContextName")
        declared = (flow.get("parameterContexts") or {}).get(name) if isinstance(name, str) else None
        if declared is not None and isinstance(name, str):
            ctx = next((c for c in self.contexts.values() if c.name == name), None)
            if ctx is None:
                ctx = _Context(str(uuid.uuid4()), name=name)
                self.contexts[ctx.id] = ctx
            for param in declared.get("parameters") or []:
                p = param.get("parameter", param)
                ctx.parameters.setdefault(p["name"], (p.get("value"), bool(p.get("sensitive"))))
            group.context = ctx.id
        self.uploads.append(dict(fields))
        return self.group_entity(group)

    def schedule(self, gid: str, state: str) -> None:
        for proc in self.group_processors(gid):
            if state == "RUNNING" and not self.validation(proc):
                proc.state = "RUNNING"
            elif state == "STOPPED":
                proc.state = "STOPPED"

    def set_services(self, gid: str, state: str) -> None:
        for svc in self.group_services(gid):
            if state == "ENABLED" and svc.state == "DISABLED" and not self.validation(svc):
                svc.pending = "ENABLED"
                svc.state = "ENABLING"
            elif state == "DISABLED" and svc.state == "ENABLED":
                users = [
                    p
                    for p in self.processors.values()
                    if p.state == "RUNNING" and svc.id in p.properties.values()
                ]
                if users:
                    raise _Conflict(
                        409,
                        f"{svc.id} cannot be disabled because it is referenced by running {users[0].name}",
                    )
                svc.pending = "DISABLED"
                svc.state = "DISABLING"

    def update_context(self, ctx: _Context, body: dict[str, Any]) -> dict[str, Any]:
        ctx.check(body.get("revision"))
        changes = {}
        for item in (body.get("component") or {}).get("parameters", []):
            p = item["parameter"]
            old = ctx.parameters.get(p["name"])
            sensitive = bool(p.get("sensitive"))
            if old is not None and old[1] != sensitive:
                frm, to = ("sensitive", "not sensitive") if old[1] else ("not sensitive", "sensitive")
                raise _Conflict(
                    400,
                    "Cannot update Parameters because doing so would change Parameter "
                    f"'{p['name']}' from {frm} to {to}",
                )
            changes[p["name"]] = (p.get("value", old[0] if old else None), sensitive)
        rid = str(uuid.uuid4())
        request = {"ctx": ctx.id, "changes": changes, "revision": body.get("revision"), "complete": False}
        self.update_requests[rid] = request
        return self.update_entity(rid)

    def update_entity(self, rid: str) -> dict[str, Any]:
        req = self.update_requests[rid]
        ctx = self.contexts[req["ctx"]]
        if not req["complete"]:
            # What NiFi does in the background: stop users of changed parameters, apply, restart.
            changed = {k for k, v in req["changes"].items() if ctx.parameters.get(k) != v}
            users = [
                p
                for p in self.processors.values()
                if self.groups.get(p.group)
                and self.groups[p.group].context == ctx.id
                and any(ref in changed for v in p.properties.values() for ref in _PARAM.findall(str(v)))
            ]
            ctx.parameters.update(req["changes"])
            ctx.bump(req["revision"])
            for proc in users:
                if proc.state == "RUNNING":
                    proc.restarts += 1
            req["complete"] = True
        return {
            "parameterContextRevision": ctx.revision(),
            "request": {
                "requestId": rid,
                "complete": True,
                "percentCompleted": 100,
                "failureReason": None,
                "updateSteps": [{"description": "Applying updates", "complete": True}],
            },
        }

    def delete_group(self, group: _Group, query: dict[str, list[str]]) -> None:
        group.check(_query_revision(query))
        running = [p for p in self.group_processors(group.id) if p.state == "RUNNING"]
        if running:
            raise _Conflict(409, f"{running[0].id} is running")
        if any(c.queued for c in self.connections.values() if c.group == group.id):
            raise _Conflict(409, f"Cannot delete Process Group because Queue not empty for {group.id}")
        enabled = [s for s in self.group_services(group.id) if s.state != "DISABLED"]
        if enabled:
            raise _Conflict(
                409, f"Controller Service {enabled[0].id} cannot be deleted because it is not disabled"
            )
        for table in (self.processors, self.services, self.connections):
            for key in [k for k, v in table.items() if v.group == group.id]:
                del table[key]
        del self.groups[group.id]


def _query_revision(query: dict[str, list[str]]) -> dict[str, Any]:
    """DELETE carries the revision as ?version=N&clientId=C (§1.1)."""
    version = (query.get("version") or [""])[0]
    client = (query.get("clientId") or [""])[0]
    return {"version": int(version) if version.isdigit() else None, "clientId": client or None}


def _make_handler(emu: NifiEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "Jetty"

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s %s", self.address_string(), format % args)

        def _send(
            self, status: int, body: Any = None, *, text: bool = False, headers: dict[str, str] | None = None
        ) -> None:
            raw = b"" if body is None else (str(body).encode() if text else json.dumps(body).encode())
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if raw:
                self.send_header("Content-Type", "text/plain" if text else "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _dispatch(self) -> None:
            split = urlsplit(self.path)
            path, query = split.path, parse_qs(split.query)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            with emu.lock:
                emu.calls.append((self.command, path))
                fault = emu.fault(self.command, path) if emu.fault else None
            if fault is not None:
                self._send(fault[0], fault[1], text=True)
                return
            if not path.startswith(_API):
                self._send(404, "Not Found", text=True)
                return
            rest = path[len(_API) :]
            try:
                if rest == "/access/token" and self.command == "POST":
                    self._token(raw)
                    return
                self._authorize()
                with emu.lock:
                    status, body = self._route(rest, query, raw)
            except _Conflict as exc:
                self._send(exc.status, str(exc), text=True)
                return
            except KeyError as exc:
                self._send(404, f"Unable to find component with id '{exc.args[0]}'.", text=True)
                return
            self._send(status, body, text=isinstance(body, str))

        do_GET = do_POST = do_PUT = do_DELETE = _dispatch

        def _token(self, raw: bytes) -> None:
            if not emu.secured:
                self._send(409, "Access tokens are only issued over HTTPS.", text=True)
                return
            form = parse_qs(raw.decode())
            user, password = (form.get("username") or [""])[0], (form.get("password") or [""])[0]
            if emu.users.get(user) != password or not user:
                self._send(400, "The supplied username and password are not valid.", text=True)
                return
            token = secrets.token_urlsafe(24)
            emu.tokens.add(token)
            cookie = f"__Secure-Authorization-Bearer={token}; Path=/; Secure; HttpOnly"
            self._send(201, token, text=True, headers={"Set-Cookie": cookie})

        def _authorize(self) -> None:
            if not emu.secured:
                return
            cookie = self.headers.get("Cookie", "")
            writes = self.command in ("POST", "PUT", "DELETE")
            if "__Secure-Authorization-Bearer" in cookie and writes and not self.headers.get("Request-Token"):
                raise _Conflict(403, "Access is denied: CSRF token missing (Request-Token)")
            header = self.headers.get("Authorization", "")
            if not header.startswith("Bearer ") or header[7:] not in emu.tokens:
                raise _Conflict(401, "Unable to validate the access token.")

        def _json(self, raw: bytes) -> Any:
            try:
                return json.loads(raw or b"{}")
            except ValueError as exc:
                raise _Conflict(400, f"Unable to parse the request body: {exc}") from exc

        def _route(self, rest: str, query: dict[str, list[str]], raw: bytes) -> tuple[int, Any]:
            parts = [p for p in rest.split("/") if p]
            method = self.command
            if method == "GET":
                emu.settle_services()
            if parts == ["flow", "about"]:
                return 200, {"about": {"title": "NiFi", "version": emu.version, "uri": "emulator"}}
            if parts == ["flow", "client-id"]:
                return 200, str(uuid.uuid4())
            if parts == ["flow", "parameter-contexts"]:
                return 200, {"parameterContexts": [emu.context_entity(c) for c in emu.contexts.values()]}
            if parts[:2] == ["flow", "process-groups"] and len(parts) == 3:
                gid = emu.root if parts[2] == "root" else parts[2]
                if method == "GET":
                    emu.drain()
                    if gid == emu.root:
                        flow = {"processGroups": [emu.group_entity(g) for g in emu.groups.values()]}
                    else:
                        emu.groups[gid]
                        flow = {
                            "processors": [emu.processor_entity(p) for p in emu.group_processors(gid)],
                            "connections": [
                                emu.connection_entity(c) for c in emu.connections.values() if c.group == gid
                            ],
                            "processGroups": [],
                        }
                    return 200, {"processGroupFlow": {"id": gid, "flow": flow}}
                if method == "PUT":
                    body = self._json(raw)
                    emu.groups[gid]
                    emu.schedule(gid, body["state"])
                    return 200, {"id": gid, "state": body["state"]}
            if parts[:2] == ["flow", "process-groups"] and parts[3:] == ["controller-services"]:
                gid = parts[2]
                emu.groups[gid]
                if method == "GET":
                    return 200, {
                        "controllerServices": [emu.service_entity(s) for s in emu.group_services(gid)]
                    }
                body = self._json(raw)
                emu.set_services(gid, body["state"])
                return 200, {"id": gid, "state": body["state"]}
            if parts[:1] == ["process-groups"]:
                return self._process_groups(parts, query, raw)
            if parts[:1] == ["processors"] and len(parts) >= 2:
                proc = emu.processors[parts[1]]
                if parts[2:] == ["run-status"] and method == "PUT":
                    body = self._json(raw)
                    proc.check(body.get("revision"))
                    proc.state = body["state"]
                    proc.bump(body.get("revision"))
                    return 200, emu.processor_entity(proc)
                if method == "GET":
                    return 200, emu.processor_entity(proc)
                if method == "PUT":
                    body = self._json(raw)
                    proc.check(body.get("revision"))
                    if proc.state == "RUNNING":
                        raise _Conflict(409, f"{proc.id} cannot be updated because it is not stopped")
                    config = (body.get("component") or {}).get("config") or {}
                    proc.properties.update(config.get("properties") or {})
                    proc.bump(body.get("revision"))
                    return 200, emu.processor_entity(proc)
            if parts[:1] == ["parameter-contexts"]:
                return self._contexts(parts, query, raw)
            return 404, "Not Found"

        def _process_groups(
            self, parts: list[str], query: dict[str, list[str]], raw: bytes
        ) -> tuple[int, Any]:
            method = self.command
            if len(parts) == 4 and parts[2:] == ["process-groups", "upload"] and method == "POST":
                fields, flow = self._multipart(raw)
                return 201, emu.upload(fields, flow)
            gid = parts[1]
            group = emu.groups[gid]
            if len(parts) == 2:
                if method == "GET":
                    emu.drain()
                    return 200, emu.group_entity(group)
                if method == "PUT":
                    body = self._json(raw)
                    group.check(body.get("revision"))
                    component = body.get("component") or {}
                    if "parameterContext" in component:
                        if any(p.state == "RUNNING" for p in emu.group_processors(gid)):
                            raise _Conflict(
                                409, f"Cannot change Parameter Context for {gid} because it is running"
                            )
                        ctx = component["parameterContext"]
                        group.context = ctx.get("id") if ctx else None
                    if "comments" in component:
                        group.comments = component["comments"]
                    group.bump(body.get("revision"))
                    return 200, emu.group_entity(group)
                if method == "DELETE":
                    emu.delete_group(group, query)
                    return 200, emu.group_entity(group)
            if parts[2:] == ["processors"] and method == "GET":
                return 200, {"processors": [emu.processor_entity(p) for p in emu.group_processors(gid)]}
            if parts[2:3] == ["empty-all-connections-requests"]:
                if method == "POST" and len(parts) == 3:
                    rid = str(uuid.uuid4())
                    queued = sum(c.queued for c in emu.connections.values() if c.group == gid)
                    emu.drop_requests[rid] = {"group": gid, "dropped": queued, "finished": False}
                    return 202, {"dropRequest": {"id": rid, "finished": False, "currentCount": queued}}
                rid = parts[3]
                request = emu.drop_requests[rid]
                if method == "GET":
                    for conn in emu.connections.values():
                        if conn.group == request["group"]:
                            conn.queued = 0
                    request["finished"] = True
                    return 200, {
                        "dropRequest": {"id": rid, "finished": True, "droppedCount": request["dropped"]}
                    }
                if method == "DELETE":
                    del emu.drop_requests[rid]
                    return 200, {"dropRequest": {"id": rid, "finished": True}}
            return 404, "Not Found"

        def _contexts(self, parts: list[str], query: dict[str, list[str]], raw: bytes) -> tuple[int, Any]:
            method = self.command
            if len(parts) == 1 and method == "POST":
                body = self._json(raw)
                if (body.get("revision") or {}).get("version") != 0:
                    raise _Conflict(
                        400, "A revision of 0 must be specified when creating a new Parameter Context."
                    )
                component = body.get("component") or {}
                if any(c.name == component.get("name") for c in emu.contexts.values()):
                    raise _Conflict(
                        409, f"A Parameter Context with the name '{component.get('name')}' already exists"
                    )
                ctx = _Context(str(uuid.uuid4()), name=component["name"])
                for item in component.get("parameters") or []:
                    p = item["parameter"]
                    ctx.parameters[p["name"]] = (p.get("value"), bool(p.get("sensitive")))
                ctx.bump(body.get("revision"))
                emu.contexts[ctx.id] = ctx
                return 201, emu.context_entity(ctx)
            ctx = emu.contexts[parts[1]]
            if len(parts) == 2 and method == "GET":
                return 200, emu.context_entity(ctx)
            if len(parts) == 2 and method == "DELETE":
                ctx.check(_query_revision(query))
                if any(g.context == ctx.id for g in emu.groups.values()):
                    raise _Conflict(
                        409,
                        f"Cannot delete Parameter Context {ctx.id} because it is bound to a Process Group",
                    )
                del emu.contexts[ctx.id]
                return 200, emu.context_entity(ctx)
            if parts[2:3] == ["update-requests"]:
                if len(parts) == 3 and method == "POST":
                    return 200, emu.update_context(ctx, self._json(raw))
                rid = parts[3]
                if rid not in emu.update_requests:
                    raise KeyError(rid)
                if method == "GET":
                    return 200, emu.update_entity(rid)
                if method == "DELETE":
                    entity = emu.update_entity(rid)
                    del emu.update_requests[rid]
                    return 200, entity
            return 404, "Not Found"

        def _multipart(self, raw: bytes) -> tuple[dict[str, str], dict[str, Any]]:
            ctype = self.headers.get("Content-Type", "")
            if not ctype.startswith("multipart/form-data"):
                raise _Conflict(415, "Unsupported Media Type: expected multipart/form-data")
            message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
            fields: dict[str, str] = {}
            flow: dict[str, Any] | None = None
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True)
                if not isinstance(payload, bytes):
                    payload = b""
                if name == "file":
                    try:
                        flow = json.loads(payload)
                    except ValueError as exc:
                        raise _Conflict(400, f"Unable to parse the uploaded flow definition: {exc}") from exc
                elif isinstance(name, str):
                    fields[name] = payload.decode()
            if flow is None:
                raise _Conflict(400, "The flow definition file is required")
            return fields, flow

    return Handler
