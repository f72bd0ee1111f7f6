"""Container resources, sized from the figures in BENCHMARKS.md (2026-12-06, x86_64, Python 3.11).

* Producer: steady RSS 57.0 MB after 30,000 events, but bimodal (about 105 MB in some runs, native
  memory freed and not returned); a 1,000,000-file gap repair peaks at 100.6 MB. Throughput is
  13.2k events/s on one core (about 76 CPU-us per event); the run loop is one Python thread, so a
  second core adds nothing.
* Consumer (one event loop): RSS 96 MB at concurrency 64 and 101 MB at 128; 0.233 CPU-s per 1,000
  invocations; about 3,830 invocations/s at most per process (c=128 against a 20 ms endpoint),
  where its loop thread is near one core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from dcnios.spec import ConsumerSpec

__all__ = ["Resources", "consumer_resources", "producer_resources"]

#: BENCHMARKS.md "Consumer side by side": 0.233 CPU-ms per invocation at c=64.
CONSUMER_CPU_SECONDS_PER_CALL: Final = 0.233 / 1000
#: BENCHMARKS.md "Consumer side by side": 3,830 invocations/s at c=128, the loop near one core.
CONSUMER_MAX_CALLS_PER_POD: Final = 3830.0


@dataclass(frozen=True, slots=True)
class Resources:
    cpu_request_m: int
    memory_request_mi: int
    cpu_limit_m: int
    memory_limit_mi: int
    why: str

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {
            "requests": {"cpu": f"{self.cpu_request_m}m", "memory": f"{self.memory_request_mi}Mi"},
            "limits": {"cpu": f"{self.cpu_limit_m}m", "memory": f"{self.memory_limit_mi}Mi"},
        }


def producer_resources() -> Resources:
    # 128Mi covers the common 57 MB mode with room; 256Mi the ~105 MB mode and the 100.6 MB peak
    # of a million-file repair. 250m sustains ~3,000 events/s (76 us each); one core is the ceiling.
    return Resources(
        250,
        128,
        1000,
        256,
        "BENCHMARKS.md: producer RSS 57.0 MB steady (bimodal ~105 MB), 100.6 MB peak for a "
        "1M-file gap repair; 13.2k events/s per core",
    )


def consumer_resources(consumer: ConsumerSpec) -> Resources:
    """CPU from the calls a pod can make: the group's ``rate`` when it has one (all of it may land
    on one pod), else the measured per-process ceiling; memory from the c=64 RSS, plus room for
    larger thread pools."""
    # Without a rate: half the measured ceiling requested, the ceiling (one core) as the limit.
    calls = consumer.rate.per_second if consumer.rate is not None else CONSUMER_MAX_CALLS_PER_POD / 2
    calls = min(calls, CONSUMER_MAX_CALLS_PER_POD)
    cpu = max(100, min(1000, math.ceil(calls * CONSUMER_CPU_SECONDS_PER_CALL * 1000)))
    # 96 MB at c=64, 101 MB at c=128: about 8 MiB more per 64 calls in flight above 128, with room.
    memory = 128 + math.ceil(max(0, consumer.concurrency - 128) / 64) * 8
    return Resources(
        cpu,
        memory,
        1000,
        2 * memory,
        "BENCHMARKS.md: consumer 0.233 CPU-s per 1k invocations, ~3,830 invocations/s per process, "
        "RSS 101 MB at concurrency 128",
    )
