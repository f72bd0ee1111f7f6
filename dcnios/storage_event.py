"""The StorageEvent record: one storage event, parsed once, carried as one typed object.

One record type for every kind of source (``kind``): dCache (SSE), S3 bucket notifications
(MinIO, Ceph RGW, AWS via SQS), Rucio (Hermes over STOMP), and raw records of an existing topic.
The first twelve fields are the dCache record of schema v1; the rest were appended with defaults
(schemas/storage_event.avsc), and a dCache event leaves them at their defaults, so the codec writes
it with the v1 schema, byte for byte as before (old readers keep working).

The dCache envelope (``{"event":{...},"subscription":"..."}``) is rebuilt here and only here,
for the consumer's ``dcache`` payload and the NiFi recipe tests alike. Other kinds keep the
notification's own bytes (``original``), which the consumer's ``payload: native`` hands on
unchanged (consumers/record.py).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

__all__ = [
    "KINDS",
    "KIND_DCACHE",
    "KIND_RAW",
    "KIND_RUCIO",
    "KIND_S3",
    "V1_FIELDS",
    "StorageEvent",
    "dcache_envelope",
    "dedup_key",
    "now_millis",
    "record_json",
]

#: ``StorageEvent.kind``: what sort of source produced the event.
KIND_DCACHE: Final = "dcache"
KIND_S3: Final = "s3"
KIND_RUCIO: Final = "rucio"
#: A record of an existing topic read with ``payload: raw``: never written, built by the consumer.
KIND_RAW: Final = "raw"
KINDS: Final = (KIND_DCACHE, KIND_S3, KIND_RUCIO, KIND_RAW)


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)


def now_millis() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class StorageEvent:
    """Mirrors schemas/storage_event.avsc field for field."""

    source: str
    path: str
    name: str | None
    mask: tuple[str, ...]
    cookie: str | None
    is_dir: bool
    channel: str
    event_id: int | None
    subscription: str
    observed_at: int
    synthetic: bool = False
    gap: str | None = None
    # -- appended in schema v2; dCache events leave them all at their defaults ------------------
    kind: str = KIND_DCACHE
    event_name: str | None = None
    bucket: str | None = None
    object_key: str | None = None
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    scope: str | None = None
    did_name: str | None = None
    rse: str | None = None
    original: bytes | None = None

    @property
    def extended(self) -> bool:
        """Whether any field appended in schema v2 differs from its default (v1 cannot carry it)."""
        return (
            self.kind != KIND_DCACHE
            or self.original is not None
            or self.event_name is not None
            or self.bucket is not None
            or self.object_key is not None
            or self.size is not None
            or self.etag is not None
            or self.version_id is not None
            or self.sequencer is not None
            or self.scope is not None
            or self.did_name is not None
            or self.rse is not None
        )

    @classmethod
    def notification(
        cls,
        *,
        kind: str,
        source: str,
        path: str,
        name: str | None,
        channel: str,
        observed_at: int,
        event_id: int | None = None,
        **fields: Any,
    ) -> StorageEvent:
        """An event that is not a dCache inotify frame (S3, Rucio, a raw record): no mask, cookie,
        directory flag or subscription; ``fields`` are the v2 fields of its kind."""
        return cls(
            source=source,
            path=path,
            name=name,
            mask=(),
            cookie=None,
            is_dir=False,
            channel=channel,
            event_id=event_id,
            subscription="",
            observed_at=observed_at,
            kind=kind,
            **fields,
        )

    def to_avro(self) -> dict[str, Any]:
        # Written out rather than dataclasses.asdict(): asdict deep-copies, and this is the hot path.
        return {
            "source": self.source,
            "path": self.path,
            "name": self.name,
            "mask": list(self.mask),
            "cookie": self.cookie,
            "is_dir": self.is_dir,
            "channel": self.channel,
            "event_id": self.event_id,
            "subscription": self.subscription,
            "observed_at": self.observed_at,
            "synthetic": self.synthetic,
            "gap": self.gap,
            "kind": self.kind,
            "event_name": self.event_name,
            "bucket": self.bucket,
            "object_key": self.object_key,
            "size": self.size,
            "etag": self.etag,
            "version_id": self.version_id,
            "sequencer": self.sequencer,
            "scope": self.scope,
            "did_name": self.did_name,
            "rse": self.rse,
            "original": self.original,
        }

    @classmethod
    def from_avro(cls, datum: dict[str, Any]) -> StorageEvent:
        observed = datum["observed_at"]
        if not isinstance(observed, int):  # fastavro turns timestamp-millis into datetime
            observed = (observed - _EPOCH) // _ONE_MS
        return cls(
            source=datum["source"],
            path=datum["path"],
            name=datum.get("name"),
            mask=tuple(datum["mask"]),
            cookie=datum.get("cookie"),
            is_dir=datum["is_dir"],
            channel=datum["channel"],
            event_id=datum.get("event_id"),
            subscription=datum["subscription"],
            observed_at=observed,
            synthetic=datum.get("synthetic", False),
            gap=datum.get("gap"),
            kind=datum.get("kind", KIND_DCACHE),
            event_name=datum.get("event_name"),
            bucket=datum.get("bucket"),
            object_key=datum.get("object_key"),
            size=datum.get("size"),
            etag=datum.get("etag"),
            version_id=datum.get("version_id"),
            sequencer=datum.get("sequencer"),
            scope=datum.get("scope"),
            did_name=datum.get("did_name"),
            rse=datum.get("rse"),
            original=datum.get("original"),
        )

    @property
    def key(self) -> bytes:
        """The Kafka key: the UTF-8 full path (``/dir/file``, ``bucket/key``, ``scope:name``), so
        one object's events stay in one partition."""
        return self.path.encode("utf-8")


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _jackson_string(text: str) -> str:
    # Jackson escapes only quote, backslash and control characters (upper-case hex); it writes
    # non-ASCII and '/' as they are. Python's json differs in the hex case, so do it here.
    out = ['"']
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ch < " ":
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


