"""The dCache emulator against its reference (dcache-events.md), byte for byte where it says so."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
import requests

from dcnios.sandbox.dcache import DCacheEmulator


@pytest.fixture
def emu() -> Iterator[DCacheEmulator]:
    with DCacheEmulator(backlog=5) as emulator:
        emulator.mkdir("/data/in")
        yield emulator


def session() -> requests.Session:
    s = requests.Session()
    s.auth = ("alice", "secret")
    return s


def channel(emu: DCacheEmulator, s: requests.Session) -> str:
    r = s.post(f"{emu.endpoint}/events/channels", json={"client-id": "c1"})
    assert r.status_code == 201 and r.content == b""
    location: str = r.headers["Location"]
    assert len(location.rsplit("/", 1)[1]) == 22
    return location


def raw_get(url: str, headers: str = "") -> socket.socket:
    host, port = url.split("//")[1].split("/", maxsplit=1)[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Basic YWxpY2U6c2VjcmV0\r\n"
        f"Accept: text/event-stream\r\n{headers}\r\n".encode()
    )
    return sock


def test_frames_are_byte_exact_and_headers_wait_for_the_first_frame(emu: DCacheEmulator) -> None:
    s = session()
    url = channel(emu, s)
    sock = raw_get(url)
    sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        sock.recv(1)  # no status line before the first frame (section 4.1)
    sub = s.post(
        f"{url}/subscriptions/inotify",
        json={"path": "/data/in", "flags": ["IN_CLOSE_WRITE"]},
        allow_redirects=False,
    )
    assert sub.status_code == 201
    emu.upload("/data/in/file1.dat")
    sock.settimeout(5)
    data = b""
    while b"IN_CLOSE_WRITE" not in data:
        data += sock.recv(65536)
    sock.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/event-stream\r\n" in data
    body = data.split(b"\r\n\r\n", 1)[1]
    sub_url = sub.headers["Location"].encode()
    assert (b'event: SYSTEM\ndata: {"type":"NEW_SUBSCRIPTION","subscription":"' + sub_url + b'"}\n\n') in body
    assert (
        b'event: inotify\nid: 0\ndata: {"event":{"name":"file1.dat","mask":["IN_CLOSE_WRITE"]},'
        b'"subscription":"' + sub_url + b'"}\n\n'
    ) in body


def test_subscribe_again_is_303_and_errors_use_the_8_2_body(emu: DCacheEmulator) -> None:
    s = session()
    url = channel(emu, s)
    first = s.post(f"{url}/subscriptions/inotify", json={"path": "/data/in"}, allow_redirects=False)
    again = s.post(f"{url}/subscriptions/inotify", json={"path": "/data/in"}, allow_redirects=False)
    assert (first.status_code, again.status_code) == (201, 303)
    assert first.headers["Location"] == again.headers["Location"]
    bad = s.post(f"{url}/subscriptions/inotify", json={"path": "/data/in", "flags": ["IN_EXCL_UNLINK"]})
    assert bad.status_code == 400
    assert bad.json() == {
        "status": "400",
        "title": "Bad Request",
        "detail": "Bad selector: Unsupported flags: [IN_EXCL_UNLINK]",
    }
    assert s.post(f"{url}/subscriptions/inotify", json={"flags": []}).status_code == 500  # the path quirk
    missing = s.get(f"{emu.endpoint}/events/channels/nope", headers={"Accept": "application/json"})
    assert missing.json() == {"status": "404", "title": "Not Found", "detail": "No such channel"}
    assert requests.get(f"{emu.endpoint}/events/channels").status_code == 401


def test_last_event_id_replays_and_event_loss(emu: DCacheEmulator) -> None:
    s = session()
    url = channel(emu, s)
    s.post(f"{url}/subscriptions/inotify", json={"path": "/data/in", "flags": ["IN_MOVED_TO"]})
    for i in range(4):
        emu.srm_upload(f"/data/in/f{i}")

    def read_until(sock: socket.socket, marker: bytes) -> bytes:
        data = b""
        while marker not in data:
            data += sock.recv(65536)
        sock.close()
        return data

    replay = read_until(raw_get(url, "Last-Event-ID: 1\r\n"), b"id: 3\n")
    assert b"id: 1\n" not in replay and b"id: 2\n" in replay  # everything after N, N itself kept
    for i in range(4, 12):
        emu.srm_upload(f"/data/in/f{i}")  # overruns the 5-event backlog
    lost = read_until(raw_get(url, "Last-Event-ID: 2\r\n"), b"EVENT_LOSS")
    assert b'event: SYSTEM\ndata: {"type":"EVENT_LOSS"}\n\n' in lost
    assert b"id: " not in lost.split(b"EVENT_LOSS")[1]  # the buffer was dropped


def test_expiry_gives_404_and_client_id_lookup(emu: DCacheEmulator) -> None:
    s = session()
    url = channel(emu, s)
    assert s.get(f"{emu.endpoint}/events/channels", params={"client-id": "c1"}).json() == [url]
    assert s.get(f"{emu.endpoint}/events/channels", params={"client-id": "other"}).json() == []
    assert s.patch(url, json={"timeout": 0}).status_code == 400
    assert s.patch(url, json={"timeout": 1}).status_code == 204
    done = threading.Event()
    threading.Timer(1.3, done.set).start()
    done.wait()
    assert s.get(url, headers={"Accept": "application/json"}).status_code == 404


# -- namespace -----------------------------------------------------------------------------------
DEFAULT_FIELDS = {
    "pnfsId",
    "nlink",
    "mtime",
    "creationTime",
    "size",
    "mode",
    "fileType",
    "fileMimeType",
    "labels",
}


def namespace(emu: DCacheEmulator, s: requests.Session, path: str, **params: object) -> requests.Response:
    return s.get(f"{emu.endpoint}/namespace{path}", params=params)


def names(emu: DCacheEmulator, s: requests.Session, path: str, **params: object) -> list[str]:
    r = namespace(emu, s, path, children="true", **params)
    assert r.status_code == 200, r.text
    return [c["fileName"] for c in r.json()["children"]]


def test_listing_fields_by_default_and_with_optional(emu: DCacheEmulator) -> None:
    s = session()
    emu.upload("/data/in/f.dat", size=7)
    emu.mkdir("/data/in/sub")
    top = namespace(emu, s, "/data/in", children="true").json()
    assert set(top) == DEFAULT_FIELDS | {"children"}  # no fileName on the target itself
    assert (top["fileType"], top["fileMimeType"], top["mode"], top["labels"]) == (
        "DIR",
        "application/vnd.dcache.folder",
        0o755,
        [],
    )
    assert top["nlink"] == 3  # 2, plus one for the subdirectory
    child, sub = top["children"]
    assert set(child) == DEFAULT_FIELDS | {"fileName"}
    assert (child["fileName"], child["fileType"], child["size"], child["mode"], child["nlink"]) == (
        "f.dat",
        "REGULAR",
        7,
        0o644,
        1,
    )
    assert child["fileMimeType"] == "application/octet-stream" and sub["fileType"] == "DIR"
    assert all(isinstance(child[k], int) and child[k] > 1_600_000_000_000 for k in ("mtime", "creationTime"))
    optional = namespace(emu, s, "/data/in", children="true", optional="true").json()
    assert {"atime", "ctime"} <= set(optional) and {"atime", "ctime"} <= set(optional["children"][0])
    assert namespace(emu, s, "/data/in").json().keys() == DEFAULT_FIELDS  # children=false: no list
    single = namespace(emu, s, "/data/in/f.dat", children="true", limit="-1")
    assert single.status_code == 200 and set(single.json()) == DEFAULT_FIELDS  # a file: no children
    missing = namespace(emu, s, "/data/in/nope")
    assert missing.status_code == 404 and missing.json()["status"] == "404"


def test_listing_pages_with_limit_and_offset(emu: DCacheEmulator) -> None:
    s = session()
    order = ["n3", "n1", "n2", "n0", "n4"]
    assert emu.put_many("/data/in", order, size=1) == 5
    assert names(emu, s, "/data/in") == order
    assert names(emu, s, "/data/in", limit=2) == order[:2]
    assert names(emu, s, "/data/in", offset=2, limit=2) == order[2:4]
    assert names(emu, s, "/data/in", offset=4, limit=100) == order[4:]
    assert names(emu, s, "/data/in", offset=5) == []
    assert names(emu, s, "/data/in", offset=99, limit=1) == []
    assert names(emu, s, "/data/in", limit=0) == []
    assert names(emu, s, "/data/in", offset="+1", limit=2147483647) == order[1:]
    for params, detail in [
        ({"limit": "-1"}, "limit and offset can not be less than zero."),
        ({"offset": "-3", "limit": "2"}, "limit and offset can not be less than zero."),
        ({"offset": "x"}, "limit and offset must be an integer value."),
        ({"limit": ""}, "limit and offset must be an integer value."),
        ({"limit": "2147483648"}, "limit and offset must be an integer value."),
        ({"limit": "1.5", "offset": "-1"}, "limit and offset must be an integer value."),
    ]:
        r = namespace(emu, s, "/data/in", children="true", **params)
        assert r.status_code == 400 and r.json() == {
            "status": "400",
            "title": "Bad Request",
            "detail": detail,
        }


def test_children_come_in_creation_order_not_sorted(emu: DCacheEmulator) -> None:
    s = session()
    emu.upload("/data/in/b")
    emu.mkdir("/data/in/a")
    emu.srm_upload("/data/in/c")
    emu.put_silently("/data/in/0")
    assert names(emu, s, "/data/in") == ["b", "a", "c", "0"]
    emu.rm("/data/in/a")
    assert names(emu, s, "/data/in") == ["b", "c", "0"]


def test_mv_keeps_the_inode_and_touches_both_parents(emu: DCacheEmulator) -> None:
    s = session()
    emu.mkdir("/data/out")
    emu.upload("/data/in/x.dat")
    before = namespace(emu, s, "/data/in/x.dat", optional="true").json()
    parents = {p: namespace(emu, s, p, optional="true").json() for p in ("/data/in", "/data/out")}
    emu.clock_offset_ms += 10_000  # anything the rename stamps is visibly later
    emu.mv("/data/in/x.dat", "/data/out/y.dat")
    after = namespace(emu, s, "/data/out/y.dat", optional="true").json()
    for key in ("pnfsId", "mtime", "ctime", "creationTime", "atime"):
        assert after[key] == before[key], key
    for path, old in parents.items():
        new = namespace(emu, s, path, optional="true").json()
        assert new["mtime"] >= old["mtime"] + 10_000 and new["ctime"] >= old["ctime"] + 10_000
        assert new["creationTime"] == old["creationTime"]
    assert namespace(emu, s, "/data/in/x.dat").status_code == 404
    # Over an existing name: the target goes first, the moved inode takes its place.
    emu.upload("/data/out/z.dat")
    emu.mv("/data/out/y.dat", "/data/out/z.dat")
    assert names(emu, s, "/data/out") == ["z.dat"]
    assert namespace(emu, s, "/data/out/z.dat").json()["pnfsId"] == before["pnfsId"]
    # A directory takes its subtree along, and a link moves from one parent to the other.
    emu.mkdir("/data/in/d/e")
    emu.upload("/data/in/d/e/f")
    emu.mv("/data/in/d", "/data/out/d")
    assert names(emu, s, "/data/out/d/e") == ["f"] and "/data/in/d/e/f" not in emu.entries
    assert namespace(emu, s, "/data/in").json()["nlink"] == 2
    assert namespace(emu, s, "/data/out").json()["nlink"] == 3
    with pytest.raises(OSError):
        emu.mv("/data/out/d", "/data/out/d/e/loop")


def test_names_are_listed_by_their_percent_encoded_urls(emu: DCacheEmulator) -> None:
    s = session()
    odd = ["p%41q", "a#b", "what?", "sp ace", "ünï"]
    for name in odd:
        emu.upload(f"/data/in/{name}", size=len(name))
    assert names(emu, s, "/data/in") == odd
    for name in odd:
        r = s.get(f"{emu.endpoint}/namespace/data/in/{quote(name, safe='')}")
        assert r.status_code == 200 and r.json()["size"] == len(name), name
    assert namespace(emu, s, "/data/in/pAq").status_code == 404  # %41 stays literal once encoded


# -- metronome -----------------------------------------------------------------------------------
def dechunk(data: bytes) -> bytes:
    """The SSE body of a raw chunked response (headers and chunk framing removed)."""
    body, rest = b"", data.split(b"\r\n\r\n", 1)[1]
    while b"\r\n" in rest:
        size, rest = rest.split(b"\r\n", 1)
        n = int(size, 16)
        if n == 0 or len(rest) < n + 2:
            break
        body, rest = body + rest[:n], rest[n + 2 :]
    return body


def sse_frames(data: bytes) -> list[dict[str, str]]:
    frames = []
    for block in dechunk(data).split(b"\n\n"):
        if block:
            frames.append(dict(line.split(": ", 1) for line in block.decode().split("\n")))
    return frames


def read_until(sock: socket.socket, done: Callable[[list[dict[str, str]]], bool]) -> list[dict[str, str]]:
    data = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, "stream ended"
        data += chunk
        if b"\r\n\r\n" in data and done(sse_frames(data)):
            return sse_frames(data)


def wait_attached(emu: DCacheEmulator, url: str) -> None:
    """Until the stream GET has reached the channel (events before that are not streamed)."""
    deadline = time.monotonic() + 5
    while emu.channels[url.rsplit("/", 1)[1]].conn is None:
        assert time.monotonic() < deadline, "stream never attached"
        time.sleep(0.01)


UUID_URL = re.compile(
    r"/subscriptions/metronome/[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)


def test_metronome_ticks_take_channel_ids_and_are_replayed() -> None:
    with DCacheEmulator() as emu:
        emu.mkdir("/data/in")
        s = session()
        url = channel(emu, s)
        selector = {"delay": 0.1, "message": "beat ${count} for ${username}"}
        first = s.post(f"{url}/subscriptions/metronome", json=selector, allow_redirects=False)
        second = s.post(f"{url}/subscriptions/metronome", json=selector, allow_redirects=False)
        assert (first.status_code, second.status_code) == (201, 201)  # never 303: always new
        tick_url, other = first.headers["Location"], second.headers["Location"]
        assert tick_url != other and all(UUID_URL.search(u) and u.startswith(url) for u in (tick_url, other))
        assert s.get(other).json() == selector  # the selector as supplied
        assert s.delete(other).status_code == 204 and s.get(other).status_code == 404
        ino = s.post(f"{url}/subscriptions/inotify", json={"path": "/data/in", "flags": ["IN_CLOSE_WRITE"]})
        assert set(s.get(f"{url}/subscriptions").json()) == {tick_url, ino.headers["Location"]}
        time.sleep(0.35)  # ticks are buffered with no client attached
        emu.upload("/data/in/f")
        with raw_get(url, "Last-Event-ID: 0\r\n") as sock:
            frames = read_until(
                sock,
                lambda fs: (
                    any(f["event"] == "inotify" for f in fs)
                    and fs[-1]["event"] == "metronome"
                    and int(fs[-1]["id"]) > int(next(f["id"] for f in fs if f["event"] == "inotify"))
                ),
            )
        ids = [int(f["id"]) for f in frames]
        assert ids == list(range(1, len(ids) + 1))  # one sequence for both types, id 0 kept back
        kinds = [f["event"] for f in frames]
        assert kinds.index("inotify") > 0 and kinds[-1] == "metronome"  # interleaved
        ours = [f for f in frames if f["event"] == "metronome" and tick_url in f["data"]]
        first_beat = int(json.loads(ours[0]["data"])["event"].split()[1])
        expected = [f"beat {n} for alice" for n in range(first_beat, first_beat + len(ours))]
        assert [json.loads(f["data"])["event"] for f in ours] == expected  # ${count}, 1-based
        # The deleted subscription may have ticked before its DELETE, never after it.
        upload_id = next(int(f["id"]) for f in frames if f["event"] == "inotify")
        assert all(other not in f["data"] for f in frames if int(f["id"]) > upload_id)
    assert ours[0]["data"] == f'{{"event":"beat {first_beat} for alice","subscription":"{tick_url}"}}'


def test_metronome_count_closes_the_subscription() -> None:
    with DCacheEmulator() as emu:
        s = session()
        url = channel(emu, s)
        sock = raw_get(url)
        wait_attached(emu, url)  # else NEW_SUBSCRIPTION goes to nobody
        sub = s.post(f"{url}/subscriptions/metronome", json={"delay": 0.1, "count": 2})
        tick_url = sub.headers["Location"]
        frames = read_until(sock, lambda fs: any("SUBSCRIPTION_CLOSED" in f["data"] for f in fs))
        assert [f["event"] for f in frames] == ["SYSTEM", "metronome", "metronome", "SYSTEM"]
        assert json.loads(frames[0]["data"]) == {"type": "NEW_SUBSCRIPTION", "subscription": tick_url}
        assert [f.get("id") for f in frames] == [None, "0", "1", None]
        assert all(json.loads(f["data"])["event"] == "tick" for f in frames[1:3])
        assert json.loads(frames[3]["data"]) == {"type": "SUBSCRIPTION_CLOSED", "subscription": tick_url}
        time.sleep(0.3)
        assert s.get(tick_url).status_code == 404 and s.get(f"{url}/subscriptions").json() == []
        assert emu.channels[url.rsplit("/", 1)[1]].next_id == 2  # no IN_IGNORED, no more ticks
        sock.close()


def test_metronome_selector_errors(emu: DCacheEmulator) -> None:
    s = session()
    url = channel(emu, s)
    for selector, detail in [
        ({}, 'Bad selector: either "frequency" or "delay" must be specified'),
        ({"delay": 1, "frequency": 1}, 'Bad selector: "frequency" and "delay" cannot both be specified'),
        ({"frequency": 0.003}, 'Bad selector: "frequency" is too small (less than 0.00333333)'),
        ({"frequency": 2e6}, 'Bad selector: "frequency" is too big (more than 1.00000e+06)'),
        ({"delay": 1e-7}, 'Bad selector: "delay" is too small (less than 1.00000e-06)'),
        ({"delay": 300.5}, 'Bad selector: "delay" is too big (more than 300.000)'),
        ({"delay": 1, "message": ""}, 'Bad selector: "message" cannot be empty'),
        ({"delay": 1, "count": -1}, 'Bad selector: "count" must be non-negative'),
        ({"delay": 1, "tempo": 3}, 'Bad selector value: Unrecognized field "tempo"'),
    ]:
        r = s.post(f"{url}/subscriptions/metronome", json=selector)
        assert r.status_code == 400 and r.json()["detail"] == detail, selector
    for ok in ({"delay": 300}, {"frequency": 1 / 300}, {"frequency": 1_000_000, "count": 1}):
        assert s.post(f"{url}/subscriptions/metronome", json=ok).status_code == 201, ok


# -- blackhole -----------------------------------------------------------------------------------
def test_blackholed_stream_goes_silent_and_a_new_get_replays(emu: DCacheEmulator) -> None:
    s = session()
    url = channel(emu, s)
    s.post(f"{url}/subscriptions/inotify", json={"path": "/data/in", "flags": ["IN_CLOSE_WRITE"]})
    old = raw_get(url)
    wait_attached(emu, url)
    emu.upload("/data/in/before")
    read_until(old, lambda fs: any("before" in f["data"] for f in fs))
    emu.blackhole()
    emu.upload("/data/in/during")
    old.settimeout(0.5)
    with pytest.raises(TimeoutError):
        old.recv(1)  # not a byte, not even the end of the stream
    attached = emu.channels[url.rsplit("/", 1)[1]]
    assert attached.conn is not None and attached.expires_at is None  # still counts as attached
    with raw_get(url, "Last-Event-ID: 0\r\n") as new:
        frames = read_until(new, lambda fs: any("during" in f["data"] for f in fs))
    assert [(f["id"], json.loads(f["data"])["event"]["name"]) for f in frames] == [("1", "during")]
    with pytest.raises(TimeoutError):
        old.recv(1)  # COMPETING_CLIENT went nowhere
    old.close()
