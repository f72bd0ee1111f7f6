"""SSE frame → what to do with it, as a typed union the run loop ``match``es.

Pure: no sockets, no clock (the caller passes the time). Every ``StorageEvent`` the producer
publishes is built here: from a frame (``interpret``) or from a directory listing (``listed_event``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from dcnios.inotify import IN_ISDIR, MASK_ORDER
from dcnios.producers.sse import Frame, Oversized
from dcnios.spec import SourceSpec
from dcnios.storage_event import StorageEvent

__all__ = [
    "CONTENT_MASKS",
    "Interpretation",
    "Invalid",
    "NewDirectory",
    "Outcome",
    "Overflow",
    "Publish",
    "Removed",
    "Skip",
    "System",
    "Tick",
    "WatchGone",
    "interpret",
    "join_path",
    "listed_event",
    "listed_mask",
    "oversized",
]

_KNOWN_MASKS = frozenset(MASK_ORDER)
#: Masks that say "this file is here, complete": what a listing can stand in for after a gap.
CONTENT_MASKS: Final = ("IN_CLOSE_WRITE", "IN_MOVED_TO")
_REMOVING: Final = frozenset({"IN_DELETE", "IN_MOVED_FROM"})
#: Event ids are Avro longs, and Last-Event-ID is parsed by dCache as a Java long.
_MAX_ID: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Publish:
    event: StorageEvent


@dataclass(frozen=True, slots=True)
class Invalid:
    reason: str


@dataclass(frozen=True, slots=True)
class System:
    kind: str  # the SYSTEM type: NEW_SUBSCRIPTION, EVENT_LOSS, ...
    subscription: str | None


@dataclass(frozen=True, slots=True)
class NewDirectory:
    path: str


@dataclass(frozen=True, slots=True)
class WatchGone:
    subscription: str
    path: str


@dataclass(frozen=True, slots=True)
class Overflow:
    path: str


@dataclass(frozen=True, slots=True)
class Removed:
    """A name left a watched directory (IN_DELETE, IN_MOVED_FROM): the index forgets it."""

    path: str
    is_dir: bool


@dataclass(frozen=True, slots=True)
class Tick:
    """A metronome event: proof that the stream is alive."""

    subscription: str


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str


Outcome = Publish | Invalid | System | NewDirectory | WatchGone | Overflow | Removed | Tick | Skip


@dataclass(frozen=True, slots=True)
class Interpretation:
    """What one frame means. ``event_id`` is set for every plugin event with a valid ``id:``,
    whatever it means, because the stream has consumed that id (Last-Event-ID resumes after it)."""

    event_id: int | None
    outcomes: tuple[Outcome, ...]


def join_path(directory: str, name: str) -> str:
    return f"/{name}" if directory == "/" else f"{directory}/{name}"


def _unencodable(name: str) -> bool:
    # JSON can carry a lone surrogate ("\udcff"), which no UTF-8 record or key can hold.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _invalid(reason: str, event_id: int | None = None) -> Interpretation:
    return Interpretation(event_id, (Invalid(reason),))


class _NotJson(ValueError):
    pass


def _json(data: bytes | None) -> Any:
    """``data`` as JSON, or ``_NotJson`` with the reason. Hostile input must not escape as
    another exception: nesting 100,000 deep raises RecursionError, a 5,000-digit number a plain
    ValueError (CPython's limit on int digits); either would crash the producer, which would
    replay the same frame and crash again."""
    raw = data or b""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass  # orjson's messages name no column, and it refuses what json accepts (NaN, >64-bit ints)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _NotJson(f"data is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise _NotJson(f"data is not JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise _NotJson("data is JSON nested too deep") from None
    except ValueError as exc:
        raise _NotJson(f"data is not usable JSON: {str(exc)[:120]}") from None


def _event_id(raw: bytes | None) -> int | None:
    """The frame's id, when it is one dCache can have sent: a decimal from 0 to 2**63 - 1."""
    if raw is None or not raw.isdigit() or len(raw) > 19:
        return None
    value = int(raw)
    return value if value <= _MAX_ID else None


def oversized(frame: Oversized, limit: int) -> Interpretation:
    """A frame over the size limit: invalid, but its id (if its head shows one) is consumed."""
    event_id = _event_id(frame.head.id) if frame.head.event not in (None, b"SYSTEM") else None
    return _invalid(f"frame of {frame.size} bytes is over the limit of {limit} bytes", event_id)


def listed_mask(source: SourceSpec) -> str:
    """The mask a file found by listing is published with: the first content mask selected."""
    return next((m for m in CONTENT_MASKS if m in source.events), source.events[0])


def listed_event(
    source: SourceSpec,
    directory: str,
    name: str,
    *,
    channel_id: str,
    subscription: str,
    observed_at: int,
    gap: str,
) -> StorageEvent:
    """The synthetic event for a file a listing found (no event id: no frame carried it)."""
    return StorageEvent(
        source=source.name,
        path=join_path(directory, name),
        name=name,
        mask=(listed_mask(source),),
        cookie=None,
        is_dir=False,
        channel=channel_id,
        event_id=None,
        subscription=subscription,
        observed_at=observed_at,
        synthetic=True,
        gap=gap,
    )


def interpret(
    frame: Frame,
    *,
    source: SourceSpec,
    channel_id: str,
    watches: Mapping[str, str],
    observed_at: int,
) -> Interpretation:
    """Classify one frame. Malformed input yields ``Invalid``, never an exception."""
    if frame.event == b"SYSTEM":
        return _system(frame)
    if frame.event is None:
        return _invalid("frame has no event: field")
    event_id = _event_id(frame.id)
    if frame.event == b"metronome":
        return _metronome(frame, event_id)
    if frame.event != b"inotify":
        kind = frame.event.decode("utf-8", "replace")
        return Interpretation(event_id, (Skip(f"event type {kind!r}"),))
    if event_id is None:
        return _invalid("inotify frame without a valid id: field")
    if frame.data is None:
        return _invalid("inotify frame without data", event_id)
    try:
        data = _json(frame.data)
    except _NotJson as exc:
        return _invalid(str(exc), event_id)
    return Interpretation(
        event_id,
        _inotify(
            data, event_id, source=source, channel_id=channel_id, watches=watches, observed_at=observed_at
        ),
    )


def _system(frame: Frame) -> Interpretation:
    try:
        data = _json(frame.data)
        kind = data["type"]
        if not isinstance(kind, str):
            raise TypeError(kind)
    except (_NotJson, KeyError, TypeError, IndexError):
        return _invalid("SYSTEM frame without a JSON type")
    sub = data.get("subscription")
    return Interpretation(None, (System(kind, sub if isinstance(sub, str) else None),))


def _metronome(frame: Frame, event_id: int | None) -> Interpretation:
    if event_id is None:
        return _invalid("metronome frame without a valid id: field")
    try:
        data = _json(frame.data)
        sub = data["subscription"]
        if not isinstance(sub, str):
            raise TypeError(sub)
    except (_NotJson, KeyError, TypeError, IndexError):
        return _invalid("metronome frame without a subscription URL", event_id)
    return Interpretation(event_id, (Tick(sub),))


def _inotify(
    data: Any,
    event_id: int,
    *,
    source: SourceSpec,
    channel_id: str,
    watches: Mapping[str, str],
    observed_at: int,
) -> tuple[Outcome, ...]:
    if not isinstance(data, dict) or not isinstance(data.get("event"), dict):
        return (Invalid("data has no event object"),)
    sub, payload = data.get("subscription"), data["event"]
    if not isinstance(sub, str):
        return (Invalid("data has no subscription URL"),)
    mask, name, cookie = payload.get("mask"), payload.get("name"), payload.get("cookie")
    if not isinstance(mask, list) or not all(isinstance(m, str) for m in mask):
        return (Invalid("event.mask is not a list of strings"),)
    unknown = [m for m in mask if m not in _KNOWN_MASKS]
    if unknown:
        return (Invalid(f"unknown mask {unknown[0]!r}"),)
    if name is not None and (not isinstance(name, str) or name in ("", ".", "..") or "/" in name):
        return (Invalid(f"event.name is not a file name: {name!r}"),)
    if isinstance(name, str) and not name.isprintable() and _unencodable(name):
        return (Invalid(f"event.name is not valid Unicode: {name!r}"),)
    if cookie is not None and not isinstance(cookie, str):
        return (Invalid("event.cookie is not a string"),)
    directory = watches.get(sub)
    if directory is None:
        return (Invalid(f"event from unknown subscription {sub}"),)
    if "IN_IGNORED" in mask or "IN_DELETE_SELF" in mask:
        return (WatchGone(sub, directory),)
    if "IN_Q_OVERFLOW" in mask:
        return (Overflow(directory),)
    if name is None:
        return (Skip("event about the watched directory itself"),)
    path = join_path(directory, name)
    is_dir = IN_ISDIR in mask
    out: list[Outcome] = []
    if is_dir and source.recursive and ("IN_CREATE" in mask or "IN_MOVED_TO" in mask):
        out.append(NewDirectory(path))
    if _REMOVING.intersection(mask):
        out.append(Removed(path, is_dir))
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
        out.append(Publish(event))
    return tuple(out) or (Skip("mask not selected"),)
