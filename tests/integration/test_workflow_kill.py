"""A workflow orchestrator killed -9 mid-run, ten times: every run completes, no job is created twice.

The orchestrator is a real ``dcnios workflow run`` process; OSCAR's and dCache's emulators run
here, so every job call and every job is counted. Each kill lands while jobs are running and
calls are under way; the next process reads the runs topic, resumes each run where its state
says it was, asks again for the jobs it had named (OSCAR answers "already exists") and follows
them.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from consumer_harness import event, produce
from workflow_harness import cluster, wait_runs, workflow_spec

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

BIN = Path(sys.executable).parent
RUNS = 40
PACE = 2.5  # seconds between triggering files: runs keep starting while the kills go on
ITEMS = 10
KILLS = 10
GRAPH = """\
      - {name: calibrate, service: calib}
      - {name: thumbnails, service: thumbs, after: [calibrate]}
      - {name: features, service: feat, after: [calibrate], each: "*.h5"}
      - {name: report, service: report, after: [thumbnails, features]}
"""


def _owned(log: Path) -> int:
    return log.read_text(errors="replace").count(": owns partitions") if log.exists() else 0


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [str(BIN / "dcnios"), "workflow", "run", "beam", "-c", str(config), "--log-level", "INFO"],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def test_kill_9_ten_times_mid_run_every_run_completes_with_no_duplicate_job(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("wfk")
    rng = random.Random(17)
    with cluster() as made:
        made.duration = 0.4  # long enough for every kill to find jobs running
        made.add("calib", lambda _job: [f"frame-{k}.h5" for k in range(ITEMS)], input_path="/data/in")
        for service in ("thumbs", "feat", "report"):
            made.add(service)
        spec = workflow_spec(tmp_path, bootstrap, made, prefix, GRAPH, session_ms=6000)
        config = tmp_path / f"{prefix}.yaml"
        log = tmp_path / "orchestrator.log"
        feeder = threading.Thread(
            target=lambda: [
                (
                    produce(bootstrap, f"{prefix}.events", [event(i, f"/data/in/shot-{i}.raw")]),
                    time.sleep(PACE),
                )
                for i in range(RUNS)
            ],
            daemon=True,
        )
        feeder.start()
        owned_before = _owned(log)
        proc = _start(config, log)
        kills = 0
        try:
            for _ in range(KILLS):
                deadline = time.monotonic() + 60
                while _owned(log) <= owned_before and time.monotonic() < deadline:
                    time.sleep(0.1)  # killed while its join is pending, a Tansu group wedges
                # Some progress under this process, then kill it in the middle of it.
                target = len(made.oscar.job_calls()) + rng.randint(2, 12)
                deadline = time.monotonic() + 15
                while len(made.oscar.job_calls()) < target and time.monotonic() < deadline:
                    time.sleep(0.02)
                proc.kill()
                proc.wait(30)
                kills += 1
                owned_before = _owned(log)
                proc = _start(config, log)
            done = wait_runs(spec, RUNS, "succeeded", timeout=240)
        finally:
            proc.terminate()
            proc.wait(60)
        expected = {"calib": RUNS, "thumbs": RUNS, "feat": RUNS * ITEMS, "report": RUNS}
        jobs = {s: made.jobs(s) for s in expected}
        created = Counter(c.headers.get("X-Delegated-Job-ID") for c in made.oscar.job_calls())
        twice = {name: n for name, n in created.items() if n > 1}
        followed = sum(1 for c in made.oscar.calls if c.path.startswith("/job/") and c.status == 500)
        print(
            f"\nworkflow kill -9: {kills} kills, {RUNS} runs, {sum(created.values())} jobs created, "
            f"{followed} asked again and followed (already exists)"
        )
        assert kills == KILLS
        assert not twice  # OSCAR would refuse a second job of one name; none was even asked twice
        assert {s: len(j) for s, j in jobs.items()} == expected  # one job per item: no extra attempt
        assert all(j.status == "Succeeded" for js in jobs.values() for j in js)
        assert all(i.attempt == 1 for r in done.values() for _, i in r.items())
        assert "Traceback" not in log.read_text(errors="replace")
