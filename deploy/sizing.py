"""Container resources, sized from the figures in BENCHMARKS.md (2026-12-06, x86_64, Python 3.11).

* Producer: steady RSS 57.0 MB after 30,000 events, but bimodal (about 105 MB in some runs, native
  memory freed and not returned); a 1,000,000-file gap repair peaks at 100.6 MB. Throughput is
  13.2k events/s on one core (about 76 CPU-us per event); the run loop is one Python thread, so a
  second core adds nothing.
* Consumer: RSS 62.2 MB at concurrency 64; 1.1 CPU-s per 1,000 invocations; about 890
  invocations/s at most per process (c=64 against a 20 ms endpoint), where the GIL caps it near one
  core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from dcnios.spec import ConsumerSpec

__all__ = ["Resources", "consumer_resources", "producer_resources"]

#: BENCHMARKS.md "consumer | CPU per 1k invocations": 1.1 CPU-s.
CONSUMER_CPU_SECONDS_PER_CALL: Final = 1.1 / 1000
#: BENCHMARKS.md "consumer | throughput c=64": 893.5 invocations/s, about one core.
CONSUMER_MAX_CALLS_PER_POD: Final = 890.0


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
    extra_threads = max(0, consumer.concurrency - 64)
    memory = 128 + math.ceil(extra_threads / 8) * 8  # ~1 MiB per extra worker thread (stack + session)
    return Resources(
        cpu,
        memory,
        1000,
        2 * memory,
        "BENCHMARKS.md: consumer 1.1 CPU-s per 1k invocations, ~890 invocations/s per process, "
        "RSS 62.2 MB at concurrency 64",
    )
