"""Consumer benchmarks: Kafka -> dcnios-consumer -> a compiled endpoint with a fixed 20 ms latency.

The endpoint is Debian's nginx with the echo module (nginx_endpoint.py): it waits on a timer and
burns no CPU, so what caps a client is the client. Beside the consumer, in the same run and against
the same endpoint, each concurrency C measures the ceilings it is compared with:

- C/L, concurrency over latency;
- ``wrk`` (a C load generator, one thread, C connections): what the endpoint itself delivers;
- bare_asyncio.py: C tasks on one uvloop loop POSTing with aiohttp, nothing else per call;
- bare_pool.py: a requests.Session thread pool (what the consumer was built like before #14).

Invocations are counted from the consumer's own ``dcnios_consumer_invocations_total``, scraped
from its metrics port; CPU is the process's (all its threads) from /proc over the measured window.
Without nginx, its echo module or wrk (and when they cannot be installed), the consumer runs
against the Python OSCAR emulator instead and the rows that need the missing tool are skipped,
with the reason printed.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import SERIES, Result, cpu_seconds, embedded_broker, produce_names, rss_mb, wait
from nginx_endpoint import NginxEndpoint, free_port, missing

from dcnios.broker import EMBEDDED_CONSUMER_SETTINGS
from dcnios.kafka import ensure_topics
from dcnios.sandbox.oscar import OscarEmulator
from dcnios.spec import load_spec
from dcnios.topics import topic_plan

LATENCY = 0.020
SERVICE = "grayify"
HERE = Path(__file__).resolve().parent
BODY = '{"event":{"name":"x.png","mask":["IN_CLOSE_WRITE"]},"subscription":"http://d/s"}'
GOAL_RATIO = 0.85
GOAL_CPU_MS = 0.3
GOAL_RSS_MB = 120.0

#: concurrency -> (consumer records, bare asyncio calls, bare pool calls, wrk seconds)
FULL = {
    1: (300, 300, 300, 3),
    8: (3000, 3000, 1500, 3),
    64: (24000, 16000, 4000, 5),
    128: (30000, 24000, 4000, 5),
}
QUICK = {64: (6000, 4000, 1000, 2), 128: (8000, 6000, 1000, 2)}


@dataclass
class Endpoint:
    url: str  # the base, http://127.0.0.1:<port>
    token: str
    name: str  # for the parameters column
    compiled: bool


@contextmanager
def endpoint() -> Iterator[Endpoint]:
    reason = missing()
    if reason is None:
        token = uuid.uuid4().hex  # a throwaway token: the endpoint accepts any
        with NginxEndpoint(LATENCY, SERVICE, token) as ep:
            yield Endpoint(ep.endpoint, token, "nginx+echo", True)
        return
    print(
        f"consumer: {reason}: the wrk rows are skipped and the consumer runs against the Python "
        "OSCAR emulator, which caps any client here well below C/L from c=32 on",
        file=sys.stderr,
        flush=True,
    )
    with OscarEmulator(latency=LATENCY) as oscar:
        yield Endpoint(oscar.endpoint, oscar.add_service(SERVICE), "Python OSCAR emulator", False)


def _setup(workdir: Path, bootstrap: str, ep: Endpoint, concurrency: int, n: int) -> Path:
    prefix = f"cbench-{uuid.uuid4().hex[:6]}"
    path = workdir / f"{prefix}.yaml"
    # What `dcnios up` gives a consumer: on the embedded broker, its fetch wait too.
    settings = {"session.timeout.ms": "6000", **(EMBEDDED_CONSUMER_SETTINGS if embedded_broker() else {})}
    librdkafka = ", ".join(f"{k}: '{v}'" for k, v in settings.items())
    path.write_text(
        f"kafka: {{bootstrap_servers: '{bootstrap}', internal_prefix: {prefix},\n"
        "  topic_defaults: {partitions: 12}}\n"
        "consumers:\n  - name: svc\n"
        f"    topic: {prefix}.events\n    group: {prefix}\n    concurrency: {concurrency}\n"
        f"    oscar: {{endpoint: '{ep.url}', service: {SERVICE}, token: '{ep.token}', input_path: /in}}\n"
        f"    librdkafka: {{{librdkafka}}}\n"
    )
    spec = load_spec(path)
    ensure_topics(spec.kafka, topic_plan(spec))
    produce_names(spec, [f"b{i:07d}.png" for i in range(n)])
    return path


def _invocations(metrics_url: str) -> tuple[int, int]:
    """(201 answers, other outcomes) from the consumer's /metrics; (0, 0) until it serves them."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return 0, 0
    ok = other = 0
    for line in text.splitlines():
        if line.startswith("dcnios_consumer_invocations_total{"):
            value = int(float(line.rsplit(" ", 1)[1]))
            if 'status="201"' in line:
                ok += value
            else:
                other += value
    return ok, other


