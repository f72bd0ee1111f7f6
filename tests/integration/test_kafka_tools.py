"""`dcnios broker`, `topics` and `tail` against each other, on the real broker."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from dcnios.broker import free_port
from dcnios.cli import main
from dcnios.codec import StorageEventCodec
from dcnios.storage_event import StorageEvent

pytestmark = pytest.mark.integration


def write_spec(tmp_path: Path, bootstrap: str, topic: str, registry: str | None = None) -> Path:
    spec = tmp_path / "spec.yaml"
    reg = f"  schema_registry: {{url: '{registry}'}}\n" if registry else ""
    spec.write_text(
        f"kafka:\n  bootstrap_servers: '{bootstrap}'\n  topic_defaults: {{partitions: 3}}\n"
        f"  internal_prefix: {topic}-internal\n{reg}"
        "sources:\n"
        f"  - {{name: src, endpoint: 'https://d:3880/api/v1', paths: [/in], topic: {topic},\n"
        f"     routes: [{{match: '/in/raw/**', topic: {topic}.raw}}]}}\n"
        "consumers:\n"
        f"  - {{name: c1, topic: {topic},\n"
        "     oscar: {endpoint: 'https://o', service: s, token: t, input_path: /in}}\n"
    )
    return spec


def test_topics_is_idempotent(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    topic = unique("events")
    spec = write_spec(tmp_path, bootstrap, topic)
    assert main(["topics", "-c", str(spec)]) == 0
    first = capsys.readouterr().out
    assert first.count("created") == 8  # with the source's published-files index
    assert main(["topics", "-c", str(spec)]) == 0
    second = capsys.readouterr().out
    assert "created" not in second and second.count("exists") == 8
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    assert len(md.topics[topic].partitions) == 3
    assert len(md.topics[f"{topic}.invalid"].partitions) == 1
    assert f"{topic}-internal.checkpoints" in md.topics
    assert f"{topic}.dlq" in md.topics


@pytest.mark.parametrize("registry", [None, "mock://tail-test"])
def test_tail_decodes_records(
    bootstrap: str,
    tmp_path: Path,
    unique: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
    registry: str | None,
) -> None:
    topic = unique("tail")
    spec = write_spec(tmp_path, bootstrap, topic, registry)
    assert main(["topics", "-c", str(spec)]) == 0
    capsys.readouterr()
    from dcnios.spec import load_spec

    codec = StorageEventCodec(load_spec(spec).kafka.schema_registry)
    # tail must read what a codec of the same spec wrote; share the mock registry's cache.
    import dcnios.cli.tail as tail_module

    original = tail_module.StorageEventCodec
    tail_module.StorageEventCodec = lambda _registry: codec  # type: ignore[assignment,misc]
    try:
        event = StorageEvent(
            "src", "/in/ä.png", "ä.png", ("IN_CLOSE_WRITE",), None, False, "ch", 4, "https://s", 5
        )
        value, headers = codec.encode(event, topic)
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(topic, value, event.key, headers=headers, partition=0)
        producer.produce(topic, b'{"gap": "EVENT_LOSS"}', b"k", partition=0)
        producer.produce(topic, b"\xff\xfe", None, partition=0)
        assert producer.flush(10) == 0
        assert main(["tail", topic, "-c", str(spec), "--from-beginning", "--max", "3"]) == 0
    finally:
        tail_module.StorageEventCodec = original  # type: ignore[misc]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["offset"] for line in lines] == [0, 1, 2]
    assert lines[0]["key"] == "/in/ä.png"
    assert lines[0]["value"]["path"] == "/in/ä.png" and lines[0]["value"]["event_id"] == 4
    assert lines[1]["value"] == {"gap": "EVENT_LOSS"}
    assert lines[2]["value"] == "base64://4="
    assert lines[2]["key"] is None


def test_tail_missing_topic_is_clear(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, bootstrap, unique("t"))
    assert main(["tail", "no-such-topic-xyz", "-c", str(spec), "--idle-exit", "1"]) == 1
    assert "KafkaError: topic 'no-such-topic-xyz' does not exist" in capsys.readouterr().err


def test_broker_command_starts_answers_and_stops_on_sigterm() -> None:
    port = free_port()
    exe = str(Path(sys.executable).parent / "dcnios")
    with subprocess.Popen([exe, "broker", "--port", str(port)], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == f"bootstrap: 127.0.0.1:{port}\n"
        assert AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10).brokers
        # A second broker on the same port fails clearly instead of hanging.
        busy = subprocess.run(
            [exe, "broker", "--port", str(port)], capture_output=True, text=True, timeout=30, check=False
        )
        assert busy.returncode == 1
        assert f"BrokerError: port {port} on 127.0.0.1 is already in use" in busy.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    # Tansu went down with it: nothing listens on the port any more.
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
