"""Gap repair against dCache as it behaves: listings without ctime, renames that keep a file's times,
paged listings, names with any characters, and streams that go silent without a FIN."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from producer_harness import files, make_spec, read_topic, ready_source, start, wait_for

from dcnios.kafka import LatchedProducer, producer_config
from dcnios.producers.checkpoint import CheckpointStore
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.spec import load_spec
from dcnios.storage_event import StorageEvent

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
ODD_NAMES = ("p%41q", "a#b", "what?", "sp ace", "ünï")


@pytest.fixture
def dcache() -> Iterator[DCacheEmulator]:
    with DCacheEmulator(backlog=50) as emu:
        emu.mkdir("/data/in")
        emu.mkdir("/data/archive")
        yield emu


def written_long_ago(emu: DCacheEmulator, path: str, hours: int = 24) -> None:
    """A file that was uploaded (and closed) ``hours`` ago, outside any watched directory."""
    emu.put_silently(path)
    with emu.lock:
        entry = emu.entries[path]
        then = entry.mtime - hours * HOUR_MS
        entry.mtime = entry.creation_time = entry.ctime = then


def overrun_backlog(emu: DCacheEmulator, directory: str, n: int = 60) -> list[str]:
    """More events while the producer is away than the 50-event backlog holds: EVENT_LOSS."""
    paths = [f"{directory}/away{i:03d}" for i in range(n)]
    for path in paths:
        emu.srm_upload(path)
    return paths


def test_old_file_moved_in_during_a_gap_is_found_and_nothing_is_published_twice(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("p")
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, prefix)
    written_long_ago(dcache, "/data/archive/run-2019.dat")
    with ready_source(spec) as runner:
        dcache.upload("/data/in/before.dat")
        wait_for(lambda: runner.progress.safe_id is not None)
    # While the producer is away: an SRM-style move of an old file, and a backlog overrun.
    dcache.mv("/data/archive/run-2019.dat", "/data/in/run-2019.dat")
    away = overrun_backlog(dcache, "/data/in")
    expected = {"/data/in/before.dat", "/data/in/run-2019.dat", *away}
    with ready_source(spec):
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: set(files(r)) >= expected)
        gaps = read_topic(bootstrap, f"{prefix}.gaps", lambda r: any(g["reason"] == "EVENT_LOSS" for g in r))
    counts = Counter(files(records))
    assert set(counts) == expected
    assert [p for p, n in counts.items() if n > 1] == []  # "before.dat" was published already
    moved = next(r for r in records if r.path == "/data/in/run-2019.dat")
    assert moved.synthetic and moved.gap == "EVENT_LOSS"
    (loss,) = [g for g in gaps if g["reason"] == "EVENT_LOSS"]
    assert loss["reconciled"] == len(away) + 1


def test_the_first_start_indexes_the_tree_it_finds_and_publishes_only_its_last_minute(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("p")
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, prefix)
    topic = spec.sources[0].topic
    written_long_ago(dcache, "/data/in/old.dat")
    dcache.put_silently("/data/in/recent.dat")  # written while the producer was starting
    with ready_source(spec) as runner:
        wait_for(lambda: not runner.reconciler.busy)
        dcache.upload("/data/in/live.dat")
        read_topic(bootstrap, topic, lambda r: "/data/in/live.dat" in files(r))
    dcache.expire_channels()  # the first gap lists the whole tree again
    with ready_source(spec) as runner:
        wait_for(lambda: not runner.reconciler.busy, timeout=30)
        dcache.upload("/data/in/last.dat")
        records = read_topic(bootstrap, topic, lambda r: "/data/in/last.dat" in files(r))
        gaps = read_topic(bootstrap, f"{prefix}.gaps", lambda r: len(r) >= 2)
    # The day-old file was there before dcnios: indexed as handled, never a job.
    assert Counter(files(records)) == {f"/data/in/{n}.dat": 1 for n in ("recent", "live", "last")}
    baseline = next(g for g in gaps if g["reason"] == "BASELINE")
    assert (baseline["baselined"], baseline["reconciled"]) == (1, 1)
    lost = next(g for g in gaps if g["reason"] == "CHANNEL_LOST")
    assert lost["reconciled"] == 0


def test_the_first_start_of_a_recursive_source_indexes_the_whole_tree(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("p")
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, prefix, extra="    recursive: true\n")
    dcache.mkdir("/data/in/2019/run7")
    for path in ("/data/in/a.dat", "/data/in/2019/b.dat", "/data/in/2019/run7/c.dat"):
        written_long_ago(dcache, path)
    with ready_source(spec) as runner:
        wait_for(lambda: not runner.reconciler.busy, timeout=30)
    dcache.expire_channels()  # the next gap lists every directory: nothing there is new to it
    with ready_source(spec) as runner:
        wait_for(lambda: not runner.reconciler.busy, timeout=30)
        dcache.upload("/data/in/2019/run7/last.dat")
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: len(files(r)) >= 1)
        gaps = read_topic(bootstrap, f"{prefix}.gaps", lambda r: len(r) >= 2)
    assert files(records) == ["/data/in/2019/run7/last.dat"]
    baseline = next(g for g in gaps if g["reason"] == "BASELINE")
    assert (baseline["baselined"], baseline["reconciled"]) == (3, 0)


def test_backfill_publishes_the_tree_found_at_the_first_start_once(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"), extra="    backfill: true\n")
    topic = spec.sources[0].topic
    for i in range(3):
        written_long_ago(dcache, f"/data/in/old{i}.dat")
    with ready_source(spec) as runner:
        records = read_topic(bootstrap, topic, lambda r: len(files(r)) >= 3)
        wait_for(lambda: not runner.reconciler.busy)
    assert {r.gap for r in records} == {"BACKFILL"}
    dcache.expire_channels()
    with ready_source(spec) as runner:  # a restart, then a gap: neither backfills again
        wait_for(lambda: not runner.reconciler.busy, timeout=30)
        dcache.upload("/data/in/last.dat")
        records = read_topic(bootstrap, topic, lambda r: "/data/in/last.dat" in files(r))
    expected = [f"/data/in/old{i}.dat" for i in range(3)] + ["/data/in/last.dat"]
    assert Counter(files(records)) == Counter(expected)


def test_a_second_gap_republishes_nothing(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
    with ready_source(spec) as runner:
        for i in range(20):
            dcache.upload(f"/data/in/live{i:02d}")
        wait_for(lambda: runner.progress.safe_id is not None and runner.progress.safe_id >= 19)
    dcache.expire_channels()  # CHANNEL_LOST: every watched directory is listed
    dcache.put_silently("/data/in/during")
    with ready_source(spec) as runner:
        read_topic(bootstrap, spec.sources[0].topic, lambda r: "/data/in/during" in files(r))
    dcache.expire_channels()
    with ready_source(spec) as runner:
        wait_for(lambda: not runner.reconciler.busy and runner.progress.safe_id is not None, timeout=30)
        dcache.upload("/data/in/last")
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: "/data/in/last" in files(r))
    counts = Counter(files(records))
    assert [p for p, n in counts.items() if n > 1] == []
    assert len(counts) == 22


def test_file_replaced_during_a_gap_is_published_again(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
    topic = spec.sources[0].topic
    written_long_ago(dcache, "/data/archive/v2.dat")
    with ready_source(spec):
        pass
    dcache.expire_channels()
    dcache.put_silently("/data/in/calib.dat")
    with ready_source(spec):  # found by the CHANNEL_LOST listing, which records its fingerprint
        read_topic(bootstrap, topic, lambda r: "/data/in/calib.dat" in files(r))
    dcache.expire_channels()
    dcache.mv("/data/archive/v2.dat", "/data/in/calib.dat")  # an older file moved over the name
    with ready_source(spec):
        records = read_topic(bootstrap, topic, lambda r: files(r).count("/data/in/calib.dat") >= 2)
    assert files(records).count("/data/in/calib.dat") == 2


def test_directories_with_any_characters_are_watched_listed_and_repaired(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    for name in ODD_NAMES:
        dcache.mkdir(f"/data/in/{name}")
        dcache.put_silently(f"/data/in/{name}/already {name}.dat")
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"), extra="    recursive: true\n")
    with ready_source(spec) as runner:
        assert {f"/data/in/{n}" for n in ODD_NAMES} <= set(runner.watches.values())
        for name in ODD_NAMES:
            dcache.upload(f"/data/in/{name}/live {name}.dat")
        wait_for(
            lambda: runner.progress.safe_id is not None and runner.progress.safe_id >= len(ODD_NAMES) - 1
        )
    for name in ODD_NAMES:
        dcache.put_silently(f"/data/in/{name}/during {name}.dat")
    overrun_backlog(dcache, "/data/in")
    expected = {f"/data/in/{n}/{k} {n}.dat" for n in ODD_NAMES for k in ("already", "live", "during")}
    with ready_source(spec):
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: set(files(r)) >= expected)
    counts = Counter(p for p in files(records) if p in expected)
    assert set(counts) == expected and max(counts.values()) == 1


def test_a_watched_root_with_odd_characters(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    root = "/data/p%41q #?"
    dcache.mkdir(root)
    dcache.put_silently(f"{root}/first.dat")
    prefix = unique("p")
    path = tmp_path / "odd.yaml"
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, prefix)
    path.write_text(
        (tmp_path / f"{prefix}.yaml").read_text().replace("paths: [/data/in]", f'paths: ["{root}"]')
    )
    spec = load_spec(path)
    topic = spec.sources[0].topic
    with ready_source(spec):
        dcache.upload(f"{root}/live.dat")
        read_topic(bootstrap, topic, lambda r: f"{root}/live.dat" in files(r))
    dcache.expire_channels()
    dcache.put_silently(f"{root}/during.dat")
    with ready_source(spec):  # the CHANNEL_LOST repair lists the root by its percent-encoded URL
        records = read_topic(bootstrap, topic, lambda r: f"{root}/during.dat" in files(r))
    # first.dat was there before the first start (never announced): the listing finds it too.
    assert Counter(files(records)) == {f"{root}/{n}": 1 for n in ("live.dat", "during.dat", "first.dat")}


def test_large_directories_are_listed_in_pages(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
    with ready_source(spec) as runner:
        wait_for(lambda: runner.progress.safe_id is not None or not runner.reconciler.busy)
    dcache.expire_channels()
    expected = {f"/data/in/bulk{i:04d}" for i in range(1050)}
    for path in sorted(expected):
        dcache.put_silently(path)
    listings: list[str] = []
    dcache.before_request = lambda method, path: listings.append(path) if "/namespace/" in path else None
    running = start(spec)
    running.runner.client.list_page_size = 100
    try:
        records = read_topic(
            bootstrap, spec.sources[0].topic, lambda r: set(files(r)) >= expected, timeout=60
        )
    finally:
        running.halt()
    counts = Counter(files(records))
    assert set(counts) == expected and max(counts.values()) == 1
    assert listings.count("/api/v1/namespace/data/in") >= 12  # 1050 files, 100 a page, overlapping


def test_a_silent_stream_is_noticed_and_resumed_with_last_event_id(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("p")
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, prefix, extra="    heartbeat: 200ms\n")
    with ready_source(spec) as runner:
        dcache.upload("/data/in/before")
        wait_for(lambda: "/data/in/before" in files(read_topic(bootstrap, spec.sources[0].topic, bool, 5)))
        (channel,) = dcache.channels.values()
        silent = channel.conn
        dcache.blackhole()  # open, and nothing ever arrives: a firewall dropped it without a FIN
        for i in range(5):
            dcache.upload(f"/data/in/while-silent{i}")
        wait_for(lambda: channel.conn is not None and channel.conn is not silent, timeout=10)
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: len(set(files(r))) >= 6, timeout=20)
        assert runner.metrics.silent_streams.labels("src")._value.get() >= 1
        gaps = read_topic(bootstrap, f"{prefix}.gaps", lambda r: True, timeout=2)
    assert {f"/data/in/while-silent{i}" for i in range(5)} <= set(files(records))
    # Resumed from the backlog, not repaired by listing: no EVENT_LOSS, no synthetic records.
    assert not [g for g in gaps if g["reason"] == "EVENT_LOSS"]
    assert not [r for r in records if isinstance(r, StorageEvent) and r.synthetic]


def test_the_heartbeat_is_one_metronome_across_restarts(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"), extra="    heartbeat: 300ms\n")
    for _ in range(3):
        with ready_source(spec) as runner:
            wait_for(lambda r=runner: r.progress.safe_id is not None, timeout=10)  # ticks are progress too
    (channel,) = dcache.channels.values()
    assert len(channel.metronomes) == 1


def _failing_listings(emu: DCacheEmulator, times: int | None) -> list[str]:
    """The next ``times`` listings (every one, if None) answer 503, as a frontend under load does."""
    failed: list[str] = []

    def hook(method: str, path: str) -> None:
        if "/namespace/" in path and (times is None or len(failed) < times):
            failed.append(path)
            emu.fail_next.append(503)

    emu.before_request = hook
    return failed


def test_a_listing_that_fails_for_a_while_is_retried_and_holds_the_checkpoint(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("p")
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, prefix)
    with ready_source(spec) as runner:
        dcache.srm_upload("/data/in/seen")
        wait_for(lambda: runner.progress.safe_id is not None)
    away = overrun_backlog(dcache, "/data/in")
    failed = _failing_listings(dcache, 2)
    with ready_source(spec) as runner:
        records = read_topic(
            bootstrap, spec.sources[0].topic, lambda r: set(away) <= set(files(r)), timeout=30
        )
        gaps = read_topic(bootstrap, f"{prefix}.gaps", lambda r: any(g["reason"] == "EVENT_LOSS" for g in r))
    assert len(failed) == 2
    assert set(away) <= set(files(records))
    (loss,) = [g for g in gaps if g["reason"] == "EVENT_LOSS"]
    assert loss["reconciled"] == len(away) and "failed" not in loss


def test_an_unfinished_repair_survives_a_restart(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
    with ready_source(spec) as runner:
        dcache.srm_upload("/data/in/seen")
        wait_for(lambda: runner.progress.safe_id is not None)
        seen_id = runner.progress.safe_id
    dcache.overflow("/data/in")  # IN_Q_OVERFLOW while away: a gap with an event id
    dcache.put_silently("/data/in/hidden")
    failed = _failing_listings(dcache, None)
    with ready_source(spec) as runner:
        wait_for(lambda: len(failed) >= 1 and runner.reconciler.busy, timeout=20)
        time.sleep(1.5)  # a checkpoint interval: the pending repair is saved
    checkpoint = CheckpointStore(spec.kafka, LatchedProducer(producer_config(spec.kafka))).load("src")
    assert checkpoint is not None and checkpoint.last_event_id == seen_id  # held before the gap
    assert [g["reason"] for g in checkpoint.gaps] == ["IN_Q_OVERFLOW"]
    dcache.before_request = None
    with ready_source(spec):
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: "/data/in/hidden" in files(r))
    assert "/data/in/hidden" in files(records)


def test_an_idle_restart_keeps_the_event_id(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("p")
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, prefix, extra="    heartbeat: 0\n")
    with ready_source(spec) as runner:
        for i in range(25):
            dcache.srm_upload(f"/data/in/f{i}")
        wait_for(lambda: runner.progress.safe_id == 24)
    with ready_source(spec):
        time.sleep(1.5)  # idle: nothing new, a checkpoint interval passes
    with ready_source(spec):
        time.sleep(0.5)
    gaps = read_topic(bootstrap, f"{prefix}.gaps", lambda r: True, timeout=3)
    assert not [g for g in gaps if g["reason"] == "EVENT_LOSS"]  # the old code resumed with -1


def test_a_new_channels_first_checkpoint_carries_the_lost_channels_repair(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    """A producer killed while it subscribes on a new channel must still repair the old one's gap."""
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
    store = CheckpointStore(spec.kafka, LatchedProducer(producer_config(spec.kafka)))
    with ready_source(spec) as runner:
        wait_for(lambda: not runner.reconciler.busy)
    old = store.load("src")
    assert old is not None
    dcache.expire_channels()
    subscribing = threading.Event()

    def slow_subscription(method: str, path: str) -> None:
        if method == "POST" and path.endswith("/subscriptions/inotify"):
            subscribing.wait(20)  # many sub-directories, or a slow frontend

    dcache.before_request = slow_subscription
    running = start(spec)
    try:
        wait_for(lambda: (c := store.load("src")) is not None and c.channel != old.channel, timeout=15)
        new = store.load("src")
        assert new is not None
        assert [(g["reason"], g["previous"]) for g in new.gaps] == [("CHANNEL_LOST", old.channel)]
    finally:
        subscribing.set()
        running.halt()
