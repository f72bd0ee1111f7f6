"""Rucio messages (Hermes's STOMP bodies) → records, filtered or invalid: the pure translation."""

from __future__ import annotations

import json

import pytest

from dcnios.producers.rucio import Filtered, Invalid, RucioFilter, RucioMessage, interpret_rucio


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
ALL_TYPES = RucioFilter(event_types=("close", "transfer-done", "datasetlock_ok", "rule_ok"))


@pytest.mark.parametrize(
    ("event_type", "payload", "did", "rse"),
    [
        pytest.param("close", CLOSE, "user.alice:run42.dataset", None, id="close"),
        pytest.param("transfer-done", TRANSFER_DONE, "user.alice:run42/frame7.h5", "CERN-EOS", id="transfer"),
        pytest.param("datasetlock_ok", DATASETLOCK_OK, "user.alice:ds", "DESY-DCACHE", id="datasetlock"),
        pytest.param("rule_ok", {"scope": "s", "name": "n", "rule_id": "r"}, "s:n", None, id="rule_ok"),
    ],
)
def test_a_message_naming_a_did_becomes_a_record(event_type: str, payload: dict, did: str, rse: str) -> None:
    body = hermes_body(event_type, payload)
    got = interpret_rucio(body, ALL_TYPES)
    assert isinstance(got, RucioMessage)
    assert (got.event_type, got.did, got.rse, got.created_at) == (
        event_type,
        did,
        rse,
        "2026-12-06 22:19:48.123456",
    )
    assert got.body is body  # kept byte for byte for `payload: native`


def test_the_dedup_key_is_the_same_for_a_resent_message_and_differs_for_a_new_event() -> None:
    first = interpret_rucio(hermes_body("close", CLOSE), ALL_TYPES)
    # Hermes resending (or the broker redelivering) the same message, however it is spelled.
    resent = interpret_rucio(
        json.dumps(json.loads(hermes_body("close", CLOSE)), indent=2).encode(), ALL_TYPES
    )
    later = interpret_rucio(hermes_body("close", CLOSE, created_at="2026-12-06 22:20:00.000001"), ALL_TYPES)
    assert (
        isinstance(first, RucioMessage)
        and isinstance(resent, RucioMessage)
        and isinstance(later, RucioMessage)
    )
    assert first.dedup_key == resent.dedup_key != later.dedup_key


@pytest.mark.parametrize(
    ("selected", "body", "why"),
    [
        pytest.param(
            RucioFilter(), hermes_body("transfer-done", TRANSFER_DONE), "'transfer-done' not selected"
        ),
        pytest.param(
            RucioFilter(scopes=("user.bob",)), hermes_body("close", CLOSE), "scope 'user.alice' matches no"
        ),
        pytest.param(
            RucioFilter(names=("*.h5",)), hermes_body("close", CLOSE), "name 'run42.dataset' matches no"
        ),
        # An unselected type is filtered before its payload is read: no .invalid flood for it.
        pytest.param(
            RucioFilter(), hermes_body("rule_progress", "not an object"), "'rule_progress' not selected"
        ),
    ],
)
def test_the_filter_selects_by_event_type_scope_and_name(
    selected: RucioFilter, body: bytes, why: str
) -> None:
    got = interpret_rucio(body, selected)
    assert isinstance(got, Filtered) and why in got.why


def test_globs_and_upper_case_event_types_select() -> None:
    selected = RucioFilter(event_types=("close",), scopes=("user.*",), names=("run*",))
    got = interpret_rucio(hermes_body("CLOSE", CLOSE), selected)
    assert isinstance(got, RucioMessage) and got.event_type == "close"


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
    got = interpret_rucio(body, RucioFilter())
    assert isinstance(got, Invalid) and reason in got.reason, got
