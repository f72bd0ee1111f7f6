"""`dcnios runs list|show|cancel|retry`: a workflow's runs, read from its compacted state topic."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

from dcnios.cli._common import EXIT_FAILURE, EXIT_OK, add_common, load_spec_arg
from dcnios.cli.workflow import workflow_arg
from dcnios.consumers.workflows.state import FINAL_RUN_STATES, Run
from dcnios.consumers.workflows.store import read_runs, send_command
from dcnios.errors import DcniosError
from dcnios.spec import PipelineSpec
from dcnios.topics import runs_topic

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "runs",
        help="list, show, cancel or retry workflow runs",
        description="Runs live in the workflow's compacted state topic (<prefix>.runs.<workflow>); "
        "cancel and retry are written next to the run and carried out by its orchestrator.",
    )
    verbs = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    for verb, text in (
        ("list", "every run: id, state, triggering file, steps done, jobs"),
        ("show", "one run: its steps, items, jobs, inputs, outputs, error and log tail"),
        ("cancel", "stop a run: its jobs under way are deleted, nothing more starts"),
        ("retry", "resume a failed or cancelled run from the steps that did not finish"),
    ):
        v = verbs.add_parser(verb, help=text, description=text.capitalize() + ".")
        add_common(v, bootstrap=True)
        if verb != "list":
            v.add_argument("run_id", metavar="RUN", help="run id (a unique prefix will do)")
        v.add_argument(
            "-w", "--workflow", metavar="NAME", help="which workflow (needed when the spec has several)"
        )
        v.add_argument("--json", action="store_true", help="JSON instead of a table")
        if verb == "list":
            v.add_argument(
                "--state", choices=["running", *sorted(FINAL_RUN_STATES)], help="only runs in this state"
            )
        v.set_defaults(run=_handler(verb))


def _handler(verb: str) -> object:
    def run(args: argparse.Namespace) -> int:
        spec = load_spec_arg(args.config, args.bootstrap)
        name = args.workflow or _only_workflow(spec)
        workflow = workflow_arg(spec, name)
        topic = runs_topic(spec.kafka, workflow.name)
        runs = read_runs(spec.kafka, topic)
        if verb == "list":
            return _list(runs, args)
        run_ = _find(runs, args.run_id)
        if verb == "show":
            print(json.dumps(asdict(run_), indent=2, default=str) if args.json else _show(run_))
            return EXIT_OK
        if verb == "cancel" and run_.final:
            print(f"run {run_.id} has already {run_.status}")
            return EXIT_FAILURE
        if verb == "retry" and run_.status not in ("failed", "cancelled"):
            print(f"run {run_.id} is {run_.status}: only a failed or cancelled run can be retried")
            return EXIT_FAILURE
        send_command(spec.kafka, topic, run_, verb)
        print(f"{verb} of run {run_.id} sent; its orchestrator carries it out (see `dcnios runs show`)")
        return EXIT_OK

    return run


def _only_workflow(spec: PipelineSpec) -> str:
    if len(spec.workflows) != 1:
        names = ", ".join(w.name for w in spec.workflows) or "none"
        raise DcniosError(f"name the workflow with --workflow (workflows: {names})")
    return spec.workflows[0].name


def _find(runs: dict[str, Run], wanted: str) -> Run:
    found = [r for r in runs.values() if r.id.startswith(wanted)]
    if len(found) != 1:
        raise DcniosError(f"{'no' if not found else 'more than one'} run matches {wanted!r}")
    return found[0]


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _list(runs: dict[str, Run], args: argparse.Namespace) -> int:
    chosen = sorted((r for r in runs.values() if args.state in (None, r.status)), key=lambda r: r.created)
    if args.json:
        print(json.dumps([_row(r) for r in chosen], indent=2))
        return EXIT_OK
    header = f"{'RUN':24}  {'STATE':9}  {'STARTED (UTC)':19}  {'STEPS':7}  {'JOBS':5}  TRIGGER"
    print(header)
    for r in chosen:
        row = _row(r)
        print(
            f"{r.id:24}  {r.status:9}  {_when(r.created):19}  {row['steps_done']:>3}/{len(r.steps):<3}  "
            f"{row['jobs']:>5}  {r.trigger.get('path')}"
        )
    print(f"{len(chosen)} runs")
    return EXIT_OK


def _row(run: Run) -> dict[str, object]:
    return {
        "run": run.id,
        "state": run.status,
        "started": run.created,
        "finished": run.finished,
        "trigger": run.trigger.get("path"),
        "steps_done": sum(1 for s in run.steps.values() if s.status in ("succeeded", "skipped")),
        "jobs": run.jobs(),
        "failed_step": run.failed_step,
        "error": run.error,
    }


def _show(run: Run) -> str:
    lines = [
        f"run {run.id} ({run.workflow}): {run.status}",
        f"  trigger  {run.trigger.get('path')} (event {run.trigger.get('event_id')}, "
        f"{run.trigger.get('topic')}[{run.trigger.get('partition')}]@{run.trigger.get('offset')})",
        f"  started  {_when(run.created)}   finished {_when(run.finished)}   retried {run.retries}x",
    ]
    if run.error:
        lines.append(f"  error    {run.failed_step or '-'}: {run.error}")
    for name, step in run.steps.items():
        states: dict[str, int] = {}
        for item in step.items.values():
            states[item.status] = states.get(item.status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no items"
        lines.append(f"  step {name}: {step.status} ({summary})")
        for item in list(step.items.values())[:20]:
            label = item.key or "-"
            lines.append(f"    {label}: {item.status}, job {item.job or '-'} (try {item.tries})")
            if item.error:
                lines.append(f"      error: {item.error}")
        if len(step.items) > 20:
            lines.append(f"    ... {len(step.items) - 20} more items (--json shows all)")
    if run.log_tail:
        lines.append("  log tail of the failed job:")
        lines.extend("    " + line for line in run.log_tail.rstrip().splitlines()[-20:])
    return "\n".join(lines)
