"""A string that never shows itself in a repr, a log line or a summary."""

from __future__ import annotations

from typing import Final

__all__ = ["MASK", "Secret"]

MASK: Final = "***"


class Secret:
    """Wraps a secret value. ``str()``/``repr()`` give ``***``; ``reveal()`` gives the value.

    Call ``reveal()`` only where a client is built, so that a stray f-string or log call
    can never leak it.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)
