"""dCache's inotify vocabulary: mask names and their order, as the frontend writes them."""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_EVENTS",
    "EVENT_FLAGS",
    "IN_ISDIR",
    "MANAGEMENT_FLAGS",
    "MASK_ORDER",
    "SELECTOR_FLAGS",
    "sort_mask",
]

#: The order dCache's Jackson output uses for ``mask`` arrays (EventFlag enum declaration order).
MASK_ORDER: Final[tuple[str, ...]] = (
    "IN_ACCESS",
    "IN_ATTRIB",
    "IN_CLOSE_WRITE",
    "IN_CLOSE_NOWRITE",
    "IN_CREATE",
    "IN_DELETE",
    "IN_DELETE_SELF",
    "IN_MODIFY",
    "IN_MOVE_SELF",
    "IN_MOVED_FROM",
    "IN_MOVED_TO",
    "IN_OPEN",
    "IN_IGNORED",
    "IN_ISDIR",
    "IN_Q_OVERFLOW",
    "IN_UNMOUNT",
)

#: The twelve selectable event flags (IN_ALL_EVENTS).
EVENT_FLAGS: Final[tuple[str, ...]] = (
    "IN_ACCESS",
    "IN_ATTRIB",
    "IN_CLOSE_WRITE",
    "IN_CLOSE_NOWRITE",
    "IN_CREATE",
    "IN_DELETE",
    "IN_DELETE_SELF",
    "IN_MODIFY",
    "IN_MOVE_SELF",
    "IN_MOVED_FROM",
    "IN_MOVED_TO",
    "IN_OPEN",
)

MANAGEMENT_FLAGS: Final[tuple[str, ...]] = ("IN_IGNORED", "IN_Q_OVERFLOW", "IN_UNMOUNT")
IN_ISDIR: Final = "IN_ISDIR"

#: Everything the subscription selector accepts (AddWatchFlag), in enum declaration order.
SELECTOR_FLAGS: Final[tuple[str, ...]] = (
    *EVENT_FLAGS,
    "IN_ALL_EVENTS",
    "IN_CLOSE",
    "IN_MOVE",
    "IN_DONT_FOLLOW",
    "IN_EXCL_UNLINK",
    "IN_MASK_ADD",
    "IN_ONESHOT",
    "IN_ONLYDIR",
)

#: A WebDAV upload ends with IN_CLOSE_WRITE; an SRM or xroot upload arrives as a lone IN_MOVED_TO.
DEFAULT_EVENTS: Final[tuple[str, ...]] = ("IN_CLOSE_WRITE", "IN_MOVED_TO")

_RANK: Final = {name: i for i, name in enumerate(MASK_ORDER)}


def sort_mask(mask: list[str] | tuple[str, ...]) -> list[str]:
    """Order mask names as dCache does; unknown names keep their place after the known ones."""
    return sorted(mask, key=lambda m: _RANK.get(m, len(_RANK)))
