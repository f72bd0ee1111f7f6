"""The producer's rooms without sockets: progress slots, the published-files index, paged listings,
the index writer's ordering and the watch set's flags."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcnios.producers.checkpoint import Progress
from dcnios.producers.dcache_api import Child, DCacheClient, ListingUnstableError, url_path
from dcnios.producers.index import CLOCK_SKEW_MS, IndexWriter, PublishedIndex, Verdict, split_path
from dcnios.producers.watches import WatchSet
from dcnios.spec import SourceSpec, parse_spec


def source(extra: str = "") -> SourceSpec:
    spec = parse_spec(
        "sources:\n  - {name: s, endpoint: 'https://d:3880/api/v1', paths: [/data/in], topic: t"
        + extra
        + "}\n",
        env={},
    )
    return spec.sources[0]


@pytest.fixture
def index() -> Iterator[PublishedIndex]:
    idx = PublishedIndex(None, "p", None)  # type: ignore[arg-type]  # load() is the only Kafka user
    yield idx
    idx.close()


# -- progress ----------------------------------------------------------------------------------
def test_checkpoint_passes_a_frame_only_after_the_gap_it_opened() -> None:
    progress = Progress()
    frame = progress.slot(7, 100)
    gap = progress.add(None, 1, 100)  # opened while the frame was handled
    progress.append(frame)
    assert not progress.advance() and progress.safe_id is None
    gap.pending = 0
    assert progress.advance() and progress.safe_id == 7


def test_ids_of_an_old_channel_never_reach_the_new_channels_checkpoint() -> None:
    progress = Progress()
    old = progress.add(500, 1, 10)
    progress.add(501, 0, 11)
    progress.new_channel()
    progress.add(0, 0, 12)
    old.pending = 0
    progress.advance()
    assert progress.safe_id == 0
    progress = Progress()
    old = progress.add(500, 1, 10)
    progress.new_channel()
    old.pending = 0
    progress.advance()
    assert progress.safe_id is None


# -- index -------------------------------------------------------------------------------------
def test_split_path() -> None:
    assert split_path("/a") == ("/", "a")
    assert split_path("/data/in/x y") == ("/data/in", "x y")


def test_listing_verdicts(index: PublishedIndex) -> None:
    index.published("/d/live", 1_000_000)
    index.published("/d/listed", 2_000, Child("listed", False, 50, "P1", 10))
    verdicts = dict(
        (c.name, v)
        for c, v in index.compare(
            "/d",
            [
                Child("new", False, 1, "P0", 1),
                Child("live", False, 1_000_000 + CLOCK_SKEW_MS, "P2", 3),  # within the skew: same
                Child("listed", False, 50, "P1", 10),
                Child("sub", True, 5),
            ],
        )
    )
    assert verdicts == {"new": Verdict.NEW, "live": Verdict.SAME_UNSEEN, "listed": Verdict.SAME}
    changed = index.compare(
        "/d",
        [
            Child("live", False, 1_000_001 + CLOCK_SKEW_MS, "P2", 3),  # written again later
            Child("listed", False, 50, "P9", 10),  # another file moved over it
        ],
    )
    assert [v for _, v in changed] == [Verdict.CHANGED, Verdict.CHANGED]


def test_an_old_file_moved_in_is_new_whatever_its_times(index: PublishedIndex) -> None:
    index.published("/d/recent", 10**12)
    ((_, verdict),) = index.compare("/d", [Child("archived-2019", False, 1_500_000_000_000, "P", 1)])
    assert verdict is Verdict.NEW


def test_learned_fingerprint_replaces_the_clock(index: PublishedIndex) -> None:
    index.published("/d/f", 1_000)
    key, value = index.learned("/d", Child("f", False, 900, "PF", 4)) or (b"", None)
    assert key == b"/d/f" and value is not None and b'"p":"PF"' in value
    ((_, verdict),) = index.compare("/d", [Child("f", False, 900, "PF", 4)])
    assert verdict is Verdict.SAME
    ((_, verdict),) = index.compare("/d", [Child("f", False, 900, "PG", 4)])
    assert verdict is Verdict.CHANGED


def test_end_of_listing_forgets_files_that_left(index: PublishedIndex) -> None:
    for name in ("stay", "gone"):
        index.published(f"/d/{name}", 1)
    index.published("/other/gone", 1)
    index.begin_listing(10)
    index.compare("/d", [Child("stay", False, 1)])
    assert index.end_listing("/d") == [(b"/d/gone", None)]
    assert len(index) == 2


def test_a_file_published_during_the_listing_is_not_taken_for_gone(index: PublishedIndex) -> None:
    index.published("/d/early", 1)
    index.begin_listing(10)
    index.compare("/d", [])  # the page was read before late.dat was written
    index.published("/d/late.dat", 12)  # its live event came while the listing ran
    assert index.end_listing("/d") == [(b"/d/early", None)]
    assert [v for _, v in index.compare("/d", [Child("late.dat", False, 11)])] == [Verdict.SAME_UNSEEN]


def test_removing_a_directory_forgets_its_subtree_only(index: PublishedIndex) -> None:
    for path in ("/d/a/x", "/d/a/b/y", "/d/a0/z", "/d/ab", "/d/a"):
        index.published(path, 1)
    gone = sorted(k for k, _ in index.removed("/d/a", is_dir=True))
    assert gone == [b"/d/a", b"/d/a/b/y", b"/d/a/x"]
    assert len(index) == 2


def test_covered_only_by_a_listing_after_the_frame(index: PublishedIndex) -> None:
    index.listing_at(5_000)
    index.published("/d/f", 5_000, Child("f", False, 1, "P", 1))
    assert index.covered("/d/f", 4_999)
    assert not index.covered("/d/f", 5_000)
    index.published("/d/g", 6_000)  # live: a later frame of a live file is its own event
    assert not index.covered("/d/g", 4_000)


def test_names_with_any_characters_round_trip(index: PublishedIndex) -> None:
    for name in ("p%41q", "a#b", "what?", "sp ace", "ünï", "tab\tnew\nline"):
        key, _ = index.published(f"/d/{name}", 1)
        assert key == f"/d/{name}".encode()
    assert all(v is Verdict.SAME_UNSEEN for _, v in index.compare("/d", [Child("p%41q", False, 1)]))
    assert url_path("/d/p%41q/a#b/what?/sp ace/ünï") == "/d/p%2541q/a%23b/what%3F/sp%20ace/%C3%BCn%C3%AF"


# -- index writer ------------------------------------------------------------------------------
class _Recorder:
    def __init__(self) -> None:
        self.produced: list[tuple[bytes, bytes | None]] = []

    def produce(self, topic: str, value: bytes | None, *, key: bytes, **_: Any) -> None:
        self.produced.append((key, value))


def test_index_records_wait_for_their_files_ack_and_keep_their_order() -> None:
    recorder = _Recorder()
    writer = IndexWriter(recorder, "p")  # type: ignore[arg-type]
    published = writer.after_ack((b"/d/f", b"{}"), None)
    writer.now((b"/d/f", None), None)  # the file left right after
    assert recorder.produced == []  # the tombstone must not overtake the publication
    published.ready = True
    writer.drain()
    assert recorder.produced == [(b"/d/f", b"{}"), (b"/d/f", None)]


# -- paged listings ----------------------------------------------------------------------------
class _Pages(DCacheClient):
    """list_page over a list that a test changes between pages."""

    def __init__(self, names: list[str], between: Any = None) -> None:
        self.names = names
        self.between = between
        self.calls: list[tuple[int, int]] = []

    def list_page(self, path: str, offset: int, limit: int) -> list[Child]:
        if self.calls and self.between is not None:
            self.between(self)
        self.calls.append((offset, limit))
        return [Child(n, False, 1) for n in self.names[offset : offset + limit]]


def _all(client: DCacheClient, page: int) -> list[str]:
    return [c.name for p in client.iter_listing("/d", page) for c in p]


def test_pages_overlap_and_each_child_comes_once() -> None:
    names = [f"f{i:03d}" for i in range(250)]
    client = _Pages(names)
    assert _all(client, 100) == names
    assert client.calls == [(0, 100), (90, 100), (180, 100)]


def test_entries_shifted_by_deletions_are_not_skipped() -> None:
    names = [f"f{i:03d}" for i in range(250)]

    def delete_five(c: _Pages) -> None:
        if len(c.calls) == 1:
            del c.names[0:5]

    client = _Pages(list(names), delete_five)
    assert set(names[5:]) <= set(_all(client, 100))  # listed before they left, or after: never skipped


def test_a_listing_that_moves_too_far_starts_again_then_gives_up() -> None:
    names = [f"f{i:03d}" for i in range(250)]

    def delete_many(c: _Pages) -> None:
        if c.calls[-1][0] == 0 and len(c.calls) == 1:
            del c.names[0:50]  # more than the overlap: the pages no longer join

    client = _Pages(list(names), delete_many)
    assert set(names[50:]) <= set(_all(client, 100))
    assert client.calls[1] == (90, 100) and client.calls[2] == (0, 100)  # started again

    def churn(c: _Pages) -> None:
        c.names[:] = [f"n{len(c.calls)}-{i}" for i in range(250)]

    with pytest.raises(ListingUnstableError):
        _all(_Pages(list(names), churn), 100)


# -- watch set ---------------------------------------------------------------------------------
def test_flags_follow_the_spec_and_the_index_needs_departures() -> None:
    ws = WatchSet(source(), None)  # type: ignore[arg-type]
    assert ws.flags() == ["IN_CLOSE_WRITE", "IN_DELETE", "IN_MOVED_FROM", "IN_MOVED_TO"]
    ws = WatchSet(source(", reconcile: false, recursive: true"), None)  # type: ignore[arg-type]
    assert ws.flags() == ["IN_CLOSE_WRITE", "IN_CREATE", "IN_DELETE_SELF", "IN_MOVED_TO"]
    assert ws.silence == 31.0
    assert WatchSet(source(", heartbeat: 0"), None).silence is None  # type: ignore[arg-type]


def test_listing_entries_get_the_checks_stream_names_get() -> None:
    from dcnios.producers.dcache_api import _child

    assert _child({"fileName": "../../etc/passwd", "fileType": "REGULAR"}) is None
    assert _child({"fileName": "..", "fileType": "DIR"}) is None
    assert _child({"fileName": "", "fileType": "REGULAR"}) is None
    assert _child({"fileName": "\udcff"}) is None
    assert _child(["not", "an", "object"]) is None
    # Bad attributes are dropped, not fatal: the file is still found.
    odd = _child({"fileName": "f", "mtime": "yesterday", "size": 10**5000, "pnfsId": 7})
    assert odd == Child("f", False, 0, None, None)
    assert _child({"fileName": "d", "fileType": "DIR", "mtime": 5}) == Child("d", True, 5, None, None)


@given(
    st.integers(min_value=0, max_value=2**62),
    st.booleans(),
    st.one_of(st.none(), st.text(max_size=40)),
    st.one_of(st.none(), st.integers(min_value=0, max_value=2**62)),
    st.integers(min_value=0, max_value=2**62),
)
def test_index_values_are_the_json_every_reader_parses(
    published: int, listed: bool, pnfsid: str | None, size: int | None, mtime: int
) -> None:
    index = PublishedIndex(None, "p", None)  # type: ignore[arg-type]  # load() is the only Kafka user
    child = Child("f", False, mtime, pnfsid, size) if listed else None
    try:
        _, value = index.published("/d/f", published, child)
    finally:
        index.close()
    assert value is not None
    expected: dict[str, object] = {"t": published}
    if listed:
        expected["l"] = 1
        if pnfsid is not None:
            expected.update(p=pnfsid, s=size, m=mtime)
    assert json.loads(value) == expected


def test_a_baselined_file_is_handled_but_not_taken_for_one_a_listing_published(
    index: PublishedIndex,
) -> None:
    old = Child("old.dat", False, 5, "PNFS1", 10)
    index.baselined("/d/old.dat", 1_000, old)
    assert [v for _, v in index.compare("/d", [old])] == [Verdict.SAME]  # no gap republishes it
    # A live event for it (a move in keeps the old times) is a new arrival: it is published.
    assert index.listed_fingerprint("/d/old.dat") is None
    assert not index.covered("/d/old.dat", 500)
