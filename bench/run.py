"""`make bench`: run the benchmarks, write bench/results.json and BENCHMARKS.md.

Run as a script (``.venv/bin/python bench/run.py [--quick]``): the repo root must not be on
sys.path, or ./dcnios would shadow the installed package.
"""

from __future__ import annotations

import argparse
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
from common import SERIES, Result, broker

ROOT = Path(__file__).resolve().parent.parent


def render(results: list[Result], command: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Made by `{command}` ({platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}),",
        f"{results[0].date if results else ''}. Every ceiling is measured in",
        "the same run as the figure it is compared with; the ratio is value / ceiling. Machine-readable:",
        "`bench/results.json`.",
        "",
        "| benchmark | metric | value | ceiling | ratio | goal | parameters |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ceiling = f"{r.ceiling:,.1f} ({r.ceiling_name})" if r.ceiling else ""
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
        params = ", ".join(f"{k}={v}" for k, v in r.parameters.items())
        lines.append(
            f"| {r.benchmark} | {r.metric} | {r.value:,.1f} {r.unit} | {ceiling} | {ratio} | "
            f"{r.goal or ''} | {params} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description="dcnios benchmarks")
    parser.add_argument("--quick", action="store_true", help="a smoke run (smaller counts)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    with broker() as bootstrap:
        results = producer_bench.run(bootstrap, args.quick)
        results += consumer_bench.run(bootstrap, args.quick)
        results += e2e_bench.run(bootstrap, args.quick)
        results += reconcile_bench.run(bootstrap, args.quick)
    command = "make bench" + (" QUICK=1" if args.quick else "")
    (ROOT / "bench" / "results.json").write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
    text = render(results, command)
    images = plots.render(SERIES, ROOT / "bench")
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
