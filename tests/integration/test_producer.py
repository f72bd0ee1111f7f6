"""dcnios-producer against the dCache emulator and the real broker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from producer_harness import files, make_spec, read_topic, ready_source, start, wait_for

from dcnios.errors import DCacheError
from dcnios.producers.dcache_api import DCacheClient, UnreadableListingError
from dcnios.producers.sse import Frame, iter_frames
from dcnios.producers.stream import body_chunks
from dcnios.sandbox.dcache import DCacheEmulator
from dcnios.spec import parse_spec
from dcnios.storage_event import StorageEvent, dcache_envelope

pytestmark = pytest.mark.integration


@pytest.fixture
def dcache() -> Iterator[DCacheEmulator]:
    with DCacheEmulator(backlog=50) as emu:
        emu.mkdir("/data/in")
        yield emu


def test_upload_is_exactly_one_record(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
    running = start(spec)
    try:
        wait_for(running.runner.ready.is_set)
        wait_for(lambda: not running.runner.reconciler.busy)  # the first start's baseline
        dcache.upload("/data/in/file1.dat")
        dcache.srm_upload("/data/in/srm ä.dat")
        dcache.put_silently("/data/in/old.dat")
        dcache.mv("/data/in/old.dat", "/data/in/renamed.dat")
        dcache.rm("/data/in/file1.dat")
        topic = spec.sources[0].topic
        records = read_topic(bootstrap, topic, lambda r: len(r) >= 3)
    finally:
        running.halt()
    assert not running.error
    assert sorted(files(records)) == ["/data/in/file1.dat", "/data/in/renamed.dat", "/data/in/srm ä.dat"]
    upload = next(r for r in records if r.path == "/data/in/file1.dat")
    assert upload.mask == ("IN_CLOSE_WRITE",) and upload.name == "file1.dat" and not upload.is_dir
    assert upload.event_id == 0  # only the subscribed flags are delivered and numbered (section 10)
    assert upload.channel == running.runner.channel_id
    srm = next(r for r in records if r.name == "srm ä.dat")
    assert srm.mask == ("IN_MOVED_TO",) and srm.cookie and len(srm.cookie) == 22
    assert (
        dcache_envelope(upload).decode().startswith('{"event":{"name":"file1.dat","mask":["IN_CLOSE_WRITE"]}')
    )


def test_envelope_matches_emulator_bytes(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
    running = start(spec)
    try:
        wait_for(running.runner.ready.is_set)
        wait_for(lambda: not running.runner.reconciler.busy)  # the first start's baseline
        dcache.srm_upload('/data/in/q"u\\ote ü.dat')
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: len(r) >= 1)
    finally:
        running.halt()
    (record,) = records
    channel = next(iter(dcache.channels.values()))
    (_, frame), *_ = [(i, f) for i, f in channel.backlog if f.startswith(b"event: inotify")]
    data = frame.split(b"data: ", 1)[1].rstrip(b"\n")
    assert dcache_envelope(record) == data


def test_disconnect_storm_loses_nothing(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
    running = start(spec)
    expected = [f"/data/in/f{i:04d}" for i in range(300)]
    try:
        wait_for(running.runner.ready.is_set)
        for i, path in enumerate(expected):
            dcache.srm_upload(path)
            if i % 25 == 0:
                (channel,) = dcache.channels.values()
                dcache.drop_connections()
                wait_for(lambda ch=channel, old=channel.conn: ch.conn is not None and ch.conn is not old)
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: set(files(r)) >= set(expected))
    finally:
        running.halt()
    assert set(files(records)) == set(expected)
    assert running.runner.metrics.reconnects.labels("src")._value.get() >= 10


def test_event_loss_is_a_gap_with_reconcile(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("p")
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, prefix)
    running = start(spec)
    wait_for(running.runner.ready.is_set)
    dcache.srm_upload("/data/in/before")
    wait_for(lambda: running.runner.progress.safe_id is not None)
    running.halt()
    # 120 uploads while away overrun the 50-event backlog: dCache answers EVENT_LOSS.
    missed = [f"/data/in/away{i:03d}" for i in range(120)]
    for path in missed:
        dcache.srm_upload(path)
    running = start(spec)
    try:
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: set(files(r)) >= set(missed))
        gaps = read_topic(bootstrap, f"{prefix}.gaps", lambda r: any(g["reason"] == "EVENT_LOSS" for g in r))
    finally:
        running.halt()
    assert set(files(records)) >= set(missed)
    synthetic = {r.path for r in records if isinstance(r, StorageEvent) and r.gap == "EVENT_LOSS"}
    assert synthetic >= set(missed)
    (loss,) = [g for g in gaps if g["reason"] == "EVENT_LOSS"]
    assert loss["directories"] == ["/data/in"] and loss["reconciled"] >= len(missed)


def test_channel_expiry_gives_gap_and_synthetic_events(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("p")
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, prefix)
    running = start(spec)
    wait_for(running.runner.ready.is_set)
    wait_for(lambda: not running.runner.reconciler.busy)  # the first start's baseline
    old_channel = running.runner.channel_url
    running.halt()
    dcache.expire_channels()
    for i in range(5):
        dcache.put_silently(f"/data/in/during{i}")
    running = start(spec)
    try:
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: len(files(r)) >= 5)
        gaps = read_topic(
            bootstrap, f"{prefix}.gaps", lambda r: any(g["reason"] == "CHANNEL_LOST" for g in r)
        )
        new_channel = running.runner.channel_url
    finally:
        running.halt()
    assert sorted(files(records)) == [f"/data/in/during{i}" for i in range(5)]
    assert all(r.synthetic and r.gap == "CHANNEL_LOST" and r.event_id is None for r in records)
    # The first run may have recorded an ATTACH_RACE (a fresh channel); the expiry is CHANNEL_LOST.
    (lost,) = [g for g in gaps if g["reason"] == "CHANNEL_LOST"]
    assert lost["previous_channel"] == old_channel and lost["reconciled"] == 5
    assert new_channel != old_channel


def test_reconcile_allows_for_a_dcache_clock_behind_ours(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    # dCache's mtimes trail our clock by 20 s: a repair that compared them with our last sync
    # time would skip every file of the gap; one against the published-files index does not.
    with DCacheEmulator(clock_offset_ms=-20_000) as behind:
        behind.mkdir("/data/in")
        spec = make_spec(tmp_path, bootstrap, behind.endpoint, unique("p"))
        with ready_source(spec) as runner:
            behind.srm_upload("/data/in/seen")
            wait_for(lambda: runner.progress.safe_id is not None)
        behind.expire_channels()
        expected = {f"/data/in/during{i}" for i in range(3)}
        for path in sorted(expected):
            behind.put_silently(path)
        with ready_source(spec):
            records = read_topic(bootstrap, spec.sources[0].topic, lambda r: set(files(r)) >= expected)
    assert set(files(records)) >= expected


def test_stream_ending_while_a_new_channel_attaches_is_reconnected(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    # The stream registers late, so the new watch is never announced; the frontend then restarts
    # before the producer stops waiting for the announcement. It must not sit on a dead stream.
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
    expected = {"/data/in/after", "/data/in/during-restart"}

    def attached_and_watching() -> bool:
        with dcache.lock:
            return any(c.conn is not None and c.subs for c in dcache.channels.values())

    with ready_source(spec) as runner:
        first = runner.channel_url
        dcache.attach_delay = 0.5
        dcache.expire_channels()
        wait_for(attached_and_watching, timeout=10)
        dcache.attach_delay = 0.0
        dcache.restart()
        dcache.put_silently("/data/in/during-restart")
        wait_for(lambda: runner.channel_url not in (None, first), timeout=20)
        wait_for(attached_and_watching, timeout=20)  # the old code stays on the dead stream
        dcache.srm_upload("/data/in/after")
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: expected <= set(files(r)))
    assert expected <= set(files(records))


def test_channel_gone_between_create_and_subscribe_is_retried(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    restarts: list[str] = []

    def restart_at_first_patch(method: str, path: str) -> None:
        if method == "PATCH" and not restarts:
            restarts.append(path)
            dcache.restart()

    dcache.before_request = restart_at_first_patch
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
    with ready_source(spec) as runner:
        assert restarts and restarts[0] not in (runner.channel_url or "")
        dcache.srm_upload("/data/in/a")
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: "/data/in/a" in files(r))
    assert "/data/in/a" in files(records)


def test_frontend_restart_mid_stream(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
    running = start(spec)
    try:
        wait_for(running.runner.ready.is_set)
        dcache.srm_upload("/data/in/a")
        dcache.restart()
        dcache.put_silently("/data/in/b")
        wait_for(lambda: bool(dcache.channels) and all(c.subs for c in dcache.channels.values()))
        dcache.srm_upload("/data/in/c")
        records = read_topic(
            bootstrap,
            spec.sources[0].topic,
            lambda r: {"/data/in/a", "/data/in/b", "/data/in/c"} <= set(files(r)),
        )
    finally:
        running.halt()
    assert {"/data/in/a", "/data/in/b", "/data/in/c"} <= set(files(records))


def test_recursive_watch_sees_new_subdirectories(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    dcache.mkdir("/data/in/existing")
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"), "    recursive: true\n")
    running = start(spec)
    try:
        wait_for(lambda: len(running.runner.watches) == 2)
        dcache.upload("/data/in/existing/x.dat")
        # A file lands in a new directory before its watch can exist: the listing finds it.
        with dcache.lock:
            dcache.mkdir("/data/in/new/deeper")
            dcache.upload("/data/in/new/deeper/early.dat")
        wait_for(lambda: "/data/in/new/deeper" in running.runner.watches.values())
        dcache.upload("/data/in/new/deeper/late.dat")
        want = {"/data/in/existing/x.dat", "/data/in/new/deeper/early.dat", "/data/in/new/deeper/late.dat"}
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: want <= set(files(r)))
        dcache.rm("/data/in/existing")
        wait_for(lambda: "/data/in/existing" not in running.runner.watches.values())
    finally:
        running.halt()
    assert want <= set(files(records))


def test_malformed_frames_go_to_invalid(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
    running = start(spec)
    try:
        wait_for(running.runner.ready.is_set)
        sub = next(iter(running.runner.watches))
        dcache.inject(b"event: inotify\nid: {ID}\ndata: {not json\n\n")
        dcache.inject(
            b'event: inotify\nid: {ID}\ndata: {"event":{"name":"\xff\xfe","mask":["IN_CLOSE_WRITE"]},'
            b'"subscription":"' + sub.encode() + b'"}\n\n'
        )
        dcache.inject(
            b'event: inotify\nid: {ID}\ndata: {"event":{"name":"x","mask":["IN_BOGUS"]},'
            b'"subscription":"' + sub.encode() + b'"}\n\n'
        )
        dcache.inject(b'event: SYSTEM\ndata: {"type":"SUBSCRIPTION_CLOSED"\n\n', with_id=False)
        dcache.inject(
            b'event: inotify\nid: {ID}\ndata: {"event":{"mask":["IN_MOVE_SELF"]},'
            b'"subscription":"' + sub.encode() + b'"}\n\n'
        )
        dcache.upload("/data/in/after.dat")
        topic = spec.sources[0].topic
        invalid = read_topic(bootstrap, f"{topic}.invalid", lambda r: len(r) >= 4)
        records = read_topic(bootstrap, topic, lambda r: len(r) >= 1)
    finally:
        running.halt()
    assert not running.error
    reasons = sorted(h["dcnios-reason"].decode() for _, h in invalid)
    assert reasons == [
        "SYSTEM frame without a JSON type",
        "data is not JSON: Expecting property name enclosed in double quotes at column 2",
        "data is not UTF-8 (byte 18)",
        "unknown mask 'IN_BOGUS'",
    ]
    assert any(b"\xff\xfe" in raw for raw, _ in invalid)  # the raw bytes are kept
    assert files(records) == ["/data/in/after.dat"]


def test_hostile_frames_go_to_invalid_and_the_stream_goes_on(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    # Each of these crashed the producer, which replayed the frame and crashed again.
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
    running = start(spec)
    try:
        wait_for(running.runner.ready.is_set)
        sub = next(iter(running.runner.watches)).encode()
        deep = b"[" * 100_000 + b"]" * 100_000
        dcache.inject(b"event: inotify\nid: {ID}\ndata: " + deep + b"\n\n")
        dcache.inject(b"event: SYSTEM\ndata: " + deep + b"\n\n", with_id=False)
        dcache.inject(
            b'event: inotify\nid: {ID}\ndata: {"event":{"name":"n","mask":["IN_CLOSE_WRITE"],"cookie":'
            + b"7" * 5000
            + b'},"subscription":"'
            + sub
            + b'"}\n\n'
        )
        dcache.inject(
            b'event: inotify\nid: 9223372036854775808\ndata: {"event":{"name":"big-id","mask":'
            b'["IN_CLOSE_WRITE"]},"subscription":"' + sub + b'"}\n\n',
            with_id=False,
        )
        huge = b"event: inotify\nid: {ID}\ndata: " + b"x" * (3 << 19) + b"\n\n"  # 1.5 MB
        dcache.inject(huge)
        dcache.upload("/data/in/after.dat")
        topic = spec.sources[0].topic
        invalid = read_topic(bootstrap, f"{topic}.invalid", lambda r: len(r) >= 5)
        records = read_topic(bootstrap, topic, lambda r: len(r) >= 1)
    finally:
        running.halt()
    assert not running.error
    oversized = next(h for _, h in invalid if h["dcnios-reason"].startswith(b"frame of"))
    oversized_size = int(oversized["dcnios-size"])
    # "{ID}" became the id; the blank line that ends the frame is not counted
    assert len(huge) - 6 <= oversized_size <= len(huge) - 2
    reasons = sorted(h["dcnios-reason"].decode()[:60].rstrip() for _, h in invalid)
    assert reasons == [
        "SYSTEM frame without a JSON type",
        "data is JSON nested too deep",
        "data is not usable JSON: Exceeds the limit (4300 digits) for",
        f"frame of {oversized_size} bytes is over the limit of 1048576 bytes",
        "inotify frame without a valid id: field",
    ]
    raw = next(r for r, h in invalid if h is oversized)
    assert len(raw) == 64 << 10 and oversized["dcnios-truncated"] == b"true"
    assert files(records) == ["/data/in/after.dat"]


def test_wrong_password_is_a_clear_error(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint.replace("alice", "x"), unique("p"))
    dcache.users["alice"] = "other"
    running = start(spec)
    running.thread.join(30)
    assert len(running.error) == 1 and isinstance(running.error[0], DCacheError)
    assert str(running.error[0]) == "list channels: 401 Unauthorized: check sources[].auth for src"


def test_kill_9_and_restart_loses_nothing(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("p")
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, prefix)
    config = str(tmp_path / f"{prefix}.yaml")
    exe = str(Path(sys.executable).parent / "dcnios-producer")
    expected = [f"/data/in/k{i:04d}" for i in range(400)]

    log = open(tmp_path / "producer.log", "ab")  # noqa: SIM115

    def launch() -> subprocess.Popen[bytes]:
        return subprocess.Popen([exe, "-c", config], stderr=log, env={**os.environ})

    proc = launch()
    try:
        wait_for(lambda: bool(dcache.channels) and any(c.subs for c in dcache.channels.values()), 30)
        for i, path in enumerate(expected):
            dcache.srm_upload(path)
            if i == 150:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            if i == 250:
                proc = launch()
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: set(files(r)) >= set(expected), 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert set(files(records)) == set(expected)


def test_overflow_is_a_gap_with_reconcile(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("p")
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, prefix)
    running = start(spec)
    try:
        wait_for(running.runner.ready.is_set)
        dcache.put_silently("/data/in/dropped.dat")  # its events were lost to the overload
        dcache.overflow("/data/in")
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: "/data/in/dropped.dat" in files(r))
        gaps = read_topic(
            bootstrap, f"{prefix}.gaps", lambda r: any(g["reason"] == "IN_Q_OVERFLOW" for g in r)
        )
    finally:
        running.halt()
    (dropped,) = [r for r in records if r.path == "/data/in/dropped.dat"]
    assert dropped.synthetic and dropped.gap == "IN_Q_OVERFLOW"
    assert running.runner.metrics.gaps.labels("src", "IN_Q_OVERFLOW")._value.get() == 1
    assert [g["directories"] for g in gaps if g["reason"] == "IN_Q_OVERFLOW"] == [["/data/in"]]


def test_rotating_token_file_is_reread_on_401(
    bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    with DCacheEmulator(users={}, tokens={"first-token": "alice"}) as dcache:
        dcache.mkdir("/data/in")
        spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
        source = spec.sources[0]
        from dataclasses import replace

        from dcnios.spec import DCacheAuth

        spec = replace(spec, sources=(replace(source, auth=DCacheAuth(token_file=str(token_file))),))
        running = start(spec)
        try:
            wait_for(running.runner.ready.is_set)
            dcache.srm_upload("/data/in/a")
            # The token rotates: the old one stops working, the file holds the new one.
            dcache.tokens = {"second-token": "alice"}
            token_file.write_text("second-token\n")
            dcache.drop_connections()
            dcache.srm_upload("/data/in/b")
            records = read_topic(
                bootstrap, source.topic, lambda r: {"/data/in/a", "/data/in/b"} <= set(files(r))
            )
        finally:
            running.halt()
    assert {"/data/in/a", "/data/in/b"} <= set(files(records))
    assert not running.error


def test_frontend_unreachable_at_start_is_retried(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
    dcache.fail_next.extend([503, 429, 502])  # overloaded frontend, then its rate limit
    running = start(spec)
    try:
        wait_for(running.runner.ready.is_set, 30)
        dcache.srm_upload("/data/in/late")
        records = read_topic(bootstrap, spec.sources[0].topic, lambda r: len(r) >= 1)
    finally:
        running.halt()
    assert files(records) == ["/data/in/late"]
    assert [status for _, _, status in dcache.requests[:3]] == [503, 429, 502]


def test_competing_client_stops_the_producer(
    bootstrap: str, dcache: DCacheEmulator, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    from dcnios.producers.run import CompetingClientError

    spec = make_spec(tmp_path, bootstrap, dcache.endpoint, unique("p"))
    running = start(spec)
    wait_for(running.runner.ready.is_set)
    dcache.srm_upload("/data/in/a")
    wait_for(lambda: running.runner.progress.safe_id is not None)
    # A second client attaches to the same channel (e.g. a second producer with the same client-id).
    (channel,) = dcache.channels.values()
    thief = dcache.attach(channel, None)
    running.thread.join(30)
    thief.close()
    assert len(running.error) == 1 and isinstance(running.error[0], CompetingClientError)
    assert "run one producer per source" in str(running.error[0])


def test_a_close_delimited_stream_is_read_as_it_arrives() -> None:
    """A proxy that strips the chunking sends the stream delimited by the connection's close: its
    frames must come as they arrive, not when the connection ends (for an event stream, never)."""
    server = socket.create_server(("127.0.0.1", 0))
    closing = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                b'event: inotify\nid: 1\ndata: {"event":{}}\n\n'
            )
            closing.wait(30)

    threading.Thread(target=serve, daemon=True).start()
    response = requests.get(f"http://127.0.0.1:{server.getsockname()[1]}/", stream=True, timeout=30)
    got: list[Frame] = []
    reader = threading.Thread(
        target=lambda: got.extend(f for f in iter_frames(body_chunks(response)) if isinstance(f, Frame)),
        daemon=True,
    )
    reader.start()
    try:
        wait_for(lambda: bool(got), timeout=10)
        assert got[0].id == b"1"
    finally:
        closing.set()
        reader.join(10)
        response.close()
        server.close()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"children": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "JSON nested too deep"),
        (b"<html>maintenance</html>", "the answer is not JSON"),
    ],
)
def test_an_unreadable_listing_is_reported_with_its_body_not_a_crash(body: bytes, reason: str) -> None:
    """A listing nested 100,000 deep crashed the producer (RecursionError), which listed again
    after its restart and crashed again."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            conn.sendall(head % len(body) + body)

    threading.Thread(target=serve, daemon=True).start()
    spec = parse_spec(
        "sources:\n  - {name: s, endpoint: 'http://127.0.0.1:"
        f"{server.getsockname()[1]}/api/v1', paths: [/in], topic: t}}\n",
        env={},
    )
    try:
        with pytest.raises(UnreadableListingError, match=reason) as raised:
            DCacheClient(spec.sources[0]).list_page("/in", 0, 10)
    finally:
        server.close()
    assert raised.value.body == body  # what goes to <topic>.invalid
