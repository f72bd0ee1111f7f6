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
    oversized,
)
from dcnios.producers.sse import HEAD_BYTES, Frame, FrameReader, Oversized, iter_frames
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


def test_a_crlf_cut_between_cr_and_lf_is_still_one_line_ending() -> None:
    stream = FRAME.replace(b"\n", b"\r\n") * 20
    cuts = [i + 1 for i in range(len(stream)) if stream[i : i + 2] == b"\r\n"]
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert all(c.endswith(b"\r") for c in chunks[:-1])  # every CRLF is cut in two
    frames = list(iter_frames(chunks))
    assert len(frames) == 20 and all(isinstance(f, Frame) and f.id == b"7" for f in frames)


def test_bare_cr_line_endings() -> None:
    frames = list(iter_frames([FRAME.replace(b"\n", b"\r")]))
    assert [(f.event, f.id) for f in frames if isinstance(f, Frame)] == [(b"inotify", b"7")]


_LINE = st.sampled_from([b"event: inotify", b"id: 12", b"data: {}", b": keep", b"data: x\xff", b"retry: 3"])


@given(
    st.lists(st.lists(_LINE, min_size=1, max_size=4), max_size=6),
    st.sampled_from([b"\n", b"\r", b"\r\n"]),
    st.integers(min_value=1, max_value=9),
)
def test_frames_do_not_depend_on_line_endings_or_chunking(
    frames: list[list[bytes]], ending: bytes, size: int
) -> None:
    def render(end: bytes) -> bytes:
        return b"".join(line + end for lines in frames for line in [*lines, b""])

    expected = list(iter_frames([render(b"\n")]))
    stream = render(ending)
    assert list(iter_frames([stream[i : i + size] for i in range(0, len(stream), size)])) == [
        Frame(f.event, f.id, f.data, f.raw) if isinstance(f, Frame) else f for f in expected
    ]


def test_an_oversized_frame_is_handed_on_as_its_head_and_the_stream_goes_on() -> None:
    big = b"event: inotify\nid: 41\ndata: " + b"x" * (3 << 20) + b"\n\n"
    stream = big + FRAME
    reader = FrameReader(max_frame=1 << 20)
    out: list[Frame | Oversized] = []
    for i in range(0, len(stream), 4096):
        out += reader.feed(stream[i : i + 4096])
        assert len(reader._buffer) <= (1 << 20) + 4096  # never the whole frame in memory
    oversized, frame = out
    assert isinstance(oversized, Oversized) and isinstance(frame, Frame)
    assert oversized.size == len(big) - 2 and len(oversized.head.raw) == HEAD_BYTES
    assert (oversized.head.event, oversized.head.id, oversized.head.data) == (b"inotify", b"41", None)
    assert frame.id == b"7"


def test_a_frame_over_the_limit_in_one_chunk_is_oversized_too() -> None:
    (only,) = FrameReader(max_frame=64).feed(b"event: x\nid: 3\ndata: " + b"y" * 100 + b"\n\n")
    assert isinstance(only, Oversized) and only.head.id == b"3" and only.size == 121


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


def test_ids_dcache_cannot_send_are_invalid_and_hostile_json_is_no_crash() -> None:
    too_big = FRAME.replace(b"id: 7", b"id: 9223372036854775808")
    assert kinds(next(iter_frames([too_big]))) == [Invalid]  # type: ignore[arg-type]
    largest = FRAME.replace(b"id: 7", b"id: 9223372036854775807")
    assert run(next(iter_frames([largest]))).event_id == 2**63 - 1  # type: ignore[arg-type]
    for data in (b"[" * 100_000, b'{"type": ' + b"9" * 5000 + b"}"):
        for event in (b"inotify", b"SYSTEM", b"metronome"):
            frame = Frame(event, b"3", data, b"")
            (outcome,) = run(frame).outcomes
            assert isinstance(outcome, Invalid)


def test_an_oversized_frame_consumes_its_id_unless_it_is_a_system_frame() -> None:
    head = Frame(b"inotify", b"41", None, b"event: inotify\nid: 41\ndata: xxx")
    meaning = oversized(Oversized(head, 5 << 20), 1 << 20)
    assert meaning.event_id == 41
    assert meaning.outcomes == (Invalid("frame of 5242880 bytes is over the limit of 1048576 bytes"),)
    system = Frame(b"SYSTEM", b"41", None, b"")
    assert oversized(Oversized(system, 5 << 20), 1 << 20).event_id is None
