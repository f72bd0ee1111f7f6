"""Rucio messages (Hermes's STOMP bodies) → records, skipped or rejected: the pure translation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from dcnios.deploy.k8s_spec import SECRETS_DIR, pod_spec_file
from dcnios.errors import ConfigError
from dcnios.producers.rucio import translate
from dcnios.producers.upstream import Delivery, Events, Rejected, Skipped
from dcnios.secrets import Secret
from dcnios.spec import RucioSourceSpec, load_spec, parse_spec
from dcnios.storage_event import KIND_RUCIO, StorageEvent, dedup_key


def hermes_body(event_type: str, payload: object, created_at: str = "2026-12-06 22:19:48.123456") -> bytes:
    """The body exactly as hermes.py deliver_to_activemq builds it (json.dumps, default separators)."""
    return json.dumps({"event_type": event_type, "payload": payload, "created_at": created_at}).encode()


CLOSE = {"scope": "user.alice", "name": "run42.dataset", "bytes": 1024, "length": 3, "events": 0}
TRANSFER_DONE = {
    "activity": "User Subscriptions",
    "request-id": "b2f1",
    "scope": "user.alice",
    "name": "run42/frame7.h5",
    "src-rse": "DESY-DCACHE",
    "dst-rse": "CERN-EOS",
    "dst-url": "davs://eos.cern.ch/run42/frame7.h5",
    "file-size": 2048,
    "checksum-adler": "0a1b2c3d",
}
DATASETLOCK_OK = {"scope": "user.alice", "name": "ds", "rse": "DESY-DCACHE", "rse_id": "f00", "rule_id": "r1"}
EVERY_TYPE = ("close", "transfer-done", "datasetlock_ok", "rule_ok")


def run(body: bytes, **selected: Any) -> Events | Skipped | Rejected:
    delivery = Delivery(body=body, origin="stomp /queue/events 1", received_ms=1_765_000_000_000)
    got = translate(delivery, source="rucio", channel="/queue/events", **selected)
    assert isinstance(got, Events | Skipped | Rejected)
    return got


def one_event(body: bytes, **selected: Any) -> StorageEvent:
    got = run(body, **selected)
    assert isinstance(got, Events), got
    [event] = got.events
    return event


@pytest.mark.parametrize(
    ("event_type", "payload", "key", "rse"),
    [
        pytest.param("close", CLOSE, "user.alice:run42.dataset", None, id="close"),
        pytest.param("transfer-done", TRANSFER_DONE, "user.alice:run42/frame7.h5", "CERN-EOS", id="transfer"),
        pytest.param("datasetlock_ok", DATASETLOCK_OK, "user.alice:ds", "DESY-DCACHE", id="datasetlock"),
        pytest.param("rule_ok", {"scope": "s", "name": "n", "rule_id": "r"}, "s:n", None, id="rule_ok"),
    ],
)
def test_a_message_naming_a_did_becomes_a_record(
    event_type: str, payload: dict[str, Any], key: str, rse: str | None
) -> None:
    body = hermes_body(event_type, payload)
    event = one_event(body, events=EVERY_TYPE)
    assert (event.kind, event.key, event.event_name, event.rse) == (KIND_RUCIO, key.encode(), event_type, rse)
    assert (event.scope, event.did_name, event.source, event.observed_at) == (
        payload["scope"],
        payload["name"],
        "rucio",
        1_765_000_000_000,
    )
    assert event.original is body  # kept byte for byte for `payload: native`


def test_the_size_is_a_transfers_file_size_else_the_payloads_bytes() -> None:
    sizes = [
        one_event(hermes_body(t, p), events=EVERY_TYPE).size
        for t, p in (("transfer-done", TRANSFER_DONE), ("close", CLOSE), ("datasetlock_ok", DATASETLOCK_OK))
    ]
    assert sizes == [2048, 1024, None]


def test_the_dedup_key_is_the_same_for_a_resent_message_and_differs_for_a_new_event() -> None:
    first = one_event(hermes_body("close", CLOSE))
    resent = one_event(hermes_body("close", CLOSE))  # Hermes resending, or the broker redelivering
    later = one_event(hermes_body("close", CLOSE, created_at="2026-12-06 22:20:00.000001"))
    assert dedup_key(first) == dedup_key(resent) != dedup_key(later)


@pytest.mark.parametrize(
    ("selected", "body", "why"),
    [
        pytest.param({}, hermes_body("transfer-done", TRANSFER_DONE), "event_type transfer-done", id="type"),
        pytest.param(
            {"scopes": ("user.bob",)}, hermes_body("close", CLOSE), "scope not selected", id="scope"
        ),
        pytest.param({"names": ("*.h5",)}, hermes_body("close", CLOSE), "name not selected", id="name"),
        pytest.param(
            {"events": EVERY_TYPE, "rses": ("DESY-*",)},
            hermes_body("transfer-done", TRANSFER_DONE),
            "rse not selected",
            id="rse",
        ),
        # A message without an RSE does not match a non-empty rses list.
        pytest.param({"rses": ("*",)}, hermes_body("close", CLOSE), "rse not selected", id="no-rse"),
        # An unselected type is skipped before its payload is read: no .invalid flood for it.
        pytest.param(
            {}, hermes_body("rule_progress", "not an object"), "event_type rule_progress", id="early"
        ),
    ],
)
def test_the_filter_selects_by_event_type_scope_name_and_rse(
    selected: dict[str, Any], body: bytes, why: str
) -> None:
    got = run(body, **selected)
    assert isinstance(got, Skipped) and got.reason == why


def test_globs_and_upper_case_event_types_select() -> None:
    body = hermes_body("CLOSE", CLOSE)
    event = one_event(body, events=("clo*",), scopes=("user.*",), names=("run*",))
    assert event.event_name == "close"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"\xff\xfe", "body is not UTF-8", id="not-utf8"),
        pytest.param(b"close user.alice:x", "body is not JSON", id="not-json"),
        pytest.param(b"[1, 2]", "body is JSON list, not an object", id="not-object"),
        pytest.param(b'{"payload": {}}', "event_type is missing", id="no-event-type"),
        pytest.param(
            b'{"event_type": "close", "payload": "x"}', "close: payload is missing or not", id="payload"
        ),
        pytest.param(hermes_body("close", {"name": "n"}), "close: payload.scope is missing", id="no-scope"),
        pytest.param(
            hermes_body("close", {"scope": "s", "name": ""}), "close: payload.name is missing", id="name"
        ),
        pytest.param(
            hermes_body("close", {"scope": "s", "name": 7}), "payload.name is missing or not", id="int"
        ),
    ],
)
def test_a_message_dcnios_cannot_use_gets_a_reason(body: bytes, reason: str) -> None:
    got = run(body)
    assert isinstance(got, Rejected) and reason in got.reason, got


# -- the spec -----------------------------------------------------------------------------------
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_example_spec_loads_with_its_stomp_settings() -> None:
    spec = load_spec(EXAMPLES / "rucio.yaml", env={"RUCIO_STOMP_PASSWORD": "s3cret"})
    source = spec.source("rucio")
    assert isinstance(source, RucioSourceSpec)
    assert source.stomp.brokers == ("rucio-mq.example.org:61614",) and source.stomp.vhost == "rucio"
    assert source.stomp.tls and source.stomp.verify and source.stomp.password == Secret("s3cret")
    assert "s3cret" not in repr(source)
    assert source.events == ("close", "transfer-done") and source.topic_for("user.x:y") == "rucio.events"
    assert spec.topic_kinds("rucio.events") == frozenset({"rucio"})


RUCIO = """\
kafka: {bootstrap_servers: "127.0.0.1:9092"}
sources:
  - name: rucio
    type: rucio
    topic: rucio.events
    stomp:
      brokers: [BROKERS]
      destination: /queue/events
      STOMP
    events: [EVENTS]
