from __future__ import annotations

from pathlib import Path

import pytest

from dcnios.cli import main
from dcnios.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("validate", "schema", "topics", "tail", "broker"):
        assert f"    {command}" in out


def test_validate_ok_masks_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DCACHE_PASSWORD", "dcache-secret-value")
    assert main(["validate", "-c", str(EXAMPLES / "pipeline.yaml")]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "consumer grayify" in out
    assert "dcache-secret-value" not in out and "alice:***" in out


def test_validate_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = (EXAMPLES / "pipeline.yaml").read_text().replace("rate: 50/s", "rate: fast")
    spec = tmp_path / "broken.yaml"
    spec.write_text(broken)
    assert main(["validate", "-c", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ConfigError: ")
    rate_line = "    rate: fast                            # whole group; absent = unlimited"
    line = broken.splitlines().index(rate_line) + 1
    assert f"consumers[0].rate: expected '<number>/s|/m|/h', got 'fast' (line {line})" in err
    assert "Traceback" not in err


def test_usage_error_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 2
    assert "UsageError: the following arguments are required: -c/--config" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2


def test_runtime_failure_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text('kafka: {bootstrap_servers: "127.0.0.1:1"}\n')
    assert main(["tail", "x", "-c", str(spec)]) == 1
    assert capsys.readouterr().err.startswith("KafkaError: cannot reach 127.0.0.1:1")


def test_schema_prints_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert '"title": "dcnios pipeline spec"' in capsys.readouterr().out
    assert main(["schema", "--avro"]) == 0
    assert '"name": "StorageEvent"' in capsys.readouterr().out


def test_replay_times_parse_iso_ages_and_now() -> None:
    from dcnios.cli.replay import parse_time

    now = 1_800_000_000.0
    assert parse_time("now", now=now) == 1_800_000_000_000
    assert parse_time("90m", now=now) == int((now - 5400) * 1000)
    assert parse_time("1.5h", now=now) == int((now - 5400) * 1000)
    assert parse_time("2026-11-22T10:00:00Z") == 1_795_341_600_000
    assert parse_time("2026-11-22T11:00:00+01:00") == 1_795_341_600_000
    expected = r"--to: expected an ISO 8601 time, 'now' or an age like 2h, got 'soon'"
    with pytest.raises(ConfigError, match=expected):
        parse_time("soon", option="--to")
