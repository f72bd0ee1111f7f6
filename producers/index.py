"""Which files of one source have been published: what gap repair reconciles a listing against.

The truth is a compacted topic, ``<prefix>.published.<source>``: key = the file's path, value =
when it was published and, once a listing has seen it, its fingerprint (pnfsId, size, mtime);
a tombstone when the file left. A producer reads it at start into a local SQLite database
(stdlib; a private temporary file that SQLite deletes on close), so a tree of a million files
costs disk pages, not Python objects: a dict of a million paths costs ~130 MB of RSS.

Why not clocks: dCache reports ``ctime`` only with ``optional=true`` and a rename keeps the
moved file's mtime and ctime (FsSqlDriver.java rename), so a file moved in during a gap looks
old; and "everything newer than the gap" republishes every file of the last minute.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from dcnios.kafka import DeliveryReport, LatchedProducer, read_compacted
from dcnios.producers.dcache_api import Child
from dcnios.producers.records import join_path
from dcnios.spec import KafkaSpec

__all__ = [
    "CLOCK_SKEW_MS",
    "IndexRecord",
    "IndexWrite",
    "IndexWriter",
    "PublishedIndex",
    "Verdict",
    "split_path",
]

logger = logging.getLogger(__name__)

#: dCache's clock against ours. Only used for files whose fingerprint the index does not know yet
#: (published from a live event, not yet seen by a listing): a listing's mtime later than the
#: publication by more than this means the file was written again.
CLOCK_SKEW_MS: Final = 60_000
_PROBE_KEY: Final = b"\x00probe"
_COLUMNS: Final = "t, listed, pnfsid, size, mtime"
_IN_CHUNK: Final = 500  # names per IN (...) query, well below SQLite's variable limit

#: (key, value): value None is a tombstone.
IndexRecord = tuple[bytes, bytes | None]


class Verdict(Enum):
    NEW = "new"  # never published: publish
    CHANGED = "changed"  # published, but this is another file now: publish
    SAME = "same"  # published and unchanged: skip
    SAME_UNSEEN = "same-unseen"  # published live and plausibly unchanged: skip, learn its fingerprint


def split_path(path: str) -> tuple[str, str]:
    directory, _, name = path.rpartition("/")
    return directory or "/", name


@dataclass(frozen=True, slots=True)
class _Row:
    published_ms: int
    listed: bool
    pnfsid: str | None
    size: int | None
    mtime: int | None


def _value(row: _Row) -> bytes:
    # Formatted by hand rather than json.dumps of a dict: one index record per published file is
    # on the producer's hot path, and this is the same JSON for a third of the time.
    text = f'{{"t":{int(row.published_ms)}'
    if row.listed:
        text += ',"l":1'
    if row.pnfsid is not None:
        text += f',"p":{json.dumps(row.pnfsid)},"s":{json.dumps(row.size)},"m":{json.dumps(row.mtime)}'
    return (text + "}").encode()


class PublishedIndex:
    """The local copy of one source's published-files topic; every change returns its record."""

    def __init__(self, kafka: KafkaSpec, topic: str, producer: LatchedProducer) -> None:
        self.kafka = kafka
        self.topic = topic
        self.producer = producer
        # check_same_thread off: built on the caller's thread, used only on the run loop's.
        self._db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-8192", "temp_store=FILE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute(
            "CREATE TABLE files (dir TEXT, name TEXT, t INTEGER, listed INTEGER, pnfsid TEXT,"
            " size INTEGER, mtime INTEGER, PRIMARY KEY (dir, name)) WITHOUT ROWID"
        )
        self._db.execute("CREATE TEMP TABLE listed (name TEXT PRIMARY KEY) WITHOUT ROWID")
        #: Rows put and not yet written (see ``flush``).
        self._puts: list[tuple[Any, ...]] = []
        #: Our clock when the newest listing page was requested: a live event read before it
        #: may already be covered by what that listing published.
        self.last_listing_ms = 0
        self._listing_started_ms = 0

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        self.flush()
        return int(self._db.execute("SELECT count(*) FROM files").fetchone()[0])

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> int:
        """Read the topic into the local copy; returns the number of files published so far."""
        batch: list[tuple[Any, ...]] = []
        gone: list[tuple[str, str]] = []

        def flush() -> None:
            if batch:
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?)", batch)
                batch.clear()
            if gone:
                self._db.executemany("DELETE FROM files WHERE dir=? AND name=?", gone)
                gone.clear()

        def take(key: bytes | None, value: bytes | None, offset: int) -> None:
            if not key:
                return
            directory, name = split_path(key.decode("utf-8", "surrogateescape"))
            if value is None:
                flush()  # a tombstone must not overtake an earlier write of the same path
                gone.append((directory, name))
                return
            try:
                data = json.loads(value)
                row = (
                    directory,
                    name,
                    int(data["t"]),
                    int(data.get("l", 0)),
                    data.get("p"),
                    data.get("s"),
                    data.get("m"),
                )
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("%s: ignoring unreadable record at offset %d: %s", self.topic, offset, exc)
                return
            if gone:
                flush()
            batch.append(row)
            if len(batch) >= 10_000:
                flush()

        def told(count: int) -> None:
            flush()
            logger.info("%s: %d records read", self.topic, count)

        self._db.execute("BEGIN")
        read_compacted(self.kafka, self.topic, self.producer, take, probe_key=_PROBE_KEY, progress=told)
        flush()
        self._db.execute("COMMIT")
        return len(self)

    # -- questions -------------------------------------------------------------------------
    def covered(self, path: str, observed_ms: int) -> bool:
        """Whether a listing published ``path`` after a frame read at ``observed_ms``.

        Such a frame is about the file the listing saw (dCache sends IN_CLOSE_WRITE after the
        namespace update), so publishing it again would only duplicate the job.
        """
        if observed_ms >= self.last_listing_ms:
            return False
        row = self._row(*split_path(path))
        return row is not None and row.listed and row.published_ms > observed_ms

    def listed_fingerprint(self, path: str) -> tuple[str, int | None, int] | None:
        """(pnfsId, size, mtime) of ``path`` when its last publication came from a listing."""
        row = self._row(*split_path(path))
        if row is None or not row.listed or row.pnfsid is None or row.mtime is None:
            return None
        return row.pnfsid, row.size, row.mtime

    def compare(self, directory: str, children: Sequence[Child]) -> list[tuple[Child, Verdict]]:
        """The verdict for each file of one listing page (directories are the caller's)."""
        self.flush()
        files = [c for c in children if not c.is_dir]
        known: dict[str, _Row] = {}
        for start in range(0, len(files), _IN_CHUNK):
            names = [c.name for c in files[start : start + _IN_CHUNK]]
            marks = ",".join("?" * len(names))  # placeholders only: the names are bound
            query = f"SELECT name, {_COLUMNS} FROM files WHERE dir=? AND name IN ({marks})"  # noqa: S608
            for name, t, listed, pnfsid, size, mtime in self._db.execute(query, (directory, *names)):
                known[name] = _Row(t, bool(listed), pnfsid, size, mtime)
        self._db.executemany("INSERT OR IGNORE INTO listed VALUES (?)", ((c.name,) for c in files))
        return [(c, _verdict(known.get(c.name), c)) for c in files]

    def _row(self, directory: str, name: str) -> _Row | None:
        self.flush()
        found = self._db.execute(
            f"SELECT {_COLUMNS} FROM files WHERE dir=? AND name=?",  # noqa: S608
            (directory, name),
        ).fetchone()
        return None if found is None else _Row(found[0], bool(found[1]), found[2], found[3], found[4])

    # -- changes ---------------------------------------------------------------------------
    def published(self, path: str, at_ms: int, child: Child | None = None) -> IndexRecord:
        """``path`` was published at ``at_ms``: from a live event, or from a listing (``child``)."""
        directory, name = split_path(path)
        row = _Row(
            at_ms,
            child is not None,
            child.pnfsid if child else None,
            child.size if child else None,
            child.mtime if child else None,
        )
        self._put(directory, name, row)
        return path.encode("utf-8", "surrogateescape"), _value(row)

    def baselined(self, path: str, at_ms: int, child: Child) -> IndexRecord:
        """``path`` was there before dcnios: handled, with its fingerprint, but not published by a
        listing (so a live event for it is a new write or a move, and is published)."""
        directory, name = split_path(path)
        row = _Row(at_ms, False, child.pnfsid, child.size, child.mtime)
        self._put(directory, name, row)
        return path.encode("utf-8", "surrogateescape"), _value(row)

    def learned(self, directory: str, child: Child) -> IndexRecord | None:
        """A listing saw a file published live: keep its fingerprint for the next gap."""
        row = self._row(directory, child.name)
        if row is None or child.pnfsid is None:
            return None
        row = _Row(row.published_ms, row.listed, child.pnfsid, child.size, child.mtime)
        self._put(directory, child.name, row)
        return join_path(directory, child.name).encode("utf-8", "surrogateescape"), _value(row)

    def removed(self, path: str, *, is_dir: bool) -> list[IndexRecord]:
        """``path`` left (deleted or moved away); for a directory, everything below it too."""
        directory, name = split_path(path)
        gone: list[tuple[str, str]] = []
        if self._row(directory, name) is not None:
            gone.append((directory, name))
        if is_dir:
            prefix = path.rstrip("/") + "/"
            gone.extend(
                self._db.execute(
                    "SELECT dir, name FROM files WHERE dir = ? OR (dir >= ? AND dir < ?)",
                    (path, prefix, prefix[:-1] + "0"),  # '0' sorts right after '/'
                )
            )
        return self._forget(gone)

    def begin_listing(self, at_ms: int) -> None:
        """A directory's listing starts at ``at_ms`` (our clock), before its first page."""
        self._db.execute("DELETE FROM listed")
        self._listing_started_ms = at_ms

    def listing_at(self, at_ms: int) -> None:
        """A listing page is about to be requested at ``at_ms`` (our clock)."""
        self.last_listing_ms = max(self.last_listing_ms, at_ms)

    def end_listing(self, directory: str) -> list[IndexRecord]:
        """The listing of ``directory`` is complete: files it no longer shows have left.

        Only files published before the listing started: one published live while it ran may
        have been written after its page was read, and is not gone.
        """
        self.flush()
        gone = list(
            self._db.execute(
                "SELECT dir, name FROM files WHERE dir=? AND t < ? AND name NOT IN (SELECT name FROM listed)",
                (directory, self._listing_started_ms),
            )
        )
        self._db.execute("DELETE FROM listed")
        return self._forget(gone)

    def _put(self, directory: str, name: str, row: _Row) -> None:
        self._puts.append(
            (directory, name, row.published_ms, int(row.listed), row.pnfsid, row.size, row.mtime)
        )

    def flush(self) -> None:
        """Write the rows put since the last flush, in one statement. Every query flushes first,
        so none ever misses a row; the run loop flushes once per chunk (a single-row INSERT per
        published file was 13 % of the producer's CPU)."""
        if self._puts:
            self._db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?)", self._puts)
            self._puts.clear()

    def _forget(self, gone: Iterable[tuple[str, str]]) -> list[IndexRecord]:
        out: list[IndexRecord] = []
        rows = list(gone)
        self.flush()  # a delete must not be overtaken by an earlier put of the same path
        self._db.executemany("DELETE FROM files WHERE dir=? AND name=?", rows)
        for directory, name in rows:
            out.append((join_path(directory, name).encode("utf-8", "surrogateescape"), None))
        return out


