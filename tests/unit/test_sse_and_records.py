from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dcnios.producers.records import (
    Interpretation,
    Invalid,
    NewDirectory,
    Overflow,
    Publish,
    Removed,
    Skip,
    System,
    Tick,
    WatchGone,
    interpret,
    join_path,
    listed_event,
    listed_mask,
)
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


def kinds(frame: Frame, extra: str = "") -> list[type]:
    return [type(o) for o in run(frame, extra).outcomes]


def test_upload_becomes_record_with_full_path() -> None:
    (frame,) = iter_frames([FRAME])
    meaning = run(frame)
    assert meaning.event_id == 7
    match meaning.outcomes:
        case (Publish(event),):
            assert event.path == "/data/in/file1.dat" and event.event_id == 7
            assert event.channel == "ch" and event.subscription == SUB
        case other:
            raise AssertionError(other)


def test_unselected_masks_and_directories_are_skipped() -> None:
    (frame,) = iter_frames([FRAME.replace(b"IN_CLOSE_WRITE", b"IN_ATTRIB")])
    assert kinds(frame) == [Skip]
    (frame,) = iter_frames([FRAME.replace(b'"IN_CLOSE_WRITE"', b'"IN_MOVED_TO","IN_ISDIR"')])
    assert kinds(frame) == [Skip]
    assert kinds(frame, ", recursive: true") == [NewDirectory]
    assert kinds(frame, ", recursive: true, directories: true") == [NewDirectory, Publish]


def test_names_leaving_are_removed_and_published_only_if_selected() -> None:
    (frame,) = iter_frames([FRAME.replace(b"IN_CLOSE_WRITE", b"IN_MOVED_FROM")])
    assert run(frame).outcomes == (Removed("/data/in/file1.dat", False),)
    assert kinds(frame, ", events: [IN_MOVED_FROM]") == [Removed, Publish]
    (frame,) = iter_frames([FRAME.replace(b'"IN_CLOSE_WRITE"', b'"IN_DELETE","IN_ISDIR"')])
    assert run(frame).outcomes == (Removed("/data/in/file1.dat", True),)


def test_nameless_and_management_events_do_not_crash() -> None:
    cases = (
        (b"IN_IGNORED", WatchGone),
        (b"IN_Q_OVERFLOW", Overflow),
        (b"IN_DELETE_SELF", WatchGone),
        (b"IN_MOVE_SELF", Skip),
        (b"IN_ATTRIB", Skip),
    )
    for mask, kind in cases:
        data = b'{"event":{"mask":["' + mask + b'"]},"subscription":"' + SUB.encode() + b'"}'
        meaning = run(Frame(b"inotify", b"9", data, b""))
        assert [type(o) for o in meaning.outcomes] == [kind], mask
        assert meaning.event_id == 9


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
        Frame(
            b"inotify",
            b"1",
            b'{"event":{"name":"\\udcff","mask":["IN_CLOSE_WRITE"]},"subscription":"' + SUB.encode() + b'"}',
            b"",
        ): "event.name is not valid Unicode: '\\udcff'",
        Frame(b"metronome", None, b'{"event":"tick","subscription":"u"}', b""): (
            "metronome frame without a valid id: field"
        ),
        Frame(b"metronome", b"3", b'{"event":"tick"}', b""): "metronome frame without a subscription URL",
    }
    for frame, reason in cases.items():
        assert run(frame).outcomes == (Invalid(reason),), frame


def test_metronome_ticks_and_other_event_types_keep_their_id() -> None:
    meaning = run(Frame(b"metronome", b"4", b'{"event":"tick","subscription":"' + SUB.encode() + b'"}', b""))
    assert meaning == Interpretation(4, (Tick(SUB),))
    meaning = run(Frame(b"future", b"5", b"{}", b""))
    assert meaning.event_id == 5 and kinds(Frame(b"future", b"5", b"{}", b"")) == [Skip]


def test_system_frames_have_no_id() -> None:
    meaning = run(Frame(b"SYSTEM", None, b'{"type":"SUBSCRIPTION_CLOSED","subscription":"u"}', b""))
    assert meaning == Interpretation(None, (System("SUBSCRIPTION_CLOSED", "u"),))


def test_listed_event_uses_the_first_selected_content_mask() -> None:
    event = listed_event(
        source(), "/data/in", "a b", channel_id="ch", subscription=SUB, observed_at=9, gap="X"
    )
    assert (event.path, event.mask, event.synthetic, event.gap, event.event_id) == (
        "/data/in/a b",
        ("IN_CLOSE_WRITE",),
        True,
        "X",
        None,
    )
    assert listed_mask(source(", events: [IN_MOVED_TO, IN_CLOSE_WRITE]")) == "IN_CLOSE_WRITE"
    assert listed_mask(source(", events: [IN_ATTRIB, IN_MOVED_TO]")) == "IN_MOVED_TO"


def test_join_path() -> None:
    assert join_path("/", "a") == "/a"
    assert join_path("/data/in", "a") == "/data/in/a"
