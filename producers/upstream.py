"""What a push or queue source is made of: upstream messages, their translation, the upstream itself.

A relayed source (S3 bucket notifications, Rucio messages) is three parts, and ``relay.py`` runs
them the same way for every kind:

* an ``Upstream`` hands out ``Delivery`` objects (a Kafka topic, an HTTP webhook, an SQS queue, a
  STOMP subscription) and is told, per delivery, when Kafka has acknowledged everything written
  for it (``acknowledge``: commit, delete, answer 2xx, STOMP ACK) or that it was not written
  (``release``: the upstream hands it out again);
* a ``Translate`` function, pure: a delivery's bytes → ``Events`` (StorageEvents), ``Skipped``
  (acknowledged and counted: an S3 test event, an event name the source does not take) or
  ``Rejected`` (its bytes go to ``<topic>.invalid`` with the reason, then it is acknowledged);
* the source's spec, for routes (``topic_for``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from dcnios.storage_event import StorageEvent

__all__ = ["Delivery", "Events", "Rejected", "Skipped", "Translate", "Translation", "Upstream"]


@dataclass(slots=True)
class Delivery:
    """One upstream message as received."""

    body: bytes
    #: Where it came from, for logs and the ``dcnios-origin`` header of ``.invalid`` reports:
    #: ``minio.events[3]@17``, ``sqs <message id>``, ``http 127.0.0.1:50312``.
    origin: str
    #: The upstream's own key (MinIO's Kafka record key ``bucket/key``), if it has one.
    key: bytes | None = None
    #: Headers or attributes that came with it (STOMP headers, HTTP headers), lower-case names.
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: Whatever the upstream needs to acknowledge it (an offset, a receipt handle, a waiter).
    handle: Any = None
    #: When it was received (ms since the epoch); the records' ``observed_at``.
    received_ms: int = 0
    #: Set by the upstream when it already knows the message is bad (a body over the size limit):
    #: the relay reports it to ``<topic>.invalid`` with this reason instead of translating it.
    rejected: str | None = None


@dataclass(frozen=True, slots=True)
class Events:
    """The delivery becomes these records (one per notification record, in order)."""

    events: tuple[StorageEvent, ...]


@dataclass(frozen=True, slots=True)
class Skipped:
    """Nothing to publish, and nothing wrong: acknowledged and counted under ``reason``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """Bad input: its bytes go to ``<topic>.invalid`` with ``reason``, then it is acknowledged."""

    reason: str


Translation = Events | Skipped | Rejected
#: A pure function of one delivery (and the source's name, which every record carries).
Translate = Callable[[Delivery], Translation]


class Upstream(Protocol):
    """Where a relayed source's messages come from. Called from the relay's one thread only,
    except that a push upstream's own server threads feed ``receive``."""

    #: What it reads, for logs and ``dcnios status``: ``kafka topic minio.events``.
    description: str

    def open(self) -> None:
        """Connect, subscribe or bind; raises a DcniosError naming what failed."""

    def receive(self, timeout: float) -> Sequence[Delivery]:
        """The deliveries that arrived, waiting at most ``timeout`` seconds for the first."""

    def acknowledge(self, deliveries: Sequence[Delivery]) -> None:
        """Kafka acknowledged every record written for these (in receive order): done with them."""

    def release(self, deliveries: Sequence[Delivery], reason: str) -> None:
        """These were not written: let the upstream hand them out again (or the sender retry)."""

    def close(self) -> None:
        """Stop receiving; deliveries neither acknowledged nor released are redelivered later."""
