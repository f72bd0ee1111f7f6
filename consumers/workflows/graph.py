"""A validated workflow as a graph: parents, children, order, and its drawings (text and DOT).

The spec loader has refused cycles, unknown steps and joins that never fire
(``dcnios.spec.workflow.graph_problems``), so this only has to be right for good graphs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from dcnios.spec import StepSpec, WorkflowSpec

__all__ = ["Graph"]


@dataclass(frozen=True)
class Graph:
    spec: WorkflowSpec
    steps: Mapping[str, StepSpec]
    children: Mapping[str, tuple[str, ...]]
    order: tuple[str, ...]  # parents before children (Kahn)

    @classmethod
    def of(cls, spec: WorkflowSpec) -> Graph:
        steps = {s.name: s for s in spec.steps}
        children: dict[str, list[str]] = {name: [] for name in steps}
        for step in spec.steps:
            for parent in step.after:
                children[parent].append(step.name)
        pending = {s.name: set(s.after) for s in spec.steps}
        order: list[str] = []
        while pending:
            ready = [n for n, p in pending.items() if not p]
            if not ready:
                raise ValueError(f"workflow {spec.name}: the graph has a cycle")
            for name in ready:
                del pending[name]
                for parents in pending.values():
                    parents.discard(name)
            order.extend(ready)
        return cls(
            spec,
            MappingProxyType(steps),
            MappingProxyType({k: tuple(v) for k, v in children.items()}),
            tuple(order),
        )

    @property
    def starts(self) -> tuple[str, ...]:
        return tuple(n for n in self.order if not self.steps[n].after)

    def leaves(self) -> tuple[str, ...]:
        return tuple(n for n in self.order if not self.children[n])

    def label(self, name: str) -> str:
        step = self.steps[name]
        extras = [f"service {step.service}"]
        if step.each is not None:
            extras.append(f"each {step.each}")
        if len(step.after) > 1 or step.join != "all":
            extras.append(
                f"join {step.join}" + (f" within {step.join_timeout:g}s" if step.join_timeout else "")
            )
        if step.match:
            extras.append("for " + ", ".join(step.match))
        if step.retry.max_attempts != 1:
            extras.append(f"{step.retry.max_attempts} tries")
        if step.rate is not None:
            extras.append(f"rate {step.rate}")
        return f"{name} [{'; '.join(extras)}]"

    def text(self) -> str:
        """The graph in layers (a step's layer is one more than its deepest parent's), each step
        with the steps it feeds; readable in a terminal without graphviz."""
        depth: dict[str, int] = {}
        for name in self.order:
            depth[name] = 1 + max((depth[p] for p in self.steps[name].after), default=-1)
        lines = [f"workflow {self.spec.name} (trigger: consumer {self.spec.trigger.consumer})"]
        fan = "fan-out " if len(self.starts) > 1 else ""
        lines.append(f"  each triggering file ──{fan}▶ {', '.join(self.starts)}")
        for level in range(max(depth.values()) + 1):
            lines.append(f"  stage {level + 1}:")
            for name in (n for n in self.order if depth[n] == level):
                arrow = self.children[name]
                fan = "fan-out " if len(arrow) > 1 else ""
                to = f"  ──{fan}▶ {', '.join(arrow)}" if arrow else "  (end)"
                lines.append(f"    {self.label(name)}{to}")
        return "\n".join(lines)

    def dot(self) -> str:
        """Graphviz DOT: boxes for steps, a double border for split-map, a diamond-headed edge
        into joins."""
        out = [
            f'digraph "{self.spec.name}" {{',
            "  rankdir=LR;",
            '  node [shape=box, fontname="Helvetica"];',
            f'  trigger [shape=oval, label="{_esc("consumer " + self.spec.trigger.consumer)}"];',
        ]
        for name in self.order:
            step = self.steps[name]
            shape = ", peripheries=2" if step.each is not None else ""
            out.append(f'  "{name}" [label="{_esc(self.label(name))}"{shape}];')
        for name in self.order:
            step = self.steps[name]
            if not step.after:
                out.append(f'  trigger -> "{name}";')
            joined = len(step.after) > 1
            for parent in step.after:
                style = ' [arrowhead=diamond, label="join"]' if joined else ""
                if step.each is not None:
                    style = f' [label="{_esc("each " + step.each)}", style=bold]'
                out.append(f'  "{parent}" -> "{name}"{style};')
        out.append("}")
        return "\n".join(out) + "\n"


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
