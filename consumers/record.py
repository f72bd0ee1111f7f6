"""What happens to one record, decided in one place.

``dcnios-consumer``, ``dcnios replay`` and ``dcnios dlq replay`` all ask a ``RecordPolicy``:
what to send (``prepare``), and what to do after each call (``after_call``) and after each
followed job (``after_job``). The answer is a ``Decision``, which one ``RecordDriver``
(driver.py) carries out for all three.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from confluent_kafka import Message

from dcnios.codec import StorageEventCodec
from dcnios.consumers.jobs import JobEnd, job_name
from dcnios.consumers.oscar import Attempt
from dcnios.errors import CodecError, NoDCacheInputError
from dcnios.spec import ConsumerSpec
from dcnios.storage_event import (
    KIND_DCACHE,
    KIND_RAW,
    StorageEvent,
    dcache_envelope,
    dedup_key,
    now_millis,
    record_json,
)

__all__ = [
    "DeadLetter",
    "Decision",
    "Done",
    "Follow",
    "Hold",
    "Prepared",
    "Progress",
    "RecordPolicy",
    "RecordReader",
    "Retry",
    "body_for",
    "input_path_for",
    "staged_name",
    "traceparent_for",
    "unstageable_reason",
]

logger = logging.getLogger(__name__)
#: What `echo $EVENT` (unquoted, OSCAR's job command) changes in every POSIX shell: field
#: splitting on IFS and echo's single-space join turn a run of spaces into one. (Tabs, newlines
#: and backslashes reach the shell as JSON escapes; only dash's echo rewrites those, so whether
#: they survive depends on the image: a job that fails on them is retried and dead-lettered.)
_SHELL_MANGLED: Final = re.compile("  ")


@dataclass(frozen=True, slots=True)
class Done:
    """Finished: invoked (201/200), the job Succeeded, or the job already existed (untracked)."""

    how: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Call again as attempt ``attempt`` after ``delay`` seconds."""

    attempt: int
    delay: float
    error: str


@dataclass(frozen=True, slots=True)
class Follow:
    """The job exists; the record finishes when it ends."""

    job: str


@dataclass(frozen=True, slots=True)
class Hold:
    """OSCAR is down as a whole: wait for the circuit breaker; this attempt does not count."""

    error: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str  # failed | job-failed | unstageable | config
    error: str
    status: int | None = None
    log_tail: str = ""


Decision = Done | Retry | Follow | Hold | DeadLetter


@dataclass(frozen=True, slots=True)
class Prepared:
    event: StorageEvent
    body: bytes


@dataclass(slots=True)
class Progress:
    """Where one record is: ``attempt`` counts every try against ``retry.max_attempts``;
    ``job_try`` numbers the job name, and moves only when a job ended without success, so a call
    retried after a timeout asks for the same job again (OSCAR answers "already exists")."""

    attempt: int = 1
    job_try: int = 1


def traceparent_for(event: StorageEvent) -> str:
    """W3C traceparent: the trace id derives from the event, so all its attempts share one trace."""
    trace = hashlib.blake2b(dedup_key(event).encode(), digest_size=16).hexdigest()
    # A span id must be unique, not secret: the OS's random source cost 3 % of the consumer's loop.
    span = random.getrandbits(64) or 1  # all zeros is invalid (W3C Trace Context §3.2.2.4)
    return f"00-{trace}-{span:016x}-01"


def staged_name(path: str, input_path: str, *, nested: bool = False) -> str | None:
    """``event.name`` such that the supervisor stages ``path``; None if it cannot.

    faas-supervisor (1.5.8, and 2.0.1 at 97b91f2) ignores ``subscription``: it fetches
    ``os.path.join(<first webdav.dcache input path>, event.name)`` (events/dCache.py ``set_path``)
    and writes it to ``$TMP_INPUT_DIR/<event.name>`` without creating directories
    (storage/providers/webdav.py ``download_file``), so a name with a ``/`` fails before the
    download. Only files directly in the input directory can be staged, unless the service's
    supervisor is known to handle nested names (``nested``).
    """
    base = input_path.rstrip("/")
    if not path.startswith(base + "/"):
        return None
    relative = path[len(base) + 1 :]
    if not relative or ("/" in relative and not nested) or _SHELL_MANGLED.search(relative):
        return None
    return relative