def _verdict(row: _Row | None, child: Child) -> Verdict:
    if row is None:
        return Verdict.NEW
    if row.pnfsid is not None:
        same = (row.pnfsid, row.size, row.mtime) == (child.pnfsid, child.size, child.mtime)
        return Verdict.SAME if same else Verdict.CHANGED
    # Published from a live event: the listing can only tell a rewrite by its time.
    if child.mtime > row.published_ms + CLOCK_SKEW_MS:
        return Verdict.CHANGED
    return Verdict.SAME_UNSEEN


@dataclass(slots=True)
class IndexWrite:
    key: bytes
    value: bytes | None
    delivered: DeliveryReport | None
    ready: bool


class IndexWriter:
    """Index records go out in the order they were made, each only once it is safe.

    A file's record waits for the ack of the file's own record: were it written first and the
    producer killed, the index would claim a file that never reached Kafka, and no gap repair
    would publish it again. Tombstones and fingerprints are safe at once, but still wait their
    turn, so a path's records never overtake one another.
    """

    def __init__(self, producer: LatchedProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self._queue: deque[IndexWrite] = deque()

    def after_ack(self, record: IndexRecord, delivered: DeliveryReport | None) -> IndexWrite:
        write = IndexWrite(record[0], record[1], delivered, False)
        self._queue.append(write)
        return write

    def now(self, record: IndexRecord, delivered: DeliveryReport | None) -> None:
        self._queue.append(IndexWrite(record[0], record[1], delivered, True))
        self.drain()

    def drain(self) -> None:
        queue = self._queue
        while queue and queue[0].ready:
            write = queue.popleft()
            self.producer.produce(self.topic, write.value, key=write.key, delivered=write.delivered)
