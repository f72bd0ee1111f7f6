from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dcnios.producers.records import interpret, join_path
from dcnios.producers.sse import Frame, iter_frames
from dcnios.spec import parse_spec

SUB = "https://d:3880/api/v1/events/channels/ch/subscriptions/inotify/AAB"
FRAME = (
    b'event: inotify\nid: 7\ndata: {"event":{"name":"file1.dat","mask":["IN_CLOSE_WRITE"]},'
    b'"subscription":"' + SUB.encode() + b'"}\n\n'
)


def source(extra: str = ""):  # type: ignore[no-untyped-def]
    spec = parse_spec(
        "sources:\n  - {name: s, endpoint: 'https://d:3880/api/v1', paths: [/data/in], topic: t"
        + extra
        + "}\n",
        env={},
    )
    return spec.sources[0]


def run(frame: Frame, extra: str = ""):  # type: ignore[no-untyped-def]
    return interpret(frame, source=source(extra), channel_id="ch", watches={SUB: "/data/in"}, observed_at=5)


def test_frames_split_on_blank_lines_across_chunks() -> None:
    stream = FRAME + b'event: SYSTEM\ndata: {"type":"EVENT_LOSS"}\n\n' + b"event: inot"
    chunks = [stream[i : i + 7] for i in range(0, len(stream), 7)]
    frames = list(iter_frames(chunks))
    assert [f.event for f in frames] == [b"inotify", b"SYSTEM"]
    assert frames[0].id == b"7" and frames[0].raw + b"\n\n" == FRAME
    assert frames[1].id is None


def test_crlf_comments_and_multiline_data() -> None:
    frames = list(iter_frames([b": keep-alive\r\n\r\nevent: x\r\ndata: a\r\ndata: b\r\n\r\n"]))
    assert frames == [Frame(b"x", None, b"a\nb", b"event: x\ndata: a\ndata: b")]


@given(st.binary(max_size=400), st.integers(min_value=1, max_value=50))
def test_parser_never_raises_on_garbage(data: bytes, size: int) -> None:
    list(iter_frames([data[i : i + size] for i in range(0, len(data), size)]))


def test_upload_becomes_record_with_full_path() -> None:
    (frame,) = iter_frames([FRAME])
    (outcome,) = run(frame)
    assert outcome.kind == "publish" and outcome.event is not None
    assert outcome.event.path == "/data/in/file1.dat" and outcome.event.event_id == 7
    assert outcome.event.channel == "ch" and outcome.event.subscription == SUB


def test_unselected_masks_and_directories_are_skipped() -> None:
    (frame,) = iter_frames([FRAME.replace(b"IN_CLOSE_WRITE", b"IN_ATTRIB")])
    assert [o.kind for o in run(frame)] == ["skip"]
    (frame,) = iter_frames([FRAME.replace(b'"IN_CLOSE_WRITE"', b'"IN_MOVED_TO","IN_ISDIR"')])
    assert [o.kind for o in run(frame)] == ["skip"]
    assert [o.kind for o in run(frame, ", recursive: true")] == ["new_dir"]
    assert [o.kind for o in run(frame, ", recursive: true, directories: true")] == ["new_dir", "publish"]


def test_nameless_and_management_events_do_not_crash() -> None:
    cases = (
        (b"IN_IGNORED", "watch_gone"),
        (b"IN_Q_OVERFLOW", "overflow"),
        (b"IN_DELETE_SELF", "watch_gone"),
        (b"IN_MOVE_SELF", "skip"),
        (b"IN_ATTRIB", "skip"),
    )
    for mask, kind in cases:
        data = b'{"event":{"mask":["' + mask + b'"]},"subscription":"' + SUB.encode() + b'"}'
        (outcome,) = run(Frame(b"inotify", b"9", data, b""))
        assert outcome.kind == kind, mask


def test_bad_input_is_invalid_with_reason() -> None:
    cases = {
        Frame(None, b"1", b"{}", b""): "frame has no event: field",
        Frame(b"inotify", None, b"{}", b""): "inotify frame without a valid id: field",
        Frame(b"inotify", b"x", b"{}", b""): "inotify frame without a valid id: field",
        Frame(b"inotify", b"1", b"[", b""): "data is not JSON: Expecting value at column 2",
        Frame(b"inotify", b"1", b'{"event":1}', b""): "data has no event object",
        Frame(
            b"inotify",
            b"1",
            b'{"event":{"name":"../x","mask":[]},"subscription":"' + SUB.encode() + b'"}',
            b"",
        ): "event.name is not a file name: '../x'",
        Frame(
            b"inotify", b"1", b'{"event":{"name":"x","mask":["IN_CLOSE_WRITE"]},"subscription":"u"}', b""
        ): "event from unknown subscription u",
        Frame(b"SYSTEM", None, b"nope", b""): "SYSTEM frame without a JSON type",
    }
    for frame, reason in cases.items():
        (outcome,) = run(frame)
        assert (outcome.kind, outcome.reason) == ("invalid", reason)


def test_other_event_types_are_skipped() -> None:
    (outcome,) = run(Frame(b"metronome", b"1", b'{"event":"tick"}', b""))
    assert outcome.kind == "skip"


def test_join_path() -> None:
    assert join_path("/", "a") == "/a"
    assert join_path("/data/in", "a") == "/data/in/a"
