"""`dcnios sandbox`: real filesystem notifications become dCache events; OSCAR jobs run scripts."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.sandbox.localfs import DirectoryEvents
from dcnios.sandbox.oscar import OscarEmulator
from dcnios.sandbox.supervisor import JobRunner, ScriptService, WebdavDoor
from dcnios.sandbox.tls import make_pki


@pytest.fixture
def dcache(tmp_path: Path) -> Iterator[tuple[DCacheEmulator, Path]]:
    root = tmp_path / "root"
    (root / "old").mkdir(parents=True)
    (root / "old" / "before.txt").write_text("was here first")
    pki = make_pki(tmp_path / "pki", "127.0.0.1")
    door = (str(pki.cert), str(pki.key))
    with (
        DCacheEmulator({"demo": "pw"}, files_root=str(root), webdav_tls=door) as emu,
        DirectoryEvents(emu, str(root)),
    ):
        emu.door_ca = str(pki.ca)  # type: ignore[attr-defined]
        yield emu, root


def _subscribe(emu: DCacheEmulator, path: str) -> str:
    s = requests.Session()
    s.auth = ("demo", "pw")
    channel = s.post(f"{emu.endpoint}/events/channels", json={}).headers["Location"]
    r = s.post(f"{channel}/subscriptions/inotify", json={"path": path}, allow_redirects=False)
    assert r.status_code == 201, r.text
    return channel.rsplit("/", 1)[1]


def _events(emu: DCacheEmulator, cid: str) -> list[dict[str, object]]:
    with emu.lock:
        frames = [frame for _, frame in emu.channels[cid].backlog]
    out = []
    for frame in frames:
        data = frame.split(b"data: ", 1)[1].rstrip(b"\n")
        out.append(json.loads(data)["event"])
    return out


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_copying_a_file_in_gives_the_upload_sequence(
    dcache: tuple[DCacheEmulator, Path], tmp_path: Path
) -> None:
    emu, root = dcache
    cid = _subscribe(emu, "/")
    source = tmp_path / "data.csv"
    source.write_bytes(b"a,b\n1,2\n")
    shutil.copy(source, root / "data.csv")
    _wait_for(lambda: any("IN_CLOSE_WRITE" in e["mask"] for e in _events(emu, cid)))  # type: ignore[operator]
    masks = [e["mask"][0] for e in _events(emu, cid) if e.get("name") == "data.csv"]  # type: ignore[index]
    assert masks == ["IN_CREATE", "IN_OPEN", "IN_MODIFY", "IN_ATTRIB", "IN_CLOSE_WRITE"]
    listing = requests.get(f"{emu.endpoint}/namespace/?children=true", auth=("demo", "pw"), timeout=5).json()
    sizes = {c["fileName"]: c["size"] for c in listing["children"]}
    assert sizes["data.csv"] == 8 and "old" in sizes


def test_rename_delete_and_mkdir_events(dcache: tuple[DCacheEmulator, Path], tmp_path: Path) -> None:
    emu, root = dcache
    cid = _subscribe(emu, "/old")
    os.rename(root / "old" / "before.txt", root / "old" / "after.txt")
    (root / "old" / "after.txt").unlink()
    (root / "old" / "sub").mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("moved in")
    os.rename(outside, root / "old" / "moved-in.txt")  # no close event under the root: settles
    _wait_for(lambda: any(e.get("name") == "moved-in.txt" for e in _events(emu, cid)))  # type: ignore[union-attr]
    seen = [(e.get("name"), e["mask"]) for e in _events(emu, cid)]  # type: ignore[union-attr]
    assert seen[0][0] == "before.txt" and seen[0][1] == ["IN_MOVED_FROM"]
    assert seen[1][0] == "after.txt" and seen[1][1] == ["IN_MOVED_TO"]
    assert ("after.txt", ["IN_DELETE"]) in seen
    assert ("sub", ["IN_CREATE", "IN_ISDIR"]) in seen
    assert "/old/moved-in.txt" in emu.entries and "/old/after.txt" not in emu.entries


def test_webdav_get_serves_files_and_nothing_outside_the_root(dcache: tuple[DCacheEmulator, Path]) -> None:
    emu, _ = dcache
    door = emu.endpoint.removesuffix("/api/v1")
    assert requests.get(f"{door}/old/before.txt", timeout=5).content == b"was here first"
    assert requests.get(f"{door}/old/missing.txt", timeout=5).status_code == 404
    assert requests.get(f"{door}/../../etc/passwd", timeout=5).status_code == 404
    assert requests.get(f"{door}/old/before.txt", auth=("demo", "wrong"), timeout=5).status_code == 401


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with DCacheEmulator() as emu, pytest.raises(FileNotFoundError, match="not a directory"):
        DirectoryEvents(emu, str(tmp_path / "nope"))


# -- OSCAR jobs run for real ----------------------------------------------------------------------
SCRIPT = """#!/bin/sh
echo "event=$EVENT"
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/copy-$(basename "$INPUT_FILE_PATH")"
echo "$JOB_UUID $OSCAR_SERVICE_NAME" > "$TMP_OUTPUT_DIR/who.txt"
"""


def _script(tmp_path: Path, text: str) -> str:
    path = tmp_path / "svc.sh"
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _invoke(oscar: OscarEmulator, service: str, token: str, body: bytes) -> requests.Response:
    return requests.post(
        f"{oscar.endpoint}/job/{service}", data=body, headers={"Authorization": f"Bearer {token}"}, timeout=5
    )


def _finished(oscar: OscarEmulator, service: str, count: int) -> list[object]:
    _wait_for(lambda: sum(j.status in ("Succeeded", "Failed") for j in oscar.jobs(service)) >= count)
    return oscar.jobs(service)  # type: ignore[return-value]


def test_dcache_event_fetches_the_file_runs_the_script_and_collects_outputs(
    dcache: tuple[DCacheEmulator, Path], tmp_path: Path
) -> None:
    emu, root = dcache
    (root / "in").mkdir()
    (root / "in" / "x.bin").write_bytes(b"\x00payload\xff")
    out = tmp_path / "out"
    runner = JobRunner(
        {"svc": ScriptService("svc", _script(tmp_path, SCRIPT), "/in")},
        str(out),
        webdav=WebdavDoor(emu.webdav_door or "", "demo", "pw", emu.door_ca),  # type: ignore[attr-defined]
    )
    with OscarEmulator(executor=runner) as oscar:
        token = oscar.add_service("svc")
        body = b'{"event":{"name":"x.bin","mask":["IN_CLOSE_WRITE"]},"subscription":"http://h/s/1"}'
        assert _invoke(oscar, "svc", token, body).status_code == 201
        (job,) = _finished(oscar, "svc", 1)
        assert job.status == "Succeeded", job.log  # type: ignore[attr-defined]
        log = requests.get(
            f"{oscar.endpoint}/system/logs/svc/{job.name}",  # type: ignore[attr-defined]
            auth=("oscar", "oscar123"),
            timeout=5,
        ).text
    runner.shutdown()
    assert (out / "svc" / "copy-x.bin").read_bytes() == b"\x00payload\xff"
    assert (out / "svc" / "who.txt").read_text().split() == [job.name, "svc"]  # type: ignore[attr-defined]
    # The job log is the real supervisor's: its own log lines and the script's output.
    assert "supervisor - INFO - Creating response" in log and 'event={"event":' in log
    assert runner.totals.outputs == 2 and runner.totals.succeeded == 1


def test_base64_bodies_become_the_input_file_and_garbage_fails_the_job(tmp_path: Path) -> None:
    runner = JobRunner({"svc": ScriptService("svc", _script(tmp_path, SCRIPT))}, str(tmp_path / "out"))
    with OscarEmulator(executor=runner) as oscar:
        token = oscar.add_service("svc")
        assert _invoke(oscar, "svc", token, base64.b64encode(b"raw bytes")).status_code == 201
        # Not JSON and not valid base64 (the supervisor's decoder skips foreign characters, so a
        # bad padding is what fails it).
        assert _invoke(oscar, "svc", token, b"abc").status_code == 201
        jobs = _finished(oscar, "svc", 2)
    runner.shutdown()
    states = sorted(j.status for j in jobs)  # type: ignore[attr-defined]
    assert states == ["Failed", "Succeeded"]
    copies = list((tmp_path / "out" / "svc").glob("copy-event-file-*"))
    assert [c.read_bytes() for c in copies] == [b"raw bytes"]
    failed = next(j for j in jobs if j.status == "Failed")  # type: ignore[attr-defined]
    assert "Incorrect padding" in failed.log  # type: ignore[attr-defined]


def test_a_failing_script_still_succeeds_as_in_oscar_but_is_counted(tmp_path: Path) -> None:
    runner = JobRunner(
        {"svc": ScriptService("svc", _script(tmp_path, "#!/bin/sh\necho boom >&2\nexit 3\n"))},
        str(tmp_path / "out"),
    )
    with OscarEmulator(executor=runner) as oscar:
        token = oscar.add_service("svc")
        _invoke(oscar, "svc", token, b'{"any": "json"}')
        (job,) = _finished(oscar, "svc", 1)
    runner.shutdown()
    assert job.status == "Succeeded"  # type: ignore[attr-defined]
    assert "exited with status 3" in job.log and "boom" in job.log  # type: ignore[attr-defined]
    assert runner.totals.script_errors == 1


def test_missing_script_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="svc: script"):
        JobRunner({"svc": ScriptService("svc", str(tmp_path / "none.sh"))}, str(tmp_path))


def test_worker_pool_is_bounded(tmp_path: Path) -> None:
    marker = tmp_path / "running"
    marker.mkdir()
    script = _script(
        tmp_path,
        f"#!/bin/sh\ntouch {marker}/$JOB_UUID\nls {marker} | wc -l >> {tmp_path}/peaks\n"
        f"sleep 0.3\nrm {marker}/$JOB_UUID\n",
    )
    runner = JobRunner({"svc": ScriptService("svc", script)}, str(tmp_path / "out"), workers=2)
    with OscarEmulator(executor=runner) as oscar:
        token = oscar.add_service("svc")
        for _ in range(6):
            _invoke(oscar, "svc", token, b"{}")
        _finished(oscar, "svc", 6)
    runner.shutdown()
    peaks = [int(x) for x in (tmp_path / "peaks").read_text().split()]
    assert len(peaks) == 6 and max(peaks) <= 2


def test_the_oscar_emulator_takes_a_burst_of_connections_without_dropping_any() -> None:
    # A consumer opens its connections at once. With socketserver's listen backlog of 5 the
    # emulator dropped SYNs, and each dropped one stalled its call by a 1 s retransmit, which
    # held a partition's commits back; OSCAR (Go) listens with the kernel's somaxconn.
    with OscarEmulator() as emu:
        host, port = emu.endpoint.removeprefix("http://").split(":")
        started = time.monotonic()
        conns = [socket.create_connection((host, int(port)), timeout=10) for _ in range(300)]
        took = time.monotonic() - started
        for conn in conns:
            conn.close()
    assert took < 0.9, f"300 connections took {took:.2f}s: SYNs were dropped and retransmitted"