def unstageable_reason(path: str, input_path: str, *, nested: bool = False) -> str:
    base = input_path.rstrip("/") or "/"
    if not (path.startswith(input_path.rstrip("/") + "/")):
        return (
            f"{path} is outside the service's input path {base}: OSCAR's supervisor stages "
            "<input path>/<event.name>, so it cannot fetch this file"
        )
    if _SHELL_MANGLED.search(path[len(input_path.rstrip("/")) + 1 :]):
        return (
            f"{path} has a run of spaces in its name: OSCAR starts a job as `echo $EVENT | "
            "supervisor` with $EVENT unquoted, so the shell turns them into one space and the "
            "supervisor fetches another file"
        )
    return (
        f"{path} is below a sub-directory of the service's input path {base}: OSCAR's supervisor "
        "writes $TMP_INPUT_DIR/<event.name> without creating directories and fails (faas-supervisor "
        "<= 2.0.1); point a service's input at that directory, use payload: record, or set "
        "oscar.nested_names if your supervisor stages nested names"
    )


def body_for(
    event: StorageEvent, payload: str, input_path: str | None, *, nested: bool = False
) -> bytes | None:
    """The OSCAR request body; None when a dCache envelope cannot name a stageable file.

    For a dCache record, ``native`` and ``dcache``: the dCache envelope with ``event.name``
    relative to ``input_path`` (byte-exact for a file directly in it). For every other kind,
    ``native`` and ``raw``: the notification as it came (``original``: S3's ``Records[]`` JSON,
    Ceph's translated by the producer, the Rucio message, a raw topic's value). ``record``: the
    whole record as JSON. ``RecordPolicy.prepare`` refuses the combinations that have no body.
    """
    if payload == "record":
        return record_json(event)
    if event.kind != KIND_DCACHE:
        return event.original
    assert input_path is not None, "a dCache envelope needs the service's input path"
    name = staged_name(event.path, input_path, nested=nested)
    return None if name is None else dcache_envelope(event, name=name)


def input_path_for(cs: ConsumerSpec, fetch: Callable[[], str | None]) -> str | None:
    """The service's input path, when the consumer's payload may need it.

    ``dcache``: always (``fetch`` raises when there is none). ``native``: when it can be known
    (given, or read with credentials) and the service has a webdav.dcache input; otherwise None,
    and dCache records, if any come, are dead-lettered with the reason (``prepare``).
    """
    if not cs.dcache_bodies:
        return None
    if cs.payload == "native":
        if cs.needs_input_path_without_it:
            return None
        try:
            return fetch()
        except NoDCacheInputError as exc:
            logger.info("%s: %s; dCache records on %s will be dead-lettered", cs.name, exc, cs.topic)
            return None
    return fetch()


class RecordReader:
    """A Kafka record → its StorageEvent, for the consumer, ``replay`` and ``dlq replay`` alike.

    ``payload: raw`` reads a topic that other systems fill: nothing is decoded, the value is the
    body (``original``), the key (else the record's place) the path, and the place the dedup key.
    """

    def __init__(self, cs: ConsumerSpec, codec: StorageEventCodec) -> None:
        self.cs = cs
        self.codec = codec
        self.raw = cs.payload == "raw"

    def read(self, msg: Message) -> StorageEvent:
        """Raises CodecError for a record that is not one (poison: the DLQ)."""
        if not self.raw:
            return self.codec.decode(msg.value(), msg.headers(), self.cs.topic)
        value = msg.value()
        if value is None:
            raise CodecError("empty value (tombstone): nothing to send")
        topic, partition, offset = msg.topic() or self.cs.topic, msg.partition() or 0, msg.offset() or 0
        key = msg.key()
        kind, written_ms = msg.timestamp()
        return StorageEvent.notification(
            kind=KIND_RAW,
            source=topic,
            path=key.decode("utf-8", "replace") if key else f"{topic}[{partition}]@{offset}",
            name=None,
            channel=f"{topic}[{partition}]",
            observed_at=written_ms if kind != 0 else now_millis(),
            event_id=offset,
            original=value,
        )


