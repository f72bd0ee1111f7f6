"""`dcnios doctor`: check a spec against the live dCache and OSCAR it names."""

from __future__ import annotations

import argparse
import sys

from dcnios.cli._common import EXIT_FAILURE, EXIT_OK, add_common, load_spec_arg
from dcnios.doctor import diagnose

__all__ = ["register"]

_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="check a spec against the live systems: dCache answers, OSCAR services, tokens, inputs",
        description="Read-only checks, one line each: each source's dCache events API answers and "
        "its directories can be listed; each consumer's OSCAR answers, its service exists, the "
        "credentials and the service token are accepted, the service has a webdav.dcache input "
        "that covers the watched directories, and the job listing that tracking needs is readable. "
        "Nothing is created. Exit 1 when any check fails.",
    )
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    spec = load_spec_arg(args.config)
    failed = 0
    for finding in diagnose(spec):
        failed += finding.level == "fail"
        line = f"{_MARK[finding.level]} {finding.subject}: {finding.message}"
        if finding.fix:
            line += f"\n       fix: {finding.fix}"
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    sys.stdout.write(f"{failed} check(s) failed\n" if failed else "all checks passed\n")
    return EXIT_FAILURE if failed else EXIT_OK
