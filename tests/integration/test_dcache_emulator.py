"""The dCache emulator against its reference (dcache-events.md), byte for byte where it says so."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

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
