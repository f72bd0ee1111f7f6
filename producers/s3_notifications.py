"""S3 bucket notifications (MinIO, Ceph RGW, AWS) → StorageEvents, pure.

The formats (shared/reference/field-2026-12.md §5.1-5.3, and upstream):

* **MinIO** (``internal/event/target/kafka.go``, and its webhook): the value is ``event.Log``,
  ``{"EventName":…,"Key":"<bucket>/<key>","Records":[<one record>]}``, ``eventSource: minio:s3``,
  ``eventName`` with the ``s3:`` prefix, ``s3.object.key`` URL-encoded (Go's QueryEscape).
* **Ceph RGW** (``rgw_pubsub.cc`` ``rgw_pubsub_s3_event::dump``, ``rgw_notify.cc``):
  ``{"Records":[…]}``, ``eventSource: ceph:s3``, ``eventName`` *without* ``s3:``, ``s3.object.key``
  is the key as it is (``record.object_key = key.name``), ``sequencer`` the hex of a timestamp.
* **AWS** (through SQS): ``{"Records":[…]}``, ``eventSource: aws:s3``, ``eventName`` without
  ``s3:``, the key URL-encoded (spaces as ``+``); a new queue first gets
  ``{"Service":"Amazon S3","Event":"s3:TestEvent",…}``, which is skipped. Through SNS (fan-out)
  without raw message delivery, SNS's envelope ``{"Type":"Notification","Message":"<json>",…}``
  is opened and its message is the notification.

What OSCAR's supervisor stages (faas-supervisor ``events/__init__.py``): ``Records[0]`` only, with
``eventSource`` ``minio:s3`` or ``aws:s3`` (``ceph:s3`` is not known), the key passed through
``unquote_plus`` (``events/minio.py``, ``events/s3.py``). So each record's ``original`` is:

* the notification's bytes unchanged when it holds one record (every MinIO, RGW and S3
  notification seen does); one with several records is split, each keeping the other top-level
  keys, so that every record reaches the supervisor as ``Records[0]``;
* for Ceph, translated: ``eventSource: minio:s3``, ``eventName`` with ``s3:``, the key
  ``quote_plus``-encoded (the supervisor decodes it back), and, when the source names the OSCAR
  MinIO provider whose endpoint is the RGW (``storage_provider``), wrapped as the supervisor's
  delegated event ``{"storage_provider": <id>, "event": {…}}`` so it stages from there.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any, Final
from urllib.parse import quote_plus, unquote_plus

from dcnios.producers.upstream import Delivery, Events, Rejected, Skipped, Translate, Translation
from dcnios.spec import S3NotificationsSourceSpec
from dcnios.storage_event import KIND_S3, StorageEvent

__all__ = ["EVENT_SOURCES", "translate", "translator"]

#: The ``eventSource`` each format writes.
EVENT_SOURCES: Final = {"minio": "minio:s3", "ceph": "ceph:s3", "aws": "aws:s3"}
_S3_PREFIX: Final = "s3:"


def translator(source: S3NotificationsSourceSpec) -> Translate:
    """The translation of one source's deliveries."""
    return functools.partial(
        translate,
        source=source.name,
        fmt=source.format,
        events=source.events,
        storage_provider=source.storage_provider,
    )


class _Bad(Exception):
    pass


def translate(
    delivery: Delivery,
    *,
    source: str,
    fmt: str,
    events: tuple[str, ...] = ("s3:ObjectCreated:*",),
    storage_provider: str | None = None,
) -> Translation:
    """One notification → its records (``Events``), ``Skipped`` or ``Rejected`` with the reason."""
    try:
        doc = json.loads(delivery.body)
    except (ValueError, UnicodeDecodeError) as exc:
        return Rejected(f"not JSON: {exc}")
    if not isinstance(doc, dict):
        return Rejected(f"not a JSON object but {type(doc).__name__}")
    if fmt == "aws" and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        # S3 → SNS → SQS without raw message delivery: SNS's envelope holds the notification as a
        # string. The notification itself is what the supervisor needs, so it becomes the body.
        inner = doc["Message"].encode()
        return translate(
            Delivery(
                inner,
                delivery.origin,
                delivery.key,
                delivery.attributes,
                delivery.handle,
                delivery.received_ms,
            ),
            source=source,
            fmt=fmt,
            events=events,
            storage_provider=storage_provider,
        )
    if doc.get("Event") == "s3:TestEvent":
        return Skipped("s3:TestEvent")
    records = doc.get("Records")
    if not isinstance(records, list) or not records:
        return Rejected("no Records[] (not an S3 bucket notification)")
    out: list[StorageEvent] = []
    skipped: list[str] = []
    for i, record in enumerate(records):
        try:
            event = _event(
                doc, records, record, delivery, source=source, fmt=fmt, storage_provider=storage_provider
            )
        except _Bad as exc:
            return Rejected(f"Records[{i}]{exc}")
        assert event.event_name is not None
        if any(fnmatchcase(event.event_name, glob) for glob in events):
            out.append(event)
        else:
            skipped.append(event.event_name)
    if not out:
        return Skipped(f"event {', '.join(dict.fromkeys(skipped))} not in the source's events")
    return Events(tuple(out))


