"""`dcnios status`: checkpoints, gaps, lag, rate, pause and DLQ depth of any deployment."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dcnios.cli._common import EXIT_OK, add_common, load_spec_arg

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status",
        help="per source: checkpoint and gaps (dCache) or upstream and what waits there (others), "
        "invalid input; per consumer: members, lag, rate, paused, DLQ depth",
        description="Read the deployment's state from Kafka (works against any deployment). Lag "
        "is measured against end offsets read past the broker's high watermark.",
    )
    add_common(p, bootstrap=True)
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dcnios.status import pipeline_status

    spec = load_spec_arg(args.config, args.bootstrap)
    status = pipeline_status(spec)
    if args.json:
        sys.stdout.write(json.dumps(status, indent=2) + "\n")
    else:
        _print_tables(status)
    return EXIT_OK


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _print_tables(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    sources = Table(title=f"sources (Kafka {status['kafka']})", title_justify="left")
    for col in (
        "source",
        "type",
        "topic",
        "checkpoint id / upstream",
        "age / waiting",
        "gaps",
        "last gap",
        "invalid",
    ):
        sources.add_column(col)
    for s in status["sources"]:
        gap = s["last_gap"]
        relayed = s["upstream"] is not None
        sources.add_row(
            s["name"],
            s["type"],
            s["topic"],
            s["upstream"]
            if relayed
            else "-"
            if s["checkpoint_event_id"] is None
            else str(s["checkpoint_event_id"]),
            ("?" if s["upstream_waiting"] is None else str(s["upstream_waiting"]))
            if relayed
            else _age(s["checkpoint_age_s"]),
            str(s["gaps"]),
            f"{gap.get('reason')} {gap.get('directories')}" if gap else "-",
            str(s["invalid"]),
        )
    consumers = Table(title="consumers", title_justify="left")
    for col in ("consumer", "group", "members", "lag", "lag by partition", "rate", "paused", "OSCAR", "DLQ"):
        consumers.add_column(col)
    notes = []
    for c in status["consumers"]:
        by_partition = " ".join(f"{p['partition']}:{p['lag']}" for p in c["partitions"] if p["lag"])
        consumers.add_row(
            c["name"] + (" (NiFi)" if c["nifi"] else ""),
            c["group"],
            str(len(c["members"])),
            str(c["lag"]),
            by_partition or "-",
            f"{c['rate']} ({c['rate_source']})",
            "yes" if c["paused"] else "no",
            c["oscar"],
            f"{c['dlq_depth']} in {c['dead_letter_topic']}",
        )
        notes += [f"{c['name']}: {n}" for n in c["notes"]]
    console.print(sources)
    console.print(consumers)
    for note in notes:
        console.print(f"[dim]note: {note}[/dim]")
