"""Every body dcnios-consumer builds, through OSCAR's real FaaS supervisor (faas-supervisor on PyPI).

The supervisor runs as an OSCAR job's pod runs it (`echo $EVENT | supervisor`, FUNCTION_CONFIG
naming the sandbox dCache's HTTPS WebDAV door as ``webdav.dcache``) and must stage exactly the
file the event names. Where it cannot (nested names, whitespace runs), the consumer must not send
the body at all: those cases assert both the supervisor's failure and the policy's refusal.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcnios.consumers.record import body_for, unstageable_reason
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.sandbox.oscar import Job
from dcnios.sandbox.supervisor import JobRunner, ScriptService, WebdavDoor, supervisor_available
from dcnios.sandbox.tls import make_pki
from dcnios.storage_event import StorageEvent, dcache_envelope

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not supervisor_available(),
        reason="faas-supervisor is not installed (make install installs it with pip 24.0 --no-deps)",
    ),
]

# Copies the staged input to the output under its own basename, so the test sees what was staged.
SCRIPT = 'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/$(basename "$INPUT_FILE_PATH").staged"\n'


class Sandbox:
    def __init__(self, root: Path, out: Path, dcache: DCacheEmulator, ca: str) -> None:
        self.root, self.out, self.dcache, self.ca = root, out, dcache, ca
        script = root.parent / "stage.sh"
        script.write_text(SCRIPT)
        self.script = str(script)

    def runner(self, input_path: str) -> JobRunner:
        door = self.dcache.webdav_door
        assert door is not None
        return JobRunner(
            {"svc": ScriptService("svc", self.script, input_path)},
            str(self.out),
            webdav=WebdavDoor(door, "alice", "secret", self.ca),
            workers=1,
            timeout=60,
        )

    def put(self, path: str, data: bytes) -> None:
        local = self.root / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    root, out = tmp_path / "root", tmp_path / "out"
    root.mkdir()
    pki = make_pki(tmp_path / "pki", "127.0.0.1")
    with DCacheEmulator(files_root=str(root), webdav_tls=(str(pki.cert), str(pki.key))) as dcache:
        yield Sandbox(root, out, dcache, str(pki.ca))


def run_job(runner: JobRunner, body: bytes) -> Job:
    job = Job(f"svc-{time.monotonic_ns()}", "svc", body, time.time())
    runner(job)
    runner.shutdown(wait=True)
    assert job.status in ("Succeeded", "Failed")
    return job


def event(path: str, mask: str = "IN_CLOSE_WRITE", **kw: object) -> StorageEvent:
    fields: dict[str, object] = {
        "source": "src",
        "path": path,
        "name": os.path.basename(path),
        "mask": (mask,),
        "cookie": None,
        "is_dir": False,
        "channel": "ch",
        "event_id": 7,
        "subscription": "https://dcache:3880/api/v1/events/channels/ch/subscriptions/inotify/a1",
        "observed_at": 1_700_000_000_000,
    }
    fields.update(kw)
    return StorageEvent(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("input_path", "path", "extra"),
    [
        pytest.param("/data/in", "/data/in/a.png", {}, id="flat"),
        pytest.param("/data/in", "/data/in/ünï cödé €.txt", {}, id="unicode-and-spaces"),
        pytest.param("/data/in", "/data/in/moved.h5", {"cookie": "ck-1"}, id="srm-in-moved-to"),
        pytest.param(
            "/data/in",
            "/data/in/found.dat",
            {"event_id": None, "synthetic": True, "gap": "EVENT_LOSS"},
            id="synthetic-reconciled",
        ),
        pytest.param(
            "/data/p%41q #?", "/data/p%41q #?/x%20y#z?.bin", {}, id="dir-with-hash-percent-question"
        ),
        pytest.param("/", "/top.txt", {}, id="input-path-is-root"),
    ],
)
def test_the_supervisor_stages_the_named_file(
    sandbox: Sandbox, input_path: str, path: str, extra: dict[str, object]
) -> None:
    data = f"contents of {path}".encode()
    sandbox.put(path, data)
    sandbox.put(os.path.dirname(path) + "/decoy-" + os.path.basename(path), b"wrong file")
    mask = "IN_MOVED_TO" if extra.get("cookie") else "IN_CLOSE_WRITE"
    body = body_for(event(path, mask, **extra), "dcache", input_path)
    assert body is not None
    job = run_job(sandbox.runner(input_path), body)
    assert job.status == "Succeeded", job.log
    staged = sandbox.out / "svc" / (os.path.basename(path) + ".staged")
    assert staged.read_bytes() == data


def test_a_record_payload_arrives_as_the_input_file(sandbox: Sandbox) -> None:
    body = body_for(event("/data/in/a.png"), "record", None)
    assert body is not None
    job = run_job(sandbox.runner("/data/in"), body)
    assert job.status == "Succeeded", job.log
    [staged] = list((sandbox.out / "svc").iterdir())
    # The supervisor re-serialises unrecognised JSON into the input file (events/__init__.py).
    assert json.loads(staged.read_bytes()) == json.loads(body)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        pytest.param("/data/in/run 1/a#b.txt", "below a sub-directory", id="nested"),
        pytest.param("/data/in/two  spaces.txt", "run of spaces", id="run-of-spaces"),
    ],
)
def test_names_the_supervisor_cannot_stage_are_never_sent(sandbox: Sandbox, path: str, why: str) -> None:
    sandbox.put(path, b"data")
    ev = event(path)
    assert body_for(ev, "dcache", "/data/in") is None
    assert why in unstageable_reason(path, "/data/in")
    # Why: the real supervisor fails on the body one would naively send (name relative to the
    # input path). If a newer faas-supervisor stages it, this fails and the rule can go.
    naive = body_for(ev, "dcache", "/data/in", nested=True)
    if naive is None:  # the whitespace case: build it by hand, as the old consumer did
        naive = dcache_envelope(ev, name=path.removeprefix("/data/in/"))
    job = run_job(sandbox.runner("/data/in"), naive)
    assert job.status == "Failed"
    assert not (sandbox.out / "svc").exists()


def test_a_missing_file_fails_the_job_with_the_supervisors_log(sandbox: Sandbox) -> None:
    body = body_for(event("/data/in/gone.txt"), "dcache", "/data/in")
    assert body is not None
    job = run_job(sandbox.runner("/data/in"), body)
    assert job.status == "Failed"
    assert "RemoteResourceNotFound" in job.log or "not found" in job.log.lower()


def test_a_script_failure_does_not_fail_the_job(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.put("/data/in/a.txt", b"x")
    failing = tmp_path / "fail.sh"
    failing.write_text("echo broken >&2\nexit 3\n")
    runner = sandbox.runner("/data/in")
    runner.services["svc"] = ScriptService("svc", str(failing), "/data/in")
    body = body_for(event("/data/in/a.txt"), "dcache", "/data/in")
    assert body is not None
    job = run_job(runner, body)
    assert job.status == "Succeeded"  # as in OSCAR: the supervisor never checks the exit status
    assert runner.totals.script_errors == 1
