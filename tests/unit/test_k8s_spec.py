"""The spec's per-path readers and consumer principals: what is refused, with key path and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcnios.cli import main
from dcnios.errors import ConfigError
from dcnios.spec import parse_spec

SPEC = """\
kafka: {bootstrap_servers: "k:9092"}
sources:
  - name: petra
    endpoint: https://dcache.example.org:3880/api/v1
    paths: [/data]
    topic: petra.events
    routes:
      - {match: "/data/bt-1/**", topic: petra.bt-1, readers: [dcnios-a]}
      - {match: "/data/bt-2/**", topic: petra.bt-2, readers: [dcnios-b, ops]}
consumers:
  - name: a
    topic: petra.bt-1
    oscar: {endpoint: "https://oscar.example.org", service: s, token: t, input_path: /data}
  - name: b
    topic: petra.bt-2
    oscar: {endpoint: "https://oscar.example.org", service: s, token: t, input_path: /data}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_spec(text)
    return [str(p) for p in info.value.problems]


def test_granted_consumers_load() -> None:
    spec = parse_spec(SPEC)
    assert spec.consumer("a").principal == "dcnios-a"
    assert spec.source("petra").routes[1].readers == ("dcnios-b", "ops")
    assert spec.source("petra").readers is None
    assert set(spec.topic_readers()) == {"petra.bt-1", "petra.bt-2"}


def test_a_consumer_whose_principal_may_not_read_its_topic_is_refused() -> None:
    text = SPEC.replace("    topic: petra.bt-2\n", "    topic: petra.bt-1\n")
    assert problems(text) == [
        "consumers[1].topic: principal 'dcnios-b' may not read 'petra.bt-1' (readers: dcnios-a, from "
        "sources[0].routes[0].readers); add it there or set consumers[1].principal (line 15)"
    ]


def test_a_named_principal_is_what_is_checked() -> None:
    parse_spec(SPEC.replace("  - name: b\n", "  - name: b\n    principal: ops\n"))
    assert problems(SPEC.replace("  - name: b\n", "  - name: b\n    principal: dcnios-a\n")) == [
        "consumers[1].topic: principal 'dcnios-a' may not read 'petra.bt-2' (readers: dcnios-b, ops, from "
        "sources[0].routes[1].readers); add it there or set consumers[1].principal (line 16)"
    ]


def test_an_empty_reader_list_lets_no_consumer_read() -> None:
    text = SPEC.replace("    topic: petra.events\n", "    topic: petra.events\n    readers: []\n")
    text = text.replace("    topic: petra.bt-2\n", "    topic: petra.events\n")
    assert problems(text) == [
        "consumers[1].topic: principal 'dcnios-b' may not read 'petra.events' (readers: nobody, from "
        "sources[0].readers); add it there or set consumers[1].principal (line 16)"
    ]


def test_unrestricted_topics_stay_open() -> None:
    text = SPEC.replace(", readers: [dcnios-b, ops]", "").replace(
        "    topic: petra.bt-1\n", "    topic: petra.bt-2\n"
    )
    assert parse_spec(text).consumer("a").topic == "petra.bt-2"


def test_one_topic_carries_one_set_of_readers() -> None:
    text = SPEC.replace(
        "topic: petra.bt-2, readers: [dcnios-b, ops]", "topic: petra.bt-1, readers: [dcnios-b]"
    )
    text = text.replace("    topic: petra.bt-2\n", "    topic: petra.bt-1\n")
    found = problems(text)
    assert found[0] == (
        "sources[0].routes[1].readers: topic 'petra.bt-1' is restricted to dcnios-a by "
        "sources[0].routes[0].readers; every subtree routed to one topic must name the same readers (line 9)"
    )
    # An unrestricted subtree sharing a restricted topic is refused too.
    text = SPEC.replace("topic: petra.events\n", "topic: petra.bt-1\n", 1)
    assert problems(text) == [
        "sources[0].readers: topic 'petra.bt-1' is restricted to dcnios-a by sources[0].routes[0].readers; "
        "every subtree routed to one topic must name the same readers (line 3)"
    ]


@pytest.mark.parametrize(
    ("readers", "message"),
    [
        ("[Dcnios_A]", "sources[0].routes[0].readers: expected a lower-case DNS label"),
        ("[dcnios-a, dcnios-a]", "sources[0].routes[0].readers: names a principal twice"),
        ("{a: 1}", "sources[0].routes[0].readers: expected a list, got a mapping"),
        ("[[x]]", "sources[0].routes[0].readers[0]: expected a string, got a list"),
    ],
)
def test_bad_readers_name_the_field(readers: str, message: str) -> None:
    text = SPEC.replace("readers: [dcnios-a]", f"readers: {readers}")
    found = problems(text)
    assert any(p.startswith(message) and p.endswith("(line 8)") for p in found), found


def test_a_bad_principal_names_the_field() -> None:
    found = problems(SPEC.replace("  - name: b\n", "  - name: b\n    principal: 'User:CN=b'\n"))
    assert found[0].startswith("consumers[1].principal: expected a lower-case DNS label")
    assert found[0].endswith("(line 15)")


def test_dcnios_validate_refuses_an_unauthorised_consumer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(SPEC)
    bad.write_text(SPEC.replace("    topic: petra.bt-2\n", "    topic: petra.bt-1\n"))
    assert main(["validate", "-c", str(good)]) == 0
    out = capsys.readouterr().out
    assert "readers: dcnios-a" in out and "principal dcnios-b" in out
    assert main(["validate", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "consumers[1].topic: principal 'dcnios-b' may not read 'petra.bt-1'" in err
    assert "(line 15)" in err
