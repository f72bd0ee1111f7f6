"""`dcnios workflow plan|run NAME`: draw a workflow's graph, or run one of its orchestrators."""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys

from dcnios.cli._common import EXIT_OK, StopFlag, add_common, load_spec_arg
from dcnios.consumers.workflows.graph import Graph
from dcnios.consumers.workflows.scheduler import Orchestrator
from dcnios.errors import ConfigError, DcniosError
from dcnios.metrics import WorkflowMetrics, serve_metrics
from dcnios.spec import PipelineSpec, WorkflowSpec

__all__ = ["register", "workflow_arg"]

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "workflow",
        help="draw a workflow's graph, or run its orchestrator",
        description="Workflows start one run per triggering event and drive it through a graph of "
        "OSCAR services (fan-out, joins, split-map), with their state in a compacted topic.",
    )
    verbs = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    plan = verbs.add_parser(
        "plan",
        help="draw the graph (text; --svg FILE through graphviz)",
        description="Validate the spec and draw the workflow: its stages, fan-outs, joins and "
        "split-maps. Nothing is contacted.",
    )
    add_common(plan)
    plan.add_argument("name", metavar="NAME", help="workflows[].name")
    plan.add_argument("--svg", metavar="FILE", help="also write an SVG (needs graphviz's `dot`)")
    plan.add_argument("--dot", action="store_true", help="print Graphviz DOT instead of text")
    plan.set_defaults(run=_plan)
    run = verbs.add_parser(
        "run",
        help="run one orchestrator of the workflow (start more to scale out)",
        description="Join the workflow's consumer group over the trigger consumer's topic: each "
        "record starts one run, and each run this member owns (with its trigger's partition) is "
        "driven to its end, and resumed where it was after any restart.",
        epilog="SIGTERM/SIGINT stop; runs under way resume with the partition's next owner.",
    )
    add_common(run, bootstrap=True)
    run.add_argument("name", metavar="NAME", help="workflows[].name")
    run.add_argument("--metrics-port", type=int, metavar="P", help="serve /metrics and /healthz here")
    run.set_defaults(run=_run)


def workflow_arg(spec: PipelineSpec, name: str) -> WorkflowSpec:
    try:
        return spec.workflow(name)
    except KeyError:
        names = ", ".join(w.name for w in spec.workflows) or "none"
        raise ConfigError(f"no workflow named {name!r} (workflows: {names})") from None


def _plan(args: argparse.Namespace) -> int:
    spec = load_spec_arg(args.config)
    graph = Graph.of(workflow_arg(spec, args.name))
    print(graph.dot() if args.dot else graph.text())
    if args.svg:
        dot = shutil.which("dot")
        if dot is None:
            print(f"no SVG written: graphviz's `dot` is not installed ({args.svg})", file=sys.stderr)
            return EXIT_OK
        done = subprocess.run(  # noqa: S603 - graphviz, the DOT on stdin
            [dot, "-Tsvg", "-o", args.svg], input=graph.dot().encode(), capture_output=True, check=False
        )
        if done.returncode != 0:
            raise DcniosError(f"dot -Tsvg failed: {done.stderr.decode(errors='replace').strip()}")
        print(f"SVG written to {args.svg}", file=sys.stderr)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    spec = load_spec_arg(args.config, args.bootstrap)
    workflow = workflow_arg(spec, args.name)
    stop = StopFlag().install()
    metrics = WorkflowMetrics()
    orchestrator = Orchestrator(spec, workflow, stop=stop.event, metrics=metrics)
    if args.metrics_port is not None:
        serve_metrics(metrics.registry, args.metrics_port, orchestrator.health)
        logger.info("metrics on http://127.0.0.1:%d/metrics, health on /healthz", args.metrics_port)
    orchestrator.run()
    return EXIT_OK
