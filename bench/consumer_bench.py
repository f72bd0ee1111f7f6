"""Consumer benchmarks: Kafka -> dcnios-consumer -> OSCAR emulator with fixed latency."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import SERIES, Result, produce_names, rss_mb, wait

from dcnios.kafka import ensure_topics
from dcnios.sandbox.oscar import OscarEmulator
from dcnios.spec import load_spec
from dcnios.topics import topic_plan

LATENCY = 0.020


def _setup(
    workdir: Path, bootstrap: str, oscar: OscarEmulator, concurrency: int, n: int, rate: str | None = None
) -> Path:
    prefix = f"cbench-{uuid.uuid4().hex[:6]}"
    token = oscar.add_service("grayify")
    path = workdir / f"{prefix}.yaml"
    rate_line = f"    rate: {rate}\n" if rate else ""
    path.write_text(
        f"kafka: {{bootstrap_servers: '{bootstrap}', internal_prefix: {prefix},\n"
        "  topic_defaults: {partitions: 12}}\n"
        "consumers:\n  - name: svc\n"
        f"    topic: {prefix}.events\n    group: {prefix}\n    concurrency: {concurrency}\n{rate_line}"
        f"    oscar: {{endpoint: '{oscar.endpoint}', service: grayify, token: '{token}', input_path: /in}}\n"
        "    librdkafka: {session.timeout.ms: '6000'}\n"
    )
    spec = load_spec(path)
    ensure_topics(spec.kafka, topic_plan(spec))
    produce_names(spec, [f"b{i:07d}.png" for i in range(n)])
    return path


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_session_pool(oscar: OscarEmulator, concurrency: int, n: int) -> float:
    """A bare requests.Session thread pool against the same endpoint, in its own process."""
    script = str(Path(__file__).with_name("bare_pool.py"))
    url = f"{oscar.endpoint}/job/grayify"
    out = subprocess.run(
        [sys.executable, script, url, oscar.services["grayify"].token, str(concurrency), str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(out.stdout.strip())


def consumer_run(bootstrap: str, concurrency: int, n: int, rate: str | None = None) -> dict[str, float]:
    exe = str(Path(sys.executable).parent / "dcnios-consumer")
    with tempfile.TemporaryDirectory() as tmp, OscarEmulator(latency=LATENCY) as oscar:
        path = _setup(Path(tmp), bootstrap, oscar, concurrency, n, rate)
        bare = bare_session_pool(oscar, concurrency, min(n, 2000))
        oscar.calls.clear()
        oscar.services["grayify"].jobs.clear()
        proc = subprocess.Popen(
            [exe, "-c", str(path), "--consumer", "svc", "--log-level", "WARNING"], stderr=subprocess.DEVNULL
        )
        try:
            jobs = oscar.services["grayify"].jobs
            wait(lambda: len(jobs) >= max(1, n // 20), 120, 0.01)
            t0, c0, k0 = time.perf_counter(), _cpu_seconds(proc.pid), len(jobs)
            wait(lambda: len(jobs) >= n, 600, 0.01)
            t1, c1 = time.perf_counter(), _cpu_seconds(proc.pid)
            rss, peak = rss_mb(proc.pid)
            created = sorted(j.created for j in jobs.values())
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    done = n - k0
    return {
        "rate": done / (t1 - t0),
        "bare": bare,
        "cpu_per_1k": (c1 - c0) / done * 1000,
        "rss": rss,
        "peak": peak,
        "created": created,
    }


def run(bootstrap: str, quick: bool) -> list[Result]:
    results: list[Result] = []
    n = 3000 if quick else 12000
    for concurrency in (8, 64) if quick else (1, 8, 32, 64, 128):
        runs = consumer_run(bootstrap, concurrency, n if concurrency > 1 else n // 20)
        ceiling = concurrency / LATENCY
        SERIES.setdefault("consumer_throughput", []).append(
            (concurrency, runs["rate"], runs["bare"], ceiling)
        )
        params = {
            "concurrency": concurrency,
            "latency_ms": LATENCY * 1000,
            "records": n,
            "bare_requests_session_pool": round(runs["bare"], 1),
        }
        goal = ">= 0.9x C/L" if concurrency == 64 else None
        results.append(
            Result(
                "consumer",
                f"throughput c={concurrency}",
                runs["rate"],
                "invocations/s",
                ceiling,
                "C/L",
                goal,
                params,
            )
        )
        results.append(
            Result(
                "consumer",
                f"bare session pool c={concurrency}",
                runs["bare"],
                "invocations/s",
                ceiling,
                "C/L",
                None,
                {"concurrency": concurrency},
            )
        )
        if concurrency == 64:
            results.append(
                Result("consumer", "CPU per 1k invocations", runs["cpu_per_1k"], "CPU-s", parameters=params)
            )
            results.append(Result("consumer", "RSS", runs["rss"], "MB", 120, "goal", "<= 120 MB", params))
    return results