def _event(
    doc: dict[str, Any],
    records: list[Any],
    record: Any,
    delivery: Delivery,
    *,
    source: str,
    fmt: str,
    storage_provider: str | None,
) -> StorageEvent:
    if not isinstance(record, dict):
        raise _Bad(f": expected an object, got {type(record).__name__}")
    expected = EVENT_SOURCES[fmt]
    event_source = record.get("eventSource")
    if event_source != expected:
        raise _Bad(f".eventSource: expected {expected!r} (format {fmt}), got {event_source!r}")
    name = _string(record, "eventName", "eventName")
    event_name = name if name.startswith(_S3_PREFIX) else _S3_PREFIX + name
    s3 = _mapping(record, "s3", "s3")
    bucket = _string(_mapping(s3, "bucket", "s3.bucket"), "name", "s3.bucket.name")
    obj = _mapping(s3, "object", "s3.object")
    sent_key = _string(obj, "key", "s3.object.key")
    # Ceph sends the key as it is; MinIO and AWS URL-encode it (form encoding: '+' is a space).
    key = sent_key if fmt == "ceph" else unquote_plus(sent_key)
    if not key:
        raise _Bad(".s3.object.key: empty")
    size = obj.get("size")
    if isinstance(size, str) and size.isdigit():  # older RGW releases wrote it as a string
        size = int(size)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise _Bad(f".s3.object.size: expected a non-negative integer, got {size!r}")
    if fmt == "ceph":
        original = _ceph_body(doc, record, sent_key, event_name, storage_provider)
    elif len(records) == 1:
        original = delivery.body
    else:
        original = json.dumps({**doc, "Records": [record]}, ensure_ascii=False).encode()
    return StorageEvent.notification(
        kind=KIND_S3,
        source=source,
        path=f"{bucket}/{key}",
        name=key.rpartition("/")[2],
        channel=fmt,
        observed_at=delivery.received_ms,
        event_name=event_name,
        bucket=bucket,
        object_key=key,
        size=size,
        etag=_optional(obj, "eTag") or _optional(obj, "etag"),
        version_id=_optional(obj, "versionId"),
        sequencer=_optional(obj, "sequencer"),
        original=original,
    )


def _ceph_body(
    doc: dict[str, Any], record: dict[str, Any], key: str, event_name: str, storage_provider: str | None
) -> bytes:
    """The RGW record as a MinIO record the supervisor stages (see the module doc)."""
    s3 = dict(record["s3"])
    s3["object"] = {**s3["object"], "key": quote_plus(key, safe="/")}
    translated = {**record, "eventSource": EVENT_SOURCES["minio"], "eventName": event_name, "s3": s3}
    body: dict[str, Any] = {k: v for k, v in doc.items() if k != "Records"}
    body["Records"] = [translated]
    if storage_provider is not None:
        body = {"storage_provider": storage_provider, "event": body}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _mapping(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise _Bad(
            f".{where}: expected an object, got {type(value).__name__ if value is not None else 'nothing'}"
        )
    return value


def _string(parent: Mapping[str, Any], key: str, where: str) -> str:
    value = parent.get(key)
    if not isinstance(value, str):
        raise _Bad(
            f".{where}: expected a string, got {type(value).__name__ if value is not None else 'nothing'}"
        )
    return value


def _optional(parent: Mapping[str, Any], key: str) -> str | None:
    value = parent.get(key)
    return value if isinstance(value, str) and value else None
