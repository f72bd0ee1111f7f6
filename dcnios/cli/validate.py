"""`dcnios validate`: check a spec and print a summary (secrets masked)."""

from __future__ import annotations

import argparse
import sys

from dcnios.cli._common import EXIT_OK, add_common
from dcnios.spec import (
    AnySourceSpec,
    PipelineSpec,
    RucioSourceSpec,
    S3NotificationsSourceSpec,
    SourceSpec,
    load_spec,
)
from dcnios.topics import topic_plan

__all__ = ["register", "summary"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "validate",
        help="check a spec; print a summary, or every error with its path and line (exit 2)",
        description="Validate a pipeline spec without touching the network.",
    )
    add_common(p)
    p.set_defaults(run=run)


def summary(spec: PipelineSpec) -> str:
    k = spec.kafka
    lines = [
        f"kafka: {k.bootstrap_servers or '(embedded broker)'} {k.security_protocol}"
        + (f" sasl={k.sasl.mechanism} user={k.sasl.username} password={k.sasl.password}" if k.sasl else "")
        + (f" registry={k.schema_registry.url}" if k.schema_registry else ""),
    ]
    for r in spec.sources:
        if not isinstance(r, SourceSpec):
            lines.append(_relayed(r))
            continue
        s = r
        auth = s.auth
        how = "anonymous"
        if auth is not None:
            how = (
                f"basic {auth.username}:{auth.password}"
                if auth.username
                else "token ***"
                if auth.token
                else f"token_file {auth.token_file}"
                if auth.token_file
                else f"cert {auth.cert}"
            )
        routes = ", ".join(f"{r.match} -> {r.topic}{_readers(r.readers)}" for r in s.routes)
        lines.append(
            f"source {s.name}: {s.endpoint} {list(s.paths)}{' recursive' if s.recursive else ''}"
            f" events={list(s.events)} -> {s.topic}{_readers(s.readers)}"
            f"{f' (routes: {routes})' if routes else ''} auth={how}"
        )
    for c in spec.consumers:
        nifi = spec.nifi is not None and c.name in spec.nifi.consumers
        lines.append(
            f"consumer {c.name}: {c.topic} (group {c.group}) -> {c.oscar.endpoint} service {c.oscar.service}"
            f" payload={c.payload} rate={c.rate or 'unlimited'} concurrency={c.concurrency}"
            f" ordering={c.ordering} dlq={c.dead_letter_topic} principal {c.principal}"
            f"{' [nifi]' if nifi else ''}"
        )
    for w in spec.workflows:
        starts = [st.name for st in w.steps if not st.after]
        lines.append(
            f"workflow {w.name}: runs started by consumer {w.trigger.consumer} (group {w.group}), "
            f"{len(w.steps)} steps, starting at {', '.join(starts)}; outputs listed from "
            f"{w.storage or '-'}; `dcnios workflow plan {w.name}` draws it"
        )
    if spec.nifi is not None:
        lines.append(f"nifi: {spec.nifi.endpoint} v{spec.nifi.version} consumers={list(spec.nifi.consumers)}")
    lines.append(f"topics: {', '.join(p.name for p in topic_plan(spec))}")
    return "\n".join(lines)


def _relayed(s: AnySourceSpec) -> str:
    """The summary line of a source that is not dCache's."""
    what: str = s.type
    if isinstance(s, S3NotificationsSourceSpec):
        if s.kafka is not None:
            origin = f"kafka topic {s.kafka.topic} (group {s.kafka.group})"
        elif s.webhook is not None:
            w = s.webhook
            origin = f"webhook http://{w.host}:{w.port}{w.path}" + (" bearer ***" if w.token else "")
        else:
            assert s.sqs is not None
            q = s.sqs
            origin = f"sqs {q.queue_url}" + (f" key {q.access_key_id} secret ***" if q.access_key_id else "")
        what = f"{s.type} format={s.format} from {origin} events={list(s.events)}"
    elif isinstance(s, RucioSourceSpec):
        st = s.stomp
        login = f" user {st.username} password ***" if st.username else ""
        tls = ("tls" + ("" if st.verify else " UNVERIFIED")) if st.tls else "plain text"
        vhost = f" vhost {st.vhost}" if st.vhost else ""
        what = (
            f"{s.type} from stomp {st.destination} on {','.join(st.brokers)}{vhost} ({tls}){login} "
            f"events={list(s.events)} scopes={list(s.scopes) or 'all'} names={list(s.names) or 'all'}"
            + (f" rses={list(s.rses)}" if s.rses else "")
        )
    routes = ", ".join(f"{r.match} -> {r.topic}{_readers(r.readers)}" for r in s.routes)
    return f"source {s.name}: {what} -> {s.topic}{_readers(s.readers)}" + (
        f" (routes: {routes})" if routes else ""
    )


def _readers(readers: tuple[str, ...] | None) -> str:
    return "" if readers is None else f" [readers: {', '.join(readers) or 'nobody'}]"


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.config)
    sys.stdout.write(f"{args.config}: OK\n{summary(spec)}\n")
    return EXIT_OK
