"""The topics a runner reads at its start, on a cluster that made them, or could not be reached."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType
from consumer_harness import consumer_spec
from producer_harness import make_spec

from dcnios.broker import free_port
from dcnios.consumers.run import ConsumerRunner
from dcnios.errors import KafkaError
from dcnios.producers.run import SourceRunner
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.spec import load_spec
from dcnios.status import pipeline_status

pytestmark = pytest.mark.integration


def auto_created(bootstrap: str, *topics: str, partitions: int = 3) -> None:
    """Topics as a broker with auto.create.topics.enable and num.partitions=3 makes them."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(t, partitions, 1) for t in topics]).values():
        future.result(30)


def test_a_checkpoint_topic_with_several_partitions_is_refused_naming_the_fix(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("p")
    auto_created(bootstrap, f"{prefix}.checkpoints")
    with DCacheEmulator() as dcache:
        dcache.mkdir("/data/in")
        spec = make_spec(tmp_path, bootstrap, dcache.endpoint, prefix)
        runner = SourceRunner(spec, spec.sources[0], stop=threading.Event())
        with pytest.raises(KafkaError) as raised:
            runner.run()
    message = str(raised.value)
    assert f"{prefix}.checkpoints has 3 partitions, not 1" in message
    assert "dcnios topics" in message


def test_a_checkpoint_topic_that_deletes_is_refused(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("p")
    auto_created(bootstrap, f"{prefix}.checkpoints", partitions=1)
    with DCacheEmulator() as dcache:
        dcache.mkdir("/data/in")
        spec = make_spec(tmp_path, bootstrap, dcache.endpoint, prefix)
        refused = rf"{prefix}\.checkpoints has cleanup\.policy=delete, not compact"
        with pytest.raises(KafkaError, match=refused):
            SourceRunner(spec, spec.sources[0], stop=threading.Event()).run()


def test_missing_internal_topics_are_created_compacted_with_one_partition(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("p")
    path = tmp_path / "spec.yaml"
    with DCacheEmulator() as dcache:
        dcache.mkdir("/data/in")
        path.write_text(
            f"kafka: {{bootstrap_servers: '{bootstrap}', internal_prefix: {prefix}}}\n"
            f"sources:\n  - {{name: src, endpoint: '{dcache.endpoint}', auth: {{username: alice, "
            f"password: secret}}, paths: [/data/in], topic: {prefix}.events}}\n"
        )
        spec = load_spec(path)  # no `dcnios topics` first
        stop = threading.Event()
        runner = SourceRunner(spec, spec.sources[0], stop=stop)
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while not runner.ready.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert runner.ready.is_set()
        finally:
            stop.set()
            thread.join(30)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    internal = [f"{prefix}.checkpoints", f"{prefix}.published.src"]
    topics = admin.list_topics(timeout=10).topics
    assert [len(topics[t].partitions) for t in internal] == [1, 1]
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in internal]
    for future in admin.describe_configs(resources).values():
        assert future.result(10)["cleanup.policy"].value == "compact"


def test_a_control_topic_with_several_partitions_is_refused(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("c")
    auto_created(bootstrap, f"{prefix}.control")
    spec = consumer_spec(tmp_path, bootstrap, "http://127.0.0.1:9", prefix)
    with pytest.raises(KafkaError, match=rf"{prefix}\.control has 3 partitions, not 1"):
        ConsumerRunner(spec, spec.consumers[0], stop=threading.Event()).run()


def test_an_unreachable_broker_is_named(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"kafka: {{bootstrap_servers: '{address}'}}\n"
        "sources:\n  - {name: src, endpoint: 'https://d.example/api/v1', paths: [/in], topic: t}\n"
    )
    spec = load_spec(path)
    expected = rf"cannot reach the Kafka broker at {address} \(PLAINTEXT\)"
    with pytest.raises(KafkaError, match=expected):
        SourceRunner(spec, spec.sources[0], stop=threading.Event()).run()
    with pytest.raises(KafkaError, match=expected):
        pipeline_status(spec)
