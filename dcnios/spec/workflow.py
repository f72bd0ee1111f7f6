"""The ``workflows:`` section: durable graphs of OSCAR services started by a consumer's records.

The dataclasses are the spec; the graph checks below run when the spec is loaded, so a cycle,
an unknown step, an unreachable step or a join that can never fire is refused with its path and
line before anything starts (the DIASTEMA orchestrator recursed forever on a cycle).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from dcnios.spec._build import Duration, Rate, spec_field

__all__ = [
    "JOIN_ALL",
    "JOIN_ANY",
    "RetryPolicy",
    "StepSpec",
    "TriggerSpec",
    "WorkflowSpec",
    "find_cycle",
    "globs_overlap",
    "graph_problems",
]

Problems = Iterator[tuple[str, str]]
JOIN_ALL: Final = "all"
JOIN_ANY: Final = "any"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _name(value: str) -> str | None:
    if not _NAME.match(value):
        return f"expected a lower-case DNS label ([a-z0-9-], at most 63 characters), got {value!r}"
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else f"expected a positive number, got {value!r}"


def _join(value: str) -> str | None:
    if value in (JOIN_ALL, JOIN_ANY) or (value.isdigit() and int(value) > 0):
        return None
    return f"expected all, any or a positive count of parent jobs, got {value!r}"


def _abs_path(value: str) -> str | None:
    if not value.startswith("/") or (len(value) > 1 and value.endswith("/")):
        return f"expected an absolute dCache path without a trailing '/', got {value!r}"
    return None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = spec_field(3, doc="jobs tried per step item before the run fails", check=_positive)
    initial_backoff: Duration = spec_field(Duration(1), doc="delay before the second job", check=_positive)
    max_backoff: Duration = spec_field(Duration(300), doc="largest delay between jobs", check=_positive)


@dataclass(frozen=True, slots=True)
class TriggerSpec:
    consumer: str = spec_field(
        doc="the consumer whose records start runs (one run per event): its topic and filter select "
        "the events, its oscar block gives the cluster and the credentials every step uses"
    )


@dataclass(frozen=True, slots=True)
class StepSpec:
    name: str = spec_field(doc="step name, unique in its workflow (DNS label)", check=_name)
    service: str = spec_field(doc="the OSCAR service one job of this step runs", check=_name)
    after: tuple[str, ...] = spec_field((), doc="steps this one waits for; none: a start step")
    match: tuple[str, ...] = spec_field(
        (),
        doc="start steps only: path globs of the triggering file this step runs for (empty: every file)",
        examples=(("/data/in/**/*.raw",),),
    )
    each: str | None = spec_field(
        None,
        doc="split-map: one job per output file of the (one) parent whose name matches this glob",
        examples=("*.h5",),
    )
    join: str = spec_field(
        JOIN_ALL,
        doc="with several parents (or a split-map parent): all (every parent job succeeded), any, "
        "or a count of parent jobs that must have succeeded",
        check=_join,
    )
    join_timeout: Duration | None = spec_field(
        None, doc="a join not satisfied this long after the run started fails the run", check=_positive
    )
    retry: RetryPolicy = spec_field(RetryPolicy(), doc="jobs per item and the delays between them")
    rate: Rate | None = spec_field(None, doc="jobs started per second by this step; absent: unlimited")
    concurrency: int = spec_field(8, doc="jobs of this step in flight per orchestrator", check=_positive)
    output_path: str | None = spec_field(
        None,
        doc="the dCache directory the service uploads to; absent: the service's webdav.dcache output",
        check=_abs_path,
    )

    @property
    def join_count(self) -> int | None:
        """The parent jobs a count join waits for; None for all/any."""
        return int(self.join) if self.join.isdigit() else None


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    name: str = spec_field(doc="unique workflow name (DNS label)", check=_name)
    trigger: TriggerSpec = spec_field(doc="what starts a run")
    steps: tuple[StepSpec, ...] = spec_field(doc="the graph: each step names the steps it runs after")
    storage: str | None = spec_field(
        None,
        doc="the source whose dCache (namespace API, credentials) holds the steps' outputs; needed "
        "when a step runs after another (its parent's outputs are listed when the parent ends)",
    )
    group: str | None = spec_field(None, doc="the orchestrators' consumer group; default dcnios-wf-<name>")
    poll_interval: Duration = spec_field(Duration(2), doc="how often job states are polled", check=_positive)

    @staticmethod
    def derive_defaults(values: dict[str, object]) -> dict[str, object]:
        values.setdefault("group", f"dcnios-wf-{values['name']}")
        return values

    def step(self, name: str) -> StepSpec:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


# -- the graph checks (pure) ------------------------------------------------------------------
def graph_problems(steps: Sequence[StepSpec], accepted: Sequence[str] = ()) -> Problems:
    """Every problem of a step graph, as (key path relative to the workflow, message).

    ``accepted``: path globs of the trigger consumer's ``filter.paths``; a start step whose
    ``match`` overlaps none of them never runs.
    """
    index: dict[str, int] = {}
    for i, step in enumerate(steps):
        if step.name in index:
            yield (
                f"steps[{i}].name",
                f"duplicate step name {step.name!r} (first at steps[{index[step.name]}])",
            )
        else:
            index[step.name] = i
    if not steps:
        yield "steps", "must name at least one step"
        return
    broken = False
    for i, step in enumerate(steps):
        at = f"steps[{i}]"
        for j, parent in enumerate(step.after):
            if parent == step.name:
                yield f"{at}.after[{j}]", f"step {step.name!r} runs after itself (a cycle)"
                broken = True
            elif parent not in index:
                yield f"{at}.after[{j}]", f"unknown step {parent!r}{_hint(parent, list(index))}"
                broken = True
        if len(set(step.after)) != len(step.after):
            yield f"{at}.after", "names a step twice"
        if step.match and step.after:
            yield f"{at}.match", "only a start step (no `after`) selects triggering files"
        if step.each is not None and len(step.after) != 1:
            yield (
                f"{at}.each",
                "a split-map step runs after exactly one parent (the step whose outputs it maps)",
            )
        count = step.join_count
        mapped_parent = any(steps[index[p]].each is not None for p in step.after if p in index)
        if step.join != JOIN_ALL and not step.after:
            yield f"{at}.join", "a start step joins nothing"
        elif count is not None and count > len(step.after) and not mapped_parent and not broken:
            yield (
                f"{at}.join",
                f"waits for {count} parent jobs, but its {len(step.after)} parents run one job each",
            )
        if step.join_timeout is not None and not step.after:
            yield f"{at}.join_timeout", "a start step joins nothing"
    cycle = find_cycle([s for s in steps if s.name not in s.after])
    if cycle is not None:
        yield f"steps[{index[cycle[0]]}].after", "cycle: " + " → ".join(cycle)
    if not broken and cycle is None:
        yield from _reachability(steps, index, accepted)


def find_cycle(steps: Sequence[StepSpec]) -> list[str] | None:
    """One cycle, as the loop of step names with its first name repeated at the end; None if acyclic."""
    parents = {s.name: s.after for s in steps}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for parent in parents.get(name, ()):
            if state.get(parent) == 1:
                loop = path[path.index(parent) :]
                # Parents point backwards: reverse to read the loop in running order.
                return [*reversed(loop), loop[-1]]
            if parent not in state and (found := visit(parent)) is not None:
                return found
        path.pop()
        state[name] = 2
        return None

    for step in steps:
        if step.name not in state and (found := visit(step.name)) is not None:
            return found
    return None


def _reachability(steps: Sequence[StepSpec], index: Mapping[str, int], accepted: Sequence[str]) -> Problems:
    """Unreachable steps and joins that can never fire, from which triggering files each step runs for.

    A step's condition is a list of alternatives, each a set of path globs the triggering file must
    all match (``[]`` inside: any file; no alternative: never runs). Overlap is decided glob by
    glob, so a join over steps that need disjoint files is found; one whose parents need three
    globs that overlap pairwise but not all at once is not.
    """
    conditions: dict[str, list[frozenset[str]]] = {}
    reasons: dict[str, str] = {}
    for name in _order(steps):
        i = index[name]
        step = steps[i]
        if not step.after:
            alternatives = [frozenset([g]) for g in step.match] if step.match else [frozenset()]
            if accepted:
                alternatives = [a for a in alternatives if any(_satisfiable(a | {g}) for g in accepted)]
            if not alternatives:
                reasons[name] = (
                    f"its match {list(step.match)} overlaps none of the trigger consumer's "
                    f"filter.paths {list(accepted)}"
                )
            conditions[name] = alternatives
            continue
        parent_conditions = [conditions[p] for p in step.after]
        dead = [p for p in step.after if not conditions[p]]
        if step.join == JOIN_ALL:
            combined: list[frozenset[str]] = [frozenset()]
            for alternatives in parent_conditions:
                combined = [a | b for a in combined for b in alternatives if _satisfiable(a | b)]
            if not combined and not dead:
                pair = _disjoint_pair(step.after, conditions)
                yield (
                    f"steps[{i}].after",
                    f"joins {pair[0]!r} and {pair[1]!r} (join: all), which never run for the same file",
                )
            elif dead:
                reasons[name] = f"it waits for {', '.join(repr(p) for p in dead)}, which never runs"
            conditions[name] = combined
        else:
            live = [p for p in step.after if conditions[p]]
            need = step.join_count or 1
            mapped = any(steps[index[p]].each is not None for p in live)
            if len(live) < need <= len(step.after) and not mapped:
                reasons[name] = (
                    f"it waits for {need} of its parents, but only {len(live)} can run"
                    if live
                    else f"it waits for {', '.join(repr(p) for p in step.after)}, which never run"
                )
                conditions[name] = []
            elif live:
                conditions[name] = [a for p in live for a in conditions[p]]
            else:
                conditions[name] = []
    for name, why in reasons.items():
        yield f"steps[{index[name]}]", f"step {name!r} is unreachable: {why}"


def _disjoint_pair(names: Sequence[str], conditions: Mapping[str, list[frozenset[str]]]) -> tuple[str, str]:
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if not any(_satisfiable(x | y) for x in conditions[a] for y in conditions[b]):
                return a, b
    return names[0], names[-1]  # only all of them together are disjoint


def _order(steps: Sequence[StepSpec]) -> list[str]:
    """Kahn's order (parents first); the graph is known to be acyclic with known parents."""
    pending = {s.name: set(s.after) for s in steps}
    out: list[str] = []
    while pending:
        ready = [n for n, p in pending.items() if not p]
        for name in ready:
            del pending[name]
            for parents in pending.values():
                parents.discard(name)
        out.extend(ready)
    return out


