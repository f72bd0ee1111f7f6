"""``dcnios deploy-nifi`` and ``dcnios nifi``: plan, apply and operate consumers as NiFi groups.

Sequence (reference §1): discover the version → create or update the parameter context → upload
the group (or update it, matched by its name and the dcnios marker in its comments) → bind the
context → enable the controller services → check every component → start. The marker records
digests of the flow and of the parameters, so an unchanged spec changes nothing; a changed
parameter goes through an update request (NiFi stops and restarts only what uses it); a changed
flow drains the group's queues before the group is replaced, so nothing in NiFi is dropped.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from dcnios.deploy.nifi_api import NifiClient
from dcnios.deploy.recipe import MARKER, Parameter, Recipe, rate_parameters, render
from dcnios.deploy.validate import validate_flow
from dcnios.errors import ConfigError, DcniosError, NiFiError
from dcnios.spec import ConsumerSpec, NifiSpec, PipelineSpec, Rate

__all__ = ["MIN_NIFI_2", "GroupStatus", "NifiDeployer", "PlanItem", "spec_authorization", "spec_input_path"]

logger = logging.getLogger(__name__)

Action = Literal["create", "update parameters", "replace flow", "unchanged"]
_DIGEST: Final = re.compile(r"(flow|parameters)=([0-9a-f]+)")
_STALE_REVISION: Final = "is not the most up-to-date revision"
#: the oldest 2.x release whose property names the 2.x recipe uses
MIN_NIFI_2: Final = (2, 7)


@dataclass(frozen=True)
class PlanItem:
    consumer: str
    group: str
    action: Action
    detail: str = ""


@dataclass
class GroupStatus:
    consumer: str
    group: str
    exists: bool
    run_state: dict[str, int] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)
    queued: int = 0
    connections: list[dict[str, Any]] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)


def _digests(comments: str | None) -> dict[str, str]:
    return dict(_DIGEST.findall(comments or ""))


class NifiDeployer:
    """Deploys ``spec.nifi.consumers``; ``client`` may be None for an offline dry run."""

    def __init__(
        self,
        spec: PipelineSpec,
        client: NifiClient | None,
        *,
        partitions: Callable[[str], int] | None = None,
        authorization: Callable[[ConsumerSpec], str] | None = None,
        input_path: Callable[[ConsumerSpec], str | None] | None = None,
    ) -> None:
        if spec.nifi is None:
            raise ConfigError("nifi: the spec has no nifi section")
        if not spec.nifi.consumers:
            raise ConfigError("nifi.consumers: lists no consumer to deploy through NiFi")
        self.spec = spec
        self.nifi: NifiSpec = spec.nifi
        self.client = client
        self._partitions = partitions or (lambda _topic: spec.kafka.topic_defaults.partitions)
        self._authorization = authorization or spec_authorization
        self._input_path = input_path or spec_input_path
        self._nifi_version: str | None = None
        self._root_groups: list[dict[str, Any]] | None = None

    # -- recipes -----------------------------------------------------------------------------
    def consumers(self, names: list[str] | None = None) -> list[ConsumerSpec]:
        wanted = names or list(self.nifi.consumers)
        out = []
        for name in wanted:
            if name not in self.nifi.consumers:
                raise ConfigError(
                    f"{name!r} is not listed under nifi.consumers ({', '.join(self.nifi.consumers)})"
                )
            out.append(self.spec.consumer(name))
        return out

    def recipe(self, consumer: ConsumerSpec) -> Recipe:
        recipe = render(
            self.spec,
            consumer,
            version=self.nifi.version,
            partitions=self._partitions(consumer.topic),
            authorization=self._authorization(consumer),
            nifi_version=self._nifi_version,
            input_path=self._input_path(consumer),
        )
        problems = validate_flow(recipe.flow, recipe.parameters, self.nifi.version)
        if problems:
            listing = "\n  - ".join(problems)
            raise DcniosError(f"the generated flow for {consumer.name} is not valid:\n  - {listing}")
        return recipe

    # -- discovery ---------------------------------------------------------------------------
    def _api(self) -> NifiClient:
        if self.client is None:
            raise NiFiError("no NiFi connection")
        return self.client

    def discover(self) -> str:
        about = self._api().get("/flow/about")["about"]
        version = str(about["version"])
        major = int(version.split(".", 1)[0])
        if major != self.nifi.version:
            raise ConfigError(
                f"nifi.version: {self.nifi.version}, but the NiFi at {self.nifi.endpoint} is {version}"
            )
        if major == 2 and _release(version) < MIN_NIFI_2:
            # The 2.x recipe uses the property names standardised in NiFi 2.7.0 (NIFI-15018 and others).
            raise ConfigError(
                f"nifi.version: the NiFi at {self.nifi.endpoint} is {version}; dcnios's 2.x recipe needs "
                f"{MIN_NIFI_2[0]}.{MIN_NIFI_2[1]}.0 or later (its property names changed in 2.7.0)"
            )
        self._nifi_version = version
        return version

    def _groups(self, refresh: bool = False) -> list[dict[str, Any]]:
        if self._root_groups is None or refresh:
            flow = self._api().get("/flow/process-groups/root")["processGroupFlow"]["flow"]
            self._root_groups = list(flow.get("processGroups", []))
        return self._root_groups

    def find_group(self, name: str, refresh: bool = False) -> dict[str, Any] | None:
        """The group dcnios deployed under ``name``; a same-named group without the marker is refused."""
        for group in self._groups(refresh):
            component = group.get("component", {})
            if component.get("name") != name:
                continue
            if MARKER not in (component.get("comments") or ""):
                raise NiFiError(
                    f"a process group named {name!r} exists but was not deployed by dcnios "
                    f"(id {group.get('id')}); rename it or delete it first"
                )
            return group
        return None

    def _context(self, name: str) -> dict[str, Any] | None:
        contexts = self._api().get("/flow/parameter-contexts").get("parameterContexts", [])
        for context in contexts:
            if context.get("component", {}).get("name") == name:
                return dict(context)
        return None

    # -- plan and apply ----------------------------------------------------------------------
    def plan(self, names: list[str] | None = None) -> list[PlanItem]:
        items = []
        for consumer in self.consumers(names):
            items.append(self._plan_one(consumer)[0])
        return items

    def _plan_one(self, consumer: ConsumerSpec) -> tuple[PlanItem, Recipe, dict[str, Any] | None]:
        recipe = self.recipe(consumer)
        if self.client is None:
            return PlanItem(consumer.name, recipe.group_name, "create", "NiFi not consulted"), recipe, None
        group = self.find_group(recipe.group_name)
        if group is None:
            return PlanItem(consumer.name, recipe.group_name, "create"), recipe, None
        digests = _digests(group.get("component", {}).get("comments"))
        if digests.get("flow") != recipe.flow_digest:
            return (
                PlanItem(consumer.name, recipe.group_name, "replace flow", "the flow changed"),
                recipe,
                group,
            )
        # Sensitive values read back masked: the marker's digest tells whether they changed. The
        # others are compared with what NiFi holds, which also catches `dcnios nifi rate` drift.
        changed = self._changed_parameters(
            recipe, sensitive=digests.get("parameters") != recipe.parameters_digest
        )
        if changed:
            detail = ", ".join(p.name for p in changed)
            return PlanItem(consumer.name, recipe.group_name, "update parameters", detail), recipe, group
        return PlanItem(consumer.name, recipe.group_name, "unchanged"), recipe, group

    def _changed_parameters(self, recipe: Recipe, *, sensitive: bool) -> list[Parameter]:
        """Parameters to send: non-sensitive ones that differ, and every sensitive one if ``sensitive``.

        Never post back a value read from NiFi: sensitive ones read as "********" (NIFI-13904).
        """
        context = self._context(recipe.context_name)
        if context is None:
            return list(recipe.parameters)
        current = {
            p["parameter"]["name"]: p["parameter"].get("value")
            for p in context.get("component", {}).get("parameters", [])
        }
        return [
            p
            for p in recipe.parameters
            if (p.sensitive and sensitive) or (not p.sensitive and current.get(p.name) != p.value)
        ]

    def apply(self, names: list[str] | None = None) -> list[PlanItem]:
        self.discover()
        done = []
        for consumer in self.consumers(names):
            item, recipe, group = self._plan_one(consumer)
            if item.action == "create":
                self._create(recipe)
            elif item.action == "update parameters":
                assert group is not None
                self._update_parameters(recipe.context_name, self._changed_parameters(recipe, sensitive=True))
                self._set_marker(group["id"], recipe)
            elif item.action == "replace flow":
                assert group is not None
                self._drain(group["id"], consumer.name)
                self._delete_group(group["id"], recipe.group_name, keep_context=True)
                self._create(recipe)
            logger.info(
                "%s: %s%s", recipe.group_name, item.action, f" ({item.detail})" if item.detail else ""
            )
            done.append(item)
        return done

    # -- steps -------------------------------------------------------------------------------
    def _parameter_entity(self, params: list[Parameter]) -> list[dict[str, Any]]:
        return [{"parameter": {"name": p.name, "sensitive": p.sensitive, "value": p.value}} for p in params]

    def _ensure_context(self, recipe: Recipe) -> str:
        context = self._context(recipe.context_name)
        if context is None:
            api = self._api()
            created = api.post(
                "/parameter-contexts",
                {
                    "revision": api.revision(0),
                    "component": {
                        "name": recipe.context_name,
                        "description": f"{MARKER}: parameters of consumer {recipe.consumer}",
                        "parameters": self._parameter_entity(list(recipe.parameters)),
                        "inheritedParameterContexts": [],
                    },
                },
            )
            return str(created["id"])
        self._update_parameters(recipe.context_name, list(recipe.parameters))
        return str(context["id"])

    def _update_parameters(self, context_name: str, params: list[Parameter]) -> None:
        if not params:
            return
        api = self._api()

        def submit() -> Any:
            context = self._context(context_name)
            if context is None:
                raise NiFiError(f"parameter context {context_name!r} does not exist")
            ctx_id = context["id"]
            return ctx_id, api.post(
                f"/parameter-contexts/{ctx_id}/update-requests",
                {
                    "revision": context["revision"],
                    "id": ctx_id,
                    "component": {"id": ctx_id, "parameters": self._parameter_entity(params)},
                },
            )

        ctx_id, entity = _retry_conflict(submit)
        request_id = entity["request"]["requestId"]
        path = f"/parameter-contexts/{ctx_id}/update-requests/{request_id}"
        try:
            final = api.wait_for(path, lambda e: e["request"]["complete"], "the parameter update")
        finally:
            api.delete(path, expect=(200, 404))
        if final["request"].get("failureReason"):
            raise NiFiError(f"POST {path.rsplit('/', 1)[0]}: {final['request']['failureReason']}")

    def _create(self, recipe: Recipe) -> None:
        api = self._api()
        ctx_id = self._ensure_context(recipe)
        group = api.post(
            "/process-groups/root/process-groups/upload",
            data={
                "groupName": recipe.group_name,
                "positionX": "0.0",
                "positionY": f"{200.0 * (len(self._groups()) + 1):.1f}",
                "clientId": api.client_id,
                "disconnectedNodeAcknowledged": "false",
            },
            files={"file": ("flow.json", recipe.flow_json(), "application/json")},
        )
        group_id = group["id"]
        self._root_groups = None
        bound = (group.get("component", {}).get("parameterContext") or {}).get("id")
        if bound != ctx_id:
            self._bind(group_id, ctx_id)
        self._set_marker(group_id, recipe)
        self._check_missing(group_id)
        self._enable_services(group_id)
        self._check_valid(group_id)
        self._schedule(group_id, "RUNNING")

    def _bind(self, group_id: str, ctx_id: str) -> None:
        api = self._api()

        def bind() -> Any:
            group = api.get(f"/process-groups/{group_id}")
            return api.put(
                f"/process-groups/{group_id}",
                {
                    "revision": group["revision"],
                    "component": {"id": group_id, "parameterContext": {"id": ctx_id}},
                },
            )

        _retry_conflict(bind)

    def _set_marker(self, group_id: str, recipe: Recipe) -> None:
        api = self._api()

        def mark() -> Any:
            group = api.get(f"/process-groups/{group_id}")
            return api.put(
                f"/process-groups/{group_id}",
                {"revision": group["revision"], "component": {"id": group_id, "comments": recipe.marker()}},
            )

        _retry_conflict(mark)
        self._root_groups = None

    def _check_missing(self, group_id: str) -> None:
        problems = []
        for proc in self._processors(group_id):
            c = proc["component"]
            if c.get("extensionMissing"):
                problems.append(
                    f"processor {c['name']!r}: type {c.get('type')} is not installed in this NiFi"
                )
        for svc in self._services(group_id):
            c = svc["component"]
            if c.get("extensionMissing"):
                problems.append(f"controller service {c['name']!r}: type {c.get('type')} is not installed")
        if problems:
            raise NiFiError(f"group {group_id} after upload: " + "; ".join(problems))

    def _processors(self, group_id: str) -> list[dict[str, Any]]:
        return list(self._api().get(f"/process-groups/{group_id}/processors").get("processors", []))

    def _services(self, group_id: str) -> list[dict[str, Any]]:
        path = f"/flow/process-groups/{group_id}/controller-services"
        entity = self._api().get(
            path, params={"includeAncestorGroups": "false", "includeDescendantGroups": "true"}
        )
        return list(entity.get("controllerServices", []))

    def _enable_services(self, group_id: str, state: str = "ENABLED") -> None:
        api = self._api()
        api.put(
            f"/flow/process-groups/{group_id}/controller-services",
            {"id": group_id, "state": state, "disconnectedNodeAcknowledged": False},
        )
        path = f"/flow/process-groups/{group_id}/controller-services"
        moving = ("ENABLING", "DISABLING")
        entity = api.wait_for(
            path,
            lambda e: not any(s["component"]["state"] in moving for s in e.get("controllerServices", [])),
            f"setting the controller services {state}",
        )
        # NiFi 2.x skips services it cannot enable without a word: report them with their reasons.
        stuck = [
            s["component"] for s in entity.get("controllerServices", []) if s["component"]["state"] != state
        ]
        if stuck:
            reasons = "; ".join(
                f"controller service {c['name']!r}: "
                + ", ".join(c.get("validationErrors") or ["still " + c["state"]])
                for c in stuck
            )
            raise NiFiError(f"PUT {path} {state}: {reasons}")

    def _check_valid(self, group_id: str) -> None:
        deadline = time.monotonic() + float(self.nifi.poll_timeout)
        while True:
            procs = [p["component"] for p in self._processors(group_id)]
            if (
                not any(c.get("validationStatus") == "VALIDATING" for c in procs)
                or time.monotonic() > deadline
            ):
                break
            time.sleep(0.1)
        invalid = [c for c in procs if c.get("validationStatus") == "INVALID"]
        if invalid:
            reasons = "; ".join(
                f"processor {c['name']!r}: {', '.join(c.get('validationErrors') or [])}" for c in invalid
            )
            raise NiFiError(f"group {group_id} is not valid: {reasons}")

    def _schedule(self, group_id: str, state: str) -> None:
        self._api().put(f"/flow/process-groups/{group_id}", {"id": group_id, "state": state})

    def _wait_stopped(self, group_id: str) -> None:
        self._api().wait_for(
            f"/process-groups/{group_id}",
            lambda e: e.get("status", {}).get("aggregateSnapshot", {}).get("activeThreadCount", 0) == 0,
            "stopping the group",
        )

    def _queued(self, group_id: str) -> int:
        entity = self._api().get(f"/process-groups/{group_id}")
        return int(entity.get("status", {}).get("aggregateSnapshot", {}).get("flowFilesQueued", 0))

    def _drain(self, group_id: str, consumer: str) -> None:
        """Stop taking from Kafka and let what NiFi holds reach OSCAR (or the DLQ) first."""
        api = self._api()
        for proc in self._processors(group_id):
            if proc["component"].get("versionedComponentId") == "consume":
                api.put(
                    f"/processors/{proc['id']}/run-status",
                    {"revision": proc["revision"], "state": "STOPPED", "disconnectedNodeAcknowledged": False},
                )
        api.wait_for(
            f"/process-groups/{group_id}", lambda _e: self._queued(group_id) == 0, f"draining {consumer}"
        )

    def _delete_group(self, group_id: str, name: str, *, keep_context: bool) -> None:
        api = self._api()
        self._schedule(group_id, "STOPPED")
        self._wait_stopped(group_id)
        queued = self._queued(group_id)
        if queued:
            logger.warning(
                "%s: dropping %d queued FlowFiles; their Kafka offsets are committed, so re-drive them "
                "with `dcnios replay`",
                name,
                queued,
            )
            started = api.post(f"/process-groups/{group_id}/empty-all-connections-requests")
            drop_id = started["dropRequest"]["id"]
            path = f"/process-groups/{group_id}/empty-all-connections-requests/{drop_id}"
            try:
                api.wait_for(path, lambda e: e["dropRequest"]["finished"], "emptying the queues")
            finally:
                api.delete(path, expect=(200, 404))
        self._enable_services(group_id, "DISABLED")
        group = api.get(f"/process-groups/{group_id}")
        context_id = (group.get("component", {}).get("parameterContext") or {}).get("id")
        _retry_conflict(
            lambda: api.delete(
                f"/process-groups/{group_id}", api.get(f"/process-groups/{group_id}")["revision"]
            )
        )
        self._root_groups = None
        if context_id and not keep_context:
            context = api.get(f"/parameter-contexts/{context_id}")
            api.delete(f"/parameter-contexts/{context_id}", context["revision"])

    # -- operations --------------------------------------------------------------------------
    def _require(self, name: str) -> tuple[ConsumerSpec, dict[str, Any] | None]:
        (consumer,) = self.consumers([name])
        return consumer, self.find_group(f"dcnios-{consumer.name}", refresh=True)

    def start(self, name: str) -> bool:
        _, group = self._require(name)
        if group is None:
            return False
        self._enable_services(group["id"])
        self._schedule(group["id"], "RUNNING")
        return True

    def stop(self, name: str) -> bool:
        _, group = self._require(name)
        if group is None:
            return False
        self._schedule(group["id"], "STOPPED")
        self._wait_stopped(group["id"])
        return True

    def delete(self, name: str) -> bool:
        consumer, group = self._require(name)
        if group is None:
            context = self._context(f"dcnios-{consumer.name}")
            if context is not None:  # left behind by an interrupted delete
                self._api().delete(f"/parameter-contexts/{context['id']}", context["revision"])
            return False
        self._delete_group(group["id"], f"dcnios-{consumer.name}", keep_context=False)
        return True

    def set_rate(self, name: str, rate: str) -> tuple[str, str]:
        """Change ControlRate through its parameters; NiFi restarts only ControlRate."""
        consumer, group = self._require(name)
        if group is None:
            raise NiFiError(f"{name}: no process group dcnios-{name} in NiFi (deploy it first)")
        parsed = None if rate == "unlimited" else Rate.parse(rate)
        max_rate, duration = rate_parameters(parsed)
        self._update_parameters(
            f"dcnios-{consumer.name}", [Parameter("max_rate", max_rate), Parameter("rate_duration", duration)]
        )
        return max_rate, duration

    def status(self, names: list[str] | None = None) -> list[GroupStatus]:
        out = []
        for consumer in self.consumers(names):
            name = f"dcnios-{consumer.name}"
            group = self.find_group(name, refresh=True)
            if group is None:
                out.append(GroupStatus(consumer.name, name, False))
                continue
            out.append(self._group_status(consumer.name, name, group["id"]))
        return out

    def _group_status(self, consumer: str, name: str, group_id: str) -> GroupStatus:
        api = self._api()
        flow = api.get(f"/flow/process-groups/{group_id}")["processGroupFlow"]["flow"]
        status = GroupStatus(consumer, name, True)
        for proc in flow.get("processors", []):
            c = proc["component"]
            state = "INVALID" if c.get("validationStatus") == "INVALID" else c.get("state", "UNKNOWN")
            status.run_state[state] = status.run_state.get(state, 0) + 1
            if c.get("validationStatus") == "INVALID":
                status.invalid.append(f"{c['name']}: {', '.join(c.get('validationErrors') or [])}")
        for conn in flow.get("connections", []):
            c = conn["component"]
            snap = conn.get("status", {}).get("aggregateSnapshot", {})
            queued = int(snap.get("flowFilesQueued", 0))
            status.queued += queued
            status.connections.append(
                {
                    "from": c["source"]["name"],
                    "to": c["destination"]["name"],
                    "relationships": c.get("selectedRelationships", []),
                    "queued": queued,
                    "threshold": c.get("backPressureObjectThreshold"),
                    "back_pressure": snap.get("percentUseCount", 0) >= 100
                    or snap.get("percentUseBytes", 0) >= 100,
                }
            )
        context = self._context(name)
        if context is not None:
            for p in context.get("component", {}).get("parameters", []):
                param = p["parameter"]
                if not param.get("sensitive") and param["name"] in (
                    "max_rate",
                    "rate_duration",
                    "kafka_topic",
                ):
                    status.parameters[param["name"]] = str(param.get("value"))
        return status


def _release(version: str) -> tuple[int, int]:
    major, _, rest = version.partition(".")
    minor = re.match(r"\d+", rest)
    return int(major), int(minor.group(0)) if minor else 0


def spec_input_path(consumer: ConsumerSpec) -> str | None:
    """The service's input directory for ``payload: dcache``: the spec's, else the service's own."""
    if not consumer.dcache_bodies:
        return None
    if consumer.oscar.input_path is not None:
        return consumer.oscar.input_path
    from dcnios.consumers.oscar import OscarInvoker

    return OscarInvoker(consumer.oscar, 1).input_path()


def spec_authorization(consumer: ConsumerSpec) -> str:
    """``Bearer <service token>``: the spec's token, or one fetched with the spec's credentials."""
    oscar = consumer.oscar
    if oscar.token is not None:
        return f"Bearer {oscar.token.reveal()}"
    from dcnios.consumers.oscar import OscarInvoker

    token, _ = OscarInvoker(oscar, 1).token()
    return f"Bearer {token}"


def _retry_conflict(action: Callable[[], Any]) -> Any:
    """Run ``action``; once more after a revision conflict (409, or 400 for a stale revision)."""
    try:
        return action()
    except NiFiError as exc:
        if exc.status == 409 or (exc.status == 400 and _STALE_REVISION in str(exc)):
            logger.info("revision conflict (%s); re-reading and retrying once", exc)
            return action()
        raise
