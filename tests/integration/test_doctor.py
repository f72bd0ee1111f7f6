"""`dcnios doctor` against the dCache and OSCAR emulators: one line a check, a fix for each failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dcnios.cli import main as dcnios_main
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.sandbox.oscar import OscarEmulator

pytestmark = pytest.mark.integration


@pytest.fixture
def systems() -> Iterator[tuple[DCacheEmulator, OscarEmulator]]:
    with DCacheEmulator() as dcache, OscarEmulator() as oscar:
        dcache.mkdir("/data/in")
        dcache.mkdir("/data/in/raw")
        yield dcache, oscar


def _spec(tmp_path: Path, dcache: str, oscar: str, *, source: str, consumer: str) -> str:
    path = tmp_path / "doctor.yaml"
    path.write_text(
        f"""\
kafka: {{bootstrap_servers: "127.0.0.1:1"}}
sources:
  - {{name: src, endpoint: "{dcache}", auth: {{username: alice, password: secret}}, topic: ev, {source}}}
consumers:
  - {{name: svc, topic: ev, oscar: {{endpoint: "{oscar}", service: grayify, {consumer}}}}}
"""
    )
    return str(path)


def test_a_healthy_spec_passes_every_check(
    systems: tuple[DCacheEmulator, OscarEmulator], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dcache, oscar = systems
    oscar.add_service("grayify", input_path="/data/in")
    spec = _spec(
        tmp_path,
        dcache.endpoint,
        oscar.endpoint,
        source="paths: [/data/in]",
        consumer="username: oscar, password: oscar123, job_id: deterministic",
    )
    assert dcnios_main(["doctor", "-c", spec]) == 0
    out = capsys.readouterr().out
    for line in (
        f"ok   source src: dCache events API answers at {dcache.endpoint}",
        "ok   source src: /data/in can be listed",
        "ok   consumer svc: service grayify exists and the credentials are accepted",
        "ok   consumer svc: the service token is accepted",
        "ok   consumer svc: the service stages dCache files from /data/in",
        "ok   consumer svc: files in /data/in (source src) can be staged",
        "ok   consumer svc: OSCAR v4.1 names jobs after X-Delegated-Job-ID",
        "ok   consumer svc: the job listing is readable",
        "all checks passed",
    ):
        assert line in out, out


def test_each_failure_names_a_fix(
    systems: tuple[DCacheEmulator, OscarEmulator], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dcache, oscar = systems
    oscar.add_service("grayify", input_path="/data/in")
    spec = _spec(
        tmp_path,
        dcache.endpoint,
        oscar.endpoint,
        source="paths: [/data/in, /data/missing], recursive: true",
        consumer="token: '" + "c" * 64 + "', input_path: /data/in",
    )
    assert dcnios_main(["doctor", "-c", spec]) == 1
    out = capsys.readouterr().out
    assert "FAIL source src: cannot list /data/missing" in out
    assert "FAIL consumer svc: OSCAR refuses the service token (401)" in out
    assert "fix: copy the token again" in out
    assert (
        "WARN consumer svc: source src watches /data/in recursively: files below its sub-directories" in out
    )
    assert "WARN consumer svc: jobs are not followed" in out
    assert "FAIL consumer svc: source src watches /data/missing, outside /data/in" in out
    assert "3 check(s) failed" in out


def test_a_service_without_a_dcache_input_and_a_wrong_login(
    systems: tuple[DCacheEmulator, OscarEmulator], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dcache, oscar = systems
    oscar.add_service("grayify", input=[{"storage_provider": "webdav.other", "path": "/data/in"}])
    spec = _spec(
        tmp_path,
        dcache.endpoint,
        oscar.endpoint,
        source="paths: [/data/in]",
        consumer="username: oscar, password: oscar123",
    )
    assert dcnios_main(["doctor", "-c", spec]) == 1
    out = capsys.readouterr().out
    assert "FAIL consumer svc: service grayify has no webdav.dcache input" in out
    wrong = _spec(
        tmp_path,
        dcache.endpoint,
        oscar.endpoint,
        source="paths: [/data/in]",
        consumer="username: oscar, password: wrong",
    )
    assert dcnios_main(["doctor", "-c", wrong]) == 1
    assert "fix: the cluster credentials are refused" in capsys.readouterr().out
    oscar.stop()
    assert dcnios_main(["doctor", "-c", wrong]) == 1
    assert (
        f"FAIL consumer svc: OSCAR at {oscar.endpoint} does not answer GET /health" in capsys.readouterr().out
    )


def test_a_sub_directory_watch_and_an_old_oscar_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with DCacheEmulator() as dcache, OscarEmulator(version="3") as oscar:
        dcache.mkdir("/data/in")
        dcache.mkdir("/data/in/raw")
        oscar.add_service("grayify", input_path="/data/in")
        spec = _spec(
            tmp_path,
            dcache.endpoint,
            oscar.endpoint,
            source="paths: [/data/in/raw]",
            consumer="username: oscar, password: oscar123, job_id: deterministic",
        )
        assert dcnios_main(["doctor", "-c", spec]) == 1
    out = capsys.readouterr().out
    assert "FAIL consumer svc: OSCAR v3 ignores X-Delegated-Job-ID" in out
    assert "FAIL consumer svc: source src watches /data/in/raw, a sub-directory of /data/in" in out
