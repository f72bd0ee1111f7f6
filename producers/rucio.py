"""One Rucio message (as Hermes sends it over STOMP) → what dcnios makes of it, pure.

Hermes (rucio lib/rucio/daemons/hermes/hermes.py, ``deliver_to_activemq``) sends each message as
``json.dumps({"event_type": <lower-case>, "payload": {...}, "created_at": str(datetime)})`` with
the STOMP headers ``persistent: true`` and ``event_type``. Payloads that name a DID carry ``scope``
and ``name`` (``close`` from core/did.py; ``transfer-done`` and the other ``transfer-*`` from
core/request.py, with ``dst-rse``; ``datasetlock_ok`` with ``rse``; ``rule_ok`` with ``rule_id``).

OSCAR's supervisor recognises exactly that body (grycap/faas-supervisor
faassupervisor/events/__init__.py ``_is_rucio_event``: ``event_type`` present and ``scope`` in
``payload``; events/rucio.py reads ``payload.name`` and ``payload.scope``), so the original bytes
are kept for the consumer's ``payload: native`` body.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from dcnios.spec.model import glob_match

__all__ = ["Filtered", "Invalid", "RucioFilter", "RucioMessage", "interpret_rucio"]

#: Payload fields naming the RSE a message is about, most specific first: where a transfer put
#: the file (core/request.py), then the lock's or deletion's RSE.
_RSE_FIELDS: Final = ("dst-rse", "rse")


@dataclass(frozen=True, slots=True)
class RucioFilter:
    """Which messages become records. Event types compare in lower case, as Hermes sends them."""

    event_types: Sequence[str] = ("close",)
    scopes: Sequence[str] = ()
    names: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class RucioMessage:
    """A message that names a DID and passed the filter."""

    event_type: str
    scope: str
    name: str
    rse: str | None
    created_at: str | None
    body: bytes
    #: Same event type, payload and time → the same key, however the JSON was spelled. Hermes
    #: deletes a message only after sending it (at-least-once) and the STOMP broker redelivers what
    #: was not acknowledged: both repeat a message unchanged. Two real events about one DID differ
    #: in ``created_at``.
    dedup_key: str

    @property
    def did(self) -> str:
        """``scope:name``, Rucio's own spelling of a DID: the Kafka key, so one DID keeps its order."""
        return f"{self.scope}:{self.name}"


@dataclass(frozen=True, slots=True)
class Filtered:
    """A well-formed message the filter does not select (acknowledged, counted, not written)."""

    event_type: str
    why: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message dcnios cannot use: it goes to ``<topic>.invalid`` with this reason."""

    reason: str


def _dedup_key(event_type: str, payload: dict[str, Any], created_at: object) -> str:
    canonical = json.dumps([event_type, payload, created_at], sort_keys=True, separators=(",", ":"))
    return f"rucio#{hashlib.blake2b(canonical.encode(), digest_size=12).hexdigest()}"


def interpret_rucio(body: bytes, selected: RucioFilter) -> RucioMessage | Filtered | Invalid:
    """Parse, check and filter one STOMP message body."""
    try:
        # Decoded here: json.loads(bytes) would guess UTF-16/32 too; Hermes sends UTF-8 (json.dumps).
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Invalid(f"body is not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        message = json.loads(text)
    except ValueError as exc:
        return Invalid(f"body is not JSON: {exc}")
    if not isinstance(message, dict):
        return Invalid(f"body is JSON {type(message).__name__}, not an object")
    event_type = message.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        return Invalid("event_type is missing or not a string")
    event_type = event_type.lower()
    if event_type not in selected.event_types:
        return Filtered(event_type, f"event_type {event_type!r} not selected")
    payload = message.get("payload")
    if not isinstance(payload, dict):
        return Invalid(f"{event_type}: payload is missing or not an object")
    did: list[str] = []
    for field in ("scope", "name"):
        value = payload.get(field)
        if not isinstance(value, str) or not value:
            return Invalid(f"{event_type}: payload.{field} is missing or not a non-empty string")
        did.append(value)
    scope, name = did
    if selected.scopes and not any(glob_match(g, scope) for g in selected.scopes):
        return Filtered(event_type, f"scope {scope!r} matches no scope glob")
    if selected.names and not any(glob_match(g, name) for g in selected.names):
        return Filtered(event_type, f"name {name!r} matches no name glob")
    rse = next((v for f in _RSE_FIELDS if isinstance(v := payload.get(f), str) and v), None)
    created = message.get("created_at")
    return RucioMessage(
        event_type=event_type,
        scope=scope,
        name=name,
        rse=rse,
        created_at=created if isinstance(created, str) else None,
        body=body,
        dedup_key=_dedup_key(event_type, payload, created),
    )
