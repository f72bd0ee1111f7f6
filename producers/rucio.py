"""One Rucio message (as Hermes sends it over STOMP) → its record, ``Skipped`` or ``Rejected``; pure.

Hermes (rucio lib/rucio/daemons/hermes/hermes.py, ``deliver_to_activemq``) sends each message as
``json.dumps({"event_type": <lower-case>, "payload": {...}, "created_at": str(datetime)})`` with
the STOMP headers ``persistent: true`` and ``event_type``. Payloads that name a DID carry ``scope``
and ``name``: ``close`` (core/did.py), ``transfer-done`` and the other ``transfer-*`` (core/
request.py, with ``dst-rse``), ``datasetlock_ok`` (with ``rse``), ``rule_ok`` (with ``rule_id``).

OSCAR's supervisor recognises exactly that body (grycap/faas-supervisor
faassupervisor/events/__init__.py ``_is_rucio_event``; events/rucio.py reads ``payload.scope``
and ``payload.name``), so the record keeps the message's own bytes (``original``) for the
consumer's ``payload: native`` body. The key is the DID, ``scope:name``, so one DID's events keep
their order; the consumer's dedup key is the message's bytes (storage_event.dedup_key): Hermes
resending a message it could not delete, and the STOMP broker redelivering one dcnios had not
acknowledged, both repeat it unchanged.
"""

from __future__ import annotations

import functools
import json
from fnmatch import fnmatchcase
from typing import Final

from dcnios.producers.upstream import Delivery, Events, Rejected, Skipped, Translate, Translation
from dcnios.spec import RucioSourceSpec
from dcnios.storage_event import KIND_RUCIO, StorageEvent

__all__ = ["translate", "translator"]

#: Payload fields giving a size in bytes: a transfer's file (core/request.py ``file-size``), else
#: ``bytes`` (a transfer's, or a closed dataset's total, core/did.py).
_SIZE_FIELDS: Final = ("file-size", "bytes")
#: Payload fields naming the RSE a message is about, most specific first: where a transfer put
#: the file (core/request.py ``dst-rse``), then a lock's or a deletion's ``rse``.
_RSE_FIELDS: Final = ("dst-rse", "rse")


def translator(source: RucioSourceSpec) -> Translate:
    """The translation of one source's deliveries."""
    return functools.partial(
        translate,
        source=source.name,
        channel=source.stomp.destination,
        events=source.events,
        scopes=source.scopes,
        names=source.names,
        rses=source.rses,
    )


def _matches(globs: tuple[str, ...], value: str | None) -> bool:
    return not globs or (value is not None and any(fnmatchcase(value, g) for g in globs))


def translate(
    delivery: Delivery,
    *,
    source: str,
    channel: str = "",
    events: tuple[str, ...] = ("close",),
    scopes: tuple[str, ...] = (),
    names: tuple[str, ...] = (),
    rses: tuple[str, ...] = (),
) -> Translation:
    """Parse, check and filter one message body. Unselected event types are skipped before their
    payload is read, so messages the source does not take never fill ``<topic>.invalid``."""
    try:
        # Decoded first: json.loads(bytes) would guess UTF-16/32 too; Hermes sends UTF-8.
        text = delivery.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(f"body is not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        message = json.loads(text)
    except ValueError as exc:
        return Rejected(f"body is not JSON: {exc}")
    if not isinstance(message, dict):
        return Rejected(f"body is JSON {type(message).__name__}, not an object")
    event_type = message.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        return Rejected("event_type is missing or not a string")
    event_type = event_type.lower()  # Hermes lower-cases it; other senders might not
    if not _matches(events, event_type):
        return Skipped(f"event_type {event_type}")
    payload = message.get("payload")
    if not isinstance(payload, dict):
        return Rejected(f"{event_type}: payload is missing or not an object")
    did: list[str] = []
    for field in ("scope", "name"):
        value = payload.get(field)
        if not isinstance(value, str) or not value:
            return Rejected(f"{event_type}: payload.{field} is missing or not a non-empty string")
        did.append(value)
    scope, name = did
    rse = next((v for f in _RSE_FIELDS if isinstance(v := payload.get(f), str) and v), None)
    size = next(
        (
            v
            for f in _SIZE_FIELDS
            if isinstance(v := payload.get(f), int) and not isinstance(v, bool) and v >= 0
        ),
        None,
    )
    if not _matches(scopes, scope):
        return Skipped("scope not selected")
    if not _matches(names, name):
        return Skipped("name not selected")
    if not _matches(rses, rse):
        return Skipped("rse not selected")
    return Events(
        (
            StorageEvent.notification(
                kind=KIND_RUCIO,
                source=source,
                path=f"{scope}:{name}",
                name=name,
                channel=channel,
                observed_at=delivery.received_ms,
                event_name=event_type,
                scope=scope,
                did_name=name,
                rse=rse,
                size=size,
                original=delivery.body,
            ),
        )
    )
