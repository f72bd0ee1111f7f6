"""The body dcnios sends OSCAR for a Rucio message, against OSCAR's FaaS supervisor.

The supervisor on PyPI (faas-supervisor 1.5.8, 2023-04, the one installed here) predates Rucio:
grycap/faas-supervisor added Rucio events in 2025-02 (faassupervisor/events/rucio.py) and ships them
only in its GitHub releases (2.0.1 at 97b91f2). So:

* through the installed supervisor, run as a job's pod runs it, the Rucio message is an unknown
  event: it arrives unchanged as the job's input file (the script can read the DID from it);
* where the installed supervisor has Rucio events, the real parser must pick the message's DID
  (skipped here, with that reason);
* against the upstream code read at 97b91f2, whose checks `rucio_did_upstream` records, the body
  must name the same DID.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from faassupervisor.events import parse_event

from dcnios.consumers.record import body_for
from dcnios.producers.rucio import translate
from dcnios.producers.upstream import Delivery, Events
from dcnios.sandbox.oscar import Job
from dcnios.sandbox.supervisor import (
    JobRunner,
    ScriptService,
    rucio_did_upstream,
    supervisor_available,
    supervisor_reads_rucio,
)
from dcnios.storage_event import StorageEvent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not supervisor_available(),
        reason="faas-supervisor is not installed (make install installs it with pip 24.0 --no-deps)",
    ),
]

EVERY_TYPE = ("close", "transfer-done", "datasetlock_ok", "rule_ok")
MESSAGES = [
    pytest.param(
        "close",
        {"scope": "user.alice", "name": "run42.ds", "bytes": 10, "length": 2, "events": 0},
        id="close",
    ),
    pytest.param(
        "transfer-done",
        {"scope": "user.alice", "name": "run42/f1.h5", "dst-rse": "CERN-EOS", "file-size": 5, "bytes": 5},
        id="transfer-done",
    ),
    pytest.param(
        "datasetlock_ok",
        {"scope": "data26", "name": "ds.2", "rse": "DESY", "rse_id": "x", "rule_id": "r"},
        id="lock",
    ),
]


def native_body(event_type: str, payload: dict[str, object]) -> tuple[StorageEvent, bytes]:
    """The message as Hermes sends it, its record, and the body the consumer sends (payload: native)."""
    sent = json.dumps({"event_type": event_type, "payload": payload, "created_at": "2026-12-06 22:19:48.1"})
    translation = translate(Delivery(sent.encode(), "stomp test"), source="rucio", events=EVERY_TYPE)
    assert isinstance(translation, Events)
    [event] = translation.events
    body = body_for(event, "native", None)
    assert body == sent.encode()
    return event, body


@pytest.mark.parametrize(("event_type", "payload"), MESSAGES)
def test_upstream_supervisor_downloads_the_messages_did(event_type: str, payload: dict[str, object]) -> None:
    event, body = native_body(event_type, payload)
    assert rucio_did_upstream(json.loads(body)) == (event.scope, event.did_name)


@pytest.mark.skipif(
    not supervisor_reads_rucio(),
    reason="the installed faas-supervisor has no Rucio events (PyPI's 1.5.8 predates them; "
    "grycap/faas-supervisor added them in 2025-02, released on GitHub only)",
)
@pytest.mark.parametrize(("event_type", "payload"), MESSAGES)
def test_installed_supervisor_picks_the_did(event_type: str, payload: dict[str, object]) -> None:
    event, body = native_body(event_type, payload)
    parsed = parse_event(body.decode())
    assert parsed.get_type() == "RUCIO"
    assert (parsed.scope, parsed.object_key) == (event.scope, event.did_name)


def test_pypi_supervisor_hands_the_message_to_the_script_unchanged(tmp_path: Path) -> None:
    _, body = native_body("close", {"scope": "user.alice", "name": "run42.ds", "bytes": 1, "length": 1})
    if not supervisor_reads_rucio():
        assert parse_event(body.decode()).get_type() == "UNKNOWN"
    script = tmp_path / "keep.sh"
    script.write_text('cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/event.json"\n')
    runner = JobRunner(
        {"svc": ScriptService("svc", str(script))}, str(tmp_path / "out"), workers=1, timeout=60
    )
    job = Job(f"svc-{time.monotonic_ns()}", "svc", body, time.time())
    runner(job)
    runner.shutdown(wait=True)
    assert job.status == "Succeeded", job.log
    # The supervisor writes an unknown event's JSON to the input file (events/unknown.py save_event).
    assert json.loads((tmp_path / "out" / "svc" / "event.json").read_bytes()) == json.loads(body)
