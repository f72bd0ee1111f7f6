"""The StorageEvent record: one dCache event, parsed once, carried as one typed object.

The dCache envelope (``{"event":{...},"subscription":"..."}``) is rebuilt here and only here,
for the consumer's ``dcache`` payload and the NiFi recipe tests alike.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

__all__ = ["StorageEvent", "dcache_envelope", "dedup_key", "now_millis", "record_json"]


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
        )

    @property
    def key(self) -> bytes:
        """The Kafka key: the UTF-8 full path, so one file's events stay in one partition."""
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


def record_json(event: StorageEvent) -> bytes:
    """The record as compact JSON in schema field order, nulls kept, strings escaped as Jackson does.

    This is what NiFi's JsonRecordSetWriter writes for the same Avro record, so the NiFi recipe
    and ``dcnios-consumer`` send the same bytes in ``payload: record`` mode.
    """
    parts = []
    for key, value in event.to_avro().items():
        parts.append(f'"{key}":{_jackson_value(value)}')
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
    """Identity of one event across producer replays: (channel, event_id), else the file itself."""
    if event.event_id is not None:
        return f"{event.channel}#{event.event_id}"
    digest = hashlib.blake2b(f"{event.source}\0{event.path}\0{','.join(event.mask)}".encode(), digest_size=12)
    return f"synthetic#{digest.hexdigest()}"
