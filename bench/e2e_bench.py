"""End-to-end, scale-out and shared-rate benchmarks (dCache emulator → producer → Kafka → consumers → OSCAR).

Per-stage latency of every event comes from timestamps the pipeline already carries: the upload
time (taken here), ``observed_at`` in the record (the SSE frame was read), the record's Kafka
timestamp (written by the producer), the consumer's fetch-delay histogram, and the moment the OSCAR
emulator received the request. Events are matched by file name, which the traceparent's trace id
also identifies (it derives from the event).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests
from common import SERIES, Result, embedded_broker, percentile, produce_names, wait
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from dcnios.broker import EMBEDDED_CONSUMER_SETTINGS, free_port
from dcnios.codec import StorageEventCodec
from dcnios.control import write_control
from dcnios.kafka import ensure_topics
from dcnios.producers.run import SourceRunner
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.sandbox.oscar import OscarEmulator
from dcnios.spec import PipelineSpec, load_spec
from dcnios.status import partition_extents
from dcnios.topics import topic_plan

BIN = Path(sys.executable).parent


def _consumer_settings() -> dict[str, str]:
    """What `dcnios up` gives a consumer: on the embedded broker, its fetch wait too."""
    settings = {"session.timeout.ms": "6000"}
    if embedded_broker():
        settings.update(EMBEDDED_CONSUMER_SETTINGS)
    return settings


def _spec(
    work: Path, bootstrap: str, dcache: str, oscar: str, token: str, *, concurrency: int = 32, extra: str = ""
) -> tuple[PipelineSpec, Path]:
    prefix = f"e2e-{uuid.uuid4().hex[:6]}"
    path = work / f"{prefix}.yaml"
    path.write_text(
        f"kafka: {{bootstrap_servers: '{bootstrap}', internal_prefix: {prefix},\n"
        "  topic_defaults: {partitions: 12}}\n"
        f"sources:\n  - {{name: src, endpoint: '{dcache}', auth: {{username: alice, password: secret}},\n"
        f"     paths: [/in], topic: {prefix}.events}}\n"
        "consumers:\n  - name: svc\n"
        f"    topic: {prefix}.events\n    group: {prefix}\n    concurrency: {concurrency}\n{extra}"
        f"    oscar: {{endpoint: '{oscar}', service: svc, token: '{token}', input_path: /in}}\n"
        f"    librdkafka: {{{', '.join(f'{k}: {v!r}' for k, v in _consumer_settings().items())}}}\n"
    )
    spec = load_spec(path)
    ensure_topics(spec.kafka, topic_plan(spec))
    return spec, path


def _records(spec: PipelineSpec, topic: str) -> dict[str, tuple[int, int]]:
    """name -> (observed_at ms, Kafka timestamp ms) for every record of ``topic``."""
    extents = partition_extents(spec.kafka, topic)
    consumer = Consumer({"bootstrap.servers": spec.kafka.bootstrap_servers, "group.id": uuid.uuid4().hex})
    consumer.assign(
        [TopicPartition(topic, p, OFFSET_BEGINNING) for p, (lo, hi) in extents.items() if hi > lo]
    )
    todo = {p for p, (lo, hi) in extents.items() if hi > lo}
    codec = StorageEventCodec()
    out: dict[str, tuple[int, int]] = {}
    deadline = time.monotonic() + 60
    while todo and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None or msg.error() is not None:
            continue
        event = codec.decode(msg.value(), msg.headers(), topic)
        out.setdefault(event.name or "", (event.observed_at, msg.timestamp()[1]))
        if (msg.offset() or 0) + 1 >= extents[msg.partition() or 0][1]:
            todo.discard(msg.partition() or 0)
    consumer.close()
    return out


def _histogram_quantile(text: str, name: str, q: float) -> float:
    """Upper bucket bound holding the q-quantile of a Prometheus histogram."""
    buckets = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0
    for bound, cumulative in buckets:
        if total and cumulative >= q * total:
            return bound
    return float("nan")


def end_to_end(bootstrap: str, quick: bool) -> list[Result]:
    rate, seconds = 500, (6 if quick else 20)
    n = rate * seconds
    metrics_port = free_port()
    with tempfile.TemporaryDirectory() as tmp, DCacheEmulator() as dcache, OscarEmulator() as oscar:
        dcache.mkdir("/in")
        token = oscar.add_service("svc")
        spec, path = _spec(Path(tmp), bootstrap, dcache.endpoint, oscar.endpoint, token)
        stop = threading.Event()
        runner = SourceRunner(spec, spec.sources[0], stop=stop)
        threading.Thread(target=runner.run, daemon=True).start()
        proc = subprocess.Popen(
            [
                *(str(BIN / "dcnios-consumer"), "-c", str(path), "--consumer", "svc"),
                *("--log-level", "WARNING", "--metrics-port", str(metrics_port)),
            ],
            stderr=subprocess.DEVNULL,
        )
        try:
            wait(runner.ready.is_set, 60)
            wait(lambda: _ready(metrics_port), 60, 0.1)
            uploaded: dict[str, int] = {}
            start = time.time()
            for i in range(n):
                delay = start + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                name = f"e{i:06d}.dat"
                uploaded[name] = int(time.time() * 1000)  # observed_at has millisecond resolution too
                dcache.upload(f"/in/{name}", 10)
            wait(lambda: len(oscar.job_calls("svc")) >= n, 120, 0.05)
            metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            stop.set()
        received = {json.loads(c.body)["event"]["name"]: c.at for c in oscar.job_calls("svc")}
        records = _records(spec, spec.sources[0].topic)
    stages: dict[str, list[float]] = {
        "upload → frame read": [],
        "frame read → record written": [],
        "record written → OSCAR received": [],
        "total": [],
    }
    for name, t_upload in uploaded.items():
        if name not in records or name not in received:
            continue
        observed, written = records[name]
        stages["upload → frame read"].append(observed - t_upload)
        stages["frame read → record written"].append(written - observed)
        stages["record written → OSCAR received"].append(received[name] * 1000 - written)
        stages["total"].append(received[name] * 1000 - t_upload)
    SERIES["e2e_latency_ms"] = stages
    params = {"rate": f"{rate}/s", "events": n, "oscar_latency_ms": 0}
    results = []
    for stage, values in stages.items():
        for q in (0.5, 0.95, 0.99):
            results.append(
                Result(
                    "end-to-end", f"{stage} p{int(q * 100)}", percentile(values, q), "ms", parameters=params
                )
            )
    for q in (0.5, 0.99):
        fetched = _histogram_quantile(metrics, "dcnios_consumer_fetch_delay_seconds", q) * 1000
        results.append(
            Result(
                "end-to-end",
                f"record written → consumer fetched p{int(q * 100)} (≤ bucket)",
                fetched,
                "ms",
                parameters=params,
            )
        )
    results.append(
        Result("end-to-end", "events delivered", len(stages["total"]), "events", n, "uploaded", "all", params)
    )
    return results


def _ready(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _consumers(path: Path, count: int, metrics: list[int] | None = None) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(count):
        extra = ["--metrics-port", str(metrics[i])] if metrics else []
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "dcnios-consumer"),
                    "-c",
                    str(path),
                    "--consumer",
                    "svc",
                    "--log-level",
                    "WARNING",
                    *extra,
                ],
                stderr=subprocess.DEVNULL,
            )
        )
    return procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(60)


def scale(bootstrap: str, quick: bool) -> list[Result]:
    """12 partitions, 1 → 3 consumer processes against a latency-bound endpoint."""
    latency, concurrency = 0.05, 4
    n = 600 if quick else 2400
    rates = {}
    for count in (1, 3):
        with tempfile.TemporaryDirectory() as tmp, OscarEmulator(latency=latency) as oscar:
            token = oscar.add_service("svc")
            spec, path = _spec(
                Path(tmp),
                bootstrap,
                "http://127.0.0.1:9/api/v1",
                oscar.endpoint,
                token,
                concurrency=concurrency,
            )
            produce_names(spec, [f"s{i:06d}.dat" for i in range(n)])
            procs = _consumers(path, count)
            try:
                jobs = oscar.services["svc"].jobs
                wait(lambda jobs=jobs: len(jobs) >= n // 10, 120, 0.05)
                t0, k0 = time.perf_counter(), len(jobs)
                wait(lambda jobs=jobs: len(jobs) >= n, 600, 0.05)
                rates[count] = (n - k0) / (time.perf_counter() - t0)
            finally:
                _stop(procs)
    per_process_ceiling = concurrency / latency
    params = {
        "partitions": 12,
        "latency_ms": latency * 1000,
        "concurrency_per_process": concurrency,
        "records": n,
    }
    SERIES["scale"] = rates
    return [
        Result(
            "scale",
            "throughput, 1 process",
            rates[1],
            "invocations/s",
            per_process_ceiling,
            "C/L",
            None,
            params,
        ),
        Result(
            "scale",
            "throughput, 3 processes",
            rates[3],
            "invocations/s",
            3 * per_process_ceiling,
            "3 C/L",
            None,
            params,
        ),
        Result(
            "scale", "speed-up 1 → 3 processes", rates[3] / rates[1], "x", 3.0, "linear", ">= 2.7x", params
        ),
    ]


def shared_rate(bootstrap: str, quick: bool) -> list[Result]:
    """Three processes share 200/s, then the rate changes to 100/s at runtime."""
    seconds = 10 if quick else 30
    first, second = 200, 100
    n = first * (seconds + 8) + second * (seconds + 8)
    with tempfile.TemporaryDirectory() as tmp, OscarEmulator() as oscar:
        token = oscar.add_service("svc")
        spec, path = _spec(
            Path(tmp),
            bootstrap,
            "http://127.0.0.1:9/api/v1",
            oscar.endpoint,
            token,
            extra="    rate: 200/s\n",
        )
        produce_names(spec, [f"r{i:06d}.dat" for i in range(n)])
        procs = _consumers(path, 3)
        try:
            jobs = oscar.services["svc"].jobs
            wait(lambda: len(jobs) >= first * 3, 120, 0.05)  # all three members have joined by now
            t0 = time.time()
            time.sleep(seconds)
            t1 = time.time()
            write_control(spec.kafka, "svc", rate=f"{second}/s")
            time.sleep(2)  # applied within a second; skip the transition
            t2 = time.time()
            time.sleep(seconds)
            t3 = time.time()
            created = sorted(j.created for j in list(jobs.values()))
        finally:
            _stop(procs)
    achieved_first = len([t for t in created if t0 <= t < t1]) / (t1 - t0)
    achieved_second = len([t for t in created if t2 <= t < t3]) / (t3 - t2)
    params = {"processes": 3, "window_s": seconds}
    return [
        Result(
            "rate",
            "3 processes sharing 200/s",
            achieved_first,
            "invocations/s",
            first,
            "target",
            "within 2%",
            params,
        ),
        Result(
            "rate",
            "after `dcnios rate svc 100/s`",
            achieved_second,
            "invocations/s",
            second,
            "target",
            "within 2%",
            params,
        ),
    ]


def run(bootstrap: str, quick: bool) -> list[Result]:
    return end_to_end(bootstrap, quick) + scale(bootstrap, quick) + shared_rate(bootstrap, quick)
