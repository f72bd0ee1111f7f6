"""Workflows against the OSCAR emulator (job tracking) and the dCache emulator (outputs), on Kafka.

One triggering file starts one run; steps fan out, map a parent's 50 outputs one job each, join,
retry failed jobs under new names, fail the run with the step's error and log tail, and are
cancelled or retried through the run-state topic.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from consumer_harness import event, produce
from producer_harness import wait_for
from workflow_harness import Cluster, cluster, runs, start, wait_runs, workflow_spec

from dcnios.cli import main
from dcnios.consumers.workflows.state import run_id_for, step_job_name
from dcnios.storage_event import dedup_key

pytestmark = pytest.mark.integration

GRAPH = """\
      - {name: calibrate, service: calib}
      - {name: thumbnails, service: thumbs, after: [calibrate]}
      - {name: features, service: feat, after: [calibrate], each: "*.h5", concurrency: 16}
      - {name: report, service: report, after: [thumbnails, features], join: all}
"""
ITEMS = 50


def _beam(made: Cluster) -> None:
    frames = [f"frame-{k:02d}.h5" for k in range(ITEMS)]
    made.add("calib", lambda _job: [*frames, "calib.log"], input_path="/data/in")
    made.add("thumbs", lambda _job: ["thumb.png"])
    made.add("feat", lambda _job: ["features.json"])
    made.add("report", lambda _job: ["report.pdf"])


def test_fan_out_split_map_of_50_and_a_join_into_one_report(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("wf")
    with cluster() as made:
        _beam(made)
        spec = workflow_spec(tmp_path, bootstrap, made, prefix, GRAPH)
        trigger = event(1, "/data/in/shot-1.raw")
        produce(bootstrap, f"{prefix}.events", [trigger, trigger])  # a redelivery starts no second run
        running = start(spec)
        try:
            [run] = wait_runs(spec, 1, "succeeded", orchestrator=running.runner).values()
        finally:
            running.halt()
        assert not running.errors
        assert run.id == run_id_for("beam", trigger.source, dedup_key(trigger))
        assert {s: len(made.jobs(s)) for s in ("calib", "thumbs", "feat", "report")} == {
            "calib": 1,
            "thumbs": 1,
            "feat": ITEMS,
            "report": 1,
        }
        # The start step got the triggering file as a dCache event its supervisor stages.
        [calib_body] = made.bodies("calib")
        assert calib_body["event"]["name"] == "shot-1.raw"  # type: ignore[index]
        # The split-map: one job per .h5 output of calibrate (calib.log is not mapped), each
        # given a reference to its file, not its contents.
        calib_job = step_job_name("calib", run.id, "calibrate", "", 1)
        mapped = sorted(b["dcnios_workflow"]["inputs"][0]["path"] for b in made.bodies("feat"))  # type: ignore[index]
        assert mapped == [f"/out/calib/{calib_job}_frame-{k:02d}.h5" for k in range(ITEMS)]
        # The join: one report job over the thumbnail and all 50 feature files.
        [report] = made.bodies("report")
        inputs = report["dcnios_workflow"]["inputs"]  # type: ignore[index]
        assert sorted({i["step"] for i in inputs}) == ["features", "thumbnails"]
        assert len(inputs) == ITEMS + 1 and all(i["storage_provider"] == "webdav.dcache" for i in inputs)
        assert run.steps["features"].status == "succeeded" and len(run.steps["features"].items) == ITEMS
        metrics = running.runner.metrics
        assert metrics.runs_ended.labels("beam", "succeeded")._value.get() == 1
        assert metrics.step_jobs.labels("beam", "features", "succeeded")._value.get() == ITEMS


def test_a_failing_branch_is_retried_then_fails_the_run_and_runs_retry_resumes_it(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = unique("wf")
    steps = GRAPH.replace(
        "service: thumbs, after", "service: thumbs, retry: {max_attempts: 2, initial_backoff: 50ms}, after"
    )
    with cluster() as made:
        _beam(made)
        broken = {"on": True}
        made.failures["thumbs"] = lambda job: (
            f"convert: {job.name}: no decode delegate\n" if broken["on"] else None
        )
        spec = workflow_spec(tmp_path, bootstrap, made, prefix, steps)
        produce(bootstrap, f"{prefix}.events", [event(2, "/data/in/shot-2.raw")])
        running = start(spec)
        try:
            [run] = wait_runs(spec, 1, "failed", orchestrator=running.runner).values()
            thumbs = [j.name for j in made.jobs("thumbs")]
            assert thumbs == [step_job_name("thumbs", run.id, "thumbnails", "", n) for n in (1, 2)]
            assert run.failed_step == "thumbnails"
            assert run.error == f"job {thumbs[1]} Failed"
            assert run.log_tail == f"convert: {thumbs[1]}: no decode delegate\n"
            assert run.steps["report"].status == "cancelled" and not made.jobs("report")
            config = str(tmp_path / f"{prefix}.yaml")
            assert main(["runs", "show", run.id[:8], "-c", config]) == 0
            shown = capsys.readouterr().out
            assert "error    thumbnails: job" in shown and "no decode delegate" in shown
            broken["on"] = False
            assert main(["runs", "retry", run.id, "-c", config]) == 0
            [run] = wait_runs(spec, 1, "succeeded", orchestrator=running.runner).values()
        finally:
            running.halt()
        assert run.retries == 1
        assert [j.name for j in made.jobs("thumbs")][-1] == step_job_name(
            "thumbs", run.id, "thumbnails", "", 3
        )
        assert len(made.jobs("feat")) == ITEMS and len(made.jobs("calib")) == 1  # done work is not redone
        capsys.readouterr()
        assert main(["runs", "list", "-c", config, "--json"]) == 0
        [row] = json.loads(capsys.readouterr().out)
        assert row["state"] == "succeeded" and row["jobs"] == 1 + 3 + ITEMS + 1


def test_cancel_deletes_the_jobs_under_way_and_starts_nothing_more(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("wf")
    with cluster() as made:
        _beam(made)
        made.duration = 3600  # the calibration never ends by itself
        spec = workflow_spec(tmp_path, bootstrap, made, prefix, GRAPH)
        produce(bootstrap, f"{prefix}.events", [event(3, "/data/in/shot-3.raw")])
        running = start(spec)
        try:
            wait_for(lambda: len(made.jobs("calib")) == 1, 60)
            [run] = runs(spec).values()
            config = str(tmp_path / f"{prefix}.yaml")
            assert main(["runs", "cancel", run.id, "-c", config]) == 0
            [run] = wait_runs(spec, 1, "cancelled", orchestrator=running.runner).values()
            wait_for(lambda: not made.jobs("calib"), 10)  # DELETE /system/logs/calib/<job>
            assert main(["runs", "cancel", run.id, "-c", config]) == 1  # already cancelled
        finally:
            running.halt()
        assert run.steps["calibrate"].items[""].status == "cancelled"
        assert all(run.steps[s].status == "cancelled" for s in ("thumbnails", "features", "report"))
        assert not made.jobs("thumbs") and not made.jobs("report")


def test_a_new_orchestrator_resumes_a_run_and_follows_the_job_it_had_named(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    """The quick version of the kill -9 scenario (test_workflow_kill.py): the member stops while
    a job runs; the next one reads the run's state, asks for the same job, and follows it."""
    prefix = unique("wf")
    steps = (
        "      - {name: calibrate, service: calib}\n"
        "      - {name: report, service: report, after: [calibrate]}\n"
    )
    with cluster() as made:
        made.add("calib", input_path="/data/in")
        made.add("report")
        made.duration = 1.5  # the job outlives the first orchestrator
        spec = workflow_spec(tmp_path, bootstrap, made, prefix, steps)
        produce(bootstrap, f"{prefix}.events", [event(4, "/data/in/shot-4.raw")])
        first = start(spec)
        try:
            wait_for(lambda: len(made.jobs("calib")) == 1, 60)
        finally:
            first.halt()
        second = start(spec)
        try:
            [run] = wait_runs(spec, 1, "succeeded", orchestrator=second.runner).values()
        finally:
            second.halt()
        assert not first.errors and not second.errors
        calls = [c.status for c in made.oscar.calls if c.path == "/job/calib"]
        assert calls == [201, 500]  # created once, then asked again: "already exists", followed
        assert len(made.jobs("calib")) == 1 and len(made.jobs("report")) == 1
        assert run.steps["calibrate"].items[""].attempt == 1
