"""SSE frame → what to do with it. Pure: no sockets, no clock (the caller passes the time)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dcnios.inotify import IN_ISDIR, MASK_ORDER
from dcnios.producers.sse import Frame
from dcnios.spec import SourceSpec
from dcnios.storage_event import StorageEvent

__all__ = ["Outcome", "interpret", "join_path"]

Kind = Literal["publish", "skip", "invalid", "system", "new_dir", "watch_gone", "overflow"]
_KNOWN_MASKS = frozenset(MASK_ORDER)


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    event_id: int | None = None
    event: StorageEvent | None = None
    reason: str | None = None  # invalid: why; system: the SYSTEM type
    subscription: str | None = None
    path: str | None = None


def join_path(directory: str, name: str) -> str:
    return f"/{name}" if directory == "/" else f"{directory}/{name}"


def _invalid(reason: str, event_id: int | None = None) -> list[Outcome]:
    return [Outcome("invalid", event_id=event_id, reason=reason)]


def interpret(
    frame: Frame,
    *,
    source: SourceSpec,
    channel_id: str,
    watches: Mapping[str, str],
    observed_at: int,
) -> list[Outcome]:
    """Classify one frame. Malformed input yields an ``invalid`` outcome, never an exception."""
    if frame.event == b"SYSTEM":
        return _system(frame)
    if frame.event != b"inotify":
        if frame.event is None:
            return _invalid("frame has no event: field")
        return [Outcome("skip", reason=f"event type {frame.event.decode('utf-8', 'replace')!r}")]
    try:
        event_id = int(frame.id) if frame.id is not None else None
    except ValueError:
        event_id = None
    if event_id is None or event_id < 0:
        return _invalid("inotify frame without a valid id: field")
    if frame.data is None:
        return _invalid("inotify frame without data", event_id)
    try:
        data = json.loads(frame.data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return _invalid(f"data is not UTF-8 (byte {exc.start})", event_id)
    except json.JSONDecodeError as exc:
        return _invalid(f"data is not JSON: {exc.msg} at column {exc.colno}", event_id)
    return _inotify(
        data, event_id, source=source, channel_id=channel_id, watches=watches, observed_at=observed_at
    )


def _system(frame: Frame) -> list[Outcome]:
    try:
        data = json.loads((frame.data or b"").decode("utf-8"))
        kind = data["type"]
        if not isinstance(kind, str):
            raise TypeError(kind)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return _invalid("SYSTEM frame without a JSON type")
    sub = data.get("subscription")
    return [Outcome("system", reason=kind, subscription=sub if isinstance(sub, str) else None)]


def _inotify(
    data: Any,
    event_id: int,
    *,
    source: SourceSpec,
    channel_id: str,
    watches: Mapping[str, str],
    observed_at: int,
) -> list[Outcome]:
    if not isinstance(data, dict) or not isinstance(data.get("event"), dict):
        return _invalid("data has no event object", event_id)
    sub, payload = data.get("subscription"), data["event"]
    if not isinstance(sub, str):
        return _invalid("data has no subscription URL", event_id)
    mask, name, cookie = payload.get("mask"), payload.get("name"), payload.get("cookie")
    if not isinstance(mask, list) or not all(isinstance(m, str) for m in mask):
        return _invalid("event.mask is not a list of strings", event_id)
    unknown = [m for m in mask if m not in _KNOWN_MASKS]
    if unknown:
        return _invalid(f"unknown mask {unknown[0]!r}", event_id)
    if name is not None and (not isinstance(name, str) or name in ("", ".", "..") or "/" in name):
        return _invalid(f"event.name is not a file name: {name!r}", event_id)
    if cookie is not None and not isinstance(cookie, str):
        return _invalid("event.cookie is not a string", event_id)
    directory = watches.get(sub)
    if directory is None:
        return _invalid(f"event from unknown subscription {sub}", event_id)
    if "IN_IGNORED" in mask or "IN_DELETE_SELF" in mask:
        return [Outcome("watch_gone", event_id, subscription=sub, path=directory)]
    if "IN_Q_OVERFLOW" in mask:
        return [Outcome("overflow", event_id, subscription=sub, path=directory)]
    if name is None:
        return [Outcome("skip", event_id, reason="event about the watched directory itself")]
    path = join_path(directory, name)
    is_dir = IN_ISDIR in mask
    out: list[Outcome] = []
    if is_dir and source.recursive and ("IN_CREATE" in mask or "IN_MOVED_TO" in mask):
        out.append(Outcome("new_dir", event_id, subscription=sub, path=path))
    wanted = any(m in source.events for m in mask if m != IN_ISDIR)
    if wanted and (source.directories or not is_dir):
        event = StorageEvent(
            source=source.name,
            path=path,
            name=name,
            mask=tuple(mask),
            cookie=cookie,
            is_dir=is_dir,
            channel=channel_id,
            event_id=event_id,
            subscription=sub,
            observed_at=observed_at,
        )
        out.append(Outcome("publish", event_id, event=event))
    return out or [Outcome("skip", event_id, reason="mask not selected")]
