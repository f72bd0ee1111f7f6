"""The dcnios exception tree.

::

    DcniosError
    ├── ConfigError            a spec (or CLI value) is invalid; carries every problem found
    │   └── ExtraMissingError  an optional extra is not installed; says what to install
    ├── SchemaError            an .avsc cannot be parsed, or a reader cannot read a writer's data
    ├── CodecError             a Kafka value cannot be decoded (poison record)
    ├── KafkaError             a Kafka call failed
    │   └── DeliveryError      a produced record was not acknowledged
    ├── BrokerError            the embedded broker could not start
    └── RemoteError            an HTTP peer answered with an error
        ├── DCacheError        the dCache frontend (events / namespace API)
        │   └── ChannelGoneError   404 on the channel: it expired or the frontend restarted
        ├── OscarError         the OSCAR API
        └── NiFiError          the NiFi REST API

Every error prints as ``ErrorType: message``; the CLI maps ConfigError (so also a missing extra:
the installation, like the spec, is the user's to fix) to exit 2, the rest to 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BrokerError",
    "ChannelGoneError",
    "CodecError",
    "ConfigError",
    "ConfigProblem",
    "DCacheError",
    "DcniosError",
    "DeliveryError",
    "ExtraMissingError",
    "KafkaError",
    "NiFiError",
    "NoDCacheInputError",
    "OscarError",
    "RemoteError",
    "SchemaError",
]


class DcniosError(Exception):
    """Root of every error dcnios raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a spec: where (key path and line) and what."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        prefix = f"{self.path}: " if self.path else ""
        return f"{prefix}{self.message}{where}"


class ConfigError(DcniosError):
    """The spec is invalid. ``problems`` lists all of them, not just the first."""

    def __init__(self, problems: Sequence[ConfigProblem] | str, *, source: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [ConfigProblem("", problems)]
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            text = f"{head}{self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            text = f"{head}{len(self.problems)} problems\n{lines}"
        super().__init__(text)


class SchemaError(DcniosError):
    """An Avro schema is broken, or incompatible with the data it must read."""


class CodecError(DcniosError):
    """A record value could not be decoded; the record is poison and goes to a DLQ."""


class KafkaError(DcniosError):
    """A Kafka operation failed."""


class DeliveryError(KafkaError):
    """A produced record was not acknowledged by the broker."""

    def __init__(self, message: str, *, topic: str | None = None, code: str | None = None) -> None:
        self.topic = topic
        self.code = code
        super().__init__(message)


class BrokerError(DcniosError):
    """The embedded broker could not be started or did not become ready."""


class ExtraMissingError(ConfigError):
    """An optional dependency is missing; the message says what to install."""


class RemoteError(DcniosError):
    """An HTTP peer answered with an error status, or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, call: str | None = None) -> None:
        self.status = status
        self.call = call
        super().__init__(message)


class DCacheError(RemoteError):
    """The dCache frontend refused or failed a request."""


class ChannelGoneError(DCacheError):
    """The event channel no longer exists (404): it expired or the frontend restarted."""


class OscarError(RemoteError):
    """The OSCAR API refused or failed a request."""


class NoDCacheInputError(OscarError):
    """The OSCAR service has no webdav.dcache input, so its supervisor cannot stage dCache files."""


class NiFiError(RemoteError):
    """The NiFi REST API refused or failed a request."""