#: The fields of schema v1 (the dCache record), in schema order.
V1_FIELDS: Final = (
    "source",
    "path",
    "name",
    "mask",
    "cookie",
    "is_dir",
    "channel",
    "event_id",
    "subscription",
    "observed_at",
    "synthetic",
    "gap",
)


def record_json(event: StorageEvent) -> bytes:
    """The record as compact JSON in schema field order, nulls kept, strings escaped as Jackson does.

    A dCache event gives the v1 fields only: what NiFi's JsonRecordSetWriter writes for the same
    (v1) Avro record, so the NiFi recipe and ``dcnios-consumer`` send the same bytes in
    ``payload: record`` mode. Other kinds add the v2 fields but ``original`` (the native body,
    which is what ``payload: native`` sends).
    """
    parts = []
    datum = event.to_avro()
    keys = V1_FIELDS if not event.extended else [k for k in datum if k != "original"]
    for key in keys:
        parts.append(f'"{key}":{_jackson_value(datum[key])}')
    return ("{" + ",".join(parts) + "}").encode("utf-8")


def _jackson_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _jackson_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_jackson_value(v) for v in value) + "]"
    raise TypeError(f"no JSON form for {type(value).__name__}")


def dcache_envelope(event: StorageEvent, name: str | None = None) -> bytes:
    """The dCache SSE ``data`` JSON of this event, byte for byte as the frontend wrote it.

    Key order (name, cookie, mask; then subscription) and omitted nulls follow Jackson. ``name``
    replaces ``event.name`` (the path relative to the OSCAR service's input directory).
    """
    parts = []
    name = name if name is not None else event.name
    if name is not None:
        parts.append(f'"name":{_jackson_string(name)}')
    if event.cookie is not None:
        parts.append(f'"cookie":{_jackson_string(event.cookie)}')
    parts.append('"mask":[' + ",".join(_jackson_string(m) for m in event.mask) + "]")
    body = '{"event":{' + ",".join(parts) + '},"subscription":' + _jackson_string(event.subscription) + "}"
    return body.encode("utf-8")


def dedup_key(event: StorageEvent) -> str:
    """Identity of one event across replays, redeliveries and duplicate notifications.

    * dCache: (channel, event_id), else (source, path, mask) for a synthetic event.
    * S3: the object and the event: (bucket, key, event name) and its ``sequencer``, which S3,
      MinIO and RGW give every event of one key in increasing order; without one, the ``versionId``
      (unique per version in a versioned bucket), else the ``eTag`` (same content, same event).
    * raw: the record's place in its topic (``channel`` = ``topic[partition]``, ``event_id`` =
      offset), since nothing in a foreign value is known to identify it.
    * Rucio and anything else: the notification's own bytes, so one message sent twice is one
      event and two messages are two.
    """
    kind = event.kind
    if kind == KIND_S3:
        mark = event.sequencer or (f"v:{event.version_id}" if event.version_id else f"e:{event.etag or ''}")
        return f"s3#{event.bucket}/{event.object_key}#{event.event_name}#{mark}"
    if kind == KIND_RAW:
        return f"raw#{event.channel}#{event.event_id}"  # topic[partition], offset
    if kind != KIND_DCACHE:
        digest = hashlib.blake2b(event.original or event.path.encode(), digest_size=16)
        return f"{kind}#{event.source}#{digest.hexdigest()}"
    if event.event_id is not None:
        return f"{event.channel}#{event.event_id}"
    digest = hashlib.blake2b(f"{event.source}\0{event.path}\0{','.join(event.mask)}".encode(), digest_size=12)
    return f"synthetic#{digest.hexdigest()}"
