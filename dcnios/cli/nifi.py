"""`dcnios deploy-nifi` and `dcnios nifi status|rate|stop|start|delete`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from dcnios.cli._common import EXIT_OK, add_common, load_spec_arg
from dcnios.errors import ConfigError, NiFiError, OscarError
from dcnios.spec import ConsumerSpec, PipelineSpec

__all__ = ["register"]

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser(
        "deploy-nifi",
        help="deploy nifi.consumers as NiFi process groups (idempotent; --dry-run prints the plan)",
        description="Render each consumer listed under nifi.consumers into a NiFi flow definition "
        "(ConsumeKafka -> ControlRate -> body conversion -> InvokeHTTP, failures to the dead-letter "
        "topic), validate it offline, then create or update its process group, parameter context and "
        "services, check every component and start it. An unchanged spec changes nothing.",
        epilog="Choose NiFi when a site already runs it; dcnios-consumer is the default otherwise.",
    )
    add_common(d, bootstrap=True)
    d.add_argument("--dry-run", action="store_true", help="print the plan (create/update/unchanged) only")
    d.add_argument("--consumer", action="append", metavar="NAME", help="only this consumer (repeatable)")
    d.add_argument("--print-flow", metavar="NAME", help="print NAME's generated flow definition and exit")
    d.set_defaults(run=_deploy)

    n = sub.add_parser("nifi", help="operate consumers deployed with deploy-nifi", description="NiFi tools.")
    verbs = n.add_subparsers(title="verbs", metavar="VERB", required=True)
    s = verbs.add_parser(
        "status",
        help="per group: run state, validation, queued FlowFiles, back-pressure per connection",
        description="Read each deployed group's state from NiFi.",
    )
    add_common(s)
    s.add_argument("--json", action="store_true", help="JSON for scripts")
    s.set_defaults(run=_status)
    r = verbs.add_parser(
        "rate",
        help="change a group's ControlRate at runtime (through its parameter)",
        description="Update the max_rate/rate_duration parameters; NiFi restarts only ControlRate.",
    )
    r.add_argument("name", help="consumer name")
    r.add_argument("rate", help="'<n>/s', '<n>/m', '<n>/h' or 'unlimited'")
    add_common(r)
    r.set_defaults(run=_rate)
    for verb, text in (
        ("stop", "stop a group (its Kafka offsets stay where NiFi committed them)"),
        ("start", "enable a group's services and start it"),
        ("delete", "stop, empty, disable and delete a group and its parameter context"),
    ):
        v = verbs.add_parser(verb, help=text, description=text[0].upper() + text[1:] + ".")
        v.add_argument("name", help="consumer name")
        add_common(v)
        v.set_defaults(run=_operate, verb=verb)


def _partitions(spec: PipelineSpec) -> Any:
    """ConsumeKafka's concurrent tasks follow the topic's partitions: ask Kafka, else the default."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from dcnios.kafka import client_config

    cache: dict[str, int] = {}

    def lookup(topic: str) -> int:
        if topic not in cache:
            count = spec.kafka.topic_defaults.partitions
            if spec.kafka.bootstrap_servers is not None:
                try:
                    # A probe: its own failure is reported below, not as librdkafka's log lines.
                    admin = AdminClient({**client_config(spec.kafka), "log_level": 0})
                    metadata = admin.list_topics(topic, timeout=5).topics.get(topic)
                    if metadata is not None and metadata.error is None and metadata.partitions:
                        count = len(metadata.partitions)
                except KafkaException as exc:
                    logger.warning("%s: partitions not read from Kafka (%s); using %d", topic, exc, count)
            cache[topic] = count
        return cache[topic]

    return lookup


def _deployer(args: argparse.Namespace, *, offline_ok: bool = False) -> Any:
    from dcnios.deploy.deployer import NifiDeployer
    from dcnios.deploy.nifi_api import NifiClient

    spec = load_spec_arg(args.config, getattr(args, "bootstrap", None))
    if spec.nifi is None:
        raise ConfigError("nifi: the spec has no nifi section")
    authorization = None
    if offline_ok:

        def authorization(consumer: ConsumerSpec) -> str:
            from dcnios.deploy.deployer import spec_authorization

            try:
                return spec_authorization(consumer)
            except OscarError as exc:
                logger.warning(
                    "%s: OSCAR token not fetched (%s); the plan cannot compare it", consumer.name, exc
                )
                return "Bearer (fetched at deploy time)"

    return NifiDeployer(
        spec, NifiClient(spec.nifi), partitions=_partitions(spec), authorization=authorization
    )


def _deploy(args: argparse.Namespace) -> int:
    deployer = _deployer(args, offline_ok=args.dry_run or bool(args.print_flow))
    if args.print_flow:
        (consumer,) = deployer.consumers([args.print_flow])
        sys.stdout.write(deployer.recipe(consumer).flow_json().decode() + "\n")
        return EXIT_OK
    if args.dry_run:
        try:
            deployer.discover()
            items = deployer.plan(args.consumer)
        except NiFiError as exc:
            if exc.status is not None:  # NiFi answered: its refusal is the answer
                raise
            logger.warning("NiFi not consulted (%s); planning from the spec alone", exc)
            deployer.client = None
            items = deployer.plan(args.consumer)
        sys.stdout.write("plan (dry run; nothing changed):\n")
        for item in items:
            detail = f" ({item.detail})" if item.detail else ""
            sys.stdout.write(f"  {item.group}: {item.action}{detail}\n")
        return EXIT_OK
    items = deployer.apply(args.consumer)
    for item in items:
        detail = f" ({item.detail})" if item.detail else ""
        verb = "unchanged, nothing to do" if item.action == "unchanged" else f"{item.action}: done"
        sys.stdout.write(f"{item.group}: {verb}{detail}\n")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    statuses = _deployer(args).status()
    if args.json:
        sys.stdout.write(json.dumps([asdict(s) for s in statuses], indent=2) + "\n")
        return EXIT_OK
    for status in statuses:
        if not status.exists:
            sys.stdout.write(f"{status.group}: not deployed\n")
            continue
        states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(status.run_state.items()))
        rate = f"{status.parameters.get('max_rate', '?')} per {status.parameters.get('rate_duration', '?')}"
        sys.stdout.write(f"{status.group}: {states}; {status.queued} queued; rate {rate}\n")
        for problem in status.invalid:
            sys.stdout.write(f"  INVALID {problem}\n")
        for conn in status.connections:
            flag = "  BACK-PRESSURE" if conn["back_pressure"] else ""
            rels = ",".join(conn["relationships"])
            sys.stdout.write(
                f"  {conn['from']} -[{rels}]-> {conn['to']}: {conn['queued']}/{conn['threshold']}{flag}\n"
            )
    return EXIT_OK


def _rate(args: argparse.Namespace) -> int:
    count, duration = _deployer(args).set_rate(args.name, args.rate)
    sys.stdout.write(f"dcnios-{args.name}: ControlRate now {count} per {duration}\n")
    return EXIT_OK


def _operate(args: argparse.Namespace) -> int:
    deployer = _deployer(args)
    done = getattr(deployer, args.verb)(args.name)
    if not done:
        sys.stdout.write(f"dcnios-{args.name}: not deployed; nothing to {args.verb}\n")
    else:
        sys.stdout.write(f"dcnios-{args.name}: {args.verb} done\n")
    return EXIT_OK
