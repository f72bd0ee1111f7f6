"""Shared benchmark plumbing: a broker, timing, percentiles, RSS, result records."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from dcnios.broker import EmbeddedBroker
from dcnios.sandbox.records import produce_sample_events
from dcnios.spec import PipelineSpec

#: Raw samples for the plots (bench/plots.py), filled by the benchmarks of one run.
SERIES: dict[str, Any] = {}


@dataclass
class Result:
    benchmark: str
    metric: str
    value: float
    unit: str
    ceiling: float | None = None
    ceiling_name: str | None = None
    goal: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    date: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    #: The command whose run measured this row (rows of other runs are kept by ``--only``).
    made_by: str = ""
    #: Further ceilings measured in the same run (name -> value), shown as value / ceiling beside
    #: the ratio: the consumer's rows against wrk and a bare asyncio client, for instance.
    more_ceilings: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return None if not self.ceiling else self.value / self.ceiling

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def embedded_broker() -> bool:
    return not os.environ.get("DCNIOS_TEST_BOOTSTRAP")


@contextlib.contextmanager
def broker() -> Iterator[str]:
    external = os.environ.get("DCNIOS_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    with EmbeddedBroker() as b:
        yield b.bootstrap


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(current RSS, peak RSS) in MB from /proc."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(rest.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def wait(predicate: Any, timeout: float, step: float = 0.005) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(step)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def produce_names(spec: PipelineSpec, names: list[str]) -> None:
    """Records for /in/<name> on the first consumer's topic, as the producer would write them."""
    produce_sample_events(spec.kafka.bootstrap_servers, spec.consumers[0].topic, names)