def _satisfiable(globs: frozenset[str]) -> bool:
    items = sorted(globs)
    return all(globs_overlap(a, b) for i, a in enumerate(items) for b in items[i + 1 :])


def _hint(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f"; steps are {', '.join(options)}"


# -- glob overlap -----------------------------------------------------------------------------
def _tokens(glob: str) -> list[str]:
    """Wildcards as one token each, every other character as its own token."""
    out: list[str] = []
    for part in re.split(r"(\*\*/?|\*|\?)", glob):
        out.extend([part] if part in ("**", "**/", "*", "?") else list(part))
    return out


def globs_overlap(a: str, b: str) -> bool:
    """Whether some path matches both globs (``*``/``?`` within a directory, ``**`` across).

    Walks both patterns at once, one character at a time (a product of the two automata): a
    state is a position in each; a star may match nothing, or one more character that the other
    side accepts too.
    """
    ta, tb = _tokens(a), _tokens(b)
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    while todo:
        i, j = todo.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        # A star (or "**/", which also matches nothing) may match the empty string.
        if i < len(ta) and ta[i] in _STARS:
            todo.append((i + 1, j))
        if j < len(tb) and tb[j] in _STARS:
            todo.append((i, j + 1))
        if i == len(ta) and j == len(tb):
            return True
        if i == len(ta) or j == len(tb):
            continue
        for ca, na in _steps(ta, i):
            for cb, nb in _steps(tb, j):
                if _meet(ca, cb):
                    todo.append((na, nb))
    return False


#: One character of a wildcard: any but ``/`` (``*``, ``?``), or any at all (``**``). NUL never
#: appears in a path, so these never equal a literal.
_IN_SEGMENT: Final = "\0seg"
_ANYTHING: Final = "\0any"
_STARS: Final = ("*", "**", "**/")


def _steps(tokens: list[str], i: int) -> list[tuple[str, int]]:
    """What one character at position ``i`` may be, and where the pattern is after it."""
    part = tokens[i]
    if part == "*":
        return [(_IN_SEGMENT, i)]
    if part == "**":
        return [(_ANYTHING, i)]
    if part == "**/":
        return [(_ANYTHING, i), ("/", i + 1)]
    if part == "?":
        return [(_IN_SEGMENT, i + 1)]
    return [(part, i + 1)]


def _meet(a: str, b: str) -> bool:
    if _ANYTHING in (a, b):
        return True
    if a == _IN_SEGMENT:
        return b != "/"
    if b == _IN_SEGMENT:
        return a != "/"
    return a == b