class RecordPolicy:
    """Decisions for one consumer's records. ``generation`` > 0 marks a deliberate re-run."""

    def __init__(
        self, cs: ConsumerSpec, *, input_path: str | None, tracking: bool, generation: int = 0
    ) -> None:
        self.cs = cs
        self.input_path = input_path
        self.tracking = tracking
        self.generation = generation

    def prepare(self, event: StorageEvent) -> Prepared | DeadLetter:
        payload = self.cs.payload
        if event.kind != KIND_DCACHE and payload != "record":
            if payload == "dcache":
                return DeadLetter(
                    "config", f"payload: dcache sends dCache records only; this is a {event.kind} record"
                )
            if event.original is None:
                return DeadLetter("config", f"a {event.kind} record without its original notification")
            return Prepared(event, event.original)
        if event.kind == KIND_DCACHE and payload == "raw":
            return DeadLetter("config", "payload: raw on a topic of dcnios records; use payload: native")
        if payload != "record" and self.input_path is None:
            return DeadLetter(
                "config",
                f"{event.path}: a dCache record needs the OSCAR service's webdav.dcache input path "
                "(oscar.input_path, or username/password to read it from the service)",
            )
        nested = self.cs.oscar.nested_names
        body = body_for(event, payload, self.input_path, nested=nested)
        if body is None:
            assert self.input_path is not None
            return DeadLetter("unstageable", unstageable_reason(event.path, self.input_path, nested=nested))
        return Prepared(event, body)

    def job(self, event: StorageEvent, job_try: int) -> str | None:
        if self.cs.oscar.job_id != "deterministic":
            return None
        return job_name(event, self.cs.oscar.service, self.generation, job_try)

    def job_for(self, prepared: Prepared, job_try: int) -> str | None:
        """The job name a call for ``prepared`` asks for (a workflow step names its own)."""
        return self.job(prepared.event, job_try)

    def headers(self, event: StorageEvent, job: str | None) -> dict[str, str]:
        headers = {"traceparent": traceparent_for(event)}
        if job is not None:
            headers["X-Delegated-Job-ID"] = job
        return headers

    def backoff(self, attempt: int) -> float:
        """The delay before attempt ``attempt + 1``: doubling from initial_backoff, capped, jittered."""
        retry = self.cs.retry
        delay: float = min(float(retry.initial_backoff) * 2.0 ** (attempt - 1), float(retry.max_backoff))
        return delay * random.uniform(0.8, 1.0)  # noqa: S311 - jitter, not security

    def after_call(self, attempt: Attempt, number: int, *, breaker_open: bool, job: str | None) -> Decision:
        if attempt.ok:
            if self.tracking and job is not None:
                return Follow(job)
            return Done("exists" if attempt.exists else "invoked")
        if attempt.outage is not None or (attempt.system and breaker_open):
            return Hold(attempt.error)
        if not attempt.retryable:
            return DeadLetter(
                "config" if attempt.status in (301, 302, 303, 307, 308) else "failed",
                attempt.error,
                attempt.status,
            )
        if number >= self.cs.retry.max_attempts:
            return DeadLetter("failed", attempt.error, attempt.status)
        delay = attempt.retry_after if attempt.retry_after is not None else self.backoff(number)
        return Retry(number + 1, min(delay, float(self.cs.retry.max_backoff)), attempt.error)

    def after_job(self, end: JobEnd, number: int) -> Decision:
        if end.succeeded:
            return Done("succeeded")
        error = f"job {end.name} {end.status}" + {
            "Missing": " (not in OSCAR's job listing)",
            "TimedOut": f" (not ended within oscar.job_timeout, {end.log_tail}; deleted)",
        }.get(end.status, "")
        if number >= self.cs.retry.max_attempts:
            return DeadLetter("job-failed", error, None, end.log_tail)
        return Retry(number + 1, self.backoff(number), error)
