"""`make bench`: run the benchmarks, write bench/results.json and BENCHMARKS.md.

Run as a script (``.venv/bin/python bench/run.py [--quick]``): the repo root must not be on
sys.path, or ./dcnios would shadow the installed package.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import consumer_bench
import e2e_bench
import plots
import producer_bench
import reconcile_bench
import workflow_bench
from common import SERIES, Result, broker

ROOT = Path(__file__).resolve().parent.parent


BENCHMARKS = {
    "producer": producer_bench.run,
    "consumer": consumer_bench.run,
    "end-to-end": e2e_bench.run,
    "reconcile": reconcile_bench.run,
    "workflow": workflow_bench.run,
}


def _number(value: float) -> str:
    """One decimal, or three for a value under 1 (CPU ms per call)."""
    return f"{value:,.1f}" if value == 0 or abs(value) >= 1 else f"{value:.3f}"


def render(results: list[Result], command: str) -> str:
    runs = sorted({(r.made_by, r.date[:10]) for r in results})
    several = len(runs) > 1
    made = f"by `{command}`" if not several else "by the runs that the `run` column names"
    when = results[0].date if results and not several else "rows kept from each run's last time"
    lines = [
        "# Benchmarks",
        "",
        f"Made {made} ({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}),",
        f"{when}. Every ceiling is measured in",
        "the same run as the figure it is compared with; the ratio is value / ceiling. Machine-readable:",
        "`bench/results.json`.",
        "",
        "| benchmark | metric | value | ceiling | ratio | goal | parameters |"
        + (" run |" if several else ""),
        "| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if several else ""),
    ]
    for r in results:
        ceiling = f"{r.ceiling:,.1f} ({r.ceiling_name})" if r.ceiling else ""
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
        ratio += "".join(f"; {r.value / v:.2f}\u00d7 {k}" for k, v in r.more_ceilings.items() if v)
        params = ", ".join(f"{k}={v}" for k, v in r.parameters.items())
        lines.append(
            f"| {r.benchmark} | {r.metric} | {_number(r.value)} {r.unit} | {ceiling} | {ratio} | "
            f"{r.goal or ''} | {params} |" + (f" `{r.made_by}` {r.date[:10]} |" if several else "")
        )
    table = consumer_bench.side_by_side(results)
    if table:
        lines += ["", "### Consumer side by side", "", table.rstrip("\n")]
    return "\n".join(lines) + "\n"


#: Rows some benchmarks write under another name.
_MADE_BY = {"scale": "end-to-end", "rate": "end-to-end"}


def _earlier(ran: list[str]) -> list[Result]:
    """The last run's rows of the benchmarks not run now (``--only``)."""
    path = ROOT / "bench" / "results.json"
    if not path.exists():
        return []
    fields = set(Result.__dataclass_fields__)
    return [
        Result(**{k: v for k, v in row.items() if k in fields})
        for row in json.loads(path.read_text())
        if _MADE_BY.get(row["benchmark"], row["benchmark"]) not in ran
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description="dcnios benchmarks")
    parser.add_argument("--quick", action="store_true", help="a smoke run (smaller counts)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        help="run only this benchmark (repeatable); the others' rows are kept from bench/results.json",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: write BENCHMARKS.md again from bench/results.json and bench/NOTES.md",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    chosen = [] if args.render_only else [name for name in BENCHMARKS if not args.only or name in args.only]
    results: list[Result] = []
    with broker() if chosen else contextlib.nullcontext("") as bootstrap:
        for name in chosen:
            print(f"-- {name}", file=sys.stderr, flush=True)
            results += BENCHMARKS[name](bootstrap, args.quick)
    if args.render_only:
        results = _earlier([])
        runs = sorted({r.made_by for r in results})
        command = runs[0] if len(runs) == 1 else "make bench ONLY=..."
    elif args.only:
        order = list(BENCHMARKS)
        results = sorted(
            _earlier(chosen) + results, key=lambda r: order.index(_MADE_BY.get(r.benchmark, r.benchmark))
        )
    if not args.render_only:
        command = "make bench" + (" QUICK=1" if args.quick else "")
        command += f" ONLY={' '.join(args.only)}" if args.only else ""
    for result in results:
        result.made_by = result.made_by or command
    (ROOT / "bench" / "results.json").write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
    text = render(results, command)
    images = plots.render(SERIES, ROOT / "bench")
    if args.only or args.render_only:  # the plots of the benchmarks not run now stay as they were
        images += [p for p in sorted((ROOT / "bench").glob("*.png")) if p not in images]
    if images:
        text += "\n" + "\n".join(f"![{p.stem}](bench/{p.name})" for p in images) + "\n"
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists():
        text += "\n" + notes.read_text()
    (ROOT / "BENCHMARKS.md").write_text(text)
    sys.stdout.write(text)
    sys.stdout.write(f"\n({time.time() - started:.0f}s)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
