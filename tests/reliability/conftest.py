"""The reliability table: every scenario reports N, lost, duplicates and DLQ counts; printed at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import RESULTS, Tally


@pytest.fixture
def tally() -> Iterator[list[Tally]]:
    """Scenarios append their Tally here; it reaches the table even when an assertion fails."""
    rows: list[Tally] = []
    yield rows
    RESULTS.extend(rows)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    header = ("scenario", "events", "lost", "duplicates", "dead letters", "notes")
    rows = [header] + [r.row() for r in RESULTS]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    terminalreporter.section("reliability")
    for i, row in enumerate(rows):
        terminalreporter.write_line(
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        )
        if i == 0:
            terminalreporter.write_line("|" + "|".join("-" * (w + 2) for w in widths) + "|")
