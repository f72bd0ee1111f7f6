"""A run's pure transitions: joins, skips, timeouts, failure, cancel and retry, the wire format."""

from __future__ import annotations

from dcnios.consumers.workflows.graph import Graph
from dcnios.consumers.workflows.state import (
    advance,
    cancel_run,
    fail_run,
    item_outputs,
    item_succeeded,
    new_run,
    retry_run,
    run_from_json,
    run_to_json,
    start_item,
    step_job_name,
)
from dcnios.spec import parse_spec

HEAD = """\
kafka: {bootstrap_servers: "127.0.0.1:9092"}
sources:
  - {name: in, endpoint: "https://d:3880/api/v1", paths: [/data/in], topic: ev}
consumers:
  - name: raw
    topic: ev
    oscar: {endpoint: "https://o", service: calib, username: u, password: p, job_id: deterministic}
workflows:
  - name: w
    trigger: {consumer: raw}
    storage: in
    steps:
"""


def graph(steps: str) -> Graph:
    return Graph.of(parse_spec(HEAD + steps, env={}).workflows[0])


def finish(run, g, step, outputs=(), key=""):  # type: ignore[no-untyped-def]
    job = start_item(run, g, step, key, 1.0)
    item_succeeded(run, step, key, [{"path": f"/o/{job}_{n}", "name": n} for n in outputs], 2.0)
    advance(run, g, 2.0)
    return job


def test_start_steps_run_for_the_files_they_match_and_a_join_skips_what_never_ran() -> None:
    g = graph(
        "      - {name: tif, service: a, match: ['/data/in/*.tif']}\n"
        "      - {name: any, service: b}\n"
        "      - {name: both, service: c, after: [tif, any]}\n"
    )
    run = new_run(g, "r1", {"path": "/data/in/x.raw", "partition": 1}, 0.0)
    assert run.steps["tif"].status == "skipped" and run.steps["any"].status == "running"
    finish(run, g, "any", ["o.txt"])
    # join: all over a skipped parent waits only for the parents that run.
    assert run.steps["both"].status == "running"
    assert [i["step"] for i in run.steps["both"].items[""].inputs] == ["any"]


def test_a_count_join_releases_on_enough_mapped_jobs_and_a_timeout_fails_the_run() -> None:
    g = graph(
        "      - {name: split, service: a}\n"
        "      - {name: each, service: b, after: [split], each: '*.h5'}\n"
        "      - {name: some, service: c, after: [each], join: '2', join_timeout: 10s}\n"
    )
    run = new_run(g, "r2", {"path": "/data/in/x", "partition": 0}, 0.0)
    finish(run, g, "split", ["a.h5", "b.h5", "c.h5", "notes.txt"])
    assert len(run.steps["each"].items) == 3
    first, _second, _third = sorted(run.steps["each"].items)
    finish(run, g, "each", ["f"], key=first)
    assert run.steps["some"].status == "waiting"
    assert advance(run, g, 11.0) and run.status == "failed"
    assert run.failed_step == "some" and "join 2 not satisfied within 10s" in run.error
    assert run.steps["each"].status == "cancelled"


def test_failure_cancel_and_retry_keep_job_names_unique() -> None:
    g = graph("      - {name: one, service: svc}\n      - {name: two, service: svc, after: [one]}\n")
    run = new_run(g, "r3", {"path": "/data/in/x", "partition": 0}, 0.0)
    job1 = start_item(run, g, "one", "", 1.0)
    assert fail_run(run, "one", "", "job failed", "tail", now=2.0) == []
    assert run.steps["two"].status == "cancelled" and run.log_tail == "tail"
    assert retry_run(run, 3.0) and run.status == "running" and run.retries == 1
    job2 = start_item(run, g, "one", "", 3.0)
    assert job2 != job1 and job2 == step_job_name("svc", "r3", "one", "", 2)
    assert cancel_run(run, 4.0) == [("one", job2)]  # a job under way is deleted
    assert retry_run(run, 5.0)
    item = run.steps["one"].items[""]
    assert item.status == "running" and item.job == job2  # asked for again under its name
    assert run_from_json(run_to_json(run)) == run


def test_job_names_are_dns_labels_and_outputs_are_found_by_their_job_prefix() -> None:
    name = step_job_name("a-very-long-service-name-indeed", "f" * 24, "s" * 63, "/x" * 200, 123)
    assert len(name) <= 63 and name.replace("-", "").isalnum() and name == name.lower()
    found = item_outputs("job-1", [("/o/job-1_a", "job-1_a"), ("/o/job-12_b", "job-12_b"), ("/o/x", "x")])
    assert found == [{"path": "/o/job-1_a", "name": "a"}]


def test_an_s3_trigger_keeps_its_original_notification_in_the_run_state() -> None:
    # The run state is JSON: the original bytes of an S3 or Rucio event used to fail it
    # (TypeError: bytes is not JSON serializable), which stopped the orchestrator for good.
    import json
    from types import SimpleNamespace

    from dcnios.consumers.workflows.scheduler import _event_json, _trigger_event
    from dcnios.storage_event import StorageEvent

    original = b'{"Records":[{"eventSource":"minio:s3"}]}\xff'
    event = StorageEvent(
        source="s3",
        path="bucket/in/a.h5",
        name="a.h5",
        mask=(),
        cookie=None,
        is_dir=False,
        channel="s3",
        event_id=None,
        subscription="",
        observed_at=1,
        kind="s3",
        original=original,
    )
    stored = json.loads(json.dumps({"event": _event_json(event)}))
    again = _trigger_event(SimpleNamespace(trigger=stored))  # type: ignore[arg-type]
    assert again == event
