"""workflows: in the spec: graph checks with path+line, glob overlap, and `dcnios workflow plan`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dcnios.cli import main
from dcnios.consumers.workflows.graph import Graph
from dcnios.errors import ConfigError
from dcnios.spec import parse_spec
from dcnios.spec.workflow import globs_overlap

HEAD = """\
kafka: {bootstrap_servers: "127.0.0.1:9092"}
sources:
  - {name: in, endpoint: "https://d:3880/api/v1", paths: [/data/in], topic: ev}
consumers:
  - name: raw
    topic: ev
    filter: {paths: ["/data/in/**"]}
    oscar: {endpoint: "https://o", service: calib, username: u, password: p, job_id: deterministic}
workflows:
  - name: beam
    trigger: {consumer: raw}
    storage: in
    steps:
      - {name: calibrate, service: calib}
"""
GOOD = (
    HEAD
    + """\
      - {name: thumbnails, service: thumbs, after: [calibrate]}
      - {name: features, service: feat, after: [calibrate], each: "*.h5"}
      - {name: report, service: report, after: [thumbnails, features], join: all, join_timeout: 1h}
"""
)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_spec(text, env={})
    return [str(p) for p in info.value.problems]


def test_a_good_graph_loads_in_order() -> None:
    workflow = parse_spec(GOOD, env={}).workflow("beam")
    graph = Graph.of(workflow)
    assert graph.starts == ("calibrate",)
    assert graph.children["calibrate"] == ("thumbnails", "features")
    assert graph.order.index("report") == 3 and graph.leaves() == ("report",)
    assert workflow.group == "dcnios-wf-beam" and workflow.step("report").join_timeout == 3600


def test_every_graph_problem_is_named_with_path_and_line() -> None:
    text = (
        HEAD
        + """\
      - {name: calibrate, service: calib}
      - {name: a, service: x, after: [c]}
      - {name: b, service: x, after: [a]}
      - {name: c, service: x, after: [b]}
      - {name: d, service: x, after: [calibrat]}
"""
    )
    assert problems(text) == [
        "workflows[0].steps[1].name: duplicate step name 'calibrate' (first at steps[0]) (line 15)",
        "workflows[0].steps[5].after[0]: unknown step 'calibrat' (did you mean 'calibrate'?) (line 19)",
        "workflows[0].steps[3].after: cycle: b → c → a → b (line 17)",
    ]


def test_unreachable_steps_and_joins_that_never_fire() -> None:
    text = (
        HEAD
        + """\
      - {name: tif, service: x, match: ["/data/in/*.tif"]}
      - {name: raw, service: x, match: ["/data/in/**/*.raw"]}
      - {name: both, service: x, after: [tif, raw]}
      - {name: other, service: x, match: ["/elsewhere/*"]}
      - {name: later, service: x, after: [other]}
      - {name: two, service: x, after: [calibrate], join: "2"}
"""
    )
    found = problems(text)
    assert found == [
        "workflows[0].steps[6].join: waits for 2 parent jobs, but its 1 parents run one job each (line 20)",
        "workflows[0].steps[3].after: joins 'tif' and 'raw' (join: all), which never run for the same "
        "file (line 17)",
        "workflows[0].steps[4]: step 'other' is unreachable: its match ['/elsewhere/*'] overlaps none of "
        "the trigger consumer's filter.paths ['/data/in/**'] (line 18)",
        "workflows[0].steps[5]: step 'later' is unreachable: it waits for 'other', which never runs "
        "(line 19)",
    ]


def test_references_outside_the_graph() -> None:
    text = GOOD.replace("consumer: raw}", "consumer: rw}").replace("storage: in", "storage: out")
    text += "sandbox:\n  oscar:\n    output: /tmp/o\n    password: p\n"
    text += "    services: [{name: calib, script: s.sh}]\n"
    found = problems(text)
    assert found[0] == "workflows[0].trigger.consumer: no consumer named 'rw'; consumers are raw (line 11)"
    assert found[1] == "workflows[0].storage: no source named 'out' (line 12)"
    assert (
        "workflows[0].steps[1].service: unknown service 'thumbs'; the sandbox runs calib (line 15)" in found
    )


def test_outputs_are_listed_through_a_dcache_source_only() -> None:
    text = GOOD.replace("storage: in", "storage: bucket").replace(
        "consumers:",
        "  - {name: bucket, type: s3-notifications, format: minio, topic: s3ev,\n"
        "     webhook: {port: 8470}}\nconsumers:",
    )
    found = problems(text)
    assert any(p.startswith("workflows[0].storage: source 'bucket' is not a dcache source") for p in found), (
        found
    )


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("/data/in/**", "/data/in/*.tif", True),
        ("/data/in/*.tif", "/data/in/**/*.raw", False),
        ("/data/*/x", "/data/a/*", True),
        ("/data/*", "/data/a/b", False),
        ("/a/**/z", "/a/z", True),
        ("/a/?", "/a/bc", False),
        ("/a/*.tif", "/a/x-tif", False),
    ],
)
def test_glob_overlap(a: str, b: str, overlap: bool) -> None:
    assert globs_overlap(a, b) is overlap and globs_overlap(b, a) is overlap


def test_plan_draws_text_and_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "wf.yaml"
    spec.write_text(GOOD)
    svg = tmp_path / "wf.svg"
    assert main(["workflow", "plan", "beam", "-c", str(spec), "--svg", str(svg)]) == 0
    out, err = capsys.readouterr()
    assert "calibrate [service calib; 3 tries]  ──fan-out ▶ thumbnails, features" in out
    assert "features [service feat; each *.h5; 3 tries]  ──▶ report" in out
    assert "report [service report; join all within 3600s; 3 tries]  (end)" in out
    if shutil.which("dot") is None:
        assert "graphviz's `dot` is not installed" in err and not svg.exists()
    else:
        assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))
    assert main(["workflow", "plan", "nope", "-c", str(spec)]) == 2