"""


def rucio_problems(brokers: str = "mq:61614", stomp: str = "prefetch: 8", events: str = "close") -> list[str]:
    text = RUCIO.replace("BROKERS", brokers).replace("STOMP", stomp).replace("EVENTS", events)
    with pytest.raises(ConfigError) as info:
        parse_spec(text, env={})
    return [str(p) for p in info.value.problems]


def test_stomp_settings_are_checked_with_path_and_line() -> None:
    assert rucio_problems(brokers="mq") == [
        "sources[0].stomp.brokers: expected host:port (Hermes's brokers and port), got 'mq' (line 7)"
    ]
    assert rucio_problems(stomp="username: u") == [
        "sources[0].stomp: username and password go together (line 6)"
    ]
    assert rucio_problems(stomp="tls: false\n      ca_bundle: /etc/hosts") == [
        "sources[0].stomp.ca_bundle: is set, but tls is false (line 10)"
    ]
    assert rucio_problems(events="CLOSE") == [
        "sources[0].events: Hermes sends event types in lower case (transfer-done, close), "
        "got 'CLOSE' (line 10)"
    ]
    assert rucio_problems(stomp="prefetch: 0") == [
        "sources[0].stomp.prefetch: expected a positive number, got 0 (line 9)"
    ]


def test_k8s_mounts_the_stomp_password_and_ca_bundle_from_the_secret(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    text = (
        (EXAMPLES / "rucio.yaml")
        .read_text()
        .replace("# ca_bundle: /etc/grid-security/certificates/ca.pem", f"ca_bundle: {ca}")
    )
    spec = parse_spec(text, env={"RUCIO_STOMP_PASSWORD": "s3cret"})
    rendered = pod_spec_file(spec, secret="dcnios")
    stomp = yaml.safe_load(rendered.text)["sources"][0]["stomp"]
    assert stomp["password_file"] == f"{SECRETS_DIR}/dcnios/sources.rucio.stomp.password"
    assert stomp["ca_bundle"] == f"{SECRETS_DIR}/dcnios/sources.rucio.stomp.ca_bundle"
    assert "s3cret" not in rendered.text
    assert {f.spec_key for f in rendered.files} >= {
        "sources.rucio.stomp.password",
        "sources.rucio.stomp.ca_bundle",
    }
