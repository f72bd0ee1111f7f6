"""A string that never shows itself in a repr, a log line or a summary; and where secrets come from."""

from __future__ import annotations

import os
import stat
import unicodedata
from typing import Final

__all__ = [
    "CONTROL_CHARACTER",
    "MASK",
    "SECRET_FILE_LIMIT",
    "Secret",
    "has_control_character",
    "is_secret_setting",
    "read_secret_file",
]

MASK: Final = "***"
#: Why a secret with a control character is refused; it names no part of the value.
CONTROL_CHARACTER: Final = (
    "contains a control character (newline, NUL, DEL, ...), which no header can carry "
    "(the value is not shown)"
)

#: A token, password or PEM key is a few KiB at most; anything larger is the wrong file.
SECRET_FILE_LIMIT: Final = 64 * 1024

_SECRET_WORDS: Final = ("password", "passphrase", "secret")


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


def has_control_character(value: str) -> bool:
    """Whether ``value`` holds a C0 or C1 control character (newline, NUL, DEL, ...).

    No HTTP header or SASL exchange can carry one, and the client libraries that refuse it
    quote the whole offending value (``Bearer <token>``) in their error message.
    """
    return any(unicodedata.category(ch) == "Cc" for ch in value)


def is_secret_setting(key: str, value: object = None) -> bool:
    """Whether a librdkafka setting holds a secret: a password, a client secret or a private key."""
    name = key.lower()
    if any(word in name for word in _SECRET_WORDS):
        return True
    if name.endswith(".pem"):
        # ssl.key.pem, sasl.oauthbearer.assertion.private.key.pem; ssl.certificate.pem is public
        # unless someone pasted the key into the same PEM bundle.
        return "key" in name.split(".") or "PRIVATE KEY" in str(value)
    return False


def read_secret_file(path: str) -> str:
    """The stripped UTF-8 text of a secret file.

    Raises:
        ValueError: the file is not a regular file, is larger than :data:`SECRET_FILE_LIMIT`,
            is not UTF-8, or cannot be read; the message names neither the path nor the content.
    """
    # /dev/zero would be read until memory runs out and a FIFO would block forever: only a
    # regular file of bounded size is read. O_NONBLOCK keeps a FIFO swapped in after the
    # stat from blocking the open; the fstat then refuses it.
    try:
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise ValueError("is not a regular file")
        if before.st_size > SECRET_FILE_LIMIT:
            raise ValueError(f"is larger than {SECRET_FILE_LIMIT // 1024} KiB")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ValueError("is not a regular file")
        data = fh.read(SECRET_FILE_LIMIT + 1)
    if len(data) > SECRET_FILE_LIMIT:
        raise ValueError(f"is larger than {SECRET_FILE_LIMIT // 1024} KiB")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ValueError(f"is not UTF-8 text (byte {exc.start})") from exc