def _script(name: str, ep: Endpoint, concurrency: int, n: int) -> tuple[float, float]:
    """bare_asyncio.py or bare_pool.py in its own process: (invocations/s, CPU ms per invocation)."""
    out = subprocess.run(
        [sys.executable, str(HERE / name), f"{ep.url}/job/{SERVICE}", ep.token, str(concurrency), str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    rate, cpu_ms = out.stdout.split()
    return float(rate), float(cpu_ms)


def wrk(ep: Endpoint, concurrency: int, seconds: int) -> float:
    """``wrk -t 1 -c C``: POSTs as the consumer sends them; Requests/sec."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = '{BODY}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {ep.token}"\n'
        )
        script.flush()
        out = subprocess.run(
            [
                "wrk",
                "-t",
                "1",
                "-c",
                str(concurrency),
                "-d",
                f"{seconds}s",
                "-s",
                script.name,
                f"{ep.url}/job/{SERVICE}",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    found = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    return float(found.group(1))


def consumer_run(bootstrap: str, ep: Endpoint, concurrency: int, n: int) -> dict[str, float]:
    exe = str(Path(sys.executable).parent / "dcnios-consumer")
    with tempfile.TemporaryDirectory() as tmp:
        path = _setup(Path(tmp), bootstrap, ep, concurrency, n)
        port = free_port()
        metrics = f"http://127.0.0.1:{port}/metrics"
        proc = subprocess.Popen(
            [
                exe,
                "-c",
                str(path),
                "--consumer",
                "svc",
                "--log-level",
                "WARNING",
                "--metrics-port",
                str(port),
            ],
            stderr=subprocess.DEVNULL,
        )
        try:
            # Scraped every 50 ms (about 1 ms of the consumer's CPU each); the window is timed by
            # the scrapes, with the counts they read, so the scrape period costs no accuracy.
            wait(lambda: _invocations(metrics)[0] >= max(1, n // 20), 120, 0.05)
            t0, c0, (k0, _) = time.perf_counter(), cpu_seconds(proc.pid), _invocations(metrics)
            wait(lambda: sum(_invocations(metrics)) >= n, 600, 0.05)
            t1, c1, (k1, failed) = time.perf_counter(), cpu_seconds(proc.pid), _invocations(metrics)
            rss, peak = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    if failed:
        raise RuntimeError(f"the consumer saw {failed} calls not answered 201")
    return {
        "rate": (k1 - k0) / (t1 - t0),
        "cpu_ms": (c1 - c0) / (k1 - k0) * 1000,
        "rss": rss,
        "peak": peak,
    }


def _r(metric: str, value: float, unit: str, ceiling: float, name: str, **kw: Any) -> Result:
    return Result("consumer", metric, value, unit, ceiling, name, **kw)


def run(bootstrap: str, quick: bool) -> list[Result]:
    results: list[Result] = []
    with endpoint() as ep:
        for concurrency, (n, n_async, n_pool, wrk_s) in (QUICK if quick else FULL).items():
            cl = concurrency / LATENCY
            base = {"concurrency": concurrency, "latency_ms": LATENCY * 1000, "endpoint": ep.name}
            tag = f"c={concurrency}"
            ceilings: dict[str, float] = {}
            if ep.compiled:
                ceilings["wrk"] = wrk(ep, concurrency, wrk_s)
                results.append(
                    _r(
                        f"wrk {tag}",
                        ceilings["wrk"],
                        "invocations/s",
                        cl,
                        "C/L",
                        parameters={**base, "seconds": wrk_s, "threads": 1},
                    )
                )
            rate, cpu = _script("bare_asyncio.py", ep, concurrency, n_async)
            ceilings["bare asyncio"] = rate
            results.append(
                _r(
                    f"bare asyncio {tag}",
                    rate,
                    "invocations/s",
                    cl,
                    "C/L",
                    parameters={**base, "calls": n_async, "cpu_ms_per_call": round(cpu, 3)},
                    more_ceilings={k: v for k, v in ceilings.items() if k != "bare asyncio"},
                )
            )
            pool, pool_cpu = _script("bare_pool.py", ep, concurrency, n_pool)
            results.append(
                _r(
                    f"bare requests pool {tag}",
                    pool,
                    "invocations/s",
                    cl,
                    "C/L",
                    parameters={**base, "calls": n_pool, "cpu_ms_per_call": round(pool_cpu, 3)},
                    more_ceilings=dict(ceilings),
                )
            )
            got = consumer_run(bootstrap, ep, concurrency, n)
            SERIES.setdefault("consumer_throughput", []).append(
                (concurrency, got["rate"], pool, cl, ceilings.get("wrk"), ceilings["bare asyncio"])
            )
            params = {
                **base,
                "records": n,
                "cpu_ms_per_call": round(got["cpu_ms"], 3),
                "rss_mb": round(got["rss"], 1),
            }
            big = concurrency >= 64
            results.append(
                _r(
                    f"throughput {tag}",
                    got["rate"],
                    "invocations/s",
                    cl,
                    "C/L",
                    goal=f">= {GOAL_RATIO}x C/L" if big else None,
                    parameters=params,
                    more_ceilings=dict(ceilings),
                )
            )
            if big:
                results.append(
                    _r(
                        f"CPU per invocation {tag}",
                        got["cpu_ms"],
                        "ms",
                        GOAL_CPU_MS,
                        "goal",
                        goal=f"<= {GOAL_CPU_MS} ms",
                        parameters=params,
                    )
                )
                results.append(
                    _r(
                        f"RSS {tag}",
                        got["rss"],
                        "MB",
                        GOAL_RSS_MB,
                        "goal",
                        goal=f"<= {GOAL_RSS_MB:.0f} MB" if concurrency == 128 else None,
                        parameters={**params, "peak_mb": round(got["peak"], 1)},
                    )
                )
            print(
                f"consumer {tag}: {got['rate']:.0f}/s ({got['rate'] / cl:.2f}x C/L), "
                f"{got['cpu_ms']:.3f} CPU ms/call, {got['rss']:.0f} MB; ceilings "
                + ", ".join(f"{k} {v:.0f}/s" for k, v in ceilings.items()),
                file=sys.stderr,
                flush=True,
            )
    return results


def _times(r: Result, ceiling: str) -> str:
    value = r.more_ceilings.get(ceiling)
    return f"{r.value / value:.2f}" if value else "\u2013"


def side_by_side(results: list[Result]) -> str:
    """The consumer's rows as issue #14 tabulates them: one line per client and concurrency."""
    rows = [r for r in results if r.benchmark == "consumer" and r.unit == "invocations/s"]
    if not rows:
        return ""
    lines = [
        "| client | C | invocations/s | \u00d7 C/L | \u00d7 wrk | \u00d7 bare asyncio "
        "| CPU ms per call | RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = {"throughput": "**dcnios-consumer**"}
    for r in sorted(rows, key=lambda r: r.parameters.get("concurrency", 0)):  # stable: as measured
        kind = r.metric.rpartition(" ")[0]
        cpu = r.parameters.get("cpu_ms_per_call")
        rss = r.parameters.get("rss_mb") if kind == "throughput" else None
        lines.append(
            f"| {names.get(kind, kind)} | {r.parameters.get('concurrency', '')} | {r.value:,.0f} | "
            f"{r.ratio or 0:.2f} | {_times(r, 'wrk')} | {_times(r, 'bare asyncio')} | "
            f"{'' if cpu is None else f'{cpu:.3f}'} | "
            f"{'' if rss is None else f'{rss:.0f}'} |"
        )
    return "\n".join(lines) + "\n"
